"""One pooled MCP session: started lazily, owned by one long-lived task, health-checked, restarted after a crash.

The ``mcp`` SDK builds its sessions on anyio task groups, which must be entered and exited by the same task. So a
session belongs to an *owner task* that enters the transport and the ``ClientSession``, initializes, lists the
tools, then waits: for :meth:`MCPSession.aclose`, for a failure another task noticed, or for its next health
check (a ``ping`` every ``health_interval`` seconds). Calls are sent from the callers' own tasks (the SDK
correlates requests across tasks); a call that is cancelled or times out is abandoned, and the SDK tells the
server with ``notifications/cancelled``.

When the connection closes under a call (the server exited), every call in flight fails with a clear
:class:`MCPToolError`, the session is marked failed (an ``mcp_session_failed`` event) and the next call starts
a new one (``mcp_session_restarted``). Sessions belong to the event loop that started them; a call from another
loop starts a new session there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
import time
from typing import Any, TextIO

from ..errors import ToolError
from ..events import EventBus
from .events import MCPSessionFailed, MCPSessionRestarted, MCPSessionStarted, MCPToolsChanged
from .server import MCPServer

__all__ = ["MCPSession", "MCPStartError", "MCPToolError"]

log = logging.getLogger("nbagent.mcp")


class MCPToolError(ToolError):
    """An MCP tool call failed: the server flagged its result ``isError``, timed out, crashed, or answered
    something that is not a tool result. The agent turns it into a tool message for the model."""


class MCPStartError(MCPToolError):
    """A session to an MCP server could not be started (bad command, refused connection, no answer in time)."""


class MCPSession:
    """The one session to ``server`` on a runtime (see the module docstring). ``bus`` gets its events."""

    def __init__(self, server: MCPServer, bus: EventBus, *, health_interval: float = 30.0) -> None:
        self.server = server
        self.bus = bus
        self.health_interval = health_interval
        self.state = "idle"  # idle | starting | ready | failed | closed
        self.calls = 0
        self.errors = 0
        self.restarts = 0
        self.failures = 0
        self.in_flight = 0
        self.last_error: str | None = None
        self.started_at: float | None = None
        self.last_ping: float | None = None  # seconds the last health check took
        self._session: Any = None  # mcp.ClientSession while ready
        self._tools: list[Any] | None = None  # mcp.types.Tool, cached until tools/list_changed
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[Any] | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed_at: float | None = None
        self._errlog: TextIO | None = None

    # --- lifecycle -----------------------------------------------------------------------------------

    async def ensure(self, *, run_id: str | None = None, tool: str = "") -> Any:
        """The ready ``ClientSession``, starting one (once, whoever asks first) if needed."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._forget()  # a session of another (maybe closed) loop cannot serve this one
            self._loop = loop
        if self.state == "closed":
            raise MCPStartError(f"MCP server {self.server.name}: the pool is closed")
        if self.state == "ready" and self._session is not None and not _connection_closed(self._session):
            return self._session
        if self.state == "ready":
            self.mark_failed("the connection was closed while idle")
        if self._ready is None or self._ready.done():
            self._spawn(run_id, tool)
        assert self._ready is not None
        try:
            # one start for every caller; a caller that gives up does not stop it for the others
            return await asyncio.wait_for(asyncio.shield(self._ready), self.server.startup_timeout)
        except TimeoutError:
            self.mark_failed(f"no answer within {self.server.startup_timeout} s of starting")
            raise MCPStartError(f"MCP server {self.server.name} did not start within "
                                f"{self.server.startup_timeout} s{await self._stderr_tail()}") from None

    def _spawn(self, run_id: str | None, tool: str) -> None:
        loop = asyncio.get_running_loop()
        self.state = "starting"
        self._ready = loop.create_future()
        self._ready.add_done_callback(_consume)
        self._stop = asyncio.Event()
        self._task = loop.create_task(self._own(self._ready, self._stop, run_id, tool),
                                      name=f"nbagent:mcp:{self.server.name}")

    async def _own(self, ready: asyncio.Future[Any], stop: asyncio.Event, run_id: str | None, tool: str) -> None:
        """The owner task: enter the transport and the session, serve until stopped, exit both here."""
        t0 = time.perf_counter()
        ntools = 0
        try:
            from mcp.client.session import ClientSession  # in the try: a missing SDK fails the start, at once

            if self.server.command is not None and self._errlog is None:
                self._errlog = await asyncio.to_thread(_temp_log)
            async with contextlib.AsyncExitStack() as stack:
                read, write = await stack.enter_async_context(self._transport())
                session = await stack.enter_async_context(
                    ClientSession(read, write, message_handler=self._on_message))
                await session.initialize()
                tools = await _list_all(session)
                ntools = len(tools)
                self._tools, self._session = tools, session
                self.state, self.started_at = "ready", time.time()
                restarted = self._failed_at is not None
                self.bus.emit(MCPSessionStarted(run_id=run_id, server=self.server.name,
                                                transport=self.server.transport, tool=tool,
                                                seconds=time.perf_counter() - t0, tools=ntools))
                if restarted:
                    self.restarts += 1
                    self.bus.emit(MCPSessionRestarted(run_id=run_id, server=self.server.name,
                                                      restarts=self.restarts,
                                                      downtime=time.time() - (self._failed_at or time.time())))
                    self._failed_at = None
                ready.set_result(session)
                await self._serve(session, stop)
        except BaseException as exc:  # noqa: BLE001 - the owner reports every way it ends, then ends
            if not ready.done():
                tail = "" if isinstance(exc, asyncio.CancelledError) else await self._stderr_tail()
                msg = f"MCP server {self.server.name} could not start: {_describe(exc)}{tail}"
                self.bus.emit(MCPSessionStarted(run_id=run_id, server=self.server.name,
                                                transport=self.server.transport, tool=tool, ok=False,
                                                seconds=time.perf_counter() - t0, error=msg))
                self.mark_failed(msg)
                ready.set_exception(MCPStartError(msg))
            elif isinstance(exc, asyncio.CancelledError):
                if self.state == "ready":
                    self.state = "idle"  # its loop is ending (asyncio.run's clean-up): not a failure
            elif self.state == "ready":
                self.mark_failed(f"the session ended: {_describe(exc)}")
            if isinstance(exc, asyncio.CancelledError) and self.state != "closed":
                raise
        finally:
            self._session = None

    async def _serve(self, session: Any, stop: asyncio.Event) -> None:
        """Wait for the stop signal, pinging the server every ``health_interval`` seconds meanwhile."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.health_interval)
                return
            if self.in_flight:
                continue  # calls in flight prove the session alive, or fail it themselves
            ok = await self.check(session)
            if not ok:
                return

    async def check(self, session: Any = None) -> bool:
        """Ping the server (bounded by the startup timeout); a failed ping fails the session."""
        session = session if session is not None else self._session
        if session is None:
            return False
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(self.server.startup_timeout):
                await session.send_ping()
        except Exception as exc:  # noqa: BLE001 - any failure of a ping is a failed health check
            self.mark_failed(f"health check failed: {_describe(exc)}")
            return False
        self.last_ping = time.perf_counter() - t0
        return True

    def mark_failed(self, reason: str) -> None:
        """The session is broken: report it once, stop its owner task; the next call starts a new one."""
        self.last_error = reason
        if self.state in ("failed", "closed"):
            return
        was_ready = self.state == "ready"
        self.state = "failed"
        self.failures += 1
        self._failed_at = time.time()
        self._session = None
        if self._stop is not None:
            self._stop.set()
        if was_ready:
            uptime = time.time() - (self.started_at or time.time())
            self.bus.emit(MCPSessionFailed(server=self.server.name, reason=reason, in_flight=self.in_flight,
                                           uptime=uptime))
        log.warning("MCP server %s: %s", self.server.name, reason)

    async def aclose(self) -> None:
        """Stop the owner task (it exits the session and the transport; a stdio server is terminated)."""
        self.state = "closed"
        task, self._task = self._task, None
        if self._stop is not None:
            self._stop.set()
        if task is not None and not task.done():
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if task.get_loop() is loop:
                try:
                    await asyncio.wait_for(task, 15.0)
                except (TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001 - closing goes on
                    task.cancel()
            else:
                task.cancel()  # its loop is elsewhere (or gone): nothing to wait for here
        self._session = None
        if self._errlog is not None:
            errlog, self._errlog = self._errlog, None
            await asyncio.to_thread(errlog.close)

    def _forget(self) -> None:
        if self._task is not None and not self._task.done():
            with contextlib.suppress(RuntimeError):  # the loop is closed: the task died with it
                self._task.get_loop().call_soon_threadsafe(self._task.cancel)
        self._task = self._ready = self._stop = None
        self._session = None
        if self.state in ("ready", "starting"):
            self.state = "idle"

    # --- calls -----------------------------------------------------------------------------------

    async def call(self, remote: str, arguments: dict[str, Any], *, run_id: str | None = None,
                   tool: str = "") -> Any:
        """``tools/call`` on the pooled session; the ``mcp.types.CallToolResult`` (``isError`` ones included).

        Raises :class:`MCPToolError` with a message the model can act on when the call itself failed: the server
        could not start, crashed under the call, answered nothing within ``server.timeout`` seconds, or answered
        something that is not a tool result. Cancellation propagates (the SDK tells the server).
        """
        from mcp.shared.exceptions import MCPError
        from mcp.types import CONNECTION_CLOSED, REQUEST_TIMEOUT
        from pydantic import ValidationError

        session = await self.ensure(run_id=run_id, tool=tool)
        name = f"{self.server.name}/{remote}"
        self.calls += 1
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.server.timeout):
                return await session.call_tool(remote, arguments)
        except TimeoutError:
            raise MCPToolError(f"{name} gave no answer within {self.server.timeout} s (the call was "
                               "cancelled on the server)") from None
        except MCPError as exc:
            if exc.code == CONNECTION_CLOSED:
                self.mark_failed(f"the connection closed during a call to {remote}")
                raise MCPToolError(f"MCP server {self.server.name} closed the connection during the call to "
                                   f"{remote} (did it exit?); a new session starts on the next call"
                                   f"{await self._stderr_tail()}") from None
            if exc.code == REQUEST_TIMEOUT:
                raise MCPToolError(f"{name} gave no answer in time: {exc.message}") from None
            raise MCPToolError(f"{name} answered with error {exc.code}: {exc.message}") from None
        except ValidationError as exc:
            errors = exc.errors()
            where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "result"
            msg = errors[0]["msg"] if errors else str(exc)
            raise MCPToolError(f"{name} sent a malformed result ({where or 'result'}: {msg})") from None
        except (RuntimeError, ValueError) as exc:  # an output-schema violation, an unexpected result kind
            raise MCPToolError(f"{name} sent an unusable result: {exc}") from None
        finally:
            self.in_flight -= 1

    # --- what the session knows -------------------------------------------------------------------

    async def list_tools(self, *, run_id: str | None = None) -> list[Any]:
        """The server's tools (``mcp.types.Tool``), cached until the server says its list changed."""
        session = await self.ensure(run_id=run_id)
        if self._tools is None:
            self._tools = await _list_all(session)
        return list(self._tools)

    async def _on_message(self, message: Any) -> None:
        from mcp import types

        if isinstance(message, types.ToolListChangedNotification):
            self._tools = None
            self.bus.emit(MCPToolsChanged(server=self.server.name))
        elif isinstance(message, Exception):
            log.debug("MCP server %s: transport error %r", self.server.name, message)

    def health(self) -> dict[str, Any]:
        """The session's state and counters, as ``%agent mcp`` shows them."""
        uptime = None if self.state != "ready" or self.started_at is None else time.time() - self.started_at
        return {"server": self.server.name, "transport": self.server.transport, "state": self.state,
                "tools": None if self._tools is None else len(self._tools), "calls": self.calls,
                "errors": self.errors, "in_flight": self.in_flight, "restarts": self.restarts,
                "failures": self.failures, "uptime": uptime, "last_ping": self.last_ping,
                "last_error": self.last_error}

    # --- transports ---------------------------------------------------------------------------------

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        server = self.server
        if server.url is not None:
            return _http_transport(server.url, dict(server.headers))
        from mcp.client.stdio import StdioServerParameters, stdio_client

        params = StdioServerParameters(command=server.command or "", args=list(server.args), env=dict(server.env),
                                       cwd=server.cwd)
        return stdio_client(params, errlog=self._errlog or sys.stderr)

    async def _stderr_tail(self, limit: int = 600) -> str:
        """The end of a stdio server's stderr (it says why a server died), for error messages."""
        f = self._errlog
        if f is None:
            return ""

        def read() -> str:
            f.flush()
            size = f.seek(0, 2)
            f.seek(max(size - limit * 4, 0))
            return f.read()[-limit:].strip()

        try:
            tail = await asyncio.to_thread(read)
        except (OSError, ValueError):
            return ""
        return f"; its stderr ends: {tail}" if tail else ""


@contextlib.asynccontextmanager
async def _http_transport(url: str, headers: dict[str, str]) -> Any:
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async with create_mcp_http_client(headers=headers) as client, \
            streamable_http_client(url, http_client=client) as streams:
        yield streams[0], streams[1]


async def _list_all(session: Any) -> list[Any]:
    from mcp import types

    result = await session.list_tools()
    tools = list(result.tools)
    while result.next_cursor:
        result = await session.list_tools(params=types.PaginatedRequestParams(cursor=result.next_cursor))
        tools.extend(result.tools)
    return tools


def _connection_closed(session: Any) -> bool:
    """Best effort: has the SDK's dispatcher seen the connection close (a server that exited while idle)?"""
    return bool(getattr(getattr(session, "_dispatcher", None), "_closed", False))


def _describe(exc: BaseException) -> str:
    inner = getattr(exc, "exceptions", None)  # an exception group from the SDK's task groups
    if isinstance(inner, tuple) and inner:
        return "; ".join(_describe(e) for e in inner[:3])
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _temp_log() -> TextIO:
    """Where a stdio server's stderr goes (read back when it fails); deleted when closed."""
    return tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace")  # noqa: SIM115


def _consume(fut: asyncio.Future[Any]) -> None:
    """Mark a start's exception retrieved: callers that gave up would otherwise leave it 'never retrieved'."""
    if not fut.cancelled():
        fut.exception()
