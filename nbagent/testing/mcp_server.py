"""A small MCP server on the ``mcp`` SDK, with tools that misbehave on purpose (for tests and benchmarks).

``python -m nbagent.testing.mcp_server`` serves over stdio; ``--http PORT`` over streamable HTTP on 127.0.0.1.

Tools: ``echo``, ``add`` (structured output), ``slow`` (sleeps), ``crash`` (the process exits mid-call),
``hang`` (never answers), ``huge`` (a very long text), ``malformed`` (a result that is not a tool result, written
on the wire in place of the real one; stdio only), ``image``, ``fail`` (an ``isError`` result), ``grow`` (adds a
tool and sends ``notifications/tools/list_changed``), ``pid``.
"""

# no "from __future__ import annotations": the SDK reads the tools' annotations, which name local imports

import argparse
import asyncio
import json
import os
from typing import Any

__all__ = ["build_server", "main"]


def build_server(wire_fd: int | None = None) -> Any:
    """The test server; ``wire_fd`` is a duplicate of the stdio wire (for ``malformed``)."""
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.server.mcpserver.utilities.types import Image

    server = MCPServer(name="nbagent-test", log_level="WARNING")

    @server.tool()
    def echo(text: str) -> str:
        """Return the text unchanged."""
        return text

    @server.tool()
    def add(a: int, b: int) -> dict[str, int]:
        """Add two integers."""
        return {"sum": a + b}

    @server.tool()
    async def slow(seconds: float = 0.5) -> str:
        """Sleep, then answer."""
        await asyncio.sleep(seconds)
        return f"slept {seconds} s"

    @server.tool()
    def crash() -> str:
        """Exit the server process in the middle of the call."""
        os._exit(3)

    @server.tool()
    async def hang() -> str:
        """Never answer."""
        await asyncio.Event().wait()
        return "unreachable"

    @server.tool()
    def huge(chars: int = 2_000_000) -> str:
        """A very long text."""
        return "x" * chars

    @server.tool()
    def malformed(ctx: Context) -> str:
        """Answer with a JSON-RPC result that is not a tool result (stdio only)."""
        if wire_fd is None:
            raise ToolError("malformed works over stdio only")
        line = json.dumps({"jsonrpc": "2.0", "id": ctx.request_context.request_id,
                           "result": {"content": "not a list", "isError": "perhaps"}})
        os.write(wire_fd, (line + "\n").encode())  # one write below PIPE_BUF: never interleaved
        return "the real answer, which the client no longer waits for"

    @server.tool()
    def image() -> Image:
        """A tiny PNG."""
        return Image(data=b"\x89PNG\r\n\x1a\n" + b"\0" * 64, format="png")

    @server.tool()
    def fail(message: str = "it went wrong") -> str:
        """Fail: the result is flagged isError."""
        raise ToolError(message)

    @server.tool()
    async def grow(ctx: Context) -> str:
        """Add a tool named ``grown`` and tell the client the tool list changed."""
        def grown() -> str:
            """A tool that was added later."""
            return "grown"

        if "grown" not in {t.name for t in await server.list_tools()}:
            server.add_tool(grown)
        await ctx.session.send_tool_list_changed()
        return "added grown"

    @server.tool()
    def pid() -> int:
        """The server's process id."""
        return os.getpid()

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", type=int, metavar="PORT", help="serve streamable HTTP on 127.0.0.1:PORT")
    args = parser.parse_args(argv)
    if args.http is None:
        # the SDK moves fd 1 aside while it serves stdio; keep a duplicate of the wire first
        build_server(os.dup(1)).run("stdio")
    else:
        build_server().run("streamable-http", host="127.0.0.1", port=args.http)


if __name__ == "__main__":
    main()
