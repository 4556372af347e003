"""The pooled OpenAI-compatible client: one HTTP pool for every endpoint, our own retries and timeouts.

By default requests go straight over one aiohttp session (:mod:`nbagent.llm.http`: the constant parts of a
request built once per endpoint, one JSON encode and decode per call); ``[http] transport = "sdk"`` sends them
through the ``openai`` SDK instead (:mod:`nbagent.llm.sdk`). Either way the answer is read directly, so no
pydantic model is built per call (:mod:`nbagent.llm.wire` reads and checks it). Streams are read as
server-sent events with a time-to-first-token and an idle-gap watchdog. Every attempt, retry, first token
and response is an event on the bus (the response's event carries the local prompt count too, whose drift
from the server's count is a metric).

Text is delivered once: when a stream breaks and is retried, the retry is marked
(``LLMRetry.restarted_stream``) and the new attempt's text is delivered only beyond what was already
delivered; if the new attempt says something else, ``on_text`` gets a :class:`~nbagent.llm.types.TextRestart`
and the bus an ``LLMTextDelta(restart=True)`` carrying the new text so far, which replaces the old.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..config import Endpoint, HTTPSettings, Settings
from ..errors import LLMConnectionError, LLMError, LLMTimeout, MalformedResponse, RetryBudgetExhausted
from ..events import (
    EventBus,
    LLMFirstToken,
    LLMRequestFailed,
    LLMRequestStarted,
    LLMResponse,
    LLMRetry,
    LLMTextDelta,
    default_bus,
)
from .jsonio import loads
from .limiter import Limiters
from .retry import RetryPolicy, retry_reason
from .stream import HAS_TIMEOUT_CM, Deadline, Delivery
from .text import escape_unencodable
from .tokens import TokenCounter, check_fits
from .types import ModelRequest, ModelResponse, TextCallback, TextRestart, TokenUsage
from .usage import check_number, cost_of
from .wire import map_error, parse_completion

if TYPE_CHECKING:  # pragma: no cover
    import httpx2
    import openai

__all__ = ["EndpointModel", "LLMClient", "Transport"]

TRANSPORTS = ("direct", "sdk", "aiohttp", "httpx")


class _Stream(Protocol):
    status_code: int
    headers: Any

    def lines(self) -> AsyncIterator[str]: ...

    async def aclose(self) -> None: ...


class Transport(Protocol):
    """How a request body reaches an endpoint: the direct aiohttp path, or the SDK."""

    name: str

    async def complete(self, endpoint: Endpoint, body: dict[str, Any]) -> bytes: ...

    async def stream(self, endpoint: Endpoint, body: dict[str, Any]) -> _Stream: ...

    def pool_stats(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


def make_transport(settings: HTTPSettings, http_client: Any = None) -> Transport:
    """The transport ``settings.transport`` names (a given ``httpx2.AsyncClient`` means the SDK over it)."""
    if settings.transport == "direct" and http_client is None:
        from .http import DirectTransport

        return DirectTransport(settings)
    from .sdk import SDKTransport

    return SDKTransport(settings, http_client)


class LLMClient:
    """Sends chat completions to any OpenAI-compatible endpoint with pooling, timeouts and retries.

    One client serves many endpoints over a single HTTP connection pool; it is bound to the event loop it is
    first used on and rebuilds its pool if used from another loop.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        bus: EventBus | None = None,
        http_client: httpx2.AsyncClient | None = None,  # the SDK transport over this pool
        sleep: Callable[[float], Any] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
        counter: TokenCounter | None = None,
    ) -> None:
        self.settings = settings or Settings.load()
        _check_settings(self.settings)
        self.bus = bus or default_bus()
        self.retry = RetryPolicy(self.settings.retry, rng=rng)
        self.counter = counter or TokenCounter()
        self._sleep = sleep
        self._given_http = http_client
        self._transport: Transport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._others: list[tuple[asyncio.AbstractEventLoop, Transport]] = []  # pools of loops used before
        self._ids = itertools.count(1)
        self.in_flight = 0
        self.peak_in_flight = 0
        self.pool_waits = 0  # requests that started while every connection was busy
        self.limiters = Limiters(self.settings.http, bus=self.bus)  # adaptive concurrency per endpoint

    # --- pool ----------------------------------------------------------------------------------

    def transport(self) -> Transport:
        """This loop's transport (a new loop gets a new pool: connections belong to a loop)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._transport is None:
            if self._transport is not None and self._loop is not None and not self._loop.is_closed():
                self._others.append((self._loop, self._transport))  # closed by aclose, on its own loop
            self._loop = loop
            self._transport = make_transport(self.settings.http, self._given_http)
        return self._transport

    def sdk(self, endpoint: Endpoint) -> openai.AsyncOpenAI:
        """The ``AsyncOpenAI`` for ``endpoint`` (the ``sdk`` and ``httpx`` transports only)."""
        transport = self.transport()
        sdk = getattr(transport, "sdk", None)
        if sdk is None:
            raise ValueError(f"the {transport.name!r} transport does not use the openai SDK; "
                             f"set [http] transport = \"sdk\"")
        return sdk(endpoint)  # type: ignore[no-any-return]

    def pool_stats(self) -> dict[str, Any]:
        """Pool health: requests in flight (and peak), waits for a connection, and connections in use / idle."""
        stats: dict[str, Any] = {
            "in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "pool_waits": self.pool_waits,
            "max_connections": self.settings.http.max_connections,
            "transport": self.settings.http.transport,
            "concurrency": self.limiters.stats(),
        }
        if self._transport is not None:
            stats.update(self._transport.pool_stats())
        return stats

    async def aclose(self) -> None:
        """Close the HTTP pools (unless given to us). A pool belongs to the loop it was made on: this loop's is
        closed here, a running other loop's on that loop, and one whose loop has ended is dropped (its
        connections went with the loop)."""
        pools = [*self._others, (self._loop, self._transport)]
        self._others, self._transport, self._loop = [], None, None
        current = asyncio.get_running_loop()
        for loop, transport in pools:
            if transport is None or loop is None:
                continue
            if loop is current:
                await transport.aclose()
            elif loop.is_running() and not loop.is_closed():
                asyncio.run_coroutine_threadsafe(transport.aclose(), loop)

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
        delivery = Delivery() if req.stream else None
        limiter = self.limiters.of(endpoint)
        attempt = 1
        while True:
            bus.emit(LLMRequestStarted(run_id=run_id, request_id=request_id, model=req.model, attempt=attempt,
                                       stream=req.stream, input_tokens_local=local_prompt))
            try:
                token = await limiter.acquire()  # a slot of the endpoint's (adaptive) concurrency limit
                try:
                    resp = await self._attempt(req, endpoint, run_id, request_id, on_text, delivery)
                except BaseException as exc:
                    limiter.release(token, exc)
                    raise
                limiter.release(token)
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
                                  reason=retry_reason(exc), retry_after=getattr(exc, "retry_after", None),
                                  restarted_stream=delivery is not None and bool(delivery.delivered())))
                await self._sleep(wait)
                attempt += 1
            except Exception as exc:  # the caller's on_text raised: its error, never retried
                self._failed(run_id, request_id, attempt, exc, started)
                raise
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
            local_prompt = 0  # no drift to tell: the usage is the local count
        model = resp.model or endpoint.model
        cost = cost_of(usage, self.settings.price_for(model))
        self.bus.emit(LLMResponse(
            run_id=run_id, request_id=request_id, model=model, latency=resp.latency,
            ttft=resp.ttft, attempts=resp.attempts, input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens, cached_tokens=usage.cached_tokens, usage_source=resp.usage_source,
            finish_reason=resp.finish_reason, tool_calls=len(resp.tool_calls), cost=cost,
            input_tokens_local=local_prompt))

    async def _attempt(self, req: ModelRequest, endpoint: Endpoint, run_id: str | None, request_id: str,
                       on_text: TextCallback | None, delivery: Delivery | None) -> ModelResponse:
        transport = self.transport()
        body = req.body()
        if not body.get("model"):
            body["model"] = endpoint.model
        if delivery is not None:
            body["stream"] = True
            body.setdefault("stream_options", {"include_usage": True})
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        if self.in_flight > self.settings.http.max_connections:
            self.pool_waits += 1
        try:
            try:
                if delivery is not None:
                    return await self._stream(transport, endpoint, body, run_id, request_id, on_text, delivery)
                return await self._complete(transport, endpoint, body)
            except UnicodeEncodeError:  # the SDK refused a lone surrogate (a tool's undecodable file name...)
                body = escape_unencodable(body)
                if delivery is not None:
                    return await self._stream(transport, endpoint, body, run_id, request_id, on_text, delivery)
                return await self._complete(transport, endpoint, body)
        except LLMError:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - everything the SDK or transport raises is mapped here
            if delivery is not None and delivery.callback_error is exc:
                raise
            raise map_error(exc) from exc
        finally:
            self.in_flight -= 1

    async def _complete(self, transport: Transport, endpoint: Endpoint, body: dict[str, Any]) -> ModelResponse:
        limit = self.settings.http.request_timeout
        try:
            if HAS_TIMEOUT_CM:
                async with asyncio.timeout(limit):
                    content = await transport.complete(endpoint, body)
            else:  # pragma: no cover - Python 3.10
                content = await asyncio.wait_for(transport.complete(endpoint, body), limit)
        except TimeoutError as exc:
            if _transport_timeout(exc):
                raise
            raise LLMTimeout(f"no complete answer within the request timeout ({limit:g} s)", phase="request") from None
        try:
            data = loads(content)
        except ValueError:
            raise MalformedResponse(f"server answered with non-JSON: {content[:200]!r}") from None
        return parse_completion(data)

    async def _stream(self, transport: Transport, endpoint: Endpoint, body: dict[str, Any], run_id: str | None,
                      request_id: str, on_text: TextCallback | None, delivery: Delivery) -> ModelResponse:
        h = self.settings.http
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        request_deadline = t0 + h.request_timeout
        acc = delivery.start()
        replaying = delivery.replaying
        phase = "first_token"
        skipped: list[str] = []  # lines that are not ``data:`` events (a JSON answer to a stream request...)

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
            async with Deadline(next_deadline()) as dl:
                http = await transport.stream(endpoint, body)
                try:
                    async for line in http.lines():
                        if not line or line[0] == ":":
                            continue
                        if not line.startswith("data:"):
                            if len(skipped) < 3:
                                skipped.append(line[:200])
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
                            if replaying:  # a retry: deliver only what goes beyond the text delivered before
                                delta_text = delivery.beyond(delta_text)
                                replaying = delivery.replaying
                            if delta_text:
                                self._deliver(delta_text, on_text, delivery, run_id, request_id)
                        dl.reschedule(next_deadline())
                finally:
                    await http.aclose()
        except TimeoutError as exc:
            if _transport_timeout(exc):
                raise
            what = {"first_token": f"no first token within {h.ttft_timeout:g} s",
                    "idle": f"stream went silent for more than {h.idle_timeout:g} s",
                    "request": f"stream did not finish within the request timeout ({h.request_timeout:g} s)"}[phase]
            raise LLMTimeout(what, phase=phase) from None
        if not acc.done and acc.finish_reason is None:
            if not acc.events:
                kind = http.headers.get("content-type") or "none"
                raise MalformedResponse(f"the server answered a stream request without server-sent events "
                                        f"(HTTP {http.status_code}, content-type {kind}): "
                                        f"{' '.join(skipped)[:200]!r}")
            raise LLMConnectionError("stream ended before the server finished its answer")
        if replaying and delivery.behind():  # the new answer is shorter than what was delivered
            self._deliver(TextRestart("".join(acc.chunks)), on_text, delivery, run_id, request_id)
        return acc.response()

    def _deliver(self, text: str, on_text: TextCallback | None, delivery: Delivery, run_id: str | None,
                 request_id: str) -> None:
        if on_text is not None:
            try:
                on_text(text)
            except Exception as exc:
                delivery.callback_error = exc  # the caller's error: raised as it is, never retried
                raise
        self.bus.emit(LLMTextDelta(run_id=run_id, request_id=request_id, text=text,
                                   restart=type(text) is TextRestart))


def _transport_timeout(exc: TimeoutError) -> bool:
    """Whether a ``TimeoutError`` is the transport's own (aiohttp's connect / read timeouts subclass it), not
    one of our deadlines: the transport's are mapped with their phase by :func:`~nbagent.llm.wire.map_error`."""
    return type(exc).__module__.startswith("aiohttp")


def _check_settings(settings: Settings) -> None:
    """Refuse timeouts and retry settings the client cannot honour (NaN, infinite, negative) by name."""
    h, r = settings.http, settings.retry
    for name in ("connect_timeout", "read_timeout", "write_timeout", "pool_timeout", "request_timeout",
                 "ttft_timeout", "idle_timeout"):
        check_number(f"http.{name}", getattr(h, name), positive=True)
    check_number("http.keepalive_expiry", h.keepalive_expiry)
    for name in ("max_connections", "max_keepalive_connections"):
        check_number(f"http.{name}", getattr(h, name), positive=True)
    if h.transport not in TRANSPORTS:
        raise ValueError(f"http.transport must be one of {', '.join(TRANSPORTS)}, not {h.transport!r}")
    check_number("retry.max_attempts", r.max_attempts, positive=True)
    for name in ("base_delay", "max_delay", "max_retry_after", "budget_ratio", "budget_min"):
        check_number(f"retry.{name}", getattr(r, name))


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


