"""One exception tree for nbagent.

::

    NbAgentError
    ├── ConfigError                 bad settings, unknown profile, missing key
    │   ├── InvalidSetting          a value of the wrong type, out of range or not one of its choices
    │   └── EndpointNotConfigured   no endpoint anywhere (the embedded model may stand in)
    ├── LLMError                    anything the model endpoint did wrong
    │   ├── TransientLLMError       worth a retry (the retry policy decides)
    │   │   ├── RateLimited         429; carries ``retry_after``
    │   │   ├── ServerError         5xx
    │   │   ├── LLMConnectionError  refused / reset / dropped connection
    │   │   └── LLMTimeout          connect, read, whole-request, first-token or idle-gap timeout
    │   ├── AuthenticationError     401 / 403: never retried
    │   ├── BadRequest              400 / 404 / 422: never retried
    │   │   └── ContextLengthExceeded  server said the prompt does not fit
    │   ├── RetryBudgetExhausted    the run's retry budget ran out; ``__cause__`` is the last error
    │   └── MalformedResponse       the server's answer could not be parsed
    ├── ContextWindowExceeded       pre-flight: the request cannot fit, so it is never sent
    ├── UsageLimitExceeded          a per-run usage limit (steps, tokens, cost, wall time) was hit
    ├── ToolError                   a tool failed (the agent turns it into a message for the model)
    ├── SandboxError                a sandbox could not be created or used
    │   ├── LeaseTimeout            no sandbox became free in time
    │   └── SandboxTimeout          a command ran past its timeout and was killed
    └── ReplayMiss                  replay mode and the request was never recorded

Bad arguments to the ``%%agent`` magic are IPython ``UsageError``s, raised by the notebook layer.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BadRequest",
    "ReplayMiss",
    "ConfigError",
    "ContextLengthExceeded",
    "ContextWindowExceeded",
    "EndpointNotConfigured",
    "InvalidSetting",
    "LLMConnectionError",
    "LLMError",
    "LLMTimeout",
    "LeaseTimeout",
    "MalformedResponse",
    "NbAgentError",
    "RateLimited",
    "RetryBudgetExhausted",
    "SandboxError",
    "SandboxTimeout",
    "ServerError",
    "ToolError",
    "TransientLLMError",
    "UsageLimitExceeded",
]


class NbAgentError(Exception):
    """Base class of every error nbagent raises on purpose."""


class ConfigError(NbAgentError):
    """Settings are missing or wrong (unknown profile, bad TOML, missing API key...)."""


class InvalidSetting(ConfigError, ValueError):
    """A setting's value is of the wrong type, out of range, not finite or not one of its choices.

    ``key`` names the setting (``limits.max_steps``), ``source`` says where the value came from
    (``from environment variable NBAGENT_LIMITS__MAX_STEPS``, ``in /path/config.toml``, ``from argument
    max_steps``) and ``allowed`` what it may be (``a whole number >= 1``).
    """

    def __init__(self, message: str, *, key: str, source: str, allowed: str) -> None:
        super().__init__(message)
        self.key = key
        self.source = source
        self.allowed = allowed


class EndpointNotConfigured(ConfigError):
    """No base URL or API key is configured anywhere; the embedded local model can stand in."""


class LLMError(NbAgentError):
    """The model endpoint failed. ``status_code`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class TransientLLMError(LLMError):
    """An error that may go away on its own: the retry policy may try again."""


class RateLimited(TransientLLMError):
    """HTTP 429. ``retry_after`` is the server's ``Retry-After`` in seconds, when given."""

    def __init__(self, message: str, *, status_code: int | None = 429, retry_after: float | None = None) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class ServerError(TransientLLMError):
    """HTTP 5xx. ``retry_after`` is honoured when a 503 carries one."""

    def __init__(self, message: str, *, status_code: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class LLMConnectionError(TransientLLMError):
    """The connection was refused, reset or dropped before a full answer arrived."""


class LLMTimeout(TransientLLMError):
    """A timeout fired. ``phase`` is one of connect, read, request, first_token, idle."""

    def __init__(self, message: str, *, phase: str) -> None:
        super().__init__(message)
        self.phase = phase


class AuthenticationError(LLMError):
    """401/403: the key is missing or wrong. Never retried."""


class BadRequest(LLMError):
    """The server rejected the request itself (400/404/422). Never retried."""


class ContextLengthExceeded(BadRequest):
    """The server said the prompt is longer than the model's context."""


class RetryBudgetExhausted(LLMError):
    """Retries stopped because the attempt limit or the run's retry budget ran out."""


class MalformedResponse(LLMError):
    """The server answered 2xx with something that is not a chat completion."""


class ContextWindowExceeded(NbAgentError):
    """Raised *before* sending: the counted prompt plus reserved output cannot fit the model's context."""

    def __init__(self, message: str, *, prompt_tokens: int, context_window: int, reserved_output: int) -> None:
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window
        self.reserved_output = reserved_output


class UsageLimitExceeded(NbAgentError):
    """A per-run usage limit was reached. ``limit`` names it (``max_steps``, ``max_cost``...)."""

    def __init__(self, message: str, *, limit: str, value: float, maximum: float) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.maximum = maximum


class ToolError(NbAgentError):
    """A tool failed. Raise it from a tool to send a clean message (no traceback) to the model."""


class SandboxError(NbAgentError):
    """A sandbox could not be created, used or cleaned up."""


class LeaseTimeout(SandboxError):
    """No sandbox could be leased before the lease timeout."""


class SandboxTimeout(SandboxError):
    """A command in a sandbox ran past its timeout and was killed."""


class ReplayMiss(NbAgentError):
    """Replay mode: the request was never recorded, so it cannot be answered. ``key`` is its cache key."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def __getattr__(name: str) -> type[NbAgentError]:
    """``errors.CacheMiss``: the old name of :class:`ReplayMiss` (one release; ``events.CacheMiss`` is the event)."""
    if name == "CacheMiss":
        import warnings

        warnings.warn("nbagent.errors.CacheMiss is now nbagent.errors.ReplayMiss (events.CacheMiss is the event)",
                      DeprecationWarning, stacklevel=2)
        return ReplayMiss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
