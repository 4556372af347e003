"""OpenAI chat-completions wire format: JSON bodies and SSE chunks built by the simulated server."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from .behavior import Reply, estimate_completion_tokens

SYSTEM_FINGERPRINT = "fp_sim"
DONE_EVENT = b"data: [DONE]\n\n"
GARBAGE_BODY = b"<html><body>502 Bad Gateway (simulated non-JSON body)</body></html>"
GARBAGE_EVENT = b"data: {this is not json\n\n"
INVALID_JSON_ARGS = '{"x": 1'

_WORD_RE = re.compile(r"\S+\s*|\s+")
_ARG_PIECE = 16
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def dumps(obj: Any) -> bytes:
    """Serialise ``obj`` to compact UTF-8 JSON."""
    return _dumps(obj).encode()


def split_text(text: str) -> list[str]:
    """Split ``text`` into word-sized pieces whose concatenation is ``text``."""
    return _WORD_RE.findall(text)


def build_usage(prompt_tokens: int, reply: Reply, tool_calls: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Return the usage block for ``reply``, applying the reply's overrides."""
    completion = estimate_completion_tokens(reply.text, tool_calls)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }
    if reply.usage:
        usage.update(reply.usage)
        if "total_tokens" not in reply.usage:
            usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage


def completion_body(
    *,
    reply: Reply,
    tool_calls: Sequence[tuple[str, str]],
    call_ids: Sequence[str],
    resp_id: str,
    created: int,
    model: str,
    usage: dict[str, int] | None,
) -> bytes:
    """Return the JSON body of a non-stream ``chat.completion`` response."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text or "", "refusal": None}
    if tool_calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for cid, (name, args) in zip(call_ids, tool_calls, strict=True)
        ]
    body: dict[str, Any] = {
        "id": resp_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reply.effective_finish_reason}],
    }
    if usage is not None:
        body["usage"] = usage
    return dumps(body)


def stream_events(
    *,
    reply: Reply,
    tool_calls: Sequence[tuple[str, str]],
    call_ids: Sequence[str],
    resp_id: str,
    created: int,
    model: str,
    usage: dict[str, int] | None,
) -> list[bytes]:
    """Return the SSE events of a streamed response, ending with ``data: [DONE]``.

    The first event carries ``{"role": "assistant", "content": ""}``, then one event per text piece, then the
    tool-call fragments, a finish event, the usage event (when ``usage`` is given) and ``[DONE]``.
    """
    head = (
        '{"id":'
        + _dumps(resp_id)
        + ',"object":"chat.completion.chunk","created":'
        + str(int(created))
        + ',"model":'
        + _dumps(model)
        + ',"system_fingerprint":"'
        + SYSTEM_FINGERPRINT
        + '","choices":['
    )

    def event(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return ("data: " + head + _dumps(choice) + "]}\n\n").encode()

    events = [event({"role": "assistant", "content": ""})]
    for piece in split_text(reply.text or ""):
        events.append(event({"content": piece}))
    for index, (cid, (name, args)) in enumerate(zip(call_ids, tool_calls, strict=True)):
        first = {"index": index, "id": cid, "type": "function", "function": {"name": name, "arguments": ""}}
        events.append(event({"tool_calls": [first]}))
        for start in range(0, len(args), _ARG_PIECE):
            fragment = {"index": index, "function": {"arguments": args[start : start + _ARG_PIECE]}}
            events.append(event({"tool_calls": [fragment]}))
    events.append(event({}, reply.effective_finish_reason))
    if usage is not None:
        events.append(("data: " + head + '],"usage":' + _dumps(usage) + "}\n\n").encode())
    events.append(DONE_EVENT)
    return events
