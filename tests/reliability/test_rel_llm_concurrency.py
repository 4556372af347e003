"""A server with a fixed capacity: the simulated server's capacity mode (queue or 429), and the client's adaptive
limit finding that capacity over real HTTP with few rejections."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from support import sim_settings

from nbagent.errors import RateLimited
from nbagent.events import Event, EventBus
from nbagent.llm import LLMClient, ModelRequest
from nbagent.llm.limiter import ConcurrencyChanged
from nbagent.testing import SimServer

CAPACITY = 8


def request() -> ModelRequest:
    return ModelRequest(model="sim", messages=[{"role": "user", "content": "hi"}])


def client_for(srv: SimServer, events: list[Event], attempts: int = 20, **http: object) -> LLMClient:
    s = sim_settings(srv)
    s.http = dataclasses.replace(s.http, **http)
    s.retry = dataclasses.replace(s.retry, budget_min=10_000.0, max_attempts=attempts)  # retry every 429 here
    bus = EventBus()
    bus.tap(events.append)
    return LLMClient(s, bus=bus)


async def hammer(client: LLMClient, workers: int, total: int) -> None:
    todo = iter(range(total))

    async def worker() -> None:
        for _ in todo:
            await client.request(request())

    await asyncio.gather(*(worker() for _ in range(workers)))


async def test_capacity_reject_mode_answers_429_with_retry_after_beyond_capacity() -> None:
    async with SimServer(latency=0.2, capacity=2, overload="reject", overload_retry_after=3) as srv:
        events: list[Event] = []
        client = client_for(srv, events, attempts=1, concurrency="10")
        try:
            results = await asyncio.gather(*(client.request(request()) for _ in range(5)), return_exceptions=True)
        finally:
            await client.aclose()
        rejected = [r for r in results if isinstance(r, RateLimited)]
        assert len(rejected) == 3 and all(r.retry_after == 3 for r in rejected)
        stats = srv.stats()["capacity"]
        assert stats["rejected"] == 3 and stats["max_active"] == 2 and stats["active"] == 0


async def test_capacity_queue_mode_serves_everyone_never_more_than_capacity_at_once() -> None:
    async with SimServer(latency=0.05, capacity=2, overload="queue", record_history=False) as srv:
        events: list[Event] = []
        client = client_for(srv, events, concurrency="10")
        try:
            await asyncio.gather(*(client.request(request()) for _ in range(10)))
        finally:
            await client.aclose()
        stats = srv.stats()
        assert stats["completed"] == 10
        assert stats["capacity"]["max_active"] == 2 and stats["capacity"]["queued"] >= 1
        assert stats["capacity"]["rejected"] == 0 and stats["capacity"]["waiting"] == 0


@pytest.mark.parametrize("initial", [2, 64])
async def test_adaptive_limit_finds_a_rejecting_servers_capacity(initial: int) -> None:
    async with SimServer(latency=0.05, capacity=CAPACITY, overload="reject", overload_retry_after=0.05,
                         record_history=False) as srv:
        events: list[Event] = []
        client = client_for(srv, events, concurrency_initial=initial)
        try:
            await hammer(client, workers=64, total=600)
        finally:
            await client.aclose()
        (limiter,) = client.limiters
        stats = srv.stats()["capacity"]
        first_wave = max(initial - CAPACITY, 0)  # a limit far too high sends one wave the server turns away
        assert stats["rejected"] <= first_wave + 0.05 * 600, stats
        assert CAPACITY // 2 <= limiter.limit <= CAPACITY * 2, limiter.stats()
        changes = [e for e in events if isinstance(e, ConcurrencyChanged)]
        assert changes and changes[-1].limit == limiter.limit
        assert limiter.in_flight == 0 and limiter.waiting == 0


@pytest.mark.parametrize("initial", [2, 64])
async def test_adaptive_limit_sees_a_queueing_server_before_any_error(initial: int) -> None:
    async with SimServer(latency=0.05, capacity=CAPACITY, overload="queue", record_history=False) as srv:
        events: list[Event] = []
        client = client_for(srv, events, concurrency_initial=initial)
        try:
            await hammer(client, workers=64, total=600)
        finally:
            await client.aclose()
        (limiter,) = client.limiters
        assert srv.stats()["capacity"]["rejected"] == 0
        assert CAPACITY // 2 <= limiter.limit <= CAPACITY * 3, limiter.stats()
        if initial > CAPACITY:
            assert any(isinstance(e, ConcurrencyChanged) and e.reason == "latency" for e in events)
