"""Non-finite and negative numbers are refused, by name, where they enter the client: usage limits,
timeouts and retry budgets (NaN passes every ``<`` test, so unchecked it would silently disable a limit)."""

from __future__ import annotations

import dataclasses
import math

import pytest
from support import sim_settings

from nbagent.events import EventBus
from nbagent.llm import LLMClient, ModelRequest, RetryBudget, UsageLimits
from nbagent.testing import Fault, SimServer

BAD = [math.nan, math.inf, -math.inf, -1]


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(UsageLimits)])
def test_usage_limits(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"^{name} must be a finite number >= 0"):
        UsageLimits(**{name: value})
    limits = UsageLimits()
    with pytest.raises(ValueError, match=name):
        setattr(limits, name, value)


def test_usage_limits_that_are_fine() -> None:
    limits = UsageLimits(max_steps=0, max_requests=None, max_cost=0.25, max_wall_time=30)
    assert limits.max_cost == 0.25
    with pytest.raises(ValueError, match="max_steps must be a number"):
        UsageLimits(max_steps="3")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 0.0])
@pytest.mark.parametrize("name", ["read_timeout", "request_timeout", "ttft_timeout", "idle_timeout",
                                  "connect_timeout"])
def test_client_timeouts(sim: SimServer, name: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"^http\.{name}\b.*must be a finite number > 0"):  # refused at load
        LLMClient(sim_settings(sim, **{f"http__{name}": value}), bus=EventBus())


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
@pytest.mark.parametrize("name", ["budget_ratio", "budget_min", "base_delay", "max_delay", "max_retry_after"])
def test_client_retry_settings(sim: SimServer, name: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"^retry\.{name}\b.*must be a finite number >= 0"):
        LLMClient(sim_settings(sim, **{f"retry__{name}": value}), bus=EventBus())


@pytest.mark.parametrize("value", [math.nan, math.inf, -0.5])
def test_retry_budget(value: float) -> None:
    with pytest.raises(ValueError, match="retry budget ratio"):
        RetryBudget(ratio=value)
    with pytest.raises(ValueError, match="retry budget reserve"):
        RetryBudget(reserve=value)


@pytest.mark.parametrize("header", [math.nan, math.inf])
async def test_a_non_finite_retry_after_is_ignored(sim: SimServer, header: float) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    client = LLMClient(sim_settings(sim), bus=EventBus(), sleep=sleep, rng=lambda: 0.5)
    sim.inject(Fault("429", retry_after=header))
    resp = await client.request(ModelRequest(model="sim", messages=[{"role": "user", "content": "hi"}]))
    assert resp.attempts == 2 and waits == [0.25]  # full jitter, as if no Retry-After was sent
    await client.aclose()
