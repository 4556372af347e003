"""The MCP sessions of one runtime: one per server, made on first use, closed with the runtime.

``mcp_pool(rt)`` is ``rt.part("mcp", MCPPool)``. Servers are named: by :class:`~nbagent.mcp.MCPServer` objects
passed in, or by the settings' ``[mcp.servers.NAME]`` tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .server import MCPServer, servers_from_settings
from .session import MCPSession
from .tools import MCPTool

if TYPE_CHECKING:  # pragma: no cover
    from ..runtime import Runtime

__all__ = ["MCPPool", "mcp_pool", "mcp_tools", "mcp_tools_async"]


class MCPPool:
    """Pooled sessions by server name (see the module docstring)."""

    def __init__(self, runtime: Runtime, *, health_interval: float = 30.0) -> None:
        self.runtime = runtime
        self.bus = runtime.bus
        self.health_interval = health_interval
        self._servers: dict[str, MCPServer] = {}
        self._sessions: dict[str, MCPSession] = {}
        self._listings: dict[str, list[Any]] = {}  # listings made outside a loop (sync mcp_tools)

    def servers(self) -> dict[str, MCPServer]:
        """Every server this pool knows: the settings' tables, then those passed in by object."""
        return {**servers_from_settings(self.runtime.settings), **self._servers}

    def resolve(self, server: str | MCPServer) -> MCPServer:
        """The server called ``server`` (or ``server`` itself, remembered under its name)."""
        if isinstance(server, MCPServer):
            known = self._servers.get(server.name)
            if known is not None and known != server:
                raise ValueError(f"two different MCP servers are named {server.name!r}; pass name= to tell "
                                 "them apart")
            self._servers[server.name] = server
            return server
        servers = self.servers()
        try:
            return servers[server]
        except KeyError:
            raise ValueError(f"unknown MCP server {server!r}; configured: {', '.join(sorted(servers)) or 'none'} "
                             "(add a [mcp.servers.NAME] table, or pass an MCPServer)") from None

    def session(self, server: str | MCPServer) -> MCPSession:
        """The pooled session of ``server`` (made, not started, on first use)."""
        spec = self.resolve(server)
        session = self._sessions.get(spec.name)
        if session is None or session.state == "closed":
            session = self._sessions[spec.name] = MCPSession(spec, self.bus, health_interval=self.health_interval)
        return session

    async def tools(self, server: str | MCPServer, include: Iterable[str] | None = None) -> list[MCPTool]:
        """The server's tools as nbagent tools (all, or the ``include`` ones by their server names)."""
        spec = self.resolve(server)
        listing = await self.session(spec).list_tools()
        return self._wrap(spec, listing, include)

    def tools_sync(self, server: str | MCPServer, include: Iterable[str] | None = None) -> list[MCPTool]:
        """:meth:`tools` from synchronous code.

        Inside a running loop (a Jupyter kernel) the loop is re-entered (``nest-asyncio2``), so other runs keep
        going and the pooled session starts on that loop. Outside one, the tools are listed on a short-lived
        session on a private loop; the pooled session starts at the first call, on the loop that makes it.
        """
        spec = self.resolve(server)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            from ..reenter import wait_in_running_loop

            return wait_in_running_loop(loop, self.tools(spec, include), what="mcp_tools()",
                                        instead="`await mcp_tools_async(...)`")
        listing = self._listings.get(spec.name)
        if listing is None:
            listing = self._listings[spec.name] = asyncio.run(_list_once(spec, self))
        return self._wrap(spec, listing, include)

    def _wrap(self, spec: MCPServer, listing: list[Any], include: Iterable[str] | None) -> list[MCPTool]:
        tools = [MCPTool(self, spec, t) for t in listing]
        if include is None:
            return tools
        wanted = list(include)
        by_name = {t.remote: t for t in tools}
        missing = [n for n in wanted if n not in by_name]
        if missing:
            raise ValueError(f"MCP server {spec.name} has no tool {', '.join(map(repr, missing))}; it has: "
                             f"{', '.join(sorted(by_name)) or 'none'}")
        return [by_name[n] for n in wanted]

    def health(self) -> list[dict[str, Any]]:
        """One row per known server: its session's state and counters (``not started`` when there is none)."""
        rows: list[dict[str, Any]] = []
        for name, spec in sorted(self.servers().items()):
            session = self._sessions.get(name)
            row: dict[str, Any] = {"server": name, "transport": spec.transport, "state": "not started"}
            if session is not None:
                row = session.health()
            listing = session._tools if session is not None and session._tools else self._listings.get(name, [])
            row["tool_names"] = [t.name for t in listing]
            rows.append(row)
        return rows

    async def aclose(self) -> None:
        """Close every session (the runtime's ``aclose()`` calls it)."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(s.aclose() for s in sessions), return_exceptions=True)

    def __repr__(self) -> str:
        states = ", ".join(f"{n}: {s.state}" for n, s in self._sessions.items()) or "no sessions"
        return f"<MCPPool {states}>"


async def _list_once(server: MCPServer, pool: MCPPool) -> list[Any]:
    session = MCPSession(server, pool.bus, health_interval=pool.health_interval)
    try:
        return await session.list_tools()
    finally:
        await session.aclose()


def mcp_pool(runtime: Runtime | None = None) -> MCPPool:
    """The MCP pool of ``runtime`` (default: the default runtime)."""
    if runtime is None:
        from ..runtime import runtime as default_runtime

        runtime = default_runtime()
    return runtime.part("mcp", MCPPool)


def mcp_tools(server: str | MCPServer, *, include: Iterable[str] | None = None,
              runtime: Runtime | None = None) -> list[MCPTool]:
    """The tools of an MCP server (by name or object), for ``Agent(tools=[*mcp_tools("time")])``.

    ``include`` picks tools by their names on the server. Prefer :func:`mcp_tools_async` where an ``await`` is
    possible (see :meth:`MCPPool.tools_sync`).
    """
    return mcp_pool(runtime).tools_sync(server, include)


async def mcp_tools_async(server: str | MCPServer, *, include: Iterable[str] | None = None,
                          runtime: Runtime | None = None) -> list[MCPTool]:
    """:func:`mcp_tools` without blocking: the runtime's pooled session lists them (starting it if needed)."""
    return await mcp_pool(runtime).tools(server, include)
