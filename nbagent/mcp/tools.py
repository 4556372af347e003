"""MCP tools as nbagent :class:`~nbagent.agent.tools.Tool`\\ s: the server's name, description and input schema;
a call goes through the runtime's pooled session and its result becomes the tool message.

Results: text parts are joined; structured content alone is sent as JSON; images, audio and binary resources
are described in a line (a tool message carries text only); a result flagged ``isError`` becomes a tool error
the model sees (its text), never an exception out of the run.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import TYPE_CHECKING, Any

from ..agent.tools import RunContext, Tool
from .events import MCPCallFinished
from .session import MCPToolError

if TYPE_CHECKING:  # pragma: no cover
    from .pool import MCPPool
    from .server import MCPServer

__all__ = ["MCPTool", "result_text"]


class MCPTool(Tool):
    """One tool of an MCP server. ``remote`` is its name on the server; ``name`` the one the model sees
    (``server.prefix`` + ``remote``, with characters a model API rejects replaced by ``_``)."""

    def __init__(self, pool: MCPPool, server: MCPServer, spec: Any) -> None:
        self.pool = pool
        self.server = server
        self.remote: str = spec.name
        self.name = _model_name(server.prefix + spec.name)
        self.description = (spec.description or spec.title or "").strip()
        self.cache = False
        self.timeout = None  # the session applies ``server.timeout``, and tells the server when it gives up
        self.facts = {"mcp_server": server.name, "transport": server.transport,
                      "read_only": bool(getattr(spec.annotations, "read_only_hint", False))}
        self.is_async = True
        self.takes_context = True
        schema = dict(spec.input_schema or {})
        schema.setdefault("type", "object")
        schema.setdefault("properties", {})
        schema.setdefault("required", [])  # the same schema; the agent's argument check reads the key
        self.parameters = schema
        self._param_names = set(schema["properties"])
        self.schema = {"type": "function",
                       "function": {"name": self.name, "description": self.description, "parameters": schema}}
        self.fn = self._call
        self.__name__ = self.name
        self.__doc__ = self.description

    def __repr__(self) -> str:
        return f"<MCPTool {self.name} of {self.server.name}>"

    def parse_arguments(self, raw: str) -> dict[str, Any]:
        """As :meth:`Tool.parse_arguments`, but unknown arguments are refused only when the schema says
        ``additionalProperties: false`` (the server validates the rest)."""
        if self.parameters.get("additionalProperties") is False or not raw or not raw.strip():
            return super().parse_arguments(raw)
        try:
            keys = json.loads(raw, strict=False)
        except ValueError:
            return super().parse_arguments(raw)  # says what is wrong with the JSON
        saved = self._param_names
        self._param_names = saved | set(keys) if isinstance(keys, dict) else saved
        try:
            return super().parse_arguments(raw)
        finally:
            self._param_names = saved

    async def call(self, ctx: RunContext | None, args: dict[str, Any]) -> Any:
        return await self._call(ctx, **args)

    async def _call(self, ctx: RunContext | None, /, **args: Any) -> str:
        session = self.pool.session(self.server)
        run_id = ctx.run_id if ctx is not None else None
        bus = ctx.bus if ctx is not None else self.pool.bus
        t0 = time.perf_counter()
        ok, is_error, error, text = False, False, None, ""
        try:
            result = await session.call(self.remote, args, run_id=run_id, tool=self.name)
            text = result_text(result)
            is_error = bool(result.is_error)
            ok = not is_error
            if is_error:
                error = text[:500] or "the tool reported an error"
                raise MCPToolError(text or f"{self.remote} reported an error (no details)")
            return text
        except MCPToolError as exc:
            error = error or str(exc)[:500]
            raise
        except asyncio.CancelledError:
            error = "cancelled"
            raise
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            raise
        finally:
            if not ok:
                session.errors += 1
            bus.emit(MCPCallFinished(run_id=run_id, server=self.server.name, tool=self.name, remote=self.remote,
                                     seconds=time.perf_counter() - t0, ok=ok, is_error=is_error, error=error,
                                     output_chars=len(text)))


def result_text(result: Any) -> str:
    """The text of a ``CallToolResult`` for a tool message (see the module docstring)."""
    parts: list[str] = []
    for block in result.content or ():
        kind = getattr(block, "type", "")
        if kind == "text":
            parts.append(block.text)
        elif kind in ("image", "audio"):
            size = len(block.data) * 3 // 4  # base64
            parts.append(f"[{kind} {block.mime_type}, {_size(size)}; not shown: tool messages carry text only]")
        elif kind == "resource":
            res = block.resource
            text = getattr(res, "text", None)
            parts.append(text if text is not None else
                         f"[resource {res.uri} ({getattr(res, 'mime_type', None) or 'binary'}), "
                         f"{_size(len(getattr(res, 'blob', '') or '') * 3 // 4)}]")
        elif kind == "resource_link":
            parts.append(f"[resource link {block.uri}{': ' + block.description if block.description else ''}]")
        else:
            parts.append(f"[{kind or type(block).__name__} content]")
    structured = getattr(result, "structured_content", None)
    if structured is not None and not any(getattr(b, "type", "") == "text" for b in result.content or ()):
        parts.insert(0, json.dumps(structured, ensure_ascii=False, default=str))
    return "\n".join(parts)


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} kB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MB"


def _model_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64] or "tool"
