"""The pooled OpenAI-compatible client: one ``AsyncOpenAI`` per endpoint over one shared HTTP pool.

Requests go through the ``openai`` SDK (its own retries off) and the raw response is read directly, so
no pydantic model is built per call. Streams are read as server-sent events with a time-to-first-token
and an idle-gap watchdog. Every attempt, retry, first token and response is an event on the bus.
"""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import random
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx2
import openai
from openai._constants import RAW_RESPONSE_HEADER

from ..config import Endpoint, Settings
from ..errors import (
    AuthenticationError,
    BadRequest,
    ContextLengthExceeded,
    LLMConnectionError,
    LLMError,
    LLMTimeout,
    MalformedResponse,
    RateLimited,
    RetryBudgetExhausted,
    ServerError,
)
from ..events import (
    EventBus,
    LLMFirstToken,
    LLMRequestFailed,
    LLMRequestStarted,
    LLMResponse,
    LLMRetry,
    LLMTextDelta,
    TokenDrift,
    default_bus,
)
from .retry import RetryPolicy, retry_reason
from .tokens import TokenCounter, check_fits
from .types import ModelRequest, ModelResponse, TextCallback, TokenUsage, ToolCall
from .usage import cost_of

__all__ = ["EndpointModel", "LLMClient"]

_RAW = {RAW_RESPONSE_HEADER: "raw"}
_STREAM = {RAW_RESPONSE_HEADER: "stream"}
_HAS_TIMEOUT_CM = sys.version_info >= (3, 11)


class LLMClient:
    """Sends chat completions to any OpenAI-compatible endpoint with pooling, timeouts and retries.

    One client serves many endpoints (one ``AsyncOpenAI`` each) over a single HTTP connection pool; it is
    bound to the event loop it is first used on and rebuilds its pool if used from another loop.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        bus: EventBus | None = None,
        http_client: httpx2.AsyncClient | None = None,
        sleep: Callable[[float], Any] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        counter: TokenCounter | None = None,
    ) -> None:
        self.settings = settings or Settings.load()
        self.bus = bus or default_bus()
        self.retry = RetryPolicy(self.settings.retry, rng=rng)
        self.counter = counter or TokenCounter()
        self._sleep = sleep
        self._given_http = http_client
        self._http: httpx2.AsyncClient | None = http_client
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sdk: dict[tuple[str, str], openai.AsyncOpenAI] = {}
        self._ids = itertools.count(1)
        self.in_flight = 0
        self.peak_in_flight = 0
        self.pool_waits = 0  # requests that started while every connection was busy

    # --- pool ----------------------------------------------------------------------------------

    def _timeout(self) -> httpx2.Timeout:
        h = self.settings.http
        return httpx2.Timeout(
            connect=h.connect_timeout, read=h.read_timeout, write=h.write_timeout, pool=h.pool_timeout
        )

    def _make_http(self) -> httpx2.AsyncClient:
        h = self.settings.http
        limits = httpx2.Limits(
            max_connections=h.max_connections,
            max_keepalive_connections=h.max_keepalive_connections,
            keepalive_expiry=h.keepalive_expiry,
        )
        if h.transport == "aiohttp":
            try:
                import aiohttp  # noqa: F401
            except ImportError:
                pass
            else:
                return openai.DefaultAioHttpClient(limits=limits, timeout=self._timeout())
        return httpx2.AsyncClient(limits=limits, timeout=self._timeout())

    def sdk(self, endpoint: Endpoint) -> openai.AsyncOpenAI:
        """The ``AsyncOpenAI`` for ``endpoint``, sharing this client's HTTP pool."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._sdk.clear()
            if self._given_http is None:
                self._http = self._make_http()
        key = (endpoint.base_url, endpoint.api_key)
        sdk = self._sdk.get(key)
        if sdk is None:
            sdk = openai.AsyncOpenAI(
                base_url=endpoint.base_url,
                api_key=endpoint.api_key,
                max_retries=0,
                timeout=self._timeout(),
                http_client=self._http,
            )
            self._sdk[key] = sdk
        return sdk

    def pool_stats(self) -> dict[str, Any]:
        """Pool health: requests in flight (and peak), waits for a connection, and connections in use / idle."""
        stats: dict[str, Any] = {
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "pool_waits": self.pool_waits,
            "max_connections": self.settings.http.max_connections,
            "transport": self.settings.http.transport,
        }
        transport = getattr(self._http, "_transport", None)
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
        """Close the HTTP pool (unless it was given to us)."""
        if self._http is not None and self._given_http is None:
            await self._http.aclose()
        self._http = None
        self._loop = None
        self._sdk.clear()

    # --- requests -------------------------------------------------------------------------------

    async def request(
        self,
        req: ModelRequest,
        *,
        endpoint: Endpoint | None = None,
        run_id: str | None = None,
        on_text: TextCallback | None = None,
    ) -> ModelResponse:
        """Send ``req`` with retries; stream when ``req.stream``; return the parsed response."""
        endpoint = endpoint or self.settings.endpoint(model=req.model or None)
        request_id = f"req_{next(self._ids)}"
        local_prompt = 0
        if self.settings.count_tokens:
            local_prompt = self.counter.count_request(req.messages, req.tools)
            reserved = req.params.get("max_tokens") or req.params.get("max_completion_tokens") \
                or self.settings.limits.reserve_output_tokens
            check_fits(local_prompt, endpoint.context_window, int(reserved), req.model)
        bus = self.bus
        started = time.perf_counter()
        self.retry.budget.deposit()
        attempt = 1
        while True:
            bus.emit(LLMRequestStarted(run_id=run_id, request_id=request_id, model=req.model, attempt=attempt,
                                       stream=req.stream, input_tokens_local=local_prompt))
            try:
                resp = await self._attempt(req, endpoint, run_id, request_id, on_text, started)
                break
            except LLMError as exc:
                wait = self.retry.wait_before_retry(attempt, exc)
                if wait is not None and not self.retry.budget.withdraw():
                    err: LLMError = RetryBudgetExhausted(f"retry budget exhausted after: {exc}")
                    err.__cause__ = exc
                    self._failed(run_id, request_id, attempt, err, started)
                    raise err from exc
                if wait is None:
                    self._failed(run_id, request_id, attempt, exc, started)
                    raise
                bus.emit(LLMRetry(run_id=run_id, request_id=request_id, attempt=attempt, wait=wait,
                                  reason=retry_reason(exc), retry_after=getattr(exc, "retry_after", None)))
                await self._sleep(wait)
                attempt += 1
        resp.latency = time.perf_counter() - started
        resp.attempts = attempt
        self._account(resp, req, endpoint, local_prompt, run_id, request_id)
        return resp

    def _failed(self, run_id: str | None, request_id: str, attempts: int, exc: BaseException, started: float) -> None:
        self.bus.emit(LLMRequestFailed(run_id=run_id, request_id=request_id, attempts=attempts,
                                       error_type=type(exc).__name__, message=str(exc)[:500],
                                       latency=time.perf_counter() - started))

    def _account(self, resp: ModelResponse, req: ModelRequest, endpoint: Endpoint, local_prompt: int,
                 run_id: str | None, request_id: str) -> None:
        usage = resp.usage
        if resp.usage_source == "local":  # the server gave no usage: count here
            out = self.counter.count_text(resp.text)
            for tc in resp.tool_calls:
                out += self.counter.count_text(tc.name) + self.counter.count_text(tc.arguments) + 3
            usage = resp.usage = TokenUsage(local_prompt or self.counter.count_request(req.messages, req.tools), out)
        elif local_prompt:
            self.bus.emit(TokenDrift(run_id=run_id, request_id=request_id, local=local_prompt,
                                     server=usage.input_tokens))
        cost = cost_of(usage, self.settings.price_for(resp.model or endpoint.model))
        self.bus.emit(LLMResponse(
            run_id=run_id, request_id=request_id, model=resp.model or endpoint.model, latency=resp.latency,
            ttft=resp.ttft, attempts=resp.attempts, input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens, cached_tokens=usage.cached_tokens, usage_source=resp.usage_source,
            finish_reason=resp.finish_reason, tool_calls=len(resp.tool_calls), cost=cost))

    async def _attempt(self, req: ModelRequest, endpoint: Endpoint, run_id: str | None, request_id: str,
                       on_text: TextCallback | None, started: float) -> ModelResponse:
        sdk = self.sdk(endpoint)
        body = req.body()
        if not body.get("model"):
            body["model"] = endpoint.model
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        if self.in_flight > self.settings.http.max_connections:
            self.pool_waits += 1
        try:
            if req.stream:
                body["stream"] = True
                body.setdefault("stream_options", {"include_usage": True})
                return await self._stream(sdk, body, run_id, request_id, on_text)
            return await self._complete(sdk, body)
        except LLMError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - everything the SDK or transport raises is mapped here
            raise _map_error(exc) from exc
        finally:
            self.in_flight -= 1

    async def _complete(self, sdk: openai.AsyncOpenAI, body: dict[str, Any]) -> ModelResponse:
        limit = self.settings.http.request_timeout
        try:
            if _HAS_TIMEOUT_CM:
                async with asyncio.timeout(limit):
                    raw = await sdk.post("/chat/completions", body=body, cast_to=httpx2.Response,
                                         options={"headers": _RAW})
            else:  # pragma: no cover - Python 3.10
                raw = await asyncio.wait_for(
                    sdk.post("/chat/completions", body=body, cast_to=httpx2.Response, options={"headers": _RAW}),
                    limit)
        except TimeoutError:
            raise LLMTimeout(f"no complete answer within the request timeout ({limit:g} s)", phase="request") from None
        content = getattr(raw, "http_response", raw).content
        try:
            data = json.loads(content)
        except ValueError:
            raise MalformedResponse(f"server answered with non-JSON: {content[:200]!r}") from None
        return _parse_completion(data)

    async def _stream(self, sdk: openai.AsyncOpenAI, body: dict[str, Any], run_id: str | None, request_id: str,
                      on_text: TextCallback | None) -> ModelResponse:
        h = self.settings.http
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        request_deadline = t0 + h.request_timeout
        acc = _StreamAccumulator()
        phase = "first_token"

        def next_deadline() -> float:
            nonlocal phase
            gap = h.ttft_timeout if acc.first_at is None else h.idle_timeout
            phase = "first_token" if acc.first_at is None else "idle"
            d = loop.time() + gap
            if d >= request_deadline:
                phase = "request"
                return request_deadline
            return d

        bus = self.bus
        try:
            async with _deadline(next_deadline()) as dl:
                resp = await sdk.post("/chat/completions", body=body, cast_to=httpx2.Response, stream=True,
                                      options={"headers": _STREAM})
                http = getattr(resp, "http_response", resp)
                try:
                    async for line in http.aiter_lines():
                        if not line or line[0] == ":":
                            continue
                        if not line.startswith("data:"):
                            continue
                        data = line[5:].strip()
                        if data == "[DONE]":
                            acc.done = True
                            break
                        delta_text = acc.feed(data)
                        if acc.first_at is not None and acc.ttft is None:
                            acc.ttft = acc.first_at - t0
                            bus.emit(LLMFirstToken(run_id=run_id, request_id=request_id, ttft=acc.ttft))
                        if delta_text:
                            if on_text is not None:
                                on_text(delta_text)
                            bus.emit(LLMTextDelta(run_id=run_id, request_id=request_id, text=delta_text))
                        dl.reschedule(next_deadline())
                finally:
                    await http.aclose()
        except TimeoutError:
            what = {"first_token": f"no first token within {h.ttft_timeout:g} s",
                    "idle": f"stream went silent for more than {h.idle_timeout:g} s",
                    "request": f"stream did not finish within the request timeout ({h.request_timeout:g} s)"}[phase]
            raise LLMTimeout(what, phase=phase) from None
        if not acc.done and acc.finish_reason is None:
            raise LLMConnectionError("stream ended before the server finished its answer")
        return acc.response()


class _StreamAccumulator:
    """Builds one response out of ``chat.completion.chunk`` payloads."""

    __slots__ = ("chunks", "tool_calls", "finish_reason", "usage", "model", "first_at", "ttft", "done")

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.tool_calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.model = ""
        self.first_at: float | None = None
        self.ttft: float | None = None
        self.done = False

    def feed(self, data: str) -> str:
        try:
            chunk = json.loads(data)
        except ValueError:
            raise MalformedResponse(f"stream chunk is not JSON: {data[:200]!r}") from None
        if "error" in chunk:
            err = chunk["error"] or {}
            raise _error_from_body(err if isinstance(err, dict) else {"message": str(err)}, None, None)
        self.model = chunk.get("model") or self.model
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        text = ""
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            piece = delta.get("content")
            if piece:
                text += piece
            for tc in delta.get("tool_calls") or ():
                slot = self.tool_calls.setdefault(tc.get("index", 0), ["", "", ""])
                if tc.get("id"):
                    slot[0] = tc["id"]
                fn = tc.get("function") or {}
                name = fn.get("name")
                if name and name != slot[1]:  # llama.cpp repeats the whole name in every chunk; OpenAI sends it once
                    slot[1] += name
                if fn.get("arguments"):
                    slot[2] += fn["arguments"]
            if (piece or delta.get("tool_calls")) and self.first_at is None:
                self.first_at = asyncio.get_running_loop().time()
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if text:
            self.chunks.append(text)
        return text

    def response(self) -> ModelResponse:
        calls = [ToolCall(id=v[0] or f"call_{i}", name=v[1], arguments=v[2])
                 for i, v in sorted(self.tool_calls.items())]
        usage, source = _usage(self.usage)
        return ModelResponse(text="".join(self.chunks), tool_calls=calls, finish_reason=self.finish_reason,
                             usage=usage, usage_source=source, model=self.model, ttft=self.ttft,
                             chunks=list(self.chunks))


class _deadline:
    """``asyncio.timeout`` with ``reschedule`` on 3.11+; a watchdog task on 3.10."""

    def __init__(self, when: float) -> None:
        self._when = when
        self._cm: Any = None

    async def __aenter__(self) -> _deadline:
        if _HAS_TIMEOUT_CM:
            self._cm = asyncio.timeout_at(self._when)
            await self._cm.__aenter__()
        else:  # pragma: no cover - Python 3.10
            self._task = asyncio.current_task()
            self._fired = False
            self._handle = asyncio.get_running_loop().call_at(self._when, self._fire)
        return self

    def _fire(self) -> None:  # pragma: no cover - Python 3.10
        self._fired = True
        assert self._task is not None
        self._task.cancel()

    def reschedule(self, when: float) -> None:
        if self._cm is not None:
            self._cm.reschedule(when)
        else:  # pragma: no cover - Python 3.10
            self._handle.cancel()
            self._handle = asyncio.get_running_loop().call_at(when, self._fire)

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> bool | None:
        if self._cm is not None:
            return await self._cm.__aexit__(et, exc, tb)  # type: ignore[no-any-return]
        self._handle.cancel()  # pragma: no cover - Python 3.10
        if self._fired and et is asyncio.CancelledError:  # pragma: no cover
            raise TimeoutError
        return None  # pragma: no cover


def _usage(raw: dict[str, Any] | None) -> tuple[TokenUsage, str]:
    if not raw:
        return TokenUsage(), "local"
    details = raw.get("prompt_tokens_details") or {}
    return TokenUsage(int(raw.get("prompt_tokens") or 0), int(raw.get("completion_tokens") or 0),
                      int(details.get("cached_tokens") or 0)), "server"


def _parse_completion(data: Any) -> ModelResponse:
    if not isinstance(data, dict):
        raise MalformedResponse(f"expected a JSON object, got {type(data).__name__}")
    if "error" in data and not data.get("choices"):
        err = data["error"]
        raise _error_from_body(err if isinstance(err, dict) else {"message": str(err)}, None, None)
    try:
        choice = data["choices"][0]
        msg = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise MalformedResponse(f"no choices in the answer: {str(data)[:200]}") from None
    calls: list[ToolCall] = []
    for tc in msg.get("tool_calls") or ():
        fn = tc.get("function") or {}
        args = fn.get("arguments")
        if not isinstance(args, str):  # some servers send an object instead of a JSON string
            args = json.dumps(args if args is not None else {})
        calls.append(ToolCall(id=tc.get("id") or f"call_{len(calls)}", name=fn.get("name") or "", arguments=args))
    usage, source = _usage(data.get("usage"))
    return ModelResponse(text=msg.get("content") or "", tool_calls=calls, finish_reason=choice.get("finish_reason"),
                         usage=usage, usage_source=source, model=data.get("model") or "")


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(float(ms) / 1000, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(parsed.timestamp() - time.time(), 0.0) if parsed else None


def _error_from_body(err: dict[str, Any], status: int | None, headers: Any) -> LLMError:
    message = str(err.get("message") or err)
    code = str(err.get("code") or "")
    text = f"{status} {message}" if status else message
    if code == "context_length_exceeded" or "maximum context length" in message or "context length" in message:
        return ContextLengthExceeded(f"the server says the prompt is too long: {message}", status_code=status)
    if status in (401, 403):
        return AuthenticationError(f"authentication failed ({status}): {message}; check the API key",
                                   status_code=status)
    if status == 429:
        return RateLimited(f"rate limited: {message}", retry_after=_retry_after(headers))
    if status is not None and (status >= 500 or status in (408, 409)):
        return ServerError(f"server error {text}", status_code=status, retry_after=_retry_after(headers))
    if status == 404:
        return BadRequest(f"not found (404): {message}; check the base URL and model name", status_code=status)
    if status is None:
        return ServerError(f"the server reported an error mid-stream: {message}")
    return BadRequest(f"request rejected ({status}): {message}", status_code=status)


def _map_error(exc: BaseException) -> LLMError:
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        if not isinstance(err, dict) or not err:
            err = {"message": exc.message}
        return _error_from_body(err, exc.status_code, exc.response.headers)
    if isinstance(exc, openai.APITimeoutError):
        # the aiohttp transport reports refused and dropped connections as connect timeouts: read the chain
        names = [type(e).__name__ for e in _chain(exc)]
        dropped = ("ClientConnectorError", "ConnectionRefusedError", "ServerDisconnectedError", "ClientOSError",
                   "ClientPayloadError", "ConnectionResetError", "ConnectError", "ReadError", "RemoteProtocolError")
        root = _chain(exc)[-1]
        if any(n in dropped for n in names):
            return LLMConnectionError(f"cannot reach the model server or the connection dropped: "
                                      f"{type(root).__name__}: {root}")
        joined = " ".join(names)
        phase = "pool" if "Pool" in joined else "connect" if "ConnectTimeout" in names[1:2] and \
            "SocketTimeoutError" not in joined and "ServerTimeoutError" not in joined else "read"
        return LLMTimeout(f"{phase} timeout talking to the model server", phase=phase)
    if isinstance(exc, openai.APIConnectionError):
        root = exc.__cause__ or exc
        return LLMConnectionError(f"cannot reach the model server: {type(root).__name__}: {root}")
    if isinstance(exc, (httpx2.TimeoutException,)):
        return LLMTimeout(f"timeout talking to the model server: {exc}", phase="read")
    if isinstance(exc, (httpx2.TransportError, OSError, ConnectionError)):
        return LLMConnectionError(f"connection to the model server failed: {type(exc).__name__}: {exc}")
    if isinstance(exc, TimeoutError):
        return LLMTimeout("timed out talking to the model server", phase="read")
    return LLMError(f"unexpected error talking to the model server: {type(exc).__name__}: {exc}")


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 10:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


class EndpointModel:
    """The :class:`~nbagent.llm.types.Model` seam bound to one endpoint of a shared :class:`LLMClient`."""

    def __init__(self, client: LLMClient, endpoint: Endpoint) -> None:
        self.client = client
        self.endpoint = endpoint
        self.model_name = endpoint.model
        self.base_url = endpoint.base_url

    async def request(
        self, req: ModelRequest, *, run_id: str | None = None, on_text: TextCallback | None = None
    ) -> ModelResponse:
        return await self.client.request(req, endpoint=self.endpoint, run_id=run_id, on_text=on_text)


