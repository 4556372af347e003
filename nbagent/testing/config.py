"""Settings of the simulated chat server."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .faults import FAULT_KINDS

#: What a server at capacity does with one more request.
OVERLOAD_MODES = ("queue", "reject")


@dataclass(frozen=True)
class SimConfig:
    """Runtime settings of the simulated server (see :class:`nbagent.testing.SimServer`)."""

    latency: float = 0.0
    ttft: float | None = None
    chunk_delay: float = 0.0
    tool_calls_per_run: int = 1
    report_usage: bool = True
    api_key: str | None = None
    context_window: int | None = None
    fault_rate: float = 0.0
    fault_kinds: tuple[str, ...] = ("500",)
    seed: int = 0
    record_history: bool = True
    fault_delay: float = 1.0
    capacity: int | None = None  # at most this many chat requests at once; beyond it, ``overload`` says what
    overload: str = "queue"  # "queue": wait for a free place; "reject": 429 with ``Retry-After``
    overload_retry_after: float | None = 1.0  # the ``Retry-After`` of a rejection (None: no header)

    def __post_init__(self) -> None:
        kinds = (self.fault_kinds,) if isinstance(self.fault_kinds, str) else tuple(self.fault_kinds)
        object.__setattr__(self, "fault_kinds", kinds)
        for kind in kinds:
            if kind not in FAULT_KINDS:
                raise ValueError(f"unknown fault kind {kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be within [0, 1]")
        if self.fault_rate > 0 and not kinds:
            raise ValueError("fault_kinds must not be empty when fault_rate > 0")
        for name in ("latency", "chunk_delay", "fault_delay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.ttft is not None and self.ttft < 0:
            raise ValueError("ttft must be >= 0")
        if self.capacity is not None and self.capacity < 1:
            raise ValueError("capacity must be >= 1 (or None for no limit)")
        if self.overload not in OVERLOAD_MODES:
            raise ValueError(f"overload must be one of {', '.join(OVERLOAD_MODES)}, got {self.overload!r}")
        if self.overload_retry_after is not None and self.overload_retry_after < 0:
            raise ValueError("overload_retry_after must be >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serialisable dict."""
        data = dataclasses.asdict(self)
        data["fault_kinds"] = list(self.fault_kinds)
        return data

    def updated(self, **changes: Any) -> SimConfig:
        """Return a copy with ``changes`` applied; unknown names raise :class:`TypeError`."""
        unknown = set(changes) - CONFIG_FIELDS
        if unknown:
            raise TypeError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        if "fault_kinds" in changes and not isinstance(changes["fault_kinds"], str):
            changes["fault_kinds"] = tuple(changes["fault_kinds"])
        return dataclasses.replace(self, **changes)


CONFIG_FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(SimConfig))
