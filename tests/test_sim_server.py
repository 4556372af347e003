"""Tests of the simulated OpenAI-compatible chat server (nbagent.testing)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx2
import openai
import pytest

from nbagent.testing import FAULT_KINDS, Fault, Reply, SimServer, args_from_schema, default_behavior

USER: Any = [{"role": "user", "content": "What is the weather in Paris today?"}]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "lat": {"type": "number"},
                "detailed": {"type": "boolean"},
                "tags": {"type": "array", "items": {"type": "string"}},
                "extra": {"type": "object"},
                "optional": {"type": "string"},
            },
            "required": ["city", "unit", "days", "lat", "detailed", "tags", "extra"],
        },
    },
}
EXPECTED_ARGS = {"city": "x", "unit": "celsius", "days": 1, "lat": 1.0, "detailed": True, "tags": [], "extra": {}}


@pytest.fixture
def srv() -> Iterator[SimServer]:
    server = SimServer().start()
    try:
        yield server
    finally:
        server.stop()


def client(server: SimServer | Any, **kw: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.url, api_key=kw.pop("api_key", "k"), max_retries=0, **kw)


def root(server: SimServer | Any) -> str:
    return server.url[: -len("/v1")]


async def stream_chunks(c: openai.AsyncOpenAI, **kw: Any) -> list[Any]:
    stream = await c.chat.completions.create(model="m", stream=True, **kw)
    return [chunk async for chunk in stream]


async def raw_post(server: SimServer | Any, body: dict[str, Any], **headers: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + "/chat/completions", json=body, headers=headers) as resp:
            return resp.status, dict(resp.headers), await resp.read()


# --------------------------------------------------------------------------- behaviour


@pytest.mark.asyncio
async def test_non_stream_text_answer_and_usage(srv: SimServer) -> None:
    c = client(srv)
    r = await c.chat.completions.create(model="gpt-sim", messages=USER)
    assert r.object == "chat.completion"
    assert r.model == "gpt-sim"
    assert r.choices[0].message.content == "Answer to: What is the weather in Paris today?"
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.tool_calls is None
    assert r.usage is not None
    assert r.usage.prompt_tokens == len(USER[0]["content"]) // 4 + 4
    assert r.usage.completion_tokens == len(r.choices[0].message.content or "") // 4 + 1
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert srv.requests == 1
    assert srv.history == [{"model": "gpt-sim", "messages": USER}]


@pytest.mark.asyncio
async def test_answer_truncates_user_text_and_reads_content_parts(srv: SimServer) -> None:
    c = client(srv)
    long = "y" * 200
    r = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": long}])
    assert r.choices[0].message.content == "Answer to: " + "y" * 80
    parts: Any = [{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}]
    r = await c.chat.completions.create(model="m", messages=[{"role": "user", "content": parts}])
    assert r.choices[0].message.content == "Answer to: part one, part two"


@pytest.mark.asyncio
async def test_default_tool_call_round_trip(srv: SimServer) -> None:
    c = client(srv)
    messages: list[Any] = list(USER)
    r = await c.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == ""
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.id == "call_1"
    assert call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == EXPECTED_ARGS
    assert r.usage is not None and r.usage.completion_tokens >= 1 + len(call.function.arguments) // 4

    messages.append({"role": "assistant", "content": "", "tool_calls": [call.model_dump()]})
    tool_output = "Sunny, 24 degrees and a light breeze from the south-west all afternoon"
    messages.append({"role": "tool", "tool_call_id": call.id, "content": tool_output})
    r2 = await c.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    assert r2.choices[0].finish_reason == "stop"
    assert r2.choices[0].message.tool_calls is None
    assert r2.choices[0].message.content == (
        "Answer to: What is the weather in Paris today? (tool said: " + tool_output[:40] + ")"
    )

    # a new user message starts a new run: the tool is called again, with the next call id
    messages += [{"role": "assistant", "content": "ok"}, {"role": "user", "content": "and tomorrow?"}]
    r3 = await c.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
    assert r3.choices[0].message.tool_calls is not None
    assert r3.choices[0].message.tool_calls[0].id == "call_2"


@pytest.mark.asyncio
async def test_tool_calls_per_run() -> None:
    async with SimServer(tool_calls_per_run=2) as srv:
        c = client(srv)
        messages: list[Any] = list(USER)
        for expected_tool_msgs in range(3):
            r = await c.chat.completions.create(model="m", messages=messages, tools=[WEATHER_TOOL])
            calls = r.choices[0].message.tool_calls
            if expected_tool_msgs < 2:
                assert calls is not None
                messages.append({"role": "assistant", "content": "", "tool_calls": [calls[0].model_dump()]})
                messages.append(
                    {"role": "tool", "tool_call_id": calls[0].id, "content": f"result {expected_tool_msgs}"}
                )
            else:
                assert calls is None
                assert r.choices[0].message.content == "Answer to: " + USER[0]["content"] + " (tool said: result 1)"


def test_default_behavior_and_schema_args_units() -> None:
    assert args_from_schema(WEATHER_TOOL["function"]["parameters"]) == EXPECTED_ARGS
    assert args_from_schema(
        {"type": "object", "properties": {"a": {"type": ["integer", "null"]}}, "required": ["a"]}
    ) == {"a": 1}
    assert args_from_schema(None) == {}
    assert default_behavior({"messages": []}).text == "Answer to: "
    tools = [WEATHER_TOOL]
    reply = default_behavior({"messages": USER, "tools": tools}, tool_calls_per_run=0)
    assert reply.tool_calls is None and reply.effective_finish_reason == "stop"
    assert default_behavior({"messages": USER, "tools": tools, "tool_choice": "none"}).tool_calls is None
    other = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}
    named = {"type": "function", "function": {"name": "other"}}
    reply = default_behavior({"messages": USER, "tools": [WEATHER_TOOL, other], "tool_choice": named})
    assert reply.tool_calls == [("other", {})]
    reply = default_behavior({"messages": USER, "tools": [WEATHER_TOOL, other], "tool_choice": "required"})
    assert reply.tool_calls is not None and reply.tool_calls[0][0] == "get_weather"


@pytest.mark.asyncio
async def test_scripted_replies_in_order(srv: SimServer) -> None:
    srv.script(
        Reply(text="first"),
        Reply(tool_calls=[("lookup", {"q": "a"}), ("other", '{"raw": true}')]),
        Reply(text="third", usage={"prompt_tokens": 100, "completion_tokens": 7}, finish_reason="length"),
    )
    c = client(srv)
    r1 = await c.chat.completions.create(model="m", messages=USER)
    assert r1.choices[0].message.content == "first"
    r2 = await c.chat.completions.create(model="m", messages=USER)
    calls: Any = r2.choices[0].message.tool_calls
    assert calls is not None
    assert [(t.function.name, t.function.arguments) for t in calls] == [
        ("lookup", '{"q":"a"}'),
        ("other", '{"raw": true}'),
    ]
    assert [t.id for t in calls] == ["call_1", "call_2"]
    assert r2.choices[0].finish_reason == "tool_calls"
    r3 = await c.chat.completions.create(model="m", messages=USER)
    assert r3.choices[0].message.content == "third"
    assert r3.choices[0].finish_reason == "length"
    assert r3.usage is not None
    assert (r3.usage.prompt_tokens, r3.usage.completion_tokens, r3.usage.total_tokens) == (100, 7, 107)
    r4 = await c.chat.completions.create(model="m", messages=USER)
    assert r4.choices[0].message.content == "Answer to: " + USER[0]["content"]


@pytest.mark.asyncio
async def test_custom_behavior_callable() -> None:
    seen: list[dict[str, Any]] = []

    def behavior(body: dict[str, Any]) -> Reply:
        seen.append(body)
        return Reply(text=f"{len(body['messages'])} messages")

    async with SimServer(behavior=behavior) as srv:
        r = await client(srv).chat.completions.create(model="m", messages=USER * 3)
        assert r.choices[0].message.content == "3 messages"
        assert len(seen) == 1


@pytest.mark.asyncio
async def test_behavior_errors_become_500() -> None:
    def behavior(body: dict[str, Any]) -> Reply:
        raise RuntimeError("boom")

    async with SimServer(behavior=behavior) as srv:
        with pytest.raises(openai.InternalServerError, match="boom"):
            await client(srv).chat.completions.create(model="m", messages=USER)


# --------------------------------------------------------------------------- streaming


@pytest.mark.asyncio
async def test_stream_text_reassembles_and_usage_only_with_include_usage(srv: SimServer) -> None:
    c = client(srv)
    srv.script(Reply(text="The quick  brown fox\njumps over the lazy dog."))
    chunks = await stream_chunks(c, messages=USER)
    assert all(ch.object == "chat.completion.chunk" for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "The quick  brown fox\njumps over the lazy dog."
    assert len(chunks) > 5  # split into pieces
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(ch.usage is None and ch.choices for ch in chunks)

    chunks = await stream_chunks(c, messages=USER, stream_options={"include_usage": True})
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert sum(1 for ch in chunks if ch.usage is not None) == 1


@pytest.mark.asyncio
async def test_stream_without_report_usage_has_no_usage() -> None:
    async with SimServer(report_usage=False) as srv:
        c = client(srv)
        chunks = await stream_chunks(c, messages=USER, stream_options={"include_usage": True})
        assert all(ch.usage is None and ch.choices for ch in chunks)
        r = await c.chat.completions.create(model="m", messages=USER)
        assert r.usage is None


@pytest.mark.asyncio
async def test_stream_raw_sse_format(srv: SimServer) -> None:
    body = {"model": "m", "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    status, headers, raw = await raw_post(srv, body)
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    events = raw.decode().split("\n\n")
    assert events[-1] == ""
    assert events[-2] == "data: [DONE]"
    payloads = [json.loads(e[len("data: ") :]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert payloads[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert payloads[-1]["choices"] == [] and set(payloads[-1]["usage"]) == {
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    }
    assert len({p["id"] for p in payloads}) == 1


@pytest.mark.asyncio
async def test_streamed_tool_call_fragments_reassemble(srv: SimServer) -> None:
    long_args = {"query": "a fairly long query string " * 4, "limit": 10, "nested": {"k": [1, 2, 3]}}
    srv.script(Reply(tool_calls=[("search", long_args), ("noop", {})]))
    chunks = await stream_chunks(client(srv), messages=USER, tools=[WEATHER_TOOL])
    calls: dict[int, dict[str, Any]] = {}
    fragments = 0
    for ch in chunks:
        for tc in ch.choices[0].delta.tool_calls or [] if ch.choices else []:
            fragments += 1
            entry = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id is not None:
                assert entry["id"] is None
                assert tc.type == "function"
                entry["id"] = tc.id
                assert tc.function is not None and tc.function.arguments == ""
            if tc.function is not None:
                if tc.function.name:
                    entry["name"] = tc.function.name
                entry["arguments"] += tc.function.arguments or ""
    assert fragments > 4
    assert sorted(calls) == [0, 1]
    assert calls[0]["name"] == "search" and json.loads(calls[0]["arguments"]) == long_args
    assert calls[1]["name"] == "noop" and json.loads(calls[1]["arguments"]) == {}
    assert calls[0]["id"] != calls[1]["id"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.asyncio
async def test_default_behavior_streams_tool_call(srv: SimServer) -> None:
    chunks = await stream_chunks(client(srv), messages=USER, tools=[WEATHER_TOOL])
    args = "".join(
        tc.function.arguments or ""
        for ch in chunks
        for tc in (ch.choices[0].delta.tool_calls or [])
        if tc.function is not None
    )
    assert json.loads(args) == EXPECTED_ARGS


@pytest.mark.asyncio
async def test_chunk_delay_and_ttft_are_applied() -> None:
    async with SimServer(ttft=0.2, chunk_delay=0.02) as srv:
        srv.script(Reply(text="a b c d e"))
        start = time.perf_counter()
        stream = await client(srv).chat.completions.create(model="m", messages=USER, stream=True)
        first: float | None = None
        async for _ in stream:
            if first is None:
                first = time.perf_counter() - start
        total = time.perf_counter() - start
        assert first is not None and first >= 0.2
        assert total >= 0.2 + 0.02 * 5


# --------------------------------------------------------------------------- faults


@pytest.mark.asyncio
async def test_fault_429_with_retry_after(srv: SimServer) -> None:
    srv.inject(Fault("429", retry_after=2))
    with pytest.raises(openai.RateLimitError) as info:
        await client(srv).chat.completions.create(model="m", messages=USER)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.code == "rate_limit_exceeded"
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "rate_limit_error" and body["message"]
    # the next request is healthy
    r = await client(srv).chat.completions.create(model="m", messages=USER)
    assert r.choices[0].message.content


@pytest.mark.asyncio
async def test_fault_429_fractional_retry_after_and_no_header(srv: SimServer) -> None:
    srv.inject(Fault("429", retry_after=0.5), Fault("429"))
    status, headers, _ = await raw_post(srv, {"model": "m", "messages": USER})
    assert status == 429 and headers["Retry-After"] == "0.5"
    status, headers, raw = await raw_post(srv, {"model": "m", "messages": USER})
    assert status == 429 and "Retry-After" not in headers
    assert set(json.loads(raw)["error"]) >= {"message", "type", "code"}


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "exc", "status"),
    [
        ("500", openai.InternalServerError, 500),
        ("503", openai.InternalServerError, 503),
        ("401", openai.AuthenticationError, 401),
        ("400", openai.BadRequestError, 400),
    ],
)
async def test_status_faults(srv: SimServer, kind: str, exc: type[openai.APIStatusError], status: int) -> None:
    srv.inject(Fault(kind))
    with pytest.raises(exc) as info:
        await client(srv).chat.completions.create(model="m", messages=USER)
    assert info.value.status_code == status


@pytest.mark.asyncio
async def test_503_retry_after_and_status_override(srv: SimServer) -> None:
    srv.inject(Fault("503", retry_after=3), Fault("500", status=502))
    status, headers, _ = await raw_post(srv, {"model": "m", "messages": USER})
    assert status == 503 and headers["Retry-After"] == "3"
    status, _, _ = await raw_post(srv, {"model": "m", "messages": USER})
    assert status == 502


@pytest.mark.asyncio
async def test_api_key_enforced() -> None:
    async with SimServer(api_key="secret") as srv:
        with pytest.raises(openai.AuthenticationError) as info:
            await client(srv, api_key="wrong").chat.completions.create(model="m", messages=USER)
        assert info.value.code == "invalid_api_key"
        status, _, _ = await raw_post(srv, {"model": "m", "messages": USER})
        assert status == 401
        r = await client(srv, api_key="secret").chat.completions.create(model="m", messages=USER)
        assert r.choices[0].message.content
        assert srv.requests == 3
        assert srv.stats()["rejected"]["auth"] == 2


@pytest.mark.asyncio
async def test_context_length_fault_and_window(srv: SimServer) -> None:
    srv.inject(Fault("context_length"))
    with pytest.raises(openai.BadRequestError) as info:
        await client(srv).chat.completions.create(model="m", messages=USER)
    assert info.value.code == "context_length_exceeded"

    srv.configure(context_window=50)
    short = await client(srv).chat.completions.create(model="m", messages=USER)
    assert short.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as info:
        await client(srv).chat.completions.create(model="m", messages=[{"role": "user", "content": "z" * 400}])
    assert info.value.code == "context_length_exceeded"


@pytest.mark.asyncio
@pytest.mark.parametrize("kind", ["drop", "drop_mid_stream"])
async def test_drop_non_stream_is_connection_error(srv: SimServer, kind: str) -> None:
    srv.inject(Fault(kind))
    with pytest.raises(openai.APIConnectionError):
        await client(srv).chat.completions.create(model="m", messages=USER)
    r = await client(srv).chat.completions.create(model="m", messages=USER)
    assert r.choices[0].message.content
    assert srv.requests == 2


@pytest.mark.asyncio
async def test_drop_stream_before_response(srv: SimServer) -> None:
    srv.inject(Fault("drop"))
    with pytest.raises(openai.APIConnectionError):
        await stream_chunks(client(srv), messages=USER)


@pytest.mark.asyncio
async def test_drop_mid_stream(srv: SimServer) -> None:
    srv.script(Reply(text="one two three four five six seven eight"))
    srv.inject(Fault("drop_mid_stream"))
    c = client(srv)
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        stream = await c.chat.completions.create(model="m", messages=USER, stream=True)
        async for chunk in stream:
            received.append(chunk)
    assert received, "some chunks arrive before the connection is cut"
    assert all(ch.choices[0].finish_reason is None for ch in received)
    # the scripted reply was not delivered, so it is still queued
    chunks = await stream_chunks(c, messages=USER)
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "one two three four five six seven eight"

    # raw client view: the chunked body is cut short
    srv.inject(Fault("drop_mid_stream"))
    with pytest.raises(aiohttp.ClientPayloadError):
        await raw_post(srv, {"model": "m", "messages": USER, "stream": True})


@pytest.mark.asyncio
async def test_garbage_body(srv: SimServer) -> None:
    srv.inject(Fault("garbage"))
    status, headers, raw = await raw_post(srv, {"model": "m", "messages": USER})
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(raw)
    srv.inject(Fault("garbage"))
    with pytest.raises(ValueError):  # the client fails to decode the body
        await client(srv).chat.completions.create(model="m", messages=USER)
    srv.inject(Fault("garbage"))
    with pytest.raises(ValueError):
        await stream_chunks(client(srv), messages=USER)


@pytest.mark.asyncio
async def test_invalid_json_args(srv: SimServer) -> None:
    srv.inject(Fault("invalid_json_args"), Fault("invalid_json_args"))
    r = await client(srv).chat.completions.create(model="m", messages=USER, tools=[WEATHER_TOOL])
    calls: Any = r.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.name == "get_weather"
    with pytest.raises(json.JSONDecodeError):
        json.loads(calls[0].function.arguments)
    chunks = await stream_chunks(client(srv), messages=USER, tools=[WEATHER_TOOL])
    args = "".join(
        tc.function.arguments or "" for ch in chunks for tc in (ch.choices[0].delta.tool_calls or []) if tc.function
    )
    with pytest.raises(json.JSONDecodeError):
        json.loads(args)


@pytest.mark.asyncio
async def test_slow_first_token_stream_and_non_stream(srv: SimServer) -> None:
    c = client(srv)
    srv.inject(Fault("slow_first_token", delay=0.3))
    start = time.perf_counter()
    stream = await c.chat.completions.create(model="m", messages=USER, stream=True)
    first_at: float | None = None
    async for _ in stream:
        if first_at is None:
            first_at = time.perf_counter() - start
    assert first_at is not None and first_at >= 0.3

    srv.inject(Fault("slow_first_token", delay=0.3))
    start = time.perf_counter()
    r = await c.chat.completions.create(model="m", messages=USER)
    assert time.perf_counter() - start >= 0.3
    assert r.choices[0].message.content


@pytest.mark.asyncio
async def test_stall_gap_after_first_chunk(srv: SimServer) -> None:
    srv.script(Reply(text="alpha beta gamma"))
    srv.inject(Fault("stall", delay=0.4))
    stream = await client(srv).chat.completions.create(model="m", messages=USER, stream=True)
    stamps: list[float] = []
    texts: list[str] = []
    async for chunk in stream:
        stamps.append(time.perf_counter())
        if chunk.choices:
            texts.append(chunk.choices[0].delta.content or "")
    assert "".join(texts) == "alpha beta gamma"
    assert stamps[2] - stamps[1] >= 0.35  # the idle gap follows the first content chunk


@pytest.mark.asyncio
async def test_stall_client_timeout_keeps_scripted_reply(srv: SimServer) -> None:
    srv.script(Reply(text="the real answer"))
    srv.inject(Fault("stall", delay=30))
    c = client(srv)

    async def consume() -> None:
        stream = await c.chat.completions.create(model="m", messages=USER, stream=True)
        async for _ in stream:
            pass

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(consume(), 0.3)
    await c.close()
    for _ in range(100):  # the server notices the disconnect and puts the reply back
        if srv.stats()["pending_replies"] == 1 and srv.stats()["in_flight"] == 0:
            break
        await asyncio.sleep(0.02)
    r = await client(srv).chat.completions.create(model="m", messages=USER)
    assert r.choices[0].message.content == "the real answer"


@pytest.mark.asyncio
async def test_fault_keeps_scripted_reply_for_the_retry(srv: SimServer) -> None:
    srv.script(Reply(text="after retry"))
    srv.inject(Fault("500", retry_after=0.01), Fault("drop"))
    c = openai.AsyncOpenAI(base_url=srv.url, api_key="k", max_retries=3)
    r = await c.chat.completions.create(model="m", messages=USER)
    assert r.choices[0].message.content == "after retry"
    assert srv.requests == 3
    assert srv.stats()["faults"] == {"500": 1, "drop": 1}


def test_fault_validation() -> None:
    with pytest.raises(ValueError):
        Fault("nope")
    with pytest.raises(ValueError):
        SimServer(fault_kinds=("500", "bogus"))
    with pytest.raises(ValueError):
        SimServer(fault_rate=2.0)
    assert set(FAULT_KINDS) >= {"429", "drop", "stall", "garbage"}


async def _statuses(srv: SimServer, n: int) -> list[int]:
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            try:
                async with session.post(srv.url + "/chat/completions", json={"model": "m", "messages": USER}) as r:
                    await r.read()
                    out.append(r.status)
            except aiohttp.ClientError:
                out.append(-1)
    return out


@pytest.mark.asyncio
async def test_random_faults_are_deterministic() -> None:
    kinds = ("429", "500", "503", "drop", "400")
    async with (
        SimServer(fault_rate=1.0, fault_kinds=kinds, seed=7) as a,
        SimServer(fault_rate=1.0, fault_kinds=kinds, seed=7) as b,
    ):
        first = await _statuses(a, 30)
        second = await _statuses(b, 30)
        assert first == second
        assert 200 not in first
        assert len(set(first)) >= 3
        assert a.requests == 30
        assert sum(a.stats()["faults"].values()) == 30
        a.reset()
        assert await _statuses(a, 30) == first  # reset re-seeds

    async with SimServer(fault_rate=0.5, fault_kinds=("500",), seed=1) as c:
        statuses = await _statuses(c, 60)
        assert 0 < statuses.count(500) < 60
        assert statuses.count(200) + statuses.count(500) == 60


# --------------------------------------------------------------------------- server plumbing


@pytest.mark.asyncio
async def test_requests_counter_history_and_endpoints(srv: SimServer) -> None:
    srv.inject(Fault("500"), Fault("drop"))
    for _ in range(4):
        try:
            await client(srv).chat.completions.create(model="m", messages=USER)
        except openai.APIError:
            pass
    assert srv.requests == 4
    assert len(srv.history) == 4
    async with httpx2.AsyncClient() as http:
        assert (await http.get(root(srv) + "/health")).json() == {"status": "ok"}
        models = (await http.get(srv.url + "/models")).json()
        assert models["object"] == "list" and models["data"][0]["id"]
        stats = (await http.get(root(srv) + "/_sim/stats")).json()
        assert stats["requests"] == 4 and stats["completed"] == 2
        assert stats["faults"] == {"500": 1, "drop": 1}
        assert stats["in_flight"] == 0 and stats["max_in_flight"] >= 1
        resp = await http.post(root(srv) + "/_sim/config", json={"latency": 0.01, "fault_kinds": ["429"]})
        assert resp.status_code == 200 and resp.json()["latency"] == 0.01
        assert srv.config.fault_kinds == ("429",)
        assert (await http.post(root(srv) + "/_sim/config", json={"nope": 1})).status_code == 400
        assert (await http.post(root(srv) + "/_sim/reset")).status_code == 200
        assert (await http.get(root(srv) + "/nowhere")).status_code == 404
        bad = await http.post(srv.url + "/chat/completions", content=b"{not json")
        assert bad.status_code == 400 and "error" in bad.json()
    assert srv.requests == 1  # reset, then the bad request
    assert srv.history == []


def test_record_history_off_and_sync_client() -> None:
    with SimServer(record_history=False) as srv:
        c = openai.OpenAI(base_url=srv.url, api_key="k", max_retries=0)
        r = c.chat.completions.create(model="m", messages=USER)
        assert r.choices[0].message.content
        assert srv.requests == 1 and srv.history == []
        c.close()
    srv.stop()  # idempotent
    assert not srv.running


@pytest.mark.asyncio
async def test_configure_changes_behaviour_at_runtime(srv: SimServer) -> None:
    c = client(srv)
    srv.configure(latency=0.25)
    start = time.perf_counter()
    await c.chat.completions.create(model="m", messages=USER)
    assert time.perf_counter() - start >= 0.25
    srv.configure(latency=0.0, api_key="new-key")
    with pytest.raises(openai.AuthenticationError):
        await c.chat.completions.create(model="m", messages=USER)
    srv.configure(api_key=None, fault_rate=1.0, fault_kinds=("503",))
    with pytest.raises(openai.InternalServerError):
        await c.chat.completions.create(model="m", messages=USER)
    srv.configure(fault_rate=0.0, tool_calls_per_run=0)
    r = await c.chat.completions.create(model="m", messages=USER, tools=[WEATHER_TOOL])
    assert r.choices[0].finish_reason == "stop"
    with pytest.raises(TypeError):
        srv.configure(no_such_setting=1)


@pytest.mark.asyncio
async def test_many_concurrent_slow_requests() -> None:
    async with SimServer(latency=0.3) as srv:
        c = client(srv)
        results = await asyncio.gather(*(c.chat.completions.create(model="m", messages=USER) for _ in range(100)))
        assert len(results) == 100
        assert srv.stats()["max_in_flight"] > 10
        assert srv.requests == 100


def test_start_stop_restart_and_port() -> None:
    srv = SimServer()
    with pytest.raises(RuntimeError):
        _ = srv.port
    srv.start()
    assert srv.start() is srv
    port = srv.port
    assert srv.url == f"http://127.0.0.1:{port}/v1"
    srv.stop()
    srv.stop()
    srv.start()  # restarts on the same port
    assert srv.port == port
    srv.stop()


def test_import_starts_nothing_and_avoids_notebook_deps() -> None:
    code = (
        "import sys, threading; import nbagent.testing; "
        "assert threading.active_count() == 1, threading.enumerate(); "
        "bad = [m for m in ('IPython', 'ipywidgets', 'plotly') if m in sys.modules]; assert not bad, bad"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# --------------------------------------------------------------------------- subprocess mode


@pytest.mark.asyncio
async def test_spawn_subprocess_mode() -> None:
    handle = SimServer.spawn(latency=0.0, seed=3, tool_calls_per_run=1)
    pid = handle.process.pid
    try:
        with handle:
            c = client(handle)
            r = await c.chat.completions.create(model="m", messages=USER)
            assert r.choices[0].message.content == "Answer to: " + USER[0]["content"]
            chunks = await stream_chunks(c, messages=USER, stream_options={"include_usage": True})
            assert chunks[-1].usage is not None
            assert handle.stats()["requests"] == 2
            assert handle.requests == 2
            assert len(handle.history) == 2

            cfg = handle.configure(fault_rate=1.0, fault_kinds=["429"])
            assert cfg.fault_rate == 1.0 and cfg.fault_kinds == ("429",)
            with pytest.raises(openai.RateLimitError):
                await c.chat.completions.create(model="m", messages=USER)
            handle.configure(fault_rate=0.0)

            handle.inject(Fault("503", retry_after=1))
            handle.script(Reply(text="scripted remotely"), Reply(tool_calls=[("f", {"a": 1})]))
            status, headers, _ = await raw_post(handle, {"model": "m", "messages": USER})
            assert status == 503 and headers["Retry-After"] == "1"
            r = await c.chat.completions.create(model="m", messages=USER)
            assert r.choices[0].message.content == "scripted remotely"
            r = await c.chat.completions.create(model="m", messages=USER)
            assert r.choices[0].message.tool_calls is not None
            stats = handle.stats()
            assert stats["faults"] == {"429": 1, "503": 1}
            handle.reset()
            assert handle.stats()["requests"] == 0
            with pytest.raises(TypeError):
                handle.configure(no_such_setting=True)
            await c.close()
    finally:
        handle.stop()
    assert handle.process.poll() is not None
    assert not handle.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    handle.stop()  # idempotent


async def test_spawn_on_uvloop_serves_answers_and_streams() -> None:
    """``uvloop=True`` (the overhead benchmark's server) runs the child on uvloop and serves as before."""
    with SimServer.spawn(latency=0.0, uvloop=True, record_history=False) as handle:
        maps = await asyncio.to_thread(Path(f"/proc/{handle.process.pid}/maps").read_text)
        assert "uvloop" in maps  # the child loaded uvloop's extension
        c = client(handle)
        r = await c.chat.completions.create(model="m", messages=USER)
        assert r.choices[0].message.content == "Answer to: " + USER[0]["content"]
        chunks = await stream_chunks(c, messages=USER, stream_options={"include_usage": True})
        assert chunks[-1].usage is not None and handle.requests == 2 and handle.history == []
        await c.close()


def test_spawn_rejects_behavior_and_bad_settings() -> None:
    with pytest.raises(TypeError):
        SimServer.spawn(behavior=lambda body: Reply(text="x"))
    with pytest.raises(ValueError):
        SimServer.spawn(fault_kinds=("bogus",))


def test_cli_runs_and_prints_port() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(
        [sys.executable, "-m", "nbagent.testing", "--port", "0", "--latency", "0", "--quiet", "--watch-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port = int(proc.stdout.readline())
        r = httpx2.get(f"http://127.0.0.1:{port}/health")
        assert r.json() == {"status": "ok"}
        proc.stdin.close()  # end of standard input stops the server
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
