"""Per-run usage accounting and limits: steps, requests, tokens, cost and wall time."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from ..config import LimitSettings, Price
from ..errors import UsageLimitExceeded
from .types import TokenUsage

__all__ = ["RunUsage", "UsageLimits", "check_number", "cost_of"]


def cost_of(usage: TokenUsage, price: Price | None) -> float | None:
    """USD cost of ``usage`` at ``price`` (per million tokens); None when the price is unknown (never a
    misleading 0: set one in the config file's ``[prices]`` table)."""
    if price is None:
        return None
    cached_price = price.input if price.cached_input is None else price.cached_input
    uncached = max(usage.input_tokens - usage.cached_tokens, 0)
    return (uncached * price.input + usage.cached_tokens * cached_price + usage.output_tokens * price.output) / 1e6


def check_number(name: str, value: Any, *, positive: bool = False, optional: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite number ``>= 0`` (``> 0`` when
    ``positive``; ``None`` allowed when ``optional``). NaN passes every ``<`` test, so it is refused by name.
    """
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        bound = "> 0" if positive else ">= 0"
        extra = " (or None for no limit)" if optional else ""
        raise ValueError(f"{name} must be a finite number {bound}{extra}, got {value!r}")


@dataclass
class UsageLimits:
    """Ceilings for one run; ``None`` means no limit. Each must be a finite number ``>= 0`` (else ValueError)."""

    max_steps: int | None = 20
    max_requests: int | None = None
    max_input_tokens: int | None = None
    max_output_tokens: int | None = None
    max_cost: float | None = None
    max_wall_time: float | None = None

    def __setattr__(self, name: str, value: Any) -> None:  # checks the constructor's arguments too
        check_number(name, value, optional=True)
        super().__setattr__(name, value)

    @classmethod
    def from_settings(cls, s: LimitSettings) -> UsageLimits:
        return cls(s.max_steps, s.max_requests, s.max_input_tokens, s.max_output_tokens, s.max_cost, s.max_wall_time)


@dataclass
class RunUsage:
    """What one run has used so far."""

    steps: int = 0
    requests: int = 0
    cache_hits: int = 0  # model calls answered by the response cache (no tokens, no cost)
    tool_calls: int = 0
    tokens: TokenUsage = field(default_factory=TokenUsage)
    cost: float = 0.0  # USD of the calls whose price is known
    unpriced_calls: int = 0  # model calls whose model has no known price
    started: float = field(default_factory=time.monotonic)

    @property
    def known_cost(self) -> float | None:
        """The run's cost, or None when a call's price is unknown."""
        return None if self.unpriced_calls else self.cost

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def add_response(self, usage: TokenUsage, cost: float | None) -> None:
        self.requests += 1
        self.tokens = self.tokens + usage
        if cost is None:
            self.unpriced_calls += 1
        else:
            self.cost += cost

    def add_cached(self) -> None:
        self.cache_hits += 1

    def check(self, limits: UsageLimits, *, before_request: bool = False) -> None:
        """Raise :class:`UsageLimitExceeded` for the first limit reached.

        ``before_request`` checks whether one more request (and step) is allowed; otherwise totals so far.
        """
        if (limits.max_steps is None or self.steps + 1 <= limits.max_steps) and limits.max_requests is None \
                and limits.max_input_tokens is None and limits.max_output_tokens is None \
                and limits.max_cost is None and limits.max_wall_time is None:
            return  # the usual limits (steps only) with room left: nothing below can raise
        extra = 1 if before_request else 0
        checks: tuple[tuple[str, float, float | None], ...] = (
            ("max_steps", self.steps + extra, limits.max_steps),
            ("max_requests", self.requests + extra, limits.max_requests),
        )
        for name, value, maximum in checks:
            if maximum is not None and value > maximum:
                raise UsageLimitExceeded(
                    f"{name} reached: {int(value) - extra} of {maximum} used", limit=name, value=value - extra,
                    maximum=maximum)
        totals: tuple[tuple[str, float, float | None], ...] = (
            ("max_input_tokens", self.tokens.input_tokens, limits.max_input_tokens),
            ("max_output_tokens", self.tokens.output_tokens, limits.max_output_tokens),
            ("max_cost", self.cost, limits.max_cost),
            ("max_wall_time", self.elapsed, limits.max_wall_time),
        )
        for name, value, maximum in totals:
            if maximum is not None and value >= maximum:
                raise UsageLimitExceeded(
                    f"{name} reached: {value:.6g} >= {maximum:.6g}", limit=name, value=value, maximum=maximum
                )
