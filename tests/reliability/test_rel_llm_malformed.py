"""Malformed answers get one clear ``MalformedResponse`` saying what was wrong, and are never retried."""

from __future__ import annotations

import json

import pytest
from support import Sleeps, sim_settings

from nbagent.errors import MalformedResponse
from nbagent.events import EventBus, LLMRequestFailed, LLMRetry
from nbagent.llm import LLMClient, ModelRequest
from nbagent.testing import Fault, SimServer


def completion(message: object = None, usage: object = None, **extra: object) -> str:
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    body: dict[str, object] = {"id": "x", "object": "chat.completion", "model": "sim", "choices": [choice], **extra}
    if usage is not None:
        body["usage"] = usage
    return json.dumps(body)


def chunk(delta: object = None, usage: object = None) -> str:
    body: dict[str, object] = {"object": "chat.completion.chunk", "model": "sim",
                               "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    if usage is not None:
        body["usage"] = usage
    return "data: " + json.dumps(body) + "\n\n"


SSE = "text/event-stream"
SHAPES = {
    # non-stream answers: (body, content type, stream, what the message must say)
    "message null": (completion(None), "application/json", False, "choices[0].message is null"),
    "content list": (completion({"role": "assistant", "content": [{"type": "text", "text": "hi"}]}),
                     "application/json", False, "choices[0].message.content is a list"),
    "prompt_tokens abc": (completion({"role": "assistant", "content": "hi"},
                                     {"prompt_tokens": "abc", "completion_tokens": 1}),
                          "application/json", False, "usage.prompt_tokens is the string 'abc'"),
    "negative tokens": (completion({"role": "assistant", "content": "hi"},
                                   {"prompt_tokens": 3, "completion_tokens": -1}),
                        "application/json", False, "usage.completion_tokens is the number -1"),
    "tool_calls object": (completion({"role": "assistant", "content": "", "tool_calls": {"id": "c"}}),
                          "application/json", False, "tool_calls is an object"),
    "choices not a list": ('{"choices": {"0": {}}}', "application/json", False, "no choices"),
    # stream requests
    "stream answered with JSON": (completion({"role": "assistant", "content": "hi"}), "application/json", True,
                                  "without server-sent events (HTTP 200, content-type application/json"),
    "stream answered with nothing": ("", SSE, True, "without server-sent events"),
    "chunk delta content list": (chunk({"content": ["a"]}), SSE, True, "malformed stream chunk"),
    "chunk choice not an object": ('data: {"choices": ["a"]}\n\n', SSE, True, "malformed stream chunk"),
    "chunk usage abc": (chunk({"content": "hi"}) + chunk({}, {"prompt_tokens": "abc"}) + "data: [DONE]\n\n", SSE,
                        True, "usage.prompt_tokens is the string 'abc'"),
}


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_one_clear_error_never_retried(sim: SimServer, shape: str) -> None:
    body, content_type, stream, says = SHAPES[shape]
    events: list[object] = []
    bus = EventBus()
    bus.tap(events.append)
    client = LLMClient(sim_settings(sim), bus=bus, sleep=Sleeps())
    sim.inject(Fault("raw", body=body, content_type=content_type))
    req = ModelRequest(model="sim", messages=[{"role": "user", "content": "hi"}], stream=stream)
    with pytest.raises(MalformedResponse) as e:
        await client.request(req)
    assert says in str(e.value)
    assert sim.requests == 1 and not [x for x in events if isinstance(x, LLMRetry)]
    assert [x.error_type for x in events if isinstance(x, LLMRequestFailed)] == ["MalformedResponse"]
    await client.aclose()


def test_the_raw_fault_round_trips() -> None:
    f = Fault("raw", body="{}", content_type="text/plain", status=202)
    assert Fault.from_dict(f.to_dict()) == f
