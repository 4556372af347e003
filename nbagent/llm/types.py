"""Plain data that crosses the model seam: requests, responses, tool calls and token usage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Model", "ModelRequest", "ModelResponse", "TextCallback", "TextRestart", "TokenUsage", "ToolCall"]


@dataclass(slots=True)
class ToolCall:
    """One tool call the model asked for. ``arguments`` is the raw JSON text the model produced."""

    id: str
    name: str
    arguments: str

    def to_message_part(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(slots=True)
class TokenUsage:
    """Token counts for one or many requests."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(
            self.input_tokens + other.input_tokens,
            self.output_tokens + other.output_tokens,
            self.cached_tokens + other.cached_tokens,
        )

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class ModelRequest:
    """One chat-completion request in OpenAI's wire format.

    ``messages`` and ``tools`` are the JSON-ready dicts sent to ``/chat/completions``; ``params`` holds
    every other sampling parameter (``temperature``, ``max_tokens``, ``seed``...).
    """

    model: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    params: dict[str, Any] = field(default_factory=dict)
    stream: bool = False

    def body(self) -> dict[str, Any]:
        """The JSON body sent to the server (without streaming options)."""
        body: dict[str, Any] = {"model": self.model, "messages": self.messages}
        if self.tools:
            body["tools"] = self.tools
            if self.tool_choice is not None:
                body["tool_choice"] = self.tool_choice
        body.update(self.params)
        return body


@dataclass(slots=True)
class ModelResponse:
    """The model's answer to one request, however it was obtained (HTTP, stream, cache)."""

    text: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    usage: TokenUsage = field(default_factory=TokenUsage)
    usage_source: str = "server"  # "server" when the server reported usage, "local" when counted here
    model: str = ""
    latency: float = 0.0  # seconds from first byte sent to last byte read, retries included
    ttft: float | None = None  # streaming only: seconds to the first content or tool-call delta
    attempts: int = 1
    chunks: list[str] | None = None  # streaming only: the text deltas in order, for replay
    cached: bool = False  # True when the response cache answered

    def to_message(self) -> dict[str, Any]:
        """The assistant message to append to the conversation.

        ``content`` is ``""`` (never null) when there are tool calls: llama.cpp's server rejects null.
        """
        msg: dict[str, Any] = {"role": "assistant", "content": self.text or ""}
        if self.tool_calls:
            msg["tool_calls"] = [tc.to_message_part() for tc in self.tool_calls]
        return msg


TextCallback = Any  # Callable[[str], None]; kept loose so sync and async callers can both pass one


class TextRestart(str):
    """What ``on_text`` receives, instead of a plain delta, when a stream was retried and the new attempt did
    not repeat the text already delivered: the new attempt's whole text so far, which *replaces* everything
    delivered before for this request (a display clears what it showed, then shows this).

    Text is delivered once: when the retried stream repeats what was already delivered, only the text beyond
    it is delivered, as plain ``str`` deltas. A ``TextRestart`` is a ``str``, so callbacks that only append
    or print keep working.
    """

    __slots__ = ()


class Model(Protocol):
    """The one seam between the agent loop and a model: a single async method.

    Wrappers (the response cache, instrumentation, concurrency limits) implement it too and hold the
    model they wrap.
    """

    async def request(
        self, req: ModelRequest, *, run_id: str | None = None, on_text: TextCallback | None = None
    ) -> ModelResponse:
        """Send ``req`` and return the full response; for streams call ``on_text(delta)`` per text delta."""
        ...
