"""The direct transport: chat completions POSTed with nothing in between.

The constant parts of a request (URL with the base URL's query string, headers with the key) are built once per
endpoint; a call is one ``json`` encode, one POST and one decode. Answers read whole go over nbagent's own
keep-alive HTTP/1.1 connections (:mod:`nbagent.llm.conns`, far less CPU per request than aiohttp's); streams,
and every request when a proxy is set in the environment, over one aiohttp session. Errors are raised as the
exception tree's own (:func:`nbagent.llm.wire.error_from_body` for HTTP errors;
:func:`nbagent.llm.wire.map_error` for the transport's). The ``openai`` SDK stays available as
``[http] transport = "sdk"`` (:mod:`nbagent.llm.sdk`) for what only it does (Azure and other authentication
schemes).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from ..config import Endpoint, HTTPSettings
from .conns import ConnectionPool, Route, StreamAnswer
from .jsonio import dumps_body, loads
from .wire import error_from_body

if TYPE_CHECKING:  # pragma: no cover
    import aiohttp

__all__ = ["DirectTransport", "StreamReply", "import_http_stack"]

log = logging.getLogger("nbagent.http")
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


class _Target:
    """What is constant across requests to one endpoint: the URL and the headers."""

    __slots__ = ("url", "text_url", "headers", "stream_headers", "route")

    def __init__(self, endpoint: Endpoint) -> None:
        parts = urlsplit(endpoint.base_url)
        path = parts.path.rstrip("/") + "/chat/completions"
        self.text_url = urlunsplit(parts._replace(path=path, fragment=""))
        self.url: Any = None  # aiohttp's URL of it, made on first use
        base = {"Content-Type": "application/json", "User-Agent": "nbagent"}
        if endpoint.api_key:
            base["Authorization"] = f"Bearer {endpoint.api_key}"
        self.headers = {**base, "Accept": "application/json"}
        self.stream_headers = {**base, "Accept": "text/event-stream"}
        self.route: Route | None = None
        if parts.scheme in ("http", "https") and parts.hostname:
            target = urlunsplit(("", "", path or "/", parts.query, ""))
            self.route = Route(parts.scheme, parts.hostname, parts.port, target, self.headers)


class StreamReply:
    """A streamed answer: its status, content type, and its lines as text (without line ends)."""

    __slots__ = ("_resp", "status_code", "headers")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status_code = resp.status
        self.headers = resp.headers

    def lines(self) -> AsyncIterator[str]:
        """Each line of the body; lines of any length (aiohttp's readline caps them at 64 KiB)."""
        return _lines(self._resp.content.iter_any())

    async def aclose(self) -> None:
        self._resp.release()


class _OwnStream:
    """A streamed answer over nbagent's own connections (:class:`~nbagent.llm.conns.StreamAnswer`)."""

    __slots__ = ("_answer", "status_code", "headers")

    def __init__(self, answer: StreamAnswer) -> None:
        self._answer = answer
        self.status_code = answer.status
        self.headers = answer.headers

    def lines(self) -> AsyncIterator[str]:
        return _lines(self._answer.pieces())

    async def aclose(self) -> None:
        await self._answer.aclose()


async def _lines(pieces: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The lines (as text, without line ends) of a body that comes in pieces."""
    tail = b""
    async for data in pieces:
        if tail:
            data = tail + data
        parts = data.split(b"\n")
        tail = parts.pop()
        for raw in parts:
            yield raw.rstrip(b"\r").decode("utf-8", "replace")
    if tail:
        yield tail.rstrip(b"\r").decode("utf-8", "replace")


class DirectTransport:
    """nbagent's own connections and one aiohttp session for every endpoint, bound to the loop it was made on."""

    name = "direct"

    def __init__(self, settings: HTTPSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._pool: ConnectionPool | None = None
        self._targets: dict[tuple[str, str], _Target] = {}
        # proxies from the environment are honoured (by aiohttp) only when one is set: looking them up costs
        # every request
        self._proxied = any(os.environ.get(v) for v in _PROXY_VARS)

    def _make_session(self) -> aiohttp.ClientSession:
        import aiohttp

        h = self.settings
        connector = aiohttp.TCPConnector(limit=h.max_connections, limit_per_host=0,
                                         keepalive_timeout=h.keepalive_expiry or None)
        timeout = aiohttp.ClientTimeout(total=None, connect=h.pool_timeout + h.connect_timeout,
                                        sock_connect=h.connect_timeout, sock_read=h.read_timeout)
        return aiohttp.ClientSession(connector=connector, timeout=timeout, trust_env=self._proxied,
                                     auto_decompress=True, raise_for_status=False)

    def _target(self, endpoint: Endpoint) -> _Target:
        key = (endpoint.base_url, endpoint.api_key)
        target = self._targets.get(key)
        if target is None:
            target = self._targets[key] = _Target(endpoint)
        return target

    async def _post(self, endpoint: Endpoint, body: dict[str, Any], stream: bool) -> aiohttp.ClientResponse:
        session = self._session
        if session is None:
            session = self._session = self._make_session()
        target = self._target(endpoint)
        if target.url is None:
            import yarl

            target.url = yarl.URL(target.text_url, encoded=False)
        resp = await session.post(target.url, data=dumps_body(body),
                                  headers=target.stream_headers if stream else target.headers)
        if log.isEnabledFor(logging.INFO):
            v = resp.version
            _log_answer(target, f"HTTP/{v.major}.{v.minor}" if v is not None else "HTTP/1.1", resp.status,
                        resp.reason or "")
        if resp.status >= 400:
            try:
                raw = await resp.read()
            finally:
                resp.release()
            raise _status_error(resp.status, raw, resp.headers)
        return resp

    def _own(self, target: _Target) -> ConnectionPool | None:
        """The pool of nbagent's own connections, when ``target`` can be reached over them."""
        if target.route is None or self._proxied:
            return None
        pool = self._pool
        if pool is None:
            pool = self._pool = ConnectionPool(self.settings, asyncio.get_running_loop())
        return pool

    async def complete(self, endpoint: Endpoint, body: dict[str, Any]) -> bytes:
        """POST ``body``; the answer's bytes (an HTTP error raises its exception-tree error)."""
        target = self._target(endpoint)
        pool = self._own(target)
        if pool is not None:
            assert target.route is not None
            answer = await pool.post(target.route, dumps_body(body))
            _log_answer(target, answer.version, answer.status, answer.reason)
            if answer.status >= 400:
                raise _status_error(answer.status, answer.body, answer.headers)
            return answer.body
        resp = await self._post(endpoint, body, False)
        try:
            return await resp.read()
        finally:
            resp.release()

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> StreamReply | _OwnStream:
        """POST ``body`` for a stream; the reply whose lines are read as they come (close it with ``aclose``)."""
        target = self._target(endpoint)
        pool = self._own(target)
        if pool is None:
            return StreamReply(await self._post(endpoint, body, True))
        assert target.route is not None
        answer = await pool.stream(target.route, dumps_body(body))
        _log_answer(target, answer.version, answer.status, answer.reason)
        if answer.status >= 400:
            try:
                raw = await answer.read_all()
            finally:
                await answer.aclose()
            raise _status_error(answer.status, raw, answer.headers)
        return _OwnStream(answer)

    def pool_stats(self) -> dict[str, Any]:
        """Connections in use, idle and waited for: nbagent's own and aiohttp's (streams) together."""
        out = {"connections_in_use": 0, "connections_idle": 0, "waiting_for_connection": 0}
        if self._pool is not None:
            for k, v in self._pool.stats().items():
                out[k] = out.get(k, 0) + v
        connector = self._session.connector if self._session is not None else None
        if connector is not None:
            out["connections_in_use"] += len(getattr(connector, "_acquired", ()))
            out["connections_idle"] += sum(len(v) for v in getattr(connector, "_conns", {}).values())
            out["waiting_for_connection"] += sum(len(v) for v in getattr(connector, "_waiters", {}).values())
        return out

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.aclose()
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def import_http_stack() -> None:
    """Import what the direct transport's first request needs (aiohttp only when a proxy is set: requests
    go through it then), so that a run does not pause its loop for the imports."""
    if any(os.environ.get(v) for v in _PROXY_VARS):
        import aiohttp  # noqa: F401


def _log_answer(target: _Target, version: str, status: int, reason: str) -> None:
    if log.isEnabledFor(logging.INFO):
        log.info('HTTP Request: POST %s "%s %s %s"', target.text_url, version, status, reason)


def _status_error(status: int, raw: bytes, headers: Any) -> Exception:
    """The exception-tree error of an HTTP error answer (its JSON ``error`` object when it has one)."""
    err: Any = None
    try:
        data = loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        err = data.get("error", data)
    if not isinstance(err, dict) or not err:
        text = raw[:500].decode("utf-8", "replace").strip() if raw else ""
        err = {"message": text or f"HTTP {status}"}
    return error_from_body(err, status, headers)
