"""Built-in agent tools that run in sandboxes: ``python``, ``shell``, ``read_file``, ``write_file``.

Code never runs in the notebook kernel. A run leases one sandbox on its first tool call
(``ctx.resource``) and keeps it, with its workspace files, until the run ends; pass ``reuse=False`` to
lease a fresh sandbox for every call instead.

>>> tools = sandbox_tools()                      # the process-wide default manager
>>> [t.name for t in tools]
['python', 'shell', 'read_file', 'write_file']
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

from ..agent.tools import RunContext, Tool, tool
from ..errors import SandboxError, ToolError
from .manager import SandboxManager, default_manager
from .sandbox import Sandbox
from .spec import SandboxSpec

__all__ = ["SandboxFacts", "sandbox_tools"]

MAX_READ_CHARS = 200_000  # what read_file hands the model at most
MAX_READ_BYTES = 4 * MAX_READ_CHARS  # what it reads (UTF-8: up to 4 bytes a character), at most the spec's max_transfer


def sandbox_tools(
    manager: SandboxManager | None = None,
    spec: SandboxSpec | None = None,
    *,
    reuse: bool = True,
    max_timeout: float = 600.0,
) -> list[Tool]:
    """The four sandbox tools, bound to ``manager`` (default: the sandbox manager of the runtime of the run
    that calls them, made lazily) and
    ``spec`` (default: the manager's). A model may ask for a per-call ``timeout`` up to ``max_timeout``
    seconds; otherwise the spec's timeout applies."""

    def current(ctx: RunContext | None = None) -> SandboxManager:
        if manager is not None:
            return manager
        if ctx is not None and ctx.runtime is not None:
            return ctx.runtime.sandboxes  # the run's runtime's manager
        return default_manager()

    @contextlib.asynccontextmanager
    async def sandbox(ctx: RunContext) -> AsyncIterator[Sandbox]:
        m = current(ctx)
        try:
            if reuse:
                key = f"sandbox:{m.id}:{hash(spec):x}" if spec is not None else f"sandbox:{m.id}"
                yield await ctx.resource(key, lambda: m.lease(spec, run_id=ctx.run_id))
            else:
                async with m.lease(spec, run_id=ctx.run_id) as sb:
                    yield sb
        except SandboxError as e:
            raise ToolError(f"sandbox error: {e}") from e

    def limit(timeout: float | None) -> float | None:
        if timeout is None or timeout == 0:  # small models send 0 for "no particular timeout"
            return None
        if not timeout > 0:
            raise ToolError("timeout must be a positive number of seconds")
        return min(float(timeout), max_timeout)

    @tool(name="python")
    async def python(ctx: RunContext, code: str, timeout: float | None = None) -> str:
        """Run Python 3 code in an isolated sandbox and return its stdout, stderr and exit code.

        Each call is a fresh interpreter: keep state in files in the working directory, which persist
        for the rest of this run. There is no network access.

        Args:
            code: the Python source to run; print what you want to see
            timeout: seconds before the process is killed (default or 0: the sandbox's)
        """
        async with sandbox(ctx) as sb:
            return (await sb.exec(code, lang="python", timeout=limit(timeout))).summary()

    @tool(name="shell")
    async def shell(ctx: RunContext, command: str, timeout: float | None = None) -> str:
        """Run a POSIX shell command in an isolated sandbox and return its stdout, stderr and exit code.

        Args:
            command: the command line, run with sh -c in the working directory
            timeout: seconds before the process tree is killed (default or 0: the sandbox's)
        """
        async with sandbox(ctx) as sb:
            return (await sb.exec(command, timeout=limit(timeout))).summary()

    @tool(name="read_file")
    async def read_file(ctx: RunContext, path: str) -> str:
        """Read a text file from the sandbox.

        Args:
            path: the file, relative to the working directory
        """
        async with sandbox(ctx) as sb:
            cap = min(sb.spec.max_transfer_bytes, MAX_READ_BYTES)
            try:
                data = await sb.get_file(path, max_bytes=cap + 1, truncate=True)
            except FileNotFoundError:
                raise ToolError(f"no such file: {path}") from None
            except OSError as e:
                raise ToolError(f"cannot read {path}: {e.strerror or e}") from None
        text = data[:cap].decode("utf-8", "replace")
        if len(data) > cap or len(text) > MAX_READ_CHARS:
            shown = text[:MAX_READ_CHARS]
            return shown + (f"\n[truncated: the file is longer than the {len(shown)} characters shown; "
                            "read parts of it with the shell tool, e.g. with tail or sed]")
        return text

    @tool(name="write_file")
    async def write_file(ctx: RunContext, path: str, content: str) -> str:
        """Write a text file in the sandbox (parent directories are created; an existing file is replaced).

        Args:
            path: the file, relative to the working directory
            content: the whole new content of the file
        """
        async with sandbox(ctx) as sb:
            try:
                await sb.put_file(path, content)
            except OSError as e:
                raise ToolError(f"cannot write {path}: {e.strerror or e}") from None
        return f"wrote {len(content.encode())} bytes to {path}"

    tools = [python, shell, read_file, write_file]
    facts = SandboxFacts(lambda: spec if spec is not None else current().spec)
    for t in tools:
        t.facts = facts
    return tools


class SandboxFacts(Mapping[str, Any]):
    """What a policy may know of a sandbox tool: ``sandbox`` (True), ``network`` and ``backend`` of its spec.

    Read when a policy asks (the default manager, and so its spec, is made on first use).
    """

    KEYS = ("sandbox", "network", "backend")

    def __init__(self, spec: Callable[[], SandboxSpec]) -> None:
        self._spec = spec

    def __getitem__(self, key: str) -> Any:
        if key == "sandbox":
            return True
        if key == "network":
            return bool(self._spec().network)
        if key == "backend":
            return self._spec().backend
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.KEYS)

    def __len__(self) -> int:
        return len(self.KEYS)
