"""The model side: pooled OpenAI-compatible client, retries, token counting and usage accounting."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .client import EndpointModel, LLMClient
    from .retry import RetryBudget, RetryPolicy
    from .tokens import TokenCounter, check_fits, image_tokens
    from .types import Model, ModelRequest, ModelResponse, TokenUsage, ToolCall
    from .usage import RunUsage, UsageLimits, cost_of

# names are imported on first use: ``nbagent.llm.types`` or ``.usage`` alone do not load the client (its HTTP
# stack, limiter and metrics), which an agent needs only when it first runs
_LAZY: dict[str, str] = {
    "EndpointModel": "client", "LLMClient": "client", "RetryBudget": "retry", "RetryPolicy": "retry",
    "TokenCounter": "tokens", "check_fits": "tokens", "image_tokens": "tokens", "Model": "types",
    "ModelRequest": "types", "ModelResponse": "types", "TokenUsage": "types", "ToolCall": "types",
    "RunUsage": "usage", "UsageLimits": "usage", "cost_of": "usage",
}

__all__ = [
    "EndpointModel",
    "LLMClient",
    "Model",
    "ModelRequest",
    "ModelResponse",
    "RetryBudget",
    "RetryPolicy",
    "RunUsage",
    "TokenCounter",
    "TokenUsage",
    "ToolCall",
    "UsageLimits",
    "check_fits",
    "cost_of",
    "image_tokens",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nbagent.llm' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
