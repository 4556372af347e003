"""nbagent's own HTTP/1.1 connections (nbagent.llm.conns) against scripted servers on loopback: how answers are
delimited, when a connection is kept, timeouts, cancellation, the pool's limit, TLS, and the transport over it."""

from __future__ import annotations

import asyncio
import gzip
import json
import shutil
import ssl
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from nbagent.config import HTTPSettings, Settings
from nbagent.errors import LLMConnectionError, LLMTimeout, RateLimited
from nbagent.llm import LLMClient, ModelRequest
from nbagent.llm.conns import ConnectionPool, Route

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Scripted:
    """A TCP server on loopback whose every connection is handed to ``handler(reader, writer, index)``."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.connections
        self.connections += 1
        try:
            await self.handler(reader, writer, index)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test ended
        finally:
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> bytes | None:
        """One request's body (None when the client closed the connection)."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        body = await reader.readexactly(length)
        self.requests.append(head + body)
        return body


def ok(body: bytes = b'{"ok":true}', *extra: str) -> bytes:
    head = ["HTTP/1.1 200 OK", "Content-Type: application/json", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def answering(reply: bytes | Callable[[bytes], bytes], tls: ssl.SSLContext | None = None) -> Scripted:
    """A server that answers every request on every connection with ``reply`` (or ``reply(body)``)."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while (body := await srv.read_request(reader)) is not None:
            writer.write(reply(body) if callable(reply) else reply)
            await writer.drain()

    srv = Scripted(handler, tls=tls)
    return srv


def pool_for(srv: Scripted, scheme: str = "http", **settings: Any) -> tuple[ConnectionPool, Route]:
    pool = ConnectionPool(HTTPSettings(**settings), asyncio.get_running_loop())
    route = Route(scheme, "127.0.0.1" if scheme == "http" else "localhost", srv.port, "/v1/chat/completions",
                  {"Content-Type": "application/json", "Authorization": "Bearer k"})
    return pool, route


async def test_answers_with_a_length_keep_their_connection() -> None:
    async with answering(lambda body: ok(b'{"echo":' + body + b"}")) as srv:
        pool, route = pool_for(srv)
        answers = [await pool.post(route, json.dumps({"n": i}).encode()) for i in range(3)]
        assert [json.loads(a.body)["echo"]["n"] for a in answers] == [0, 1, 2]
        assert srv.connections == 1 and pool.stats()["connections_idle"] == 1
        head = srv.requests[0].split(b"\r\n\r\n")[0].decode()
        assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{srv.port}" in head and "Authorization: Bearer k" in head
        assert f"Content-Length: {len(json.dumps({'n': 0}))}" in head
        await pool.aclose()
        assert pool.open == 0


async def test_chunked_answer_split_anywhere_with_extensions_and_trailers() -> None:
    body = json.dumps({"text": "x" * 300}).encode()
    chunks = [body[:10], body[10:200], body[200:]]
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-Trailer: 1\r\n\r\n"

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while await srv.read_request(reader) is not None:
            for i in range(0, len(raw), 7):  # seven bytes at a time: every boundary falls somewhere
                writer.write(raw[i:i + 7])
                await writer.drain()
                await asyncio.sleep(0)

    async with Scripted(handler) as srv:
        pool, route = pool_for(srv)
        for _ in range(2):
            answer = await pool.post(route, b"{}")
            assert answer.status == 200 and answer.body == body and answer.keep
        assert srv.connections == 1
        await pool.aclose()


async def test_gzip_answer_is_decoded_and_headers_read_case_insensitively() -> None:
    payload = json.dumps({"a": "b" * 100}).encode()
    packed = gzip.compress(payload)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await srv.read_request(reader)
        writer.write(ok(packed, "Content-Encoding: gzip", "Retry-After: 3"))
        await writer.drain()

    async with Scripted(handler) as srv:
        pool, route = pool_for(srv)
        answer = await pool.post(route, b"{}")
        assert answer.body == payload
        assert answer.headers.get("retry-after") == "3" and answer.headers.get("RETRY-AFTER") == "3"
        assert b"Accept-Encoding: gzip, deflate" in srv.requests[0]
        await pool.aclose()


async def test_connection_close_and_answers_delimited_by_the_close_are_not_kept() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await srv.read_request(reader)
        if index == 0:
            writer.write(ok(b'{"n":0}', "Connection: close"))
        elif index == 1:  # HTTP/1.0, no length: the body runs to the close
            writer.write(b'HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n{"n":1}')
        else:  # an interim answer first
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b'{"n":2}'))
        await writer.drain()
        if index < 2:
            writer.close()
        else:
            await reader.read()

    async with Scripted(handler) as srv:
        pool, route = pool_for(srv)
        bodies = [(await pool.post(route, b"{}")).body for _ in range(3)]
        assert bodies == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
        assert srv.connections == 3  # neither of the first two was reused
        assert pool.stats()["connections_idle"] == 1
        await pool.aclose()


async def test_a_kept_connection_closed_by_the_server_is_retried_once_on_a_new_one() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await srv.read_request(reader)
        if index == 0:
            writer.write(ok(b'{"n":0}'))
            await writer.drain()
            await srv.read_request(reader)  # the second request reaches a server that drops it unanswered
            writer.transport.abort()
            return
        writer.write(ok(b'{"n":%d}' % index))
        await writer.drain()
        if index == 2:  # a fresh connection that drops the request is not retried
            return
        await reader.read()

    async with Scripted(handler) as srv:
        pool, route = pool_for(srv)
        assert (await pool.post(route, b"{}")).body == b'{"n":0}'
        assert (await pool.post(route, b"{}")).body == b'{"n":1}'
        assert pool.reconnects == 1 and srv.connections == 2


async def test_a_kept_connection_dropped_long_after_the_write_is_not_sent_again() -> None:
    """A close that comes well after the request was written may follow a request the server read (and billed):
    it is not the idle-close race, so the request is not sent a second time."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await srv.read_request(reader)
        writer.write(ok())
        await writer.drain()
        await srv.read_request(reader)
        await asyncio.sleep(0.3)  # works on it for a while, then drops it unanswered
        writer.transport.abort()

    async with Scripted(handler) as srv:
        pool, route = pool_for(srv)
        pool.stale_window = 0.1
        await pool.post(route, b"{}")
        with pytest.raises(LLMConnectionError, match="dropped"):
            await pool.post(route, b"{}")
        assert len(srv.requests) == 2 and srv.connections == 1 and pool.reconnects == 0


async def test_a_woken_pool_waiter_cancelled_before_it_runs_passes_the_wake_up_on() -> None:
    """The one free connection's wake-up goes to the first waiter; that waiter is cancelled before it runs. The
    next waiter must get the connection at once, not sit until ``pool_timeout``."""
    go = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while await srv.read_request(reader) is not None:
            if len(srv.requests) == 1:
                await go.wait()
            writer.write(ok())
            await writer.drain()

    async with Scripted(handler) as srv:
        pool, route = pool_for(srv, max_connections=1, pool_timeout=60.0)
        first = asyncio.ensure_future(pool.post(route, b"{}"))
        while srv.connections == 0:
            await asyncio.sleep(0.01)
        second = asyncio.ensure_future(pool.post(route, b"{}"))
        third = asyncio.ensure_future(pool.post(route, b"{}"))
        while len(pool._waiters) < 2:
            await asyncio.sleep(0.01)
        wake, second_waiter = pool._wake, pool._waiters[0]

        def wake_then_cancel() -> None:  # the wake-up reaches the second request, which is cancelled at once
            wake()
            assert second_waiter.done()
            second.cancel()
            pool._wake = wake  # type: ignore[method-assign]

        pool._wake = wake_then_cancel  # type: ignore[method-assign]
        go.set()
        await first
        assert (await asyncio.wait_for(third, 10)).status == 200  # not after pool_timeout
        assert second.cancelled() and srv.connections == 1
        await pool.aclose()


async def test_a_new_connection_dropped_before_the_answer_raises_connection_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"partial")
        await writer.drain()
        writer.transport.abort()

    async with Scripted(handler) as srv:
        pool, route = pool_for(srv)
        with pytest.raises(LLMConnectionError, match="dropped"):
            await pool.post(route, b"{}")
        assert srv.connections == 1 and pool.reconnects == 0 and pool.open == 0


async def test_read_timeout_is_the_longest_silence_not_the_whole_answer() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await srv.read_request(reader)
        body = b'{"slow":"' + b"a" * 20 + b'"}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(len(body)):  # 0.05 s between bytes: 1.6 s in all, never 1 s of silence
            writer.write(body[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0.05)
        await srv.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{")  # then silence
        await writer.drain()
        await reader.read()

    async with Scripted(handler) as srv:
        pool, route = pool_for(srv, read_timeout=1.0)
        assert (await pool.post(route, b"{}")).body == b'{"slow":"' + b"a" * 20 + b'"}'
        with pytest.raises(LLMTimeout) as err:
            await pool.post(route, b"{}")
        assert err.value.phase == "read" and pool.open == 0 and pool.stats()["connections_idle"] == 0


async def test_cancelling_mid_answer_closes_the_connection() -> None:
    started = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await srv.read_request(reader)
        if index == 0:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"half")
            await writer.drain()
            started.set()
            await reader.read()
            return
        writer.write(ok())
        await writer.drain()
        await reader.read()

    async with Scripted(handler) as srv:
        pool, route = pool_for(srv)
        task = asyncio.ensure_future(pool.post(route, b"{}"))
        await started.wait()
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.open == 0 and pool.stats()["connections_in_use"] == 0
        assert (await pool.post(route, b"{}")).body == b'{"ok":true}'
        assert srv.connections == 2  # the half-read connection was not reused
        await pool.aclose()


async def test_the_pool_limit_queues_requests_and_times_out_after_pool_timeout() -> None:
    live = 0
    most = 0
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        nonlocal live, most
        while await srv.read_request(reader) is not None:
            live += 1
            most = max(most, live)
            await asyncio.sleep(0.02)
            if index == 0 and len(srv.requests) == 1:
                await release.wait()
            live -= 1
            writer.write(ok())
            await writer.drain()

    async with Scripted(handler) as srv:
        pool, route = pool_for(srv, max_connections=1, pool_timeout=0.2)
        first = asyncio.ensure_future(pool.post(route, b"{}"))
        await asyncio.sleep(0.05)
        with pytest.raises(LLMTimeout) as err:  # the only connection is busy for longer than pool_timeout
            await pool.post(route, b"{}")
        assert err.value.phase == "connect" and "max_connections = 1" in str(err.value)
        release.set()
        await first
        answers = await asyncio.gather(*(pool.post(route, b"{}") for _ in range(5)))
        assert all(a.status == 200 for a in answers)
        assert srv.connections == 1 and most == 1
        await pool.aclose()


async def test_refused_connection_and_expired_keepalive() -> None:
    async with answering(ok()) as srv:
        pool, route = pool_for(srv, keepalive_expiry=0.0)
        for _ in range(2):
            await pool.post(route, b"{}")
        assert srv.connections == 2 and pool.stats()["connections_idle"] == 0  # nothing kept
        port = srv.port
    pool = ConnectionPool(HTTPSettings(), asyncio.get_running_loop())
    closed = Route("http", "127.0.0.1", port, "/", {})  # nothing listens there any more
    with pytest.raises(LLMConnectionError, match="cannot reach the model server"):
        await pool.post(closed, b"{}")
    assert pool.open == 0


async def test_a_malformed_answer_raises_connection_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await srv.read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with Scripted(handler) as srv:
        pool, route = pool_for(srv)
        with pytest.raises(LLMConnectionError, match="malformed HTTP answer"):
            await pool.post(route, b"{}")
        assert pool.open == 0


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost, made with the openssl command."""
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed for the TLS test (apt-get install openssl)"
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"],
                   check=True, capture_output=True)
    return cert, key


async def test_tls_answers_are_read_over_a_verified_connection(tls_files: tuple[Path, Path],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = tls_files
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)

    async with answering(ok(b'{"tls":true}'), tls=server_tls) as srv:
        pool, route = pool_for(srv, scheme="https")
        with pytest.raises(LLMConnectionError, match="CERTIFICATE_VERIFY_FAILED"):  # not trusted by default
            await pool.post(route, b"{}")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trusted: the default context reads this variable
        pool, route = pool_for(srv, scheme="https")
        assert [(await pool.post(route, b"{}")).body for _ in range(2)] == [b'{"tls":true}'] * 2
        assert srv.connections == 1  # one kept connection (the refused handshake never reached the handler)
        await pool.aclose()


async def test_the_client_reads_errors_and_retry_after_through_its_own_connections() -> None:
    """The direct transport end to end: a 429 with Retry-After is retried after it, then answered."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        n = 0
        while await srv.read_request(reader) is not None:
            n += 1
            if n == 1:
                body = b'{"error":{"message":"slow down","type":"rate_limit"}}'
                writer.write(b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 0.01\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
            else:
                answer = {"id": "c1", "object": "chat.completion", "model": "m", "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "fine"}, "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}
                writer.write(ok(json.dumps(answer).encode()))
            await writer.drain()

    async with Scripted(handler) as srv:
        settings = Settings.load(env={"NBAGENT_BASE_URL": f"http://127.0.0.1:{srv.port}/v1",
                                      "NBAGENT_MODEL": "m", "NBAGENT_HOME": "/nonexistent"})
        client = LLMClient(settings)
        with pytest.raises(RateLimited) as err:
            await client.transport().complete(settings.endpoint(), {"model": "m", "messages": []})
        assert err.value.retry_after == pytest.approx(0.01)
        resp = await client.request(ModelRequest(model="m", messages=[{"role": "user", "content": "hi"}]))
        assert resp.text == "fine" and resp.usage.input_tokens == 3
        assert client.pool_stats()["connections_idle"] == 1 and srv.connections == 1
        assert client.transport()._session is None  # type: ignore[attr-defined]  # no aiohttp session was opened
        await client.aclose()


def sse_chunks(events: list[str]) -> bytes:
    """A chunked answer of server-sent events, one chunk per event, then the last chunk."""
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    for e in events:
        data = f"data: {e}\n\n".encode()
        raw += b"%x\r\n%s\r\n" % (len(data), data)
    return raw + b"0\r\n\r\n"


async def test_a_stream_comes_piece_by_piece_and_its_connection_is_kept_at_its_end() -> None:
    go = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        while await srv.read_request(reader) is not None:
            raw = sse_chunks(["one", "two", "[DONE]"])
            cut = raw.index(b"data: two")
            writer.write(raw[:cut - 3])  # the head and the first event, and part of the next chunk's size line
            await writer.drain()
            await go.wait()
            writer.write(raw[cut - 3:])
            await writer.drain()

    async with Scripted(handler) as srv:
        pool, route = pool_for(srv)
        answer = await pool.stream(route, b"{}")
        assert answer.status == 200 and answer.headers["content-type"] == "text/event-stream"
        assert await answer.read() == b"data: one\n\n"  # before the rest was sent
        go.set()
        assert await answer.read_all() == b"data: two\n\ndata: [DONE]\n\n"
        assert pool.stats()["connections_idle"] == 1  # the body ended: the connection went back
        again = await pool.stream(route, b"{}")
        assert b"[DONE]" in await again.read_all()
        assert srv.connections == 1
        await pool.aclose()


async def test_a_stream_closed_before_its_end_closes_its_connection() -> None:
    async with answering(sse_chunks(["a"])[:-5]) as srv:  # never the last chunk
        pool, route = pool_for(srv)
        answer = await pool.stream(route, b"{}")
        assert await answer.read() == b"data: a\n\n"
        await answer.aclose()
        assert pool.open == 0 and pool.stats()["connections_in_use"] == 0
        await asyncio.sleep(0.05)
        answer = await pool.stream(route, b"{}")
        await answer.aclose()
        assert srv.connections == 2


async def test_a_stream_cut_mid_body_raises_connection_error_on_read() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        await srv.read_request(reader)
        writer.write(sse_chunks(["a", "b"])[:-20])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    async with Scripted(handler) as srv:
        pool, route = pool_for(srv)
        answer = await pool.stream(route, b"{}")
        with pytest.raises(LLMConnectionError, match="during the stream"):
            await answer.read_all()
        assert pool.open == 0


async def test_the_client_streams_over_its_own_connections_gzip_and_errors_included() -> None:
    """LLMClient end to end: a gzip-encoded stream is decoded as it comes; a 503 on a stream is a ServerError."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m",
             "choices": [{"index": 0, "delta": {"content": "hel"}, "finish_reason": None}]}
    last = {**chunk, "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}
    events = "".join(f"data: {json.dumps(c)}\n\n" for c in (chunk, last)) + "data: [DONE]\n\n"
    packed = gzip.compress(events.encode())

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, index: int) -> None:
        n = 0
        while await srv.read_request(reader) is not None:
            n += 1
            if n == 1:
                body = b'{"error":{"message":"busy"}}'
                writer.write(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")
                for i in range(0, len(packed), 40):
                    piece = packed[i:i + 40]
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    await writer.drain()
                writer.write(b"0\r\n\r\n")
            await writer.drain()

    async with Scripted(handler) as srv:
        settings = Settings.load(env={"NBAGENT_BASE_URL": f"http://127.0.0.1:{srv.port}/v1",
                                      "NBAGENT_MODEL": "m", "NBAGENT_HOME": "/nonexistent"})
        client = LLMClient(settings)
        seen: list[str] = []
        resp = await client.request(ModelRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True), on_text=seen.append)
        assert resp.text == "hello" and "".join(seen) == "hello" and resp.attempts == 2  # the 503 was retried
        assert srv.connections == 1 and client.pool_stats()["connections_idle"] == 1
        assert client.transport()._session is None  # type: ignore[attr-defined]
        await client.aclose()


async def test_reading_a_stream_after_closing_it_raises() -> None:
    async with answering(sse_chunks(["a"])[:-5]) as srv:  # never the last chunk
        pool, route = pool_for(srv)
        answer = await pool.stream(route, b"{}")
        await answer.aclose()
        with pytest.raises(LLMConnectionError, match="closed"):
            await asyncio.wait_for(answer.read_all(), 5)  # instead of waiting forever
        await pool.aclose()
