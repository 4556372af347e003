"""Pool gauges, totals and percentiles, the percentiles read from the pool's fold of its own events."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..metrics import MetricsRegistry

__all__ = ["SandboxStats", "percentiles"]


def percentiles(facts: MetricsRegistry) -> dict[str, float | None]:
    """p50/p95 of lease wait, exec and create times, read from a pool's fold of its own events.

    The same handlers fold the same events into the runtime's metrics (``sandbox.lease_wait``,
    ``sandbox.exec``, ``sandbox.create``), so the manager's stats and the dashboard agree by construction.
    """
    hists = facts.histograms
    out: dict[str, float | None] = {}
    for field_name, metric in (("lease_wait", "sandbox.lease_wait"), ("exec", "sandbox.exec"),
                               ("create", "sandbox.create")):
        h = hists.get(metric)
        out[f"{field_name}_p50"] = h.p50 if h is not None else None
        out[f"{field_name}_p95"] = h.p95 if h is not None else None
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxStats:
    """A snapshot of a :class:`~nbagent.sandbox.SandboxManager`.

    Gauges: ``active`` (leased), ``idle``, ``creating``, ``checking`` (returned, being wiped and checked),
    ``destroying``, ``waiting`` (lease requests queued) and ``total`` (all that exist, at most
    ``max_total``). Totals count since the manager started; ``destroyed`` is keyed by reason.
    Percentiles are seconds, from the same histograms as the metrics (None before the first sample).
    """

    active: int
    idle: int
    creating: int
    checking: int
    destroying: int
    waiting: int
    total: int
    max_total: int
    created: int = 0
    create_failures: int = 0
    leases: int = 0
    warm_leases: int = 0
    lease_timeouts: int = 0
    execs: int = 0
    exec_timeouts: int = 0
    exec_errors: int = 0
    destroyed: dict[str, int] = field(default_factory=dict)
    lease_wait_p50: float | None = None
    lease_wait_p95: float | None = None
    exec_p50: float | None = None
    exec_p95: float | None = None
    create_p50: float | None = None
    create_p95: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
