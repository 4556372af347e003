"""Sandbox metrics events, published on the manager's :class:`~nbagent.events.EventBus`.

``run_id`` is set when the lease was taken for a run. Durations are seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..events import Event, _frozen

__all__ = [
    "SandboxChecked",
    "SandboxCreated",
    "SandboxDestroyed",
    "SandboxExec",
    "SandboxLeased",
    "SandboxLeaseTimedOut",
    "SandboxReleased",
]


@dataclass(**_frozen)  # type: ignore[call-overload]
class SandboxCreated(Event):
    """A sandbox was created (``ok``) or its creation failed (``error``)."""

    kind: ClassVar[str] = "sandbox_created"
    sandbox_id: str = ""
    backend: str = ""
    image: str = ""
    seconds: float = 0.0
    ok: bool = True
    error: str | None = None


@dataclass(**_frozen)  # type: ignore[call-overload]
class SandboxLeased(Event):
    """A lease was granted after waiting ``wait`` seconds. ``reuse_count`` is how many leases the sandbox
    served before this one (0: a fresh sandbox); ``warm`` says it came straight from the idle pool."""

    kind: ClassVar[str] = "sandbox_leased"
    sandbox_id: str = ""
    backend: str = ""
    wait: float = 0.0
    reuse_count: int = 0
    warm: bool = False


@dataclass(**_frozen)  # type: ignore[call-overload]
class SandboxLeaseTimedOut(Event):
    """No sandbox became free within the lease timeout."""

    kind: ClassVar[str] = "sandbox_lease_timeout"
    backend: str = ""
    wait: float = 0.0
    waiting: int = 0


@dataclass(**_frozen)  # type: ignore[call-overload]
class SandboxExec(Event):
    """One command ran. ``ok`` is False when the sandbox itself failed (the exit code is then None)."""

    kind: ClassVar[str] = "sandbox_exec"
    sandbox_id: str = ""
    backend: str = ""
    lang: str = "shell"
    seconds: float = 0.0
    exit_code: int | None = None
    timed_out: bool = False
    oom_killed: bool | None = False
    ok: bool = True
    error: str | None = None


@dataclass(**_frozen)  # type: ignore[call-overload]
class SandboxReleased(Event):
    """A lease ended after ``held`` seconds."""

    kind: ClassVar[str] = "sandbox_released"
    sandbox_id: str = ""
    backend: str = ""
    held: float = 0.0
    execs: int = 0


@dataclass(**_frozen)  # type: ignore[call-overload]
class SandboxChecked(Event):
    """The health check of a returned sandbox: ``problem`` is None when it went back to the pool."""

    kind: ClassVar[str] = "sandbox_checked"
    sandbox_id: str = ""
    backend: str = ""
    seconds: float = 0.0
    problem: str | None = None


@dataclass(**_frozen)  # type: ignore[call-overload]
class SandboxDestroyed(Event):
    """A sandbox was destroyed. ``reason``: idle, unhealthy, broken, retired, evicted, shutdown, orphan,
    failed (the destroy itself failed: ``error`` says why)."""

    kind: ClassVar[str] = "sandbox_destroyed"
    sandbox_id: str = ""
    backend: str = ""
    reason: str = ""
    lifetime: float = 0.0
    leases: int = 0
    error: str | None = None
