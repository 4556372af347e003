"""Where an MCP server is: a command to start (stdio) or a URL (streamable HTTP), and how long to wait for it.

::

    MCPServer(command="uvx", args=["mcp-server-time"], name="time")
    MCPServer(url="https://mcp.example.com/mcp", headers={"Authorization": "Bearer ..."})

or in the config file (``[mcp.servers.NAME]``)::

    [mcp.servers.time]
    command = "python"
    args = ["-m", "mcp_server_time", "--local-timezone", "UTC"]

    [mcp.servers.docs]
    url = "http://127.0.0.1:8000/mcp"
    headers = { Authorization = "Bearer sk-..." }
    timeout = 30            # one call, seconds
    startup_timeout = 20    # start and list the tools, seconds

The values of ``env`` and ``headers`` are treated as secrets: they are registered with the store's redactor
and masked in ``repr``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

__all__ = ["MCPServer", "servers_from_settings"]

# env variables and headers whose values are secrets (API keys, tokens, passwords, authorization)
_SECRET_NAME = re.compile(r"(?i)key|token|secret|passw|auth|cookie|credential|session|signature")
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True, eq=True)
class MCPServer:
    """An MCP server nbagent can reach: ``command`` (+ ``args``, ``env``, ``cwd``) for stdio, or ``url``
    (+ ``headers``) for streamable HTTP. ``timeout`` bounds one tool call (None: no bound but the run's),
    ``startup_timeout`` starting the session and listing the tools. ``prefix`` is put before each tool name the
    model sees (two servers with a tool of one name)."""

    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    name: str = ""
    timeout: float | None = 60.0
    startup_timeout: float = 30.0
    prefix: str = ""

    def __post_init__(self) -> None:
        if (self.command is None) == (self.url is None):
            raise ValueError("an MCP server needs a command (stdio) or a url (streamable HTTP), not both")
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"MCP server url must start with http:// or https://, got {self.url!r}")
        object.__setattr__(self, "args", tuple(str(a) for a in self.args))
        object.__setattr__(self, "env", dict(self.env))
        object.__setattr__(self, "headers", dict(self.headers))
        if not self.name:
            object.__setattr__(self, "name", _default_name(self))
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"MCP server name {self.name!r} must be 1-64 letters, digits, '_', '-' or '.'")
        if self.timeout is not None and self.timeout <= 0:
            raise ValueError(f"MCP server {self.name}: timeout must be > 0 seconds (or None)")
        if self.startup_timeout <= 0:
            raise ValueError(f"MCP server {self.name}: startup_timeout must be > 0 seconds")
        from ..store.redact import add_secret

        for name, value in (*self.env.items(), *self.headers.items()):
            if not _SECRET_NAME.search(name):
                continue  # PATH, PYTHONPATH, Accept...: redacting them would garble unrelated text
            add_secret(value)
            # "Bearer <token>": the token alone may show up elsewhere (an error message, a log line)
            add_secret(value.split(" ", 1)[1] if " " in value else None)

    @property
    def transport(self) -> str:
        return "stdio" if self.command is not None else "http"

    def key(self) -> tuple[Any, ...]:
        """What identifies the session: two equal specs share one pooled session."""
        return (self.name, self.command, self.args, tuple(sorted(self.env.items())), self.cwd, self.url,
                tuple(sorted(self.headers.items())))

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        where = f"url={self.url!r}" if self.url else f"command={self.command!r}, args={list(self.args)!r}"
        masked = ""
        if self.env:
            masked += f", env={{{', '.join(f'{k!r}: ***' for k in self.env)}}}"
        if self.headers:
            masked += f", headers={{{', '.join(f'{k!r}: ***' for k in self.headers)}}}"
        return f"MCPServer(name={self.name!r}, {where}{masked})"

    @classmethod
    def from_table(cls, name: str, table: Mapping[str, Any]) -> MCPServer:
        """One ``[mcp.servers.NAME]`` table; a helpful ``ConfigError`` when it is wrong."""
        where = f"[mcp.servers.{name}]"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where} must be a table")
        known = {f.name for f in dataclasses.fields(cls)} - {"name"}
        unknown = set(table) - known
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; expected some of {sorted(known)}")
        try:
            return cls(name=name, **dict(table))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _default_name(server: MCPServer) -> str:
    if server.url is not None:
        host = re.sub(r"^https?://", "", server.url).split("/", 1)[0]
        return re.sub(r"[^A-Za-z0-9_.-]", "-", host)[:64] or "mcp"
    parts = [server.command or "", *server.args]
    # "python -m mcp_server_time" -> mcp_server_time; "uvx mcp-server-time" -> mcp-server-time
    word = next((p for p in reversed(parts) if p and not p.startswith("-")), "mcp")
    return re.sub(r"[^A-Za-z0-9_.-]", "-", word.rsplit("/", 1)[-1])[:64] or "mcp"


def servers_from_settings(settings: Any) -> dict[str, MCPServer]:
    """The servers of the settings' ``[mcp.servers.*]`` tables, by name."""
    table = getattr(settings, "mcp", None) or {}
    servers = table.get("servers", {}) if isinstance(table, Mapping) else {}
    if not isinstance(servers, Mapping):
        raise ConfigError("[mcp.servers] must be a table of tables")
    return {name: MCPServer.from_table(name, spec) for name, spec in servers.items()}
