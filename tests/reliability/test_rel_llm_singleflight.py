"""Single-flight followers do not inherit the leader's own failures: a leader that is cancelled, whose
``on_text`` raises, or that timed out under shorter timeouts hands the call over to a follower; the server's
own answers (errors included) are still shared."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import Sleeps, sim_settings

from nbagent.cache import CachedModel, ResponseCache
from nbagent.errors import LLMTimeout
from nbagent.events import EventBus
from nbagent.llm import EndpointModel, LLMClient, ModelRequest
from nbagent.testing import SimServer


def ask(*, stream: bool = False) -> ModelRequest:
    return ModelRequest(model="sim", messages=[{"role": "user", "content": "hello"}], stream=stream)


class Rig:
    """One response cache shared by models on clients with different settings."""

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.cache = ResponseCache(":memory:", bus=EventBus())
        self.clients: list[LLMClient] = []

    def model(self, **settings: Any) -> CachedModel:
        client = LLMClient(sim_settings(self.sim, **settings), bus=EventBus(), sleep=Sleeps())
        self.clients.append(client)
        return self.cache.wrap(EndpointModel(client, client.settings.endpoint()))

    async def leading(self, m: CachedModel, **kw: Any) -> asyncio.Task[Any]:
        """Start ``m.request`` and return once it leads a single flight (its request reached the server)."""
        task = asyncio.create_task(m.request(ask(**kw.pop("req", {})), **kw))
        while self.sim.requests == 0 and not task.done():
            await asyncio.sleep(0.005)
        return task

    async def following(self, m: CachedModel, n: int = 1) -> list[asyncio.Task[Any]]:
        """Start ``n`` identical requests and return once each waits on the leader."""
        tasks = [asyncio.create_task(m.request(ask())) for _ in range(n)]
        await asyncio.sleep(0)  # each runs up to its wait on the in-flight future (the lookups are in memory)
        assert not any(t.done() for t in tasks)
        return tasks

    async def aclose(self) -> None:
        await self.cache.aclose()
        for c in self.clients:
            await c.aclose()


@pytest.fixture
async def rig(sim: SimServer) -> AsyncIterator[Rig]:
    r = Rig(sim)
    yield r
    await r.aclose()


async def test_a_leader_timing_out_under_shorter_timeouts_hands_over(rig: Rig) -> None:
    rig.sim.configure(latency=1.5)
    impatient = rig.model(http__request_timeout=0.5, retry__max_attempts=1)
    leader = await rig.leading(impatient)
    [follower] = await rig.following(rig.model())
    with pytest.raises(LLMTimeout):
        await leader
    resp = await follower
    assert resp.text == "Answer to: hello" and not resp.cached and rig.sim.requests == 2


async def test_followers_under_the_same_timeouts_share_the_timeout(rig: Rig) -> None:
    rig.sim.configure(latency=1.5)
    m = rig.model(http__request_timeout=0.5, retry__max_attempts=1)
    leader = await rig.leading(m)
    followers = await rig.following(m, 3)
    results = await asyncio.gather(leader, *followers, return_exceptions=True)
    assert all(isinstance(r, LLMTimeout) for r in results) and rig.sim.requests == 1


async def test_a_leader_whose_on_text_raises_hands_over(rig: Rig) -> None:
    rig.sim.configure(chunk_delay=0.3)  # the first text comes well after the followers have joined
    m = rig.model()

    def on_text(delta: str) -> None:
        raise RuntimeError("the leader's display broke")

    leader = await rig.leading(m, on_text=on_text, req={"stream": True})
    followers = await rig.following(m, 3)
    with pytest.raises(RuntimeError, match="display broke"):
        await leader
    results = await asyncio.gather(*followers)
    assert {r.text for r in results} == {"Answer to: hello"}
    assert rig.sim.requests == 2  # one follower made the call again, the others waited for it
    assert sum(not r.cached for r in results) == 1


async def test_a_cancelled_leader_hands_over_to_one_follower(rig: Rig) -> None:
    rig.sim.configure(latency=0.3)
    m = rig.model()
    leader = await rig.leading(m)
    followers = await rig.following(m, 3)
    leader.cancel()
    results = await asyncio.gather(*followers)
    assert leader.cancelled()
    assert {r.text for r in results} == {"Answer to: hello"} and rig.sim.requests == 2
    assert not rig.cache._inflight
