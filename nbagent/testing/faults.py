"""Fault descriptions for the simulated chat server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Every fault kind the simulated server understands.
FAULT_KINDS: tuple[str, ...] = (
    "429",
    "500",
    "503",
    "401",
    "400",
    "context_length",
    "drop",
    "drop_mid_stream",
    "slow_first_token",
    "stall",
    "invalid_json_args",
    "garbage",
    "raw",
)

#: Fault kinds answered with an HTTP error status and an OpenAI-style error body:
#: kind -> (status, error type, error code, message).
STATUS_FAULTS: dict[str, tuple[int, str, str | None, str]] = {
    "429": (429, "rate_limit_error", "rate_limit_exceeded", "Rate limit reached (simulated)."),
    "500": (500, "server_error", None, "The server had an error while processing your request (simulated)."),
    "503": (503, "server_error", None, "The engine is currently overloaded, please try again later (simulated)."),
    "401": (401, "invalid_request_error", "invalid_api_key", "Incorrect API key provided (simulated)."),
    "400": (400, "invalid_request_error", None, "Invalid request (simulated)."),
    "context_length": (
        400,
        "invalid_request_error",
        "context_length_exceeded",
        "This model's maximum context length was exceeded (simulated).",
    ),
}


@dataclass(frozen=True)
class Fault:
    """One fault the simulated server applies to a single chat-completion request.

    ``kind`` is one of :data:`FAULT_KINDS`:

    * ``"429"``, ``"500"``, ``"503"``, ``"401"``, ``"400"``, ``"context_length"``: an HTTP error with an
      OpenAI-style JSON body ``{"error": {"message", "type", "code"}}``. ``retry_after`` (seconds) adds a
      ``Retry-After`` header; ``status`` overrides the HTTP status code.
    * ``"drop"``: the connection is closed without any response.
    * ``"drop_mid_stream"``: a stream sends its first chunks and then the connection is closed abruptly;
      a non-stream request is dropped like ``"drop"``.
    * ``"slow_first_token"``: waits ``delay`` seconds more before the first byte (non-stream) or the first
      chunk (stream).
    * ``"stall"``: a stream sends its role chunk and first content chunk, then waits ``delay`` seconds
      before the rest; a non-stream request waits ``delay`` seconds more before answering.
    * ``"invalid_json_args"``: the reply is a tool call whose ``arguments`` string is not valid JSON.
    * ``"garbage"``: a 200 response whose body is not JSON (for a stream, an SSE event whose data is not JSON).
    * ``"raw"``: exactly ``body`` (text, UTF-8) with ``content_type`` and ``status`` (default 200), for a stream
      request too: malformed answers (``{"choices": [{"message": null}]}``), an empty 200, JSON to a stream...

    For the error kinds ``delay`` is waited before the error is sent.
    """

    kind: str
    retry_after: float | None = None
    delay: float = 0.0
    status: int | None = None
    body: str = ""
    content_type: str = "application/json"

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        if not self.delay >= 0:  # NaN too
            raise ValueError(f"delay must be a number >= 0, got {self.delay!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable form, the inverse of :meth:`from_dict`."""
        return {"kind": self.kind, "retry_after": self.retry_after, "delay": self.delay, "status": self.status,
                "body": self.body, "content_type": self.content_type}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | str) -> Fault:
        """Build a fault from a dict (as made by :meth:`to_dict`) or from a bare kind string."""
        if isinstance(data, str):
            return cls(data)
        return cls(
            str(data["kind"]),
            retry_after=data.get("retry_after"),
            delay=float(data.get("delay") or 0.0),
            status=data.get("status"),
            body=str(data.get("body") or ""),
            content_type=str(data.get("content_type") or "application/json"),
        )


def error_body(message: str, err_type: str, code: str | None, param: str | None = None) -> dict[str, Any]:
    """Return an OpenAI-style error payload."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def format_retry_after(seconds: float) -> str:
    """Format a ``Retry-After`` header value (integral seconds are written without a fraction)."""
    if float(seconds).is_integer():
        return str(int(seconds))
    return repr(float(seconds))
