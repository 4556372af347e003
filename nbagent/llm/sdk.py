"""The SDK transport (``[http] transport = "sdk"``, or ``"httpx"``): requests through the ``openai`` SDK.

One ``AsyncOpenAI`` per endpoint (its own retries off) over one shared HTTP pool: the SDK's aiohttp client
(``"sdk"``; ``"aiohttp"`` is the same, its older name) or its httpx client (``"httpx"``). The raw answer is
read directly, so no pydantic model is built per call. Kept for what only the SDK does (Azure and other
authentication schemes, its HTTP stack's own options); imported only when chosen.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx2
import openai
from openai._constants import RAW_RESPONSE_HEADER

from ..config import Endpoint, HTTPSettings

__all__ = ["SDKTransport"]

_RAW = {RAW_RESPONSE_HEADER: "raw"}
_STREAM = {RAW_RESPONSE_HEADER: "stream"}


class _SDKStream:
    """A streamed answer of the SDK: status, headers, lines."""

    __slots__ = ("_http", "status_code", "headers")

    def __init__(self, http: httpx2.Response) -> None:
        self._http = http
        self.status_code = http.status_code
        self.headers = http.headers

    def lines(self) -> AsyncIterator[str]:
        return self._http.aiter_lines()

    async def aclose(self) -> None:
        await self._http.aclose()


class SDKTransport:
    """``AsyncOpenAI`` clients (one per endpoint) sharing one HTTP pool, bound to the loop it was made on."""

    def __init__(self, settings: HTTPSettings, http_client: httpx2.AsyncClient | None = None) -> None:
        self.settings = settings
        self.name = "httpx" if settings.transport == "httpx" else "sdk"
        self._given = http_client
        self.http: httpx2.AsyncClient = http_client or self._make_http()
        self._sdk: dict[tuple[str, str], openai.AsyncOpenAI] = {}

    def _timeout(self) -> httpx2.Timeout:
        h = self.settings
        return httpx2.Timeout(connect=h.connect_timeout, read=h.read_timeout, write=h.write_timeout,
                              pool=h.pool_timeout)

    def _make_http(self) -> httpx2.AsyncClient:
        h = self.settings
        limits = httpx2.Limits(max_connections=h.max_connections,
                               max_keepalive_connections=h.max_keepalive_connections,
                               keepalive_expiry=h.keepalive_expiry)
        if h.transport != "httpx":
            try:
                import aiohttp  # noqa: F401
            except ImportError:
                pass
            else:
                return openai.DefaultAioHttpClient(limits=limits, timeout=self._timeout())
        return httpx2.AsyncClient(limits=limits, timeout=self._timeout())

    def sdk(self, endpoint: Endpoint) -> openai.AsyncOpenAI:
        """The ``AsyncOpenAI`` for ``endpoint``, sharing this transport's HTTP pool."""
        key = (endpoint.base_url, endpoint.api_key)
        sdk = self._sdk.get(key)
        if sdk is None:
            # a query in the base URL (``...?api-version=...``) goes on every request, after the path
            parts = urlsplit(endpoint.base_url)
            sdk = openai.AsyncOpenAI(
                base_url=urlunsplit(parts._replace(query="", fragment="")) if parts.query else endpoint.base_url,
                api_key=endpoint.api_key,
                max_retries=0,
                timeout=self._timeout(),
                http_client=self.http,
                default_query=dict(parse_qsl(parts.query)) if parts.query else None,
            )
            self._sdk[key] = sdk
        return sdk

    async def complete(self, endpoint: Endpoint, body: dict[str, Any]) -> bytes:
        raw = await self.sdk(endpoint).post("/chat/completions", body=body, cast_to=httpx2.Response,
                                            options={"headers": _RAW})
        return getattr(raw, "http_response", raw).content  # type: ignore[no-any-return]

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> _SDKStream:
        resp = await self.sdk(endpoint).post("/chat/completions", body=body, cast_to=httpx2.Response,
                                             stream=True, options={"headers": _STREAM})
        return _SDKStream(getattr(resp, "http_response", resp))

    def pool_stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {}
        transport = getattr(self.http, "_transport", None)
        connector = getattr(getattr(transport, "client", None), "connector", None)
        if connector is not None:  # aiohttp
            stats["connections_in_use"] = len(getattr(connector, "_acquired", ()))
            stats["connections_idle"] = sum(len(v) for v in getattr(connector, "_conns", {}).values())
            stats["waiting_for_connection"] = sum(len(v) for v in getattr(connector, "_waiters", {}).values())
        pool = getattr(transport, "_pool", None)
        if pool is not None and hasattr(pool, "connections"):  # httpcore
            conns = list(pool.connections)
            idle = sum(1 for c in conns if c.is_idle())
            stats["connections_in_use"] = len(conns) - idle
            stats["connections_idle"] = idle
            stats["waiting_for_connection"] = max(len(getattr(pool, "_requests", ())) - (len(conns) - idle), 0)
        return stats

    async def aclose(self) -> None:
        if self._given is None:
            await self.http.aclose()
        self._sdk.clear()
