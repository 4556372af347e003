"""The pooled client against the simulated server over real HTTP: retries, timeouts, streams, usage."""

from __future__ import annotations

import asyncio

import pytest
from support import Sleeps, sim_settings

from nbagent.errors import (
    AuthenticationError,
    BadRequest,
    ContextLengthExceeded,
    ContextWindowExceeded,
    LLMConnectionError,
    LLMTimeout,
    MalformedResponse,
    RateLimited,
    RetryBudgetExhausted,
    ServerError,
)
from nbagent.events import Event, EventBus, LLMRetry
from nbagent.llm import LLMClient, ModelRequest
from nbagent.testing import Fault, Reply, SimServer

TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "Look up.", "parameters": {
    "type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}}}]


def req(text: str = "hi", *, stream: bool = False, tools: list | None = None, **params: object) -> ModelRequest:
    return ModelRequest(model="sim", messages=[{"role": "user", "content": text}], tools=tools, params=dict(params),
                        stream=stream)


def collect(bus: EventBus) -> list[Event]:
    seen: list[Event] = []
    bus.tap(seen.append)
    return seen


async def test_completion_text_and_server_usage(client: LLMClient, sim: SimServer) -> None:
    events = collect(client.bus)
    resp = await client.request(req("hello"))
    assert resp.text == "Answer to: hello"
    assert resp.finish_reason == "stop"
    assert resp.usage_source == "server" and resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0
    assert resp.latency > 0 and resp.attempts == 1
    kinds = [e.kind for e in events]
    assert kinds == ["llm_request", "llm_response"]  # the local prompt count rides on the response's event
    assert events[-1].input_tokens_local > 0 and events[-1].input_tokens == resp.usage.input_tokens
    assert sim.requests == 1


async def test_tool_call_parsed(client: LLMClient) -> None:
    resp = await client.request(req(tools=TOOLS))
    assert [(tc.name, tc.arguments) for tc in resp.tool_calls] == [("lookup", '{"key":"x"}')]
    msg = resp.to_message()
    assert msg["content"] == "" and msg["tool_calls"][0]["function"]["name"] == "lookup"


async def test_stream_text_usage_and_first_token(client: LLMClient, sim: SimServer) -> None:
    events = collect(client.bus)
    deltas: list[str] = []
    resp = await client.request(req("stream me please", stream=True), on_text=deltas.append)
    assert "".join(deltas) == resp.text == "Answer to: stream me please"
    assert len(deltas) > 1 and resp.chunks == deltas
    assert resp.ttft is not None and resp.usage_source == "server"
    assert sim.history[-1]["stream_options"] == {"include_usage": True}
    kinds = [e.kind for e in events]
    assert kinds.count("llm_first_token") == 1 and kinds.count("llm_text_delta") == len(deltas)


async def test_stream_tool_call_fragments(client: LLMClient) -> None:
    resp = await client.request(req(stream=True, tools=TOOLS))
    assert len(resp.tool_calls) == 1 and resp.tool_calls[0].arguments == '{"key":"x"}'
    assert resp.finish_reason == "tool_calls"


async def test_usage_falls_back_to_local_count(sim: SimServer, client: LLMClient) -> None:
    sim.configure(report_usage=False)
    for stream in (False, True):
        resp = await client.request(req("count me locally", stream=stream))
        assert resp.usage_source == "local"
        assert resp.usage.input_tokens == client.counter.count_request(
            [{"role": "user", "content": "count me locally"}])
        assert resp.usage.output_tokens == client.counter.count_text(resp.text)


@pytest.mark.parametrize("kind,reason", [("500", "500"), ("503", "503"), ("drop", "connection")])
async def test_transient_errors_are_retried(kind: str, reason: str, client: LLMClient, sim: SimServer,
                                            sleeps: Sleeps) -> None:
    events = collect(client.bus)
    sim.inject(Fault(kind), Fault(kind))
    resp = await client.request(req())
    assert resp.attempts == 3 and sim.requests == 3
    retries = [e for e in events if isinstance(e, LLMRetry)]
    assert [r.reason for r in retries] == [reason, reason]
    # full jitter with rng=0.5: 0.5 * base * 2**(n-1)
    assert sleeps.waits == [0.25, 0.5]


async def test_retry_after_is_honoured(client: LLMClient, sim: SimServer, sleeps: Sleeps) -> None:
    events = collect(client.bus)
    sim.inject(Fault("429", retry_after=3), Fault("503", retry_after=1))
    resp = await client.request(req())
    assert resp.attempts == 3
    assert sleeps.waits == [3.0, 1.0]
    assert [(e.reason, e.retry_after) for e in events if isinstance(e, LLMRetry)] == [("429", 3.0), ("503", 1.0)]


async def test_retry_after_too_long_gives_up(client: LLMClient, sim: SimServer) -> None:
    sim.inject(Fault("429", retry_after=10_000))
    with pytest.raises(RateLimited) as e:
        await client.request(req())
    assert e.value.retry_after == 10_000 and sim.requests == 1


@pytest.mark.parametrize("kind,exc", [("401", AuthenticationError), ("400", BadRequest),
                                      ("context_length", ContextLengthExceeded), ("garbage", MalformedResponse)])
async def test_permanent_errors_are_never_retried(kind: str, exc: type, client: LLMClient, sim: SimServer) -> None:
    events = collect(client.bus)
    sim.inject(Fault(kind))
    with pytest.raises(exc):
        await client.request(req())
    assert sim.requests == 1
    assert [e.kind for e in events][-1] == "llm_failed"


async def test_attempt_limit(sim: SimServer, sleeps: Sleeps) -> None:
    c = LLMClient(sim_settings(sim, retry__max_attempts=2), bus=EventBus(), sleep=sleeps)
    sim.inject(*[Fault("500")] * 3)
    with pytest.raises(ServerError):
        await c.request(req())
    assert sim.requests == 2
    await c.aclose()


async def test_retry_budget_stops_a_retry_storm(sim: SimServer, sleeps: Sleeps) -> None:
    c = LLMClient(sim_settings(sim, retry__budget_min=2, retry__budget_ratio=0.0), bus=EventBus(), sleep=sleeps)
    sim.inject(*[Fault("503")] * 10)
    with pytest.raises(RetryBudgetExhausted) as e:
        await c.request(req())
    assert isinstance(e.value.__cause__, ServerError)
    assert sim.requests == 3 and len(sleeps.waits) == 2
    assert c.retry.budget.refused == 1
    await c.aclose()


async def test_read_timeout(sim: SimServer, sleeps: Sleeps) -> None:
    sim.configure(latency=2.0)
    c = LLMClient(sim_settings(sim, http__read_timeout=0.2, retry__max_attempts=1), bus=EventBus(), sleep=sleeps)
    with pytest.raises(LLMTimeout) as e:
        await c.request(req())
    assert e.value.phase == "read"
    await c.aclose()


async def test_whole_request_timeout(sim: SimServer, sleeps: Sleeps) -> None:
    sim.configure(latency=2.0)
    c = LLMClient(sim_settings(sim, http__request_timeout=0.2, retry__max_attempts=1), bus=EventBus(),
                  sleep=sleeps)
    with pytest.raises(LLMTimeout) as e:
        await c.request(req())
    assert e.value.phase == "request"
    await c.aclose()


async def test_stream_first_token_and_idle_watchdogs(sim: SimServer, sleeps: Sleeps) -> None:
    c = LLMClient(sim_settings(sim, http__ttft_timeout=0.2, http__idle_timeout=0.2, retry__max_attempts=1),
                  bus=EventBus(), sleep=sleeps)
    sim.inject(Fault("slow_first_token", delay=2.0))
    with pytest.raises(LLMTimeout) as e:
        await c.request(req("a b c d e", stream=True))
    assert e.value.phase == "first_token"
    sim.inject(Fault("stall", delay=2.0))
    with pytest.raises(LLMTimeout) as e:
        await c.request(req("a b c d e", stream=True))
    assert e.value.phase == "idle"
    await c.aclose()


async def test_stream_dropped_mid_way_is_retried(client: LLMClient, sim: SimServer) -> None:
    events = collect(client.bus)
    sim.inject(Fault("drop_mid_stream"))
    resp = await client.request(req("one two three four five six", stream=True))
    assert resp.text == "Answer to: one two three four five six" and resp.attempts == 2
    assert [e.reason for e in events if isinstance(e, LLMRetry)] == ["connection"]


async def test_preflight_never_sends_what_cannot_fit(sim: SimServer) -> None:
    c = LLMClient(sim_settings(sim, context_window=50), bus=EventBus())
    with pytest.raises(ContextWindowExceeded, match="context window is 50"):
        await c.request(req("word " * 100))
    assert sim.requests == 0
    await c.aclose()


async def test_unreachable_server_is_a_clear_error(sleeps: Sleeps) -> None:
    with SimServer() as srv:
        settings = sim_settings(srv, retry__max_attempts=2)
    c = LLMClient(settings, bus=EventBus(), sleep=sleeps)  # the server is stopped: connection refused
    with pytest.raises(LLMConnectionError, match="cannot reach|connection"):
        await c.request(req())
    assert len(sleeps.waits) == 1
    await c.aclose()


async def test_pool_is_shared_across_endpoints_and_reports_health(client: LLMClient, sim: SimServer) -> None:
    ep = client.settings.endpoint()
    other = ep.__class__(base_url=ep.base_url, api_key="other-key", model="sim")
    await asyncio.gather(*(client.request(req(f"q{i}"), endpoint=(ep, other)[i % 2]) for i in range(20)))
    stats = client.pool_stats()
    assert stats["transport"] == "direct" and client.transport().name == "direct"
    assert stats["peak_in_flight"] >= 2 and stats["in_flight"] == 0
    assert stats["connections_in_use"] == 0 and stats["connections_idle"] >= 1
    with pytest.raises(ValueError, match='transport = "sdk"'):
        client.sdk(ep)  # the direct path has no SDK to hand out


async def test_sdk_transport_shares_one_pool_across_endpoints(sim: SimServer) -> None:
    c = LLMClient(sim_settings(sim, http__transport="sdk"), bus=EventBus())
    ep = c.settings.endpoint()
    await asyncio.gather(*(c.request(req(f"q{i}")) for i in range(20)))
    other = ep.__class__(base_url=ep.base_url, api_key="other-key", model="sim")
    assert c.sdk(ep) is not c.sdk(other)
    assert c.sdk(ep)._client is c.sdk(other)._client  # one HTTP pool
    stats = c.pool_stats()
    assert stats["peak_in_flight"] >= 2 and stats["connections_idle"] >= 1
    await c.aclose()


@pytest.mark.parametrize("transport", ["sdk", "httpx"])
@pytest.mark.parametrize("stream", [False, True])
async def test_sdk_transports_work_too(sim: SimServer, transport: str, stream: bool) -> None:
    c = LLMClient(sim_settings(sim, http__transport=transport), bus=EventBus())
    resp = await c.request(req("via the SDK", stream=stream))
    assert resp.text == "Answer to: via the SDK" and resp.usage_source == "server"
    assert "connections_idle" in c.pool_stats()
    await c.aclose()


@pytest.mark.parametrize("transport", ["direct", "sdk"])
async def test_an_error_page_that_is_not_json_is_classified(transport: str, sim: SimServer, sleeps: Sleeps) -> None:
    c = LLMClient(sim_settings(sim, http__transport=transport), bus=EventBus(), sleep=sleeps, rng=lambda: 0.5)
    sim.inject(Fault("raw", body="<html>bad gateway</html>", content_type="text/html", status=502),
               Fault("raw", body="", content_type="text/plain", status=401))
    with pytest.raises(AuthenticationError):
        await c.request(req())
    assert sim.requests == 2 and sleeps.waits == [0.25]  # the 502 was retried, the 401 was not
    await c.aclose()


def test_an_unknown_transport_is_refused(sim: SimServer) -> None:
    with pytest.raises(ValueError, match="^http.transport = 'curl'.*must be one of 'direct', 'sdk'"):
        LLMClient(sim_settings(sim, http__transport="curl"), bus=EventBus())


async def test_a_client_serves_a_second_event_loop(sim: SimServer) -> None:
    c = LLMClient(sim_settings(sim), bus=EventBus())
    first = await c.request(req("one"))
    other = await asyncio.to_thread(asyncio.run, c.request(req("two")))  # a new loop gets a new pool
    assert (first.text, other.text) == ("Answer to: one", "Answer to: two")
    await c.aclose()


async def test_scripted_reply_and_invalid_arguments_pass_through(client: LLMClient, sim: SimServer) -> None:
    sim.script(Reply(tool_calls=[("lookup", '{"key": ')]))
    resp = await client.request(req(tools=TOOLS))
    assert resp.tool_calls[0].arguments == '{"key": '


async def test_stream_deadline_moves_later_lazily_earlier_at_once_and_yields_to_outside_cancels() -> None:
    from nbagent.llm.stream import Deadline

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    async with Deadline(t0 + 0.1) as dl:  # pushed on past its first timer: never fires
        for _ in range(6):
            await asyncio.sleep(0.04)
            dl.reschedule(loop.time() + 0.1)
    assert loop.time() - t0 >= 0.24

    t0 = loop.time()
    with pytest.raises(TimeoutError):
        async with Deadline(t0 + 5.0) as dl:  # moved earlier: fires then, not at the first time
            dl.reschedule(t0 + 0.05)
            await asyncio.sleep(5.0)
    assert loop.time() - t0 < 2.0
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0  # its own cancel taken back: outer timeouts still work

    async def cancelled_twice() -> None:
        async with Deadline(loop.time() + 0.02):
            try:
                await asyncio.sleep(5.0)
            finally:
                inner.cancel()  # a cancel from outside as the deadline fires: it is not turned into a timeout
                await asyncio.sleep(0)

    inner = asyncio.ensure_future(cancelled_twice())
    with pytest.raises(asyncio.CancelledError):
        await inner
