"""The handle a lease hands out: run commands and move files in one sandbox, for the lease's duration."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, TypeVar

from ..errors import SandboxError
from . import files
from .backend import Isolation, SandboxDriver
from .events import SandboxExec
from .pool import PoolEntry, State
from .spec import ExecResult, SandboxSpec

if TYPE_CHECKING:
    from .manager import SandboxManager

__all__ = ["Sandbox"]

T = TypeVar("T")

# code longer than this goes to the interpreter on stdin rather than in argv (argv strings are capped)
_MAX_ARGV_CODE = 100_000


class Sandbox:
    """A leased sandbox. Valid only inside its ``async with manager.lease(...)`` block.

    ``workdir`` is the lease's own workspace (empty at the start of every lease); relative paths given to
    :meth:`put_file` / :meth:`get_file` and commands' working directory are inside it. ``isolation``
    says what the sandbox enforces and what it does not bound; ``isolated`` is False only for the local
    backend without bubblewrap, which runs commands as plain processes.
    """

    def __init__(self, entry: PoolEntry, manager: SandboxManager, run_id: str | None) -> None:
        self._entry = entry
        self._manager = manager
        self._driver: SandboxDriver = entry.driver
        self._open = True
        self.run_id = run_id
        self.execs = 0
        self.leased_at = time.monotonic()

    # --- what it is -----------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._driver.id

    @property
    def backend(self) -> str:
        return self._driver.backend

    @property
    def isolated(self) -> bool:
        return self._driver.isolation.isolated

    @property
    def isolation(self) -> Isolation:
        """What this sandbox enforces, per resource, and what nothing bounds."""
        return self._driver.isolation

    @property
    def workdir(self) -> str:
        return self._driver.workdir

    @property
    def spec(self) -> SandboxSpec:
        return self._entry.spec

    @property
    def reuse_count(self) -> int:
        """How many leases this sandbox served before this one."""
        return self._entry.leases - 1

    def __repr__(self) -> str:
        state = "open" if self._open else "released"
        return f"<Sandbox {self.id} {self.backend} {state}>"

    # --- what it does ---------------------------------------------------------------------------

    async def exec(
        self,
        cmd: str | Sequence[str],
        *,
        stdin: str | bytes | None = None,
        timeout: float | None = None,
        lang: Literal["shell", "python"] = "shell",
        env: Mapping[str, str] | None = None,
    ) -> ExecResult:
        """Run a command (``lang="shell"``: a ``sh -c`` string or an argv list) or Python code
        (``lang="python"``) in the workspace, and wait for it.

        At ``timeout`` seconds (default: the spec's) the whole process tree is killed and the result has
        ``timed_out=True``; the call returns within about a second of the timeout. A non-zero exit is a
        normal result; :class:`~nbagent.errors.SandboxError` means the sandbox itself failed (it is then
        destroyed when the lease ends, never leased again).
        """
        self._check_open()
        limit = self.spec.timeout if timeout is None else float(timeout)
        if not limit > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        data = stdin.encode() if isinstance(stdin, str) else stdin
        argv, data = self._command(cmd, data, lang)
        started = time.monotonic()
        self.execs += 1
        try:
            result = (await self._driver.exec(argv, stdin=data, timeout=limit, limit=self.spec.max_output,
                                              env=env)).result(limit)
        except BaseException as e:
            # a failed or interrupted command leaves the sandbox suspect: it is checked or destroyed on return
            if isinstance(e, SandboxError):
                self._entry.broken = True
            elapsed = time.monotonic() - started
            self._manager._exec_done(self, lang, elapsed, None, error=e)
            raise
        self._manager._exec_done(self, lang, result.duration, result)
        return result

    def _command(self, cmd: str | Sequence[str], data: bytes | None, lang: str) -> tuple[list[str], bytes | None]:
        if lang == "python":
            if not isinstance(cmd, str):
                raise TypeError("lang='python' takes the code as one string")
            if len(cmd.encode()) <= _MAX_ARGV_CODE:
                return [self.spec.python, "-c", cmd], data
            if data is not None:
                raise ValueError(f"Python code over {_MAX_ARGV_CODE} bytes is sent on stdin, so it cannot take stdin")
            return [self.spec.python, "-"], cmd.encode()
        if lang != "shell":
            raise ValueError(f"lang must be 'shell' or 'python', got {lang!r}")
        if isinstance(cmd, str):
            return ["/bin/sh", "-c", cmd], data
        argv = [str(a) for a in cmd]
        if not argv:
            raise ValueError("empty command")
        return argv, data

    async def put_file(self, path: str, data: bytes | str) -> None:
        """Write a file (text is UTF-8 encoded); a relative path is inside the workspace. Parent
        directories are created. The file belongs to the sandbox's user. Data over the spec's
        ``max_transfer`` raises :class:`~nbagent.sandbox.TransferLimitExceeded` (an ``OSError``)."""
        self._check_open()
        payload = data.encode() if isinstance(data, str) else bytes(data)
        await self._file_op(files.put_file(self._driver, path, payload, limit=self.spec.max_transfer_bytes,
                                           timeout=self._transfer_timeout))

    async def get_file(self, path: str, *, max_bytes: int | None = None, truncate: bool = False) -> bytes:
        """Read a file from the sandbox; a relative path is inside the workspace. A missing file raises
        :class:`FileNotFoundError` (other unreadable files :class:`OSError`).

        At most ``max_bytes`` (default: the spec's ``max_transfer``) are read, streamed: a longer file (or
        ``/dev/zero``) raises :class:`~nbagent.sandbox.TransferLimitExceeded`, or with ``truncate=True``
        gives its first ``max_bytes`` bytes.
        """
        self._check_open()
        limit = self.spec.max_transfer_bytes if max_bytes is None else max_bytes
        if limit < 0:
            raise ValueError(f"max_bytes must not be negative, got {max_bytes}")
        return await self._file_op(files.get_file(self._driver, path, limit=limit, timeout=self._transfer_timeout,
                                                  truncate=truncate))

    @property
    def _transfer_timeout(self) -> float:
        return max(self.spec.timeout, 60.0)

    async def _file_op(self, coro: Awaitable[T]) -> T:
        try:
            return await coro
        except SandboxError:
            self._entry.broken = True  # the sandbox failed, not the file: it is not leased again
            raise

    def _check_open(self) -> None:
        if not self._open:
            raise SandboxError(f"sandbox {self.id}: its lease has ended")
        if self._entry.state is not State.LEASED:
            raise SandboxError(f"sandbox {self.id}: destroyed (the sandbox manager was closed)")

    def _close(self) -> None:
        self._open = False


def exec_event(
    sb: Sandbox, lang: str, seconds: float, result: ExecResult | None, error: BaseException | None
) -> SandboxExec:
    return SandboxExec(
        run_id=sb.run_id,
        sandbox_id=sb.id,
        backend=sb.backend,
        lang=lang,
        seconds=seconds,
        exit_code=result.exit_code if result else None,
        timed_out=result.timed_out if result else False,
        oom_killed=result.oom_killed if result else None,
        ok=result is not None,
        error=None if error is None else f"{type(error).__name__}: {error}",
    )
