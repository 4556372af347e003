"""The chat-completions wire format as the client reads it: answers, stream chunks, usage and errors.

Everything the server sends is checked where it is read, so a malformed answer is one clear
:class:`~nbagent.errors.MalformedResponse` naming what was wrong (never an ``AttributeError`` or a bare
``TypeError`` from deep inside), and it is never retried. Errors of the SDK and the transport are mapped to
the exception tree here too (without importing the SDK: its errors can only exist once it is imported).
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from typing import Any

from ..errors import (
    AuthenticationError,
    BadRequest,
    ContextLengthExceeded,
    LLMConnectionError,
    LLMError,
    LLMTimeout,
    MalformedResponse,
    RateLimited,
    ServerError,
)
from .jsonio import loads
from .types import ModelResponse, TokenUsage, ToolCall

__all__ = ["StreamAccumulator", "error_from_body", "exception_chain", "map_error", "parse_completion",
           "parse_usage", "retry_after"]


# --- answers -------------------------------------------------------------------------------------------


def _shape(value: Any) -> str:
    """What a JSON value is, for error messages: ``null``, ``a list``, ``the string 'abc'``..."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, bool):
        return f"the boolean {value}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return {"list": "a list", "dict": "an object"}.get(type(value).__name__, type(value).__name__)


def _count(value: Any, where: str) -> int:
    """A token count from ``usage``: a non-negative integer (integral floats and digit strings accepted)."""
    if type(value) is int and value >= 0:
        return value
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise MalformedResponse(f"malformed answer: {where} is {_shape(value)}, not a token count")


def parse_usage(raw: Any) -> tuple[TokenUsage, str]:
    """Token usage and its source: ``server`` when the server reported it, ``local`` when it did not."""
    if not raw:
        return TokenUsage(), "local"
    if not isinstance(raw, dict):
        raise MalformedResponse(f"malformed answer: usage is {_shape(raw)}, not an object")
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    details = raw.get("prompt_tokens_details")
    if type(prompt) is int and type(completion) is int and prompt >= 0 and completion >= 0 and not details:
        return TokenUsage(prompt, completion), "server"  # the usual shape, checked at once
    details = details or {}
    cached = _count(details.get("cached_tokens"), "usage.prompt_tokens_details.cached_tokens") \
        if isinstance(details, dict) else 0
    return TokenUsage(_count(prompt, "usage.prompt_tokens"), _count(completion, "usage.completion_tokens"),
                      cached), "server"


def _tool_calls(raw: Any, where: str) -> list[ToolCall]:
    if not isinstance(raw, list):
        raise MalformedResponse(f"malformed answer: {where} is {_shape(raw)}, not a list")
    calls: list[ToolCall] = []
    for tc in raw:
        try:
            fn = tc.get("function") or {}
            name = fn.get("name") or ""
            args = fn.get("arguments")
        except AttributeError:
            raise MalformedResponse(f"malformed answer: {where}[{len(calls)}] is not an object with a function "
                                    f"object: {str(tc)[:200]}") from None
        if type(name) is not str:
            raise MalformedResponse(f"malformed answer: {where}[{len(calls)}].function.name is {_shape(name)}")
        if type(args) is not str:  # some servers send an object instead of a JSON string
            args = json.dumps(args if args is not None else {})
        calls.append(ToolCall(id=tc.get("id") or f"call_{len(calls)}", name=name, arguments=args))
    return calls


def parse_completion(data: Any) -> ModelResponse:
    """The :class:`ModelResponse` of a decoded ``chat.completion`` body; :class:`MalformedResponse` if it is not one."""
    if not isinstance(data, dict):
        raise MalformedResponse(f"malformed answer: expected a JSON object, got {_shape(data)}")
    choices = data.get("choices")
    if "error" in data and not choices:
        err = data["error"]
        raise error_from_body(err if isinstance(err, dict) else {"message": str(err)}, None, None)
    if not isinstance(choices, list) or not choices:
        raise MalformedResponse(f"malformed answer: no choices in it: {str(data)[:200]}")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise MalformedResponse(f"malformed answer: choices[0] is {_shape(choice)}, not an object")
    msg = choice.get("message")
    if not isinstance(msg, dict):
        raise MalformedResponse(f"malformed answer: choices[0].message is {_shape(msg)}, not an object")
    text = msg.get("content")
    if text is None:
        text = ""
    elif not isinstance(text, str):
        raise MalformedResponse(f"malformed answer: choices[0].message.content is {_shape(text)}, "
                                f"not a string or null")
    raw_calls = msg.get("tool_calls")
    calls = _tool_calls(raw_calls, "choices[0].message.tool_calls") if raw_calls else []
    usage, source = parse_usage(data.get("usage"))
    finish = choice.get("finish_reason")
    return ModelResponse(text=text, tool_calls=calls, finish_reason=finish if isinstance(finish, str) else None,
                         usage=usage, usage_source=source, model=str(data.get("model") or ""))


class StreamAccumulator:
    """Builds one response out of ``chat.completion.chunk`` payloads."""

    __slots__ = ("chunks", "tool_calls", "finish_reason", "usage", "model", "first_at", "ttft", "done", "events")

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.tool_calls: dict[int, list[str]] = {}  # index -> [id, name, arguments]
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.model = ""
        self.first_at: float | None = None
        self.ttft: float | None = None
        self.done = False
        self.events = 0  # ``data:`` events read

    def feed(self, data: str) -> str:
        """Fold one chunk in; returns its text (``""`` when it carries none)."""
        self.events += 1
        try:
            chunk = loads(data)
        except ValueError:
            raise MalformedResponse(f"stream chunk is not JSON: {data[:200]!r}") from None
        try:
            return self._fold(chunk)
        except (AttributeError, TypeError, ValueError) as exc:
            raise MalformedResponse(f"malformed stream chunk ({exc}): {data[:200]!r}") from None

    def _fold(self, chunk: dict[str, Any]) -> str:
        if "error" in chunk:
            err = chunk["error"] or {}
            raise error_from_body(err if isinstance(err, dict) else {"message": str(err)}, None, None)
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
        """The response folded so far."""
        calls = [ToolCall(id=v[0] or f"call_{i}", name=v[1], arguments=v[2])
                 for i, v in sorted(self.tool_calls.items())]
        usage, source = parse_usage(self.usage)
        return ModelResponse(text="".join(self.chunks), tool_calls=calls, finish_reason=self.finish_reason,
                             usage=usage, usage_source=source, model=self.model, ttft=self.ttft,
                             chunks=list(self.chunks))


# --- errors --------------------------------------------------------------------------------------------


def retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date); None when absent or absurd."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            value = float(ms) / 1000
        except ValueError:
            pass
        else:
            return max(value, 0.0) if math.isfinite(value) else None
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        seconds = float(raw)
    except ValueError:
        import email.utils  # an HTTP date: rare, so imported only now

        try:
            parsed = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        return max(parsed.timestamp() - time.time(), 0.0)
    return max(seconds, 0.0) if math.isfinite(seconds) else None


def error_from_body(err: dict[str, Any], status: int | None, headers: Any) -> LLMError:
    """The exception for an OpenAI-style error object (``{"message", "type", "code"}``) and HTTP status."""
    message = str(err.get("message") or err)
    code = str(err.get("code") or "")
    text = f"{status} {message}" if status else message
    if code == "context_length_exceeded" or "maximum context length" in message or "context length" in message:
        return ContextLengthExceeded(f"the server says the prompt is too long: {message}", status_code=status)
    if status in (401, 403):
        return AuthenticationError(f"authentication failed ({status}): {message}; check the API key",
                                   status_code=status)
    if status == 429:
        return RateLimited(f"rate limited: {message}", retry_after=retry_after(headers))
    if status is not None and (status >= 500 or status in (408, 409)):
        return ServerError(f"server error {text}", status_code=status, retry_after=retry_after(headers))
    if status == 404:
        return BadRequest(f"not found (404): {message}; check the base URL and model name", status_code=status)
    if status is None:
        return ServerError(f"the server reported an error mid-stream: {message}")
    return BadRequest(f"request rejected ({status}): {message}", status_code=status)


_DROPPED = ("ClientConnectorError", "ConnectionRefusedError", "ServerDisconnectedError", "ClientOSError",
            "ClientPayloadError", "ConnectionResetError", "ConnectError", "ReadError", "RemoteProtocolError")


def map_error(exc: BaseException) -> LLMError:
    """The exception-tree error for whatever the SDK or the transport (aiohttp, httpx) raised."""
    if type(exc).__module__.startswith("aiohttp"):
        return _map_aiohttp(exc)
    openai = sys.modules.get("openai")
    if openai is not None:
        mapped = _map_sdk(exc, openai)
        if mapped is not None:
            return mapped
    httpx2 = sys.modules.get("httpx2")
    if httpx2 is not None and isinstance(exc, httpx2.TimeoutException):
        return LLMTimeout(f"timeout talking to the model server: {exc}", phase="read")
    if (httpx2 is not None and isinstance(exc, httpx2.TransportError)) or isinstance(exc, (OSError, ConnectionError)):
        return LLMConnectionError(f"connection to the model server failed: {type(exc).__name__}: {exc}")
    if isinstance(exc, TimeoutError):
        return LLMTimeout("timed out talking to the model server", phase="read")
    return LLMError(f"unexpected error talking to the model server: {type(exc).__name__}: {exc}")


def _map_aiohttp(exc: BaseException) -> LLMError:
    """The direct transport's errors: connect and read timeouts, refused and dropped connections."""
    names = [type(e).__name__ for e in exception_chain(exc)]
    if names[0] == "ConnectionTimeoutError":
        return LLMTimeout(f"connect timeout talking to the model server: {exc}", phase="connect")
    if names[0] in ("SocketTimeoutError", "ServerTimeoutError"):
        return LLMTimeout(f"read timeout talking to the model server: {exc}", phase="read")
    if names[0] == "ClientConnectorError":
        return LLMConnectionError(f"cannot reach the model server: {type(exc).__name__}: {exc}")
    return LLMConnectionError(f"cannot reach the model server or the connection dropped: "
                              f"{type(exc).__name__}: {exc}")


def _map_sdk(exc: BaseException, openai: Any) -> LLMError | None:
    """The SDK transport's errors (None: not one of the SDK's)."""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        err = body.get("error", body) if isinstance(body, dict) else {}
        if not isinstance(err, dict) or not err:
            err = {"message": exc.message}
        return error_from_body(err, exc.status_code, exc.response.headers)
    if isinstance(exc, openai.APITimeoutError):
        # the aiohttp transport reports refused and dropped connections as connect timeouts: read the chain
        chain = exception_chain(exc)
        names = [type(e).__name__ for e in chain]
        root = chain[-1]
        if any(n in _DROPPED for n in names):
            return LLMConnectionError(f"cannot reach the model server or the connection dropped: "
                                      f"{type(root).__name__}: {root}")
        joined = " ".join(names)
        phase = "pool" if "Pool" in joined else "connect" if "ConnectTimeout" in names[1:2] and \
            "SocketTimeoutError" not in joined and "ServerTimeoutError" not in joined else "read"
        return LLMTimeout(f"{phase} timeout talking to the model server", phase=phase)
    if isinstance(exc, openai.APIConnectionError):
        root = exc.__cause__ or exc
        return LLMConnectionError(f"cannot reach the model server: {type(root).__name__}: {root}")
    return None


def exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first."""
    out: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in out and len(out) < 10:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out
