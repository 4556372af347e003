"""The direct transport's own HTTP/1.1 client: keep-alive connections, a request written from a template, the
answer parsed as it arrives (read whole, or handed on piece by piece for a stream).

aiohttp's request machinery (request and response objects, header multidicts, URL models, timers, tracing
hooks) costs more CPU per call than everything else nbagent does for it. An OpenAI-compatible endpoint needs
little of it: POST, HTTP/1.1 keep-alive, an answer with a ``Content-Length`` or in chunks, perhaps gzip, over
TCP or TLS. That is what this module does, on ``asyncio`` protocols:

- **Pool.** Connections are kept per endpoint (most recently used first) and shared under one limit,
  ``[http] max_connections``; a request waits at most ``pool_timeout`` for a free one. An idle connection is
  closed after ``keepalive_expiry`` seconds, when the server closes it, or when more than
  ``max_keepalive_connections`` are idle (an expired one is closed when it would next be used).
- **Timeouts.** ``connect_timeout`` for the TCP and TLS handshake; ``read_timeout`` for the longest silence
  while an answer is awaited (the deadline moves with each read, one timer per request). They raise
  :class:`~nbagent.errors.LLMTimeout` with phase ``connect`` or ``read``.
- **Failures.** A refused or dropped connection raises :class:`~nbagent.errors.LLMConnectionError`. A kept
  connection that the server had closed while it was idle is retried once on a new connection, as browsers
  and urllib3 do: the request met a closed socket, no byte of an answer came back, and the close came within
  ``STALE_WINDOW`` seconds of the write. A later close may follow a request the server did read (and bill),
  so it is not sent again here; that and every other failure is left to the client's retry policy.
- **Cancellation** (a request timeout, an interrupt) closes the connection: half an answer is never read by
  the next request.

Answers read whole and streams both come through here; only when a proxy is set in the environment do
requests go through aiohttp (:mod:`nbagent.llm.http`).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import zlib
from collections.abc import AsyncIterator
from typing import Any

from ..config import HTTPSettings
from ..errors import LLMConnectionError, LLMTimeout

__all__ = ["Answer", "ConnectionPool", "Route", "StreamAnswer"]

_MAX_HEAD = 64 * 1024  # the status line and headers of an answer
_SIZE, _TRAILER = -1, -2  # chunked answers: a chunk's size line is next; the trailer is next
#: Seconds after a request's write within which a silent close of a kept connection counts as the server
#: having closed it while idle (the close and the write crossed): only then is the request sent again.
STALE_WINDOW = 1.0


class Answer:
    """An answer read whole: status, reason, headers (lower-case names, in order) and body."""

    __slots__ = ("status", "reason", "version", "header_list", "body", "keep")

    def __init__(self, status: int, reason: str, version: str, header_list: list[tuple[str, str]], body: bytes,
                 keep: bool) -> None:
        self.status = status
        self.reason = reason
        self.version = version
        self.header_list = header_list
        self.body = body
        self.keep = keep  # the connection may carry another request

    @property
    def headers(self) -> Any:
        """The headers as a case-insensitive multi-dict (made on use: only error answers need it)."""
        from multidict import CIMultiDict

        return CIMultiDict(self.header_list)


class _Dropped(Exception):
    """The connection closed (or failed) before the answer was whole; ``answered``: some of it had come."""

    def __init__(self, reason: str, answered: bool) -> None:
        super().__init__(reason)
        self.answered = answered


class Route:
    """Where one endpoint's requests go: host, port, TLS, and the constant head of every request."""

    __slots__ = ("host", "port", "tls", "server_hostname", "head", "idle")

    def __init__(self, scheme: str, host: str, port: int | None, target: str, headers: dict[str, str]) -> None:
        self.tls = scheme == "https"
        self.host = host
        self.port = port or (443 if self.tls else 80)
        self.server_hostname = host if self.tls else None
        name = f"[{host}]" if ":" in host else host
        host_header = name if port is None or port == (443 if self.tls else 80) else f"{name}:{port}"
        lines = [f"POST {target} HTTP/1.1", f"Host: {host_header}",
                 *(f"{k}: {v}" for k, v in headers.items()), "Accept-Encoding: gzip, deflate", "Content-Length: "]
        self.head = "\r\n".join(lines).encode("latin-1")
        self.idle: list[_Conn] = []  # kept connections, the most recently used last

    def request(self, body: bytes) -> bytes:
        return b"%s%d\r\n\r\n%s" % (self.head, len(body), body)


class StreamAnswer:
    """An answer read as it comes (a stream): status and headers first, then its body in pieces.

    It holds its connection until the body ends (the connection then goes back to the pool) or until
    :meth:`aclose` (a stream closed before its end closes its connection: the server stops generating).
    """

    def __init__(self, conn: _Conn) -> None:
        self._conn: _Conn | None = conn
        self._head: asyncio.Future[None] = conn.loop.create_future()
        self._pieces: collections.deque[bytes] = collections.deque()
        self._wake: asyncio.Future[None] | None = None
        self._ended = False
        self._error: BaseException | None = None
        self._inflate: Any = None
        self.status = 0
        self.reason = ""
        self.version = ""
        self.header_list: list[tuple[str, str]] = []

    @property
    def headers(self) -> Any:
        from multidict import CIMultiDict

        return CIMultiDict(self.header_list)

    async def read(self) -> bytes:
        """The next piece of the body; ``b""`` at its end."""
        while not self._pieces:
            if self._error is not None:
                raise self._error
            if self._ended:
                return b""
            self._wake = self._head.get_loop().create_future()
            await self._wake
        return self._pieces.popleft()

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it comes."""
        while piece := await self.read():
            yield piece

    async def read_all(self) -> bytes:
        parts = []
        while piece := await self.read():
            parts.append(piece)
        return b"".join(parts)

    async def aclose(self) -> None:
        if not self._ended and self._error is None:
            self._error = LLMConnectionError("the stream was closed")
            self._poke()
        self._release(False)

    # -- from the connection -----------------------------------------------------------------------------------

    def _opened(self, conn: _Conn) -> None:
        self.status, self.reason, self.version = conn.status, conn.reason, conn.version
        self.header_list = conn.header_list
        if conn.encoding and conn.encoding != "identity":
            self._inflate = _inflater(conn.encoding)
        if not self._head.done():
            self._head.set_result(None)

    def _feed(self, data: bytes) -> None:
        if self._inflate is not None:
            data = self._inflate.decompress(data)
        if data:
            self._pieces.append(data)
            self._poke()

    def _end(self, keep: bool) -> None:
        if self._inflate is not None:
            rest = self._inflate.flush()
            if rest:
                self._pieces.append(rest)
        self._ended = True
        self._poke()
        self._release(keep)

    def _fail(self, exc: BaseException) -> None:
        if not self._head.done():
            self._head.set_exception(exc)
        else:
            if isinstance(exc, _Dropped):
                exc = LLMConnectionError(f"the connection to the model server dropped during the stream: {exc}")
            self._error = exc
            self._poke()
        self._release(False)

    def _poke(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            if not wake.done():
                wake.set_result(None)

    def _release(self, keep: bool) -> None:
        """Give the connection back (kept when the body ended cleanly), once."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.busy = False
        conn.stream = None
        conn._cancel_timer()
        if not keep:
            conn._abort()
        conn.pool._release(conn, keep)


class _Conn(asyncio.Protocol):
    """One connection: sends a request, parses its answer (whole or as a stream), then waits for the next one."""

    def __init__(self, pool: ConnectionPool, route: Route) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.route = route
        self.dropped = False  # closed and no longer counted by the pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.busy = False  # a request is out and its answer has not ended
        self.idle_since = 0.0
        self.waiter: asyncio.Future[Answer] | None = None  # the answer, read whole
        self.stream: StreamAnswer | None = None  # or the answer, read as it comes
        self.got = False  # a byte of the current answer came
        self.sent_at = 0.0  # when the current request was written
        self.last_read = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.buf = bytearray()
        self.status = 0  # 0: the head has not come yet
        self.reason = ""
        self.version = ""
        self.header_list: list[tuple[str, str]] = []
        self.length: int | None = None  # bytes of the body still to come (None: chunks, or up to the close)
        self.chunked = False
        self.chunk_left = _SIZE  # chunked: bytes left of the current chunk and its CRLF, or what comes next
        self.pieces: list[bytes] = []
        self.close_after = False
        self.encoding = ""

    # -- asyncio.Protocol --------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # bytes nobody asked for: the connection cannot be trusted with a request
            self._abort()
            return
        self.got = True
        self.last_read = self.loop.time()
        self.buf += data
        try:
            self._parse()
        except (ValueError, zlib.error) as exc:
            self._fail(_Dropped(f"malformed HTTP answer: {exc}", True))

    def eof_received(self) -> bool | None:
        return False  # close the transport: a half-closed connection carries nothing more

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        try:
            if self.busy:
                if exc is None and self.status and self.length is None and not self.chunked:
                    self._piece(bytes(self.buf))  # an answer delimited by the close
                    self._end(False)
                else:
                    why = f"{type(exc).__name__}: {exc}" if exc is not None else "the server closed the connection"
                    self._fail(_Dropped(why, self.got))
        except (ValueError, zlib.error) as err:
            self._fail(_Dropped(f"malformed HTTP answer: {err}", True))
        finally:
            self._cancel_timer()
            self.pool._forget(self)

    # -- the request -------------------------------------------------------------------------------------------

    def _start(self, data: bytes, read_timeout: float) -> None:
        loop = self.loop
        self.busy = True
        self.got = False
        self.sent_at = self.last_read = now = loop.time()
        self.timer = loop.call_at(now + read_timeout, self._check_read, read_timeout)
        assert self.transport is not None
        self.transport.write(data)

    async def send(self, data: bytes, read_timeout: float) -> Answer:
        """Send a request; its answer, whole."""
        self.waiter = waiter = self.loop.create_future()
        self._start(data, read_timeout)
        try:
            return await waiter
        finally:
            self.waiter = None
            self.busy = False
            self._cancel_timer()

    def open_stream(self, data: bytes, read_timeout: float) -> StreamAnswer:
        """Send a request whose answer is read as it comes (await its ``_head``, then read it)."""
        self.stream = answer = StreamAnswer(self)
        self._start(data, read_timeout)
        return answer

    def _check_read(self, read_timeout: float) -> None:
        self.timer = None
        due = self.last_read + read_timeout
        loop = self.loop
        if loop.time() < due:  # something came meanwhile: look again when the new deadline is due
            self.timer = loop.call_at(due, self._check_read, read_timeout)
            return
        self._fail(LLMTimeout(f"read timeout talking to the model server: nothing came for {read_timeout:g} s",
                              phase="read"))

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _fail(self, exc: Exception) -> None:
        self._abort()
        waiter, stream = self.waiter, self.stream
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        elif stream is not None:
            stream._fail(exc)

    def _abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- parsing -----------------------------------------------------------------------------------------------

    def _parse(self) -> None:
        buf = self.buf
        while not self.status:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    raise ValueError(f"an answer's head is over {_MAX_HEAD} bytes")
                return
            self._head(bytes(buf[:end]))
            del buf[:end + 4]
            if self.status and self.stream is not None:
                self.stream._opened(self)
        if self.chunked:
            self._parse_chunks()
        elif self.length is not None:
            if self.stream is None:  # read whole: wait for all of it
                if len(buf) >= self.length:
                    self._end(not self.close_after and len(buf) == self.length, bytes(buf[:self.length]))
            else:
                n = min(len(buf), self.length)
                if n:
                    self._piece(bytes(buf[:n]))
                    del buf[:n]
                    self.length -= n
                if not self.length:
                    self._end(not self.close_after and not buf)
        elif self.stream is not None and buf:  # up to the close, streamed
            self._piece(bytes(buf))
            buf.clear()

    def _head(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ValueError(f"bad status line {lines[0][:100]!r}")
        status = int(code)
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            return
        headers = self.header_list = []
        close = version == "HTTP/1.0"
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ValueError(f"bad header line {line[:100]!r}")
            name = name.strip().lower()
            value = value.strip()
            headers.append((name, value))
            if name == "content-length":
                self.length = int(value)
            elif name == "transfer-encoding":
                self.chunked = "chunked" in value.lower()
            elif name == "connection":
                tokens = value.lower()
                close = "close" in tokens or (close and "keep-alive" not in tokens)
            elif name == "content-encoding":
                self.encoding = value.lower()
        if self.chunked:
            self.length = None
        if status in (204, 304):
            self.length = 0
            self.chunked = False
        self.close_after = close
        self.version = version
        self.reason = reason
        self.status = status

    def _parse_chunks(self) -> None:
        buf = self.buf
        while True:
            left = self.chunk_left
            if left == _TRAILER:  # after the last chunk: trailers (ignored) up to an empty line
                if buf[:2] == b"\r\n":
                    end = 2
                else:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        return
                    end += 4
                del buf[:end]
                self._end(not self.close_after and not buf)
                return
            if left == _SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                size = int(bytes(buf[:end]).split(b";", 1)[0].strip(), 16)
                del buf[:end + 2]
                self.chunk_left = _TRAILER if size == 0 else size + 2  # the chunk and its CRLF
                continue
            if left > 2:  # the chunk's bytes (as far as they came)
                n = min(len(buf), left - 2)
                if not n:
                    return
                self._piece(bytes(buf[:n]))
                del buf[:n]
                left = self.chunk_left = left - n
            if left <= 2:  # its CRLF
                if len(buf) < left:
                    return
                del buf[:left]
                self.chunk_left = _SIZE

    def _piece(self, data: bytes) -> None:
        if self.stream is not None:
            if data:
                self.stream._feed(data)
        else:
            self.pieces.append(data)

    def _end(self, keep: bool, body: bytes | None = None) -> None:
        """The answer ended: hand it over (read whole), or end the stream (which gives the connection back)."""
        keep = keep and not self.closed
        stream, waiter = self.stream, self.waiter
        status, reason, version, headers, encoding = (self.status, self.reason, self.version, self.header_list,
                                                      self.encoding)
        if body is None:
            body = b"".join(self.pieces)
        self._reset()
        self.busy = False
        if stream is not None:
            stream._end(keep)
            return
        if encoding and encoding != "identity":
            body = _decode(body, encoding)
        if waiter is not None and not waiter.done():
            waiter.set_result(Answer(status, reason, version, headers, body, keep))


class _Deflate:
    """A deflate stream, with the zlib wrapper or raw (servers send both), told apart by its first bytes."""

    def __init__(self) -> None:
        self._d: Any = None

    def decompress(self, data: bytes) -> bytes:
        if self._d is None:
            raw = len(data) < 2 or (data[0] & 0x0F) != 8 or ((data[0] << 8) | data[1]) % 31 != 0
            self._d = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        return bytes(self._d.decompress(data))

    def flush(self) -> bytes:
        return bytes(self._d.flush()) if self._d is not None else b""


def _inflater(encoding: str) -> Any:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _Deflate()
    raise ValueError(f"the answer is encoded as {encoding!r}, which was not asked for")


def _decode(body: bytes, encoding: str) -> bytes:
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:  # raw deflate, without the zlib wrapper
            return zlib.decompress(body, -zlib.MAX_WBITS)
    raise ValueError(f"the answer is encoded as {encoding!r}, which was not asked for")


class ConnectionPool:
    """Keep-alive connections to every endpoint of one transport, on one loop (see the module docstring)."""

    def __init__(self, settings: HTTPSettings, loop: asyncio.AbstractEventLoop) -> None:
        self.settings = settings
        self.loop = loop
        self.open = 0  # connections open or opening
        self.in_use = 0
        self.idle = 0
        self.requests = 0
        self.opened = 0  # connections opened so far
        self.reconnects = 0  # requests sent again because a kept connection had been closed by the server
        self.stale_window = STALE_WINDOW
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._routes: list[Route] = []
        self._tls: ssl.SSLContext | None = None
        self._closed = False

    def stats(self) -> dict[str, Any]:
        return {"connections_in_use": self.in_use, "connections_idle": self.idle,
                "waiting_for_connection": len(self._waiters), "connections_opened": self.opened,
                "reconnects": self.reconnects}

    async def post(self, route: Route, body: bytes) -> Answer:
        """POST ``body`` on a connection of ``route``; the answer, whole."""
        answer = await self._send(route, body, False)
        assert isinstance(answer, Answer)
        return answer

    async def stream(self, route: Route, body: bytes) -> StreamAnswer:
        """POST ``body`` on a connection of ``route``; the answer once its head came, to be read as it comes."""
        answer = await self._send(route, body, True)
        assert isinstance(answer, StreamAnswer)
        return answer

    async def _send(self, route: Route, body: bytes, stream: bool) -> Answer | StreamAnswer:
        """One request, sent once more on a new connection when a kept one turns out closed by the server."""
        data = route.request(body)
        read_timeout = self.settings.read_timeout
        self.requests += 1
        again = True
        while True:
            conn, kept = await self._acquire(route)
            opened = conn.open_stream(data, read_timeout) if stream else None  # owns the connection from here on
            try:
                if opened is None:
                    whole = await conn.send(data, read_timeout)
                else:
                    await opened._head
            except BaseException as exc:
                if opened is None:
                    self._release(conn, False)
                else:
                    opened._release(False)
                if not isinstance(exc, _Dropped):
                    raise
                if kept and again and not exc.answered and self.loop.time() - conn.sent_at <= self.stale_window:
                    # a kept connection the server had closed while it was idle: once more
                    again = False
                    self.reconnects += 1
                    continue
                raise LLMConnectionError(f"the connection to the model server dropped: {exc}") from None
            if opened is not None:
                return opened
            self._release(conn, whole.keep)
            return whole

    async def _acquire(self, route: Route) -> tuple[_Conn, bool]:
        idle = route.idle
        expiry = self.settings.keepalive_expiry
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            self.idle -= 1
            if conn.closed or now - conn.idle_since > expiry:
                self._drop(conn)
                continue
            self.in_use += 1
            return conn, True
        if self._closed:
            raise LLMConnectionError("the client was closed")
        if self.open >= self.settings.max_connections:
            await self._wait_for_room(route)
            if self._closed:
                raise LLMConnectionError("the client was closed")
            if route.idle:
                return await self._acquire(route)
        self.open += 1
        self.in_use += 1
        try:
            return await self._connect(route), False
        except BaseException:
            self.open -= 1
            self.in_use -= 1
            self._wake()
            raise

    async def _wait_for_room(self, route: Route) -> None:
        """Until a connection may be opened (or one of ``route``'s is free), for at most ``pool_timeout``."""
        deadline = self.loop.time() + self.settings.pool_timeout
        while self.open >= self.settings.max_connections and not route.idle:
            if self._evict_idle():
                return
            left = deadline - self.loop.time()
            if left <= 0:
                raise LLMTimeout(f"no free connection to the model server within pool_timeout "
                                 f"({self.settings.pool_timeout:g} s; max_connections = "
                                 f"{self.settings.max_connections})", phase="connect")
            fut = self.loop.create_future()
            self._waiters.append(fut)
            handle = self.loop.call_later(left, _settle_none, fut)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self._wake()  # a wake-up this waiter can no longer use goes to the next one
                raise
            finally:
                handle.cancel()
                if fut in self._waiters:
                    self._waiters.remove(fut)

    def _evict_idle(self) -> bool:
        """Close the oldest idle connection of any endpoint, to make room; whether there was one."""
        oldest: _Conn | None = None
        for route in self._routes:
            if route.idle and (oldest is None or route.idle[0].idle_since < oldest.idle_since):
                oldest = route.idle[0]
        if oldest is None:
            return False
        oldest.route.idle.remove(oldest)
        self.idle -= 1
        self._drop(oldest)
        return True

    async def _connect(self, route: Route) -> _Conn:
        s = self.settings
        if route not in self._routes:
            self._routes.append(route)
        tls: ssl.SSLContext | None = None
        if route.tls:
            tls = self._tls
            if tls is None:
                tls = self._tls = ssl.create_default_context()
                tls.set_alpn_protocols(["http/1.1"])
        try:
            connect = self.loop.create_connection(lambda: _Conn(self, route), route.host, route.port, ssl=tls,
                                                  server_hostname=route.server_hostname)
            if hasattr(asyncio, "timeout"):  # Python 3.11+: a cancel at the connect's end is not swallowed
                async with asyncio.timeout(s.connect_timeout):
                    _, conn = await connect
            else:  # pragma: no cover - Python 3.10
                _, conn = await asyncio.wait_for(connect, s.connect_timeout)
        except asyncio.TimeoutError:  # TimeoutError since Python 3.11
            raise LLMTimeout(f"connect timeout talking to the model server at {route.host}:{route.port} "
                             f"({s.connect_timeout:g} s)", phase="connect") from None
        except OSError as exc:
            raise LLMConnectionError(f"cannot reach the model server at {route.host}:{route.port}: "
                                     f"{type(exc).__name__}: {exc}") from None
        self.opened += 1
        return conn

    def _release(self, conn: _Conn, keep: bool) -> None:
        self.in_use -= 1
        s = self.settings
        if keep and not conn.closed and not self._closed and s.keepalive_expiry > 0 \
                and self.idle < s.max_keepalive_connections:
            conn.idle_since = self.loop.time()
            conn.route.idle.append(conn)
            self.idle += 1
        else:
            self._drop(conn)
        self._wake()

    def _drop(self, conn: _Conn) -> None:
        """Close ``conn`` and stop counting it (once)."""
        if conn.dropped:
            return
        conn.dropped = True
        self.open -= 1
        conn._abort()

    def _forget(self, conn: _Conn) -> None:
        """``conn`` closed on its own: an idle one leaves the pool (one in use is dropped on release)."""
        if not conn.dropped and conn.waiter is None and conn in conn.route.idle:
            conn.route.idle.remove(conn)
            self.idle -= 1
            self._drop(conn)
            self._wake()

    def _wake(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for route in self._routes:
            while route.idle:
                conn = route.idle.pop()
                self.idle -= 1
                self._drop(conn)
        for fut in self._waiters:
            if not fut.done():
                fut.set_result(None)


def _settle_none(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
