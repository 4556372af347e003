"""MCP (Model Context Protocol) servers' tools as nbagent tools, over pooled, measured sessions.

::

    from nbagent.mcp import MCPServer, mcp_tools
    time_server = MCPServer(command="python", args=["-m", "mcp_server_time"], name="time")
    agent = Agent("gpt-4o-mini", [*mcp_tools(time_server)], runtime=rt)

Needs the ``mcp`` extra (``pip install 'nbagent[mcp]'``). See docs/mcp.md.
"""

from __future__ import annotations

from .events import MCPCallFinished, MCPSessionFailed, MCPSessionRestarted, MCPSessionStarted, MCPToolsChanged
from .pool import MCPPool, mcp_pool, mcp_tools, mcp_tools_async
from .server import MCPServer, servers_from_settings
from .session import MCPSession, MCPStartError, MCPToolError
from .tools import MCPTool, result_text

__all__ = [
    "MCPCallFinished",
    "MCPPool",
    "MCPServer",
    "MCPSession",
    "MCPSessionFailed",
    "MCPSessionRestarted",
    "MCPSessionStarted",
    "MCPStartError",
    "MCPTool",
    "MCPToolError",
    "MCPToolsChanged",
    "mcp_pool",
    "mcp_tools",
    "mcp_tools_async",
    "result_text",
    "servers_from_settings",
]
