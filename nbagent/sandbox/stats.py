"""Pool gauges, totals and simple percentiles (sorted-list percentiles over a bounded window)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SampleWindow", "SandboxStats", "percentile"]


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100, nearest rank) of ``values``; None when there are none."""
    data = sorted(values)
    if not data:
        return None
    rank = max(1, math.ceil(q / 100 * len(data)))
    return data[min(rank, len(data)) - 1]


class SampleWindow:
    """The last ``size`` samples of one measurement."""

    __slots__ = ("_values", "count")

    def __init__(self, size: int = 4096) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self.count = 0

    def add(self, value: float) -> None:
        self._values.append(value)
        self.count += 1

    def p(self, q: float) -> float | None:
        return percentile(self._values, q)


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxStats:
    """A snapshot of a :class:`~nbagent.sandbox.SandboxManager`.

    Gauges: ``active`` (leased), ``idle``, ``creating``, ``checking`` (returned, being wiped and checked),
    ``destroying``, ``waiting`` (lease requests queued) and ``total`` (all that exist, at most
    ``max_total``). Totals count since the manager started; ``destroyed`` is keyed by reason.
    Percentiles are seconds over the most recent samples (None before the first).
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
