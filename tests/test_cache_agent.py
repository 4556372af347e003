"""Agents with a response cache and a tool cache, end to end over real HTTP: re-runs cost nothing, a recorded
run replays with the server gone, deterministic tools run once, and a broken cache file never fails a run."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from support import Sleeps, sim_settings

from nbagent import Agent, tool
from nbagent.cache import ResponseCache, ToolCache
from nbagent.errors import ReplayMiss
from nbagent.events import CacheHit, CacheWarning, EventBus, LLMRequestStarted, LLMResponse
from nbagent.llm import LLMClient
from nbagent.runtime import Runtime
from nbagent.testing import SimServer


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-of-{key}"


def make_agent(sim: SimServer, bus: EventBus | None = None, tools: Any = (lookup,), **kw: Any) -> Agent:
    settings = sim_settings(sim)
    client = LLMClient(settings, bus=bus or EventBus(), sleep=Sleeps())
    return Agent("sim", list(tools), runtime=Runtime(settings, client=client), **kw)


def kinds(result: Any, kind: type) -> list[Any]:
    return [e for e in result.events if isinstance(e, kind)]


async def test_rerun_is_served_from_cache_and_charges_nothing(sim: SimServer, tmp_path: Path) -> None:
    sim.configure(tool_calls_per_run=2)
    cache = ResponseCache(tmp_path / "c.sqlite3")
    agent = make_agent(sim, cache=cache)
    first = await agent.run("what is x?")
    calls = sim.requests
    second = await agent.run("what is x?")
    assert first.ok and second.ok and second.output == first.output and calls == 3 and sim.requests == 3
    assert second.messages == first.messages
    u = second.usage
    assert u.cache_hits == 3 and u.tokens.input_tokens == u.tokens.output_tokens == 0 and u.cost == 0
    assert first.usage.tokens.input_tokens > 0
    assert [h.tier for h in kinds(second, CacheHit)] == ["memory"] * 3
    assert all(e.cached for e in kinds(second, LLMResponse)) and not kinds(second, LLMRequestStarted)
    m = second.metrics()
    assert m.hit_rate("response") == 1.0 and m.counter("cache.response.tokens_saved").value > 0
    assert first.metrics().hit_rate("response") == 0.0
    # the cache's stats and the runs' metrics are one fold of the same events: they agree to the last count
    stats = cache.stats()
    both = first.metrics().merge(m)
    assert (stats.hits, stats.misses, stats.stores) == (3, 3, 3)
    assert stats.hits == both.value("cache.response.hits") and stats.misses == both.value("cache.response.misses")
    assert stats.tokens_saved == both.value("cache.response.tokens_saved") > 0
    assert stats.lookup_p50["memory"] == both.histogram("cache.response.lookup.memory").p50
    await cache.aclose()
    await agent.client.aclose()


async def test_recorded_run_replays_with_the_server_stopped(tmp_path: Path) -> None:
    path = tmp_path / "recorded.sqlite3"
    sim = SimServer(tool_calls_per_run=2).start()
    try:
        recorder = ResponseCache(path, mode="record", namespace="nb")
        agent = make_agent(sim, cache=recorder)
        recorded = await agent.run("summarise the data")
        assert recorded.ok and sim.requests == 3
        await recorder.aclose()
        await agent.client.aclose()
    finally:
        sim.stop()
    assert not sim.running

    replay = ResponseCache(path, mode="replay", namespace="nb")
    agent = make_agent(sim, cache=replay)
    replayed = await agent.run("summarise the data")
    assert replayed.ok, replayed.stop_reason
    assert replayed.output == recorded.output and replayed.messages == recorded.messages
    assert sim.requests == 3 and not kinds(replayed, LLMRequestStarted)
    assert [h.tier for h in kinds(replayed, CacheHit)] == ["sqlite"] * 3

    changed = await agent.run("summarise the other data")
    assert changed.status == "error" and isinstance(changed.error, ReplayMiss)
    assert "replay mode" in changed.stop_reason and "summarise the other data" in changed.stop_reason
    assert "sim" in str(changed.error) and not kinds(changed, LLMRequestStarted)
    await replay.aclose()
    await agent.client.aclose()


async def test_streamed_run_replays_the_same_deltas(sim: SimServer, tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite3")
    agent = make_agent(sim, cache=cache, stream=True)
    live: list[str] = []
    first = await agent.run("tell me a story about caching", on_text=live.append)
    replayed: list[str] = []
    second = await agent.run("tell me a story about caching", on_text=replayed.append)
    assert len(live) > 3 and replayed == live and second.output == first.output
    assert sim.requests == 2  # tool call + answer, once
    await cache.aclose()
    await agent.client.aclose()


async def test_deterministic_tools_run_once(sim: SimServer, tmp_path: Path) -> None:
    runs: list[str] = []

    @tool(cache=True)
    def expensive(key: str) -> str:
        """A slow, deterministic computation."""
        runs.append(key)
        return f"computed-{key}"

    @tool
    def volatile(key: str) -> str:
        """Reads the clock."""
        runs.append("volatile")
        return "now"

    bus = EventBus()
    path = tmp_path / "c.sqlite3"
    tools = ToolCache(path, bus=bus)
    agent = make_agent(sim, bus=bus, tools=[expensive], tool_cache=tools)
    r1 = await agent.run("q")
    r2 = await agent.run("q")
    assert r1.ok and r2.ok and r1.output == r2.output and "computed-" in r2.output
    assert runs == ["x"] and sim.requests == 4  # no response cache: the model is asked every time
    [hit] = kinds(r2, CacheHit)
    assert hit.cache == "tool" and hit.tier == "memory" and hit.latency_saved > 0
    await tools.flush()
    # a new tool cache on the same file finds the output on disk
    fresh = ToolCache(path, bus=bus)
    assert await fresh.get("expensive", {"key": "x"}) == "computed-x"
    assert fresh.stats().hits_by_tier["sqlite"] == 1
    await fresh.aclose()
    # tools not declared cache=True always run
    plain = make_agent(sim, bus=bus, tools=[volatile], tool_cache=tools)
    await plain.run("q")
    await plain.run("q")
    assert runs.count("volatile") == 2
    await tools.aclose()
    await agent.client.aclose()
    await plain.client.aclose()


async def test_tool_cache_shares_the_response_cache_file(sim: SimServer, tmp_path: Path) -> None:
    cache = ResponseCache(tmp_path / "c.sqlite3", namespace="nb")
    tools = cache.tool_cache(mode="read-write")
    await tools.put("t", {"b": 2, "a": 1}, "out")
    assert await tools.get("t", {"a": 1.0, "b": 2}) == "out"
    await tools.flush()
    assert tools.store is cache.store and cache.stats().entries == 1
    off = cache.tool_cache(mode="off")
    assert await off.get("t", {"a": 1, "b": 2}) is None
    await cache.aclose()


async def test_a_corrupt_cache_file_never_fails_a_run(sim: SimServer, tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    path.write_bytes(b"\x00garbage\xff" * 1000)
    cache = ResponseCache(path)
    agent = make_agent(sim, cache=cache)
    first = await agent.run("q")
    second = await agent.run("q")
    assert first.ok and second.ok and second.output == first.output
    warnings = kinds(first, CacheWarning)
    assert len(warnings) == 1 and "cannot be used" in warnings[0].message
    assert second.usage.cache_hits == 2  # the memory tier still serves the re-run
    await cache.aclose()
    await agent.client.aclose()


async def test_a_locked_cache_file_never_fails_a_run(sim: SimServer, tmp_path: Path) -> None:
    path = tmp_path / "c.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        cache = ResponseCache(path)
        agent = make_agent(sim, cache=cache)
        result = await agent.run("q")
        assert result.ok and any("locked" in w.message for w in kinds(result, CacheWarning))
        assert (await agent.run("q")).usage.cache_hits == 2
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    await cache.aclose()
    await agent.client.aclose()
