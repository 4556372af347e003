"""The model side: pooled OpenAI-compatible client, retries, token counting and usage accounting."""

from __future__ import annotations

from .client import EndpointModel, LLMClient
from .retry import RetryBudget, RetryPolicy
from .tokens import TokenCounter, check_fits, image_tokens
from .types import Model, ModelRequest, ModelResponse, TokenUsage, ToolCall
from .usage import RunUsage, UsageLimits, cost_of

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
