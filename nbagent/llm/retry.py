"""Our retry policy: only transient errors, ``Retry-After`` honoured, full-jitter backoff, a budget.

* Retried: 408/409/429, 5xx, connection refused/reset/dropped, timeouts. Never: auth, bad request,
  context length, malformed answers.
* The wait is the server's ``Retry-After`` when it sent one (a value over ``max_retry_after`` gives up
  at once rather than sleeping for minutes), else full jitter: ``uniform(0, min(max_delay, base * 2**n))``.
* A retry budget (a token bucket shared by everything using one client) stops retry storms: each request
  earns ``budget_ratio`` retries on top of a reserve of ``budget_min``; each retry spends one.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from ..config import RetrySettings
from ..errors import LLMTimeout, RateLimited, ServerError, TransientLLMError
from .usage import check_number

__all__ = ["RetryBudget", "RetryPolicy", "retry_reason"]


class RetryBudget:
    """Token bucket of retries: ``deposit()`` per request, ``withdraw()`` per retry."""

    def __init__(self, ratio: float = 0.2, reserve: float = 10.0) -> None:
        check_number("retry budget ratio", ratio)
        check_number("retry budget reserve", reserve)
        self.ratio = ratio
        self.capacity = reserve + 100 * ratio  # earned retries do not pile up without bound
        self.balance = reserve
        self.spent = 0
        self.refused = 0

    def deposit(self) -> None:
        self.balance = min(self.capacity, self.balance + self.ratio)

    def withdraw(self) -> bool:
        if self.balance >= 1.0:
            self.balance -= 1.0
            self.spent += 1
            return True
        self.refused += 1
        return False


def retry_reason(exc: BaseException) -> str:
    """A short label for why an attempt failed: ``429``, ``503``, ``connection``, ``timeout:read``..."""
    if isinstance(exc, LLMTimeout):
        return f"timeout:{exc.phase}"
    status = getattr(exc, "status_code", None)
    if status is not None:
        return str(status)
    return "connection"


class RetryPolicy:
    """Decides whether and how long to wait before the next attempt."""

    def __init__(self, settings: RetrySettings | None = None, *, rng: Callable[[], float] = random.random) -> None:
        self.settings = settings or RetrySettings()
        self.rng = rng
        self.budget = RetryBudget(self.settings.budget_ratio, self.settings.budget_min)

    def wait_before_retry(self, attempt: int, exc: BaseException) -> float | None:
        """Seconds to sleep before attempt ``attempt + 1``, or None when we must not retry."""
        s = self.settings
        if not isinstance(exc, TransientLLMError) or attempt >= s.max_attempts:
            return None
        retry_after = getattr(exc, "retry_after", None) if isinstance(exc, (RateLimited, ServerError)) else None
        if retry_after is not None:
            return retry_after if retry_after <= s.max_retry_after else None
        return self.rng() * min(s.max_delay, s.base_delay * 2 ** (attempt - 1))
