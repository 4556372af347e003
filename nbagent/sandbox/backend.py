"""The seam between the pool and the things that make sandboxes (Docker, bubblewrap, a test fake).

A :class:`SandboxBackend` creates :class:`SandboxDriver` objects and finds sandboxes it made earlier by
their labels; a driver runs commands in one sandbox. The pool never touches Docker or processes itself.
Backends are chosen by name from :mod:`nbagent.sandbox.backend_registry`.

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
    "ExecOutput",
    "Isolation",
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Isolation:
    """What a sandbox enforces, said honestly.

    ``kind`` names the mechanism (``"docker"``, ``"bwrap"``, or ``"process"``: a plain process, not
    isolated). ``limits`` says, per resource (``network``, ``memory``, ``pids``, ``cpu``, ``disk``,
    ``tmp``), how it is bounded; ``unbounded`` names the resources nothing bounds.
    """

    kind: str
    limits: Mapping[str, str] = field(default_factory=dict)
    unbounded: tuple[str, ...] = ()

    @property
    def isolated(self) -> bool:
        """Do commands run apart from the host (own namespaces or a container)?"""
        return self.kind != "process"

    def describe(self) -> str:
        """One line: the mechanism, each limit, and what is not bounded."""
        parts = [f"{k}: {v}" for k, v in self.limits.items()]
        if self.unbounded:
            parts.append("not bounded: " + ", ".join(self.unbounded))
        return f"{self.kind} ({'; '.join(parts)})" if parts else self.kind


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecOutput:
    """What a driver's ``exec`` returns: raw bytes (each stream capped at the exec's ``limit``).

    ``exit_code`` follows the shell convention (128 + N when killed by signal N), None when unknown;
    ``oom_killed`` is None when the backend cannot tell.
    """

    stdout: bytes
    stderr: bytes
    exit_code: int | None
    duration: float
    timed_out: bool = False
    oom_killed: bool | None = False
    truncated: bool = False

    def result(self, timeout: float) -> ExecResult:
        """The decoded :class:`ExecResult` users see."""
        return ExecResult(stdout=self.stdout.decode("utf-8", "replace"), stderr=self.stderr.decode("utf-8", "replace"),
                          exit_code=self.exit_code, duration=self.duration, timed_out=self.timed_out,
                          oom_killed=self.oom_killed, truncated=self.truncated, timeout=timeout)


@runtime_checkable
class SandboxDriver(Protocol):
    """One live sandbox: three async methods. File transfers are commands too (see :mod:`.files`).

    ``exec`` runs ``argv`` in ``workdir``, keeping at most ``limit`` bytes of each of stdout and stderr.
    It must kill the whole process tree at ``timeout`` (and on cancellation), return within about a second
    of it, and leave none of the command's processes running once it returns. It raises
    :class:`~nbagent.errors.SandboxError` when the sandbox itself failed (as opposed to the command).
    """

    id: str
    backend: str
    workdir: str
    isolation: Isolation

    async def exec(
        self, argv: Sequence[str], *, stdin: bytes | None, timeout: float, limit: int,
        env: Mapping[str, str] | None = None,
    ) -> ExecOutput: ...

    async def check(self) -> str | None:
        """Kill leftover processes, wipe the workspace, and say what is wrong (None: clean and healthy)."""
        ...

    async def destroy(self) -> None: ...


@runtime_checkable
class SandboxBackend(Protocol):
    """Makes sandboxes of one kind and finds the labelled ones it made before (in any process).

    Register one with :func:`~nbagent.sandbox.register_backend`. Every method is async; blocking work
    (an engine's SDK, the file system) goes to threads inside the backend.
    """

    name: str

    async def available(self) -> bool:
        """Can sandboxes be made now (is the engine reachable)?"""
        ...

    async def create(self, spec: SandboxSpec, labels: SandboxLabels) -> SandboxDriver: ...

    async def list_sandboxes(self) -> list[SandboxRecord]: ...

    async def remove(self, sandbox_id: str) -> None: ...

    async def aclose(self) -> None: ...
