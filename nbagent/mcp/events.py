"""MCP events, published on the runtime's :class:`~nbagent.events.EventBus`, and their place in run records.

``run_id`` is set when a run's tool call caused the event (a session started lazily by a call belongs to that
run). Durations are seconds. Importing this module registers the span handlers: an MCP call shows as an
``mcp`` span under its tool span, a session started for a call as an ``mcp`` span named ``start <server>``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..events import Event, _frozen
from ..record import RunRecord, Span, register_span_handler

__all__ = ["MCPCallFinished", "MCPSessionFailed", "MCPSessionRestarted", "MCPSessionStarted", "MCPToolsChanged"]


@dataclass(**_frozen)  # type: ignore[call-overload]
class MCPSessionStarted(Event):
    """A session to ``server`` was started (``ok``) or could not be (``error``); ``tools`` is how many it lists."""

    kind: ClassVar[str] = "mcp_session_started"
    server: str = ""
    transport: str = "stdio"
    tool: str = ""  # the tool whose call started the session, if any
    seconds: float = 0.0
    ok: bool = True
    error: str | None = None
    tools: int = 0


@dataclass(**_frozen)  # type: ignore[call-overload]
class MCPCallFinished(Event):
    """One ``tools/call``. ``ok`` is False for a failure of the call (timeout, crash, malformed result) and for a
    result the server flagged ``isError``; ``is_error`` tells the two apart."""

    kind: ClassVar[str] = "mcp_call"
    server: str = ""
    tool: str = ""  # the name the model sees
    remote: str = ""  # the name on the server
    seconds: float = 0.0
    ok: bool = True
    is_error: bool = False
    error: str | None = None
    output_chars: int = 0


@dataclass(**_frozen)  # type: ignore[call-overload]
class MCPSessionFailed(Event):
    """A session broke (the server exited, the connection closed, a health check failed); the calls in flight
    (``in_flight``) failed with it. The next call starts a new session."""

    kind: ClassVar[str] = "mcp_session_failed"
    server: str = ""
    reason: str = ""
    in_flight: int = 0
    uptime: float = 0.0


@dataclass(**_frozen)  # type: ignore[call-overload]
class MCPSessionRestarted(Event):
    """A new session replaced one that failed; ``restarts`` counts them for this server on this runtime."""

    kind: ClassVar[str] = "mcp_session_restarted"
    server: str = ""
    restarts: int = 0
    downtime: float = 0.0


@dataclass(**_frozen)  # type: ignore[call-overload]
class MCPToolsChanged(Event):
    """The server said its tool list changed; the cached listing was dropped (the next listing asks again)."""

    kind: ClassVar[str] = "mcp_tools_changed"
    server: str = ""


def _tool_span(r: RunRecord, tool: str) -> Span:
    """The newest open tool span of ``tool``, else the innermost open tool span, else the step."""
    for span in reversed(r._open.values()):
        if span.kind == "tool" and span.name == tool:
            return span
    return r.parent_for(("tool",))


def _mcp_call(r: RunRecord, e: Any) -> None:
    span = _tool_span(r, e.tool).add("mcp", f"call {e.server}/{e.remote}", e.ts - e.seconds, e.ts,
                                     server=e.server, tool=e.remote, is_error=e.is_error, error=e.error,
                                     output_chars=e.output_chars)
    span.status = "ok" if e.ok else "error"


def _mcp_started(r: RunRecord, e: Any) -> None:
    span = _tool_span(r, e.tool).add("mcp", f"start {e.server}", e.ts - e.seconds, e.ts, server=e.server,
                                     transport=e.transport, tools=e.tools, error=e.error)
    span.status = "ok" if e.ok else "error"


register_span_handler(MCPCallFinished.kind, _mcp_call)
register_span_handler(MCPSessionStarted.kind, _mcp_started)
