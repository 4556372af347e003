"""The seam between the pool and the things that make sandboxes (Docker, bubblewrap, a test fake).

A :class:`SandboxBackend` creates :class:`SandboxDriver` objects and finds sandboxes it made earlier by
their labels; a driver runs commands in one sandbox. The pool never touches Docker or processes itself.

Every sandbox carries labels naming its owner process (pid, the process start time, the host), the
manager that made it and when, so sandboxes left behind by a crashed process can be found and removed.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from .spec import ExecResult, SandboxSpec

__all__ = [
    "LABEL_CREATED",
    "LABEL_HOST",
    "LABEL_MANAGER",
    "LABEL_OWNER_PID",
    "LABEL_OWNER_START",
    "LABEL_SANDBOX",
    "SandboxBackend",
    "SandboxDriver",
    "SandboxLabels",
    "SandboxRecord",
    "new_manager_id",
    "owner_alive",
    "process_start_time",
]

LABEL_SANDBOX = "nbagent.sandbox"
LABEL_MANAGER = "nbagent.manager"
LABEL_OWNER_PID = "nbagent.owner_pid"
LABEL_OWNER_START = "nbagent.owner_start"
LABEL_HOST = "nbagent.host"
LABEL_CREATED = "nbagent.created"


def new_manager_id() -> str:
    return uuid.uuid4().hex[:12]


def process_start_time(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot ("" when unknown). With the pid it names one
    process for good: a pid reused by a later process has another start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return ""
    # the command name (field 2) may hold spaces and parentheses: split after the last ')'
    fields = data[data.rfind(b")") + 2 :].split()
    return fields[19].decode() if len(fields) > 19 else ""


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxLabels:
    """Who owns a sandbox. ``as_dict()`` is what the backends store next to it."""

    manager_id: str
    owner_pid: int = field(default_factory=os.getpid)
    owner_start: str = ""
    host: str = field(default_factory=socket.gethostname)
    created: float = field(default_factory=time.time)

    @classmethod
    def for_this_process(cls, manager_id: str) -> SandboxLabels:
        pid = os.getpid()
        return cls(manager_id=manager_id, owner_pid=pid, owner_start=process_start_time(pid))

    def as_dict(self) -> dict[str, str]:
        return {
            LABEL_SANDBOX: "1",
            LABEL_MANAGER: self.manager_id,
            LABEL_OWNER_PID: str(self.owner_pid),
            LABEL_OWNER_START: self.owner_start,
            LABEL_HOST: self.host,
            LABEL_CREATED: f"{self.created:.3f}",
        }


def owner_alive(labels: Mapping[str, str]) -> bool:
    """Is the process that made a sandbox still running? Sandboxes of another host, or with labels that
    cannot be read, count as alive: pruning never removes what it cannot prove abandoned."""
    if labels.get(LABEL_HOST, "") != socket.gethostname():
        return True
    try:
        pid = int(labels.get(LABEL_OWNER_PID, ""))
    except ValueError:
        return True
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    start = labels.get(LABEL_OWNER_START, "")
    current = process_start_time(pid)
    return not (start and current and start != current)  # a different start time: the pid was reused


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxRecord:
    """A labelled sandbox found by a backend (for ``sandboxes list`` / ``prune``)."""

    id: str
    backend: str
    status: str
    labels: Mapping[str, str]

    @property
    def manager_id(self) -> str:
        return self.labels.get(LABEL_MANAGER, "")

    @property
    def owner_pid(self) -> int | None:
        try:
            return int(self.labels.get(LABEL_OWNER_PID, ""))
        except ValueError:
            return None

    @property
    def created(self) -> float | None:
        try:
            return float(self.labels.get(LABEL_CREATED, ""))
        except ValueError:
            return None

    @property
    def owner_alive(self) -> bool:
        return owner_alive(self.labels)


@runtime_checkable
class SandboxDriver(Protocol):
    """One live sandbox. ``exec`` must kill the whole process tree at ``timeout`` (and on cancellation)
    and return within about a second of it; it raises :class:`~nbagent.errors.SandboxError` when the
    sandbox itself failed (as opposed to the command failing)."""

    id: str
    backend: str
    isolated: bool
    workdir: str

    async def exec(
        self, argv: Sequence[str], *, stdin: bytes | None, timeout: float, env: Mapping[str, str] | None = None
    ) -> ExecResult: ...

    async def put_file(self, path: str, data: bytes) -> None: ...

    async def get_file(self, path: str) -> bytes: ...

    async def check(self) -> str | None:
        """Kill leftover processes, wipe the workspace, and say what is wrong (None: clean and healthy)."""
        ...

    async def destroy(self) -> None: ...


@runtime_checkable
class SandboxBackend(Protocol):
    """Makes sandboxes of one kind and finds the labelled ones it made before (in any process)."""

    name: str

    async def available(self) -> bool:
        """Can sandboxes be made now (is the engine reachable)?"""
        ...

    async def create(self, spec: SandboxSpec, labels: SandboxLabels) -> SandboxDriver: ...

    async def list_sandboxes(self) -> list[SandboxRecord]: ...

    async def remove(self, sandbox_id: str) -> None: ...

    def cleanup_sync(self, manager_id: str) -> None:
        """Remove the sandboxes of one manager without an event loop (interpreter exit)."""
        ...

    async def aclose(self) -> None: ...
