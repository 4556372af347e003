"""A run as the notebook keeps it (:class:`RunEntry`), and what views of runs must offer."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..agent import RunHandle, RunResult
from ..llm.usage import RunUsage
from .state import RunState

__all__ = ["LiveView", "RunEntry", "RunView", "failed_result"]


class RunView(Protocol):
    """What shows one run: redrawn from its state; publishes a static rendering when the run ends."""

    def render(self, state: RunState) -> None: ...

    def publish(self, state: RunState, *, current: bool = False) -> None: ...


class LiveView(Protocol):
    """A view of every run (the dashboard), refreshed by the registry's ticker."""

    def refresh(self, now: float) -> None: ...

    def publish(self, *, current: bool = False) -> None: ...


@dataclass(eq=False)
class RunEntry:
    """One run of the registry: its state, handle, result, view and the variable its result goes to."""

    name: str
    prompt: str
    state: RunState
    handle: RunHandle | None = None
    result: RunResult | None = None
    view: RunView | None = None
    out: str | None = None
    namespace: MutableMapping[str, Any] | None = field(default=None, repr=False)
    profile: bool = False
    rendered_version: int = -1
    rendered_at: float = 0.0
    published: bool = False
    delivered: bool = False

    @property
    def done(self) -> bool:
        return self.result is not None


def failed_result(name: str, error: BaseException, status: str = "error") -> RunResult:
    """A :class:`RunResult` for a run that could not start or ended without one."""
    reason = "cancelled" if status == "cancelled" else f"{type(error).__name__}: {error}"
    return RunResult(run_id="", name=name, output="", status=status, stop_reason=reason, messages=[],
                     usage=RunUsage(), timings={"total": 0.0}, error=None if status == "cancelled" else error)
