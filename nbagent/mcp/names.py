"""``mcp:NAME`` and ``mcp:NAME/tool`` tool names (the ``%%agent -t`` option), and the ``%agent mcp`` rows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .pool import mcp_pool

if TYPE_CHECKING:  # pragma: no cover
    from ..agent.tools import Tool
    from ..runtime import Runtime

__all__ = ["health_rows", "split_mcp_names"]


def split_mcp_names(names: Iterable[str], runtime: Runtime) -> tuple[list[str], list[Tool]]:
    """The names that are not MCP names, and the tools the MCP ones name (comma-separated lists allowed).

    ``mcp:time`` is every tool of the server ``time``; ``mcp:time/get_current_time`` one of them. Raises
    ``ValueError`` with a message for the user when a server or tool is unknown or cannot be started.
    """
    rest: list[str] = []
    wanted: dict[str, list[str] | None] = {}  # server -> tool names (None: all)
    for raw in names:
        for name in filter(None, (n.strip() for n in raw.split(","))):
            if not name.startswith("mcp:"):
                rest.append(name)
                continue
            server, _, tool = name[4:].partition("/")
            if not server:
                raise ValueError(f"{name!r}: say which server, as mcp:NAME or mcp:NAME/TOOL")
            if not tool:
                wanted[server] = None
            elif wanted.get(server, []) is not None:
                wanted.setdefault(server, []).append(tool)  # type: ignore[union-attr]
    pool = mcp_pool(runtime)
    tools: list[Tool] = []
    for server, include in wanted.items():
        tools.extend(pool.tools_sync(server, include))
    return rest, tools


def health_rows(runtime: Runtime) -> tuple[list[str], list[list[Any]]]:
    """A header and one row per known MCP server: its state, tools and counters."""
    header = ["server", "transport", "state", "tools", "calls", "errors", "in flight", "restarts", "last error"]
    rows = []
    for h in mcp_pool(runtime).health():
        names = h.get("tool_names") or []
        rows.append([h["server"], h["transport"], h["state"], ", ".join(names) or "-", h.get("calls", 0),
                     h.get("errors", 0), h.get("in_flight", 0), h.get("restarts", 0), h.get("last_error") or ""])
    return header, rows
