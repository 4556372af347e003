"""Profiling a run (pyinstrument, memory, wall-time breakdown) and performance budgets."""

from __future__ import annotations

import asyncio
import logging
import mmap
import tracemalloc
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from support import sim_settings

from nbagent import Agent, tool
from nbagent.events import CacheHit, CacheMiss, Event, EventBus, LLMResponse, RunFinished, RunStarted
from nbagent.llm import LLMClient
from nbagent.metrics.awaits import LOOP_BUSY, AwaitSampler, await_chain
from nbagent.metrics.budgets import Budget, BudgetBreached, BudgetMonitor, parse_budgets
from nbagent.metrics.profile import (
    BREAKDOWN_KEYS,
    WALL_BREAKDOWN_KEYS,
    RunProfile,
    RunProfiler,
    rss_bytes,
    wall_breakdown,
)
from nbagent.runtime import Runtime
from nbagent.store import RunStore
from nbagent.testing import SimServer


def resident(n: int) -> mmap.mmap:
    """``n`` bytes of fresh anonymous memory, every page written (so resident whatever the allocator kept)."""
    m = mmap.mmap(-1, n)
    for i in range(0, n, mmap.PAGESIZE):
        m[i] = 1
    return m


def spin_for_a_while() -> int:
    total = 0
    for i in range(400_000):
        total += i * i
    return total


@tool
async def crunch(key: str) -> str:
    """Work on a key: some CPU, some waiting, some memory."""
    spin_for_a_while()
    block = resident(30_000_000)  # held across an await: part of the run's peak
    await asyncio.sleep(0.25)  # long enough to be sampled on a busy machine (the sampler ticks every 5 ms)
    return f"{key}:{len(block)}"


def make_agent(sim: SimServer, bus: EventBus | None = None) -> Agent:
    settings = sim_settings(sim)
    bus = bus or EventBus()
    return Agent("sim", [crunch], runtime=Runtime(settings, bus=bus, client=LLMClient(settings, bus=bus)))


async def test_profiled_run_has_a_profile_breakdown_and_memory(sim: SimServer, tmp_path: Path) -> None:
    sim.configure(latency=0.02)
    agent = make_agent(sim)
    store = RunStore(tmp_path / "runs.db")
    store.attach(agent.bus)
    was_tracing = tracemalloc.is_tracing()
    result = await agent.run("go", profile=True)
    assert result.ok
    prof = result.profile
    assert isinstance(prof, RunProfile) and prof.run_id == result.run_id
    assert "spin_for_a_while" in prof.text and "crunch" in prof.text  # sampled in the run's own task
    assert "pyinstrument" in prof.html.lower()
    b = prof.breakdown
    assert set(b) == {"total", *BREAKDOWN_KEYS}
    assert sum(b[k] for k in BREAKDOWN_KEYS) == pytest.approx(b["total"])
    assert result.record is not None and b == {"total": result.record.duration, **result.record.breakdown()}
    assert b["tools"] >= 0.05 and b["model_wait"] >= 0.04  # the tool sleeps 50 ms; two model calls of 20 ms
    # the tool's sleep, by its await chain (its innermost frames: the tool's own, and the agent's call of it)
    assert "awaited (wall time" in prof.awaited
    assert "_call_tool > _run_tool > Tool.call > crunch > sleep" in prof.awaited
    assert prof.memory_peak is not None and prof.memory_peak >= 20_000_000  # measured, not guessed
    assert prof.rss_delta is not None and prof.memory_traced is None
    assert tracemalloc.is_tracing() == was_tracing
    html = prof._repr_html_()
    assert "<iframe" in html and "sandbox_wait" in html and "memory peak" in html
    assert "model_wait" in str(prof) and "awaited" in str(prof)

    await store.aflush()
    stored = store.load(result.run_id)
    assert stored.profile_html == prof.html
    assert stored.breakdown() == pytest.approx({k: v for k, v in b.items() if k != "total"})
    assert "profile.txt" in stored.artifacts and "profile.json" in stored.artifacts
    store.close()
    await agent.client.aclose()


async def test_runs_without_profile_have_none(sim: SimServer) -> None:
    agent = make_agent(sim)
    result = await agent.run("go")
    assert result.profile is None
    b = wall_breakdown(result.events, result.timings)  # the breakdown still works for any run
    assert sum(b[k] for k in WALL_BREAKDOWN_KEYS) == pytest.approx(b["total"])
    await agent.client.aclose()


async def test_concurrent_profiled_runs_each_get_their_own(sim: SimServer) -> None:
    agent = make_agent(sim)
    results = await asyncio.gather(agent.run("a", profile=True), agent.run("b", profile=True),
                                   agent.run("c"))
    assert results[0].profile is not None and results[1].profile is not None and results[2].profile is None
    assert results[0].profile.run_id != results[1].profile.run_id
    assert all("crunch" in r.profile.text for r in results[:2])
    await agent.client.aclose()


async def test_start_with_profile(sim: SimServer) -> None:
    agent = make_agent(sim)
    handle = agent.start("go", profile=True)
    result = await handle
    assert result.profile is not None and result.profile.breakdown["total"] > 0
    await agent.client.aclose()


def test_wall_breakdown_attributes_each_phase() -> None:
    events: list[Any] = [
        LLMResponse(latency=0.30),
        LLMResponse(latency=0.01, cached=True),  # served by the cache: not model time
        CacheHit(cache="response", lookup_seconds=0.01),
        CacheMiss(cache="response", lookup_seconds=0.02),
        CacheHit(cache="tool", lookup_seconds=0.005),
        SimpleNamespace(kind="sandbox_leased", wait=0.1),
    ]
    b = wall_breakdown(events, {"total": 1.0, "model": 0.35, "tools": 0.3, "overhead": 0.35})
    assert b["model"] == pytest.approx(0.30)
    assert b["cache"] == pytest.approx(0.035)
    assert b["sandbox_wait"] == pytest.approx(0.1)
    assert b["tools"] == pytest.approx(0.195)
    assert b["overhead"] == pytest.approx(0.37)
    # parts never exceed the phase that contains them
    clamp = wall_breakdown([SimpleNamespace(kind="sandbox_leased", wait=5.0)], {"total": 1.0, "tools": 0.5})
    assert clamp["sandbox_wait"] == 0.5 and clamp["tools"] == 0.0 and clamp["overhead"] == 0.5


def test_tracemalloc_on_request() -> None:
    was_tracing = tracemalloc.is_tracing()
    p = RunProfiler("t", sample=False, tracemalloc=True).start()
    block = bytearray(5_000_000)
    p.stop()
    del block
    assert p.memory_traced is not None and p.memory_traced >= 5_000_000
    assert tracemalloc.is_tracing() == was_tracing


def test_rss_is_measured() -> None:
    before = rss_bytes()
    block = resident(30_000_000)
    after = rss_bytes()
    assert before is not None and after is not None and after - before >= 20_000_000
    del block


# --- budgets -------------------------------------------------------------------------------------


def test_parse_budgets() -> None:
    got = parse_budgets("p95 latency <= 2s, tokens < 4k, memory <= 50MB, cost <= $0.01, p99 latency <= 500ms")
    assert got == [Budget("latency", 2.0, "p95"), Budget("tokens", 4000.0), Budget("memory", 50e6),
                   Budget("cost", 0.01), Budget("latency", 0.5, "p99")]
    assert parse_budgets([Budget("steps", 3), "mean latency <= 1"])[1] == Budget("latency", 1.0, "mean")
    for bad in ("latency", "p95 speed <= 1", "p42 latency <= 1", "latency <= 1 parsecs"):
        with pytest.raises(ValueError):
            parse_budgets(bad)


def finished(rid: str, duration: float = 0.1, tokens: int = 10) -> RunFinished:
    return RunFinished(run_id=rid, duration=duration, input_tokens=tokens, output_tokens=0)


def test_per_run_budget_breach_is_an_event_and_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.tap(seen.append)
    monitor = BudgetMonitor("tokens <= 100")
    monitor.attach(bus)
    with caplog.at_level(logging.WARNING, logger="nbagent.budgets"):
        bus.emit(finished("a", tokens=50))
        bus.emit(finished("b", tokens=150))
        bus.emit(finished("c", tokens=170))
    breaches = [e for e in seen if isinstance(e, BudgetBreached)]
    assert [(e.run_id, e.value, e.limit) for e in breaches] == [("b", 150, 100), ("c", 170, 100)]
    assert breaches[0].to_dict()["kind"] == "budget_breached"
    assert "budget exceeded: max tokens <= 100" in caplog.text
    assert caplog.text.count("budget exceeded") == 1  # one warning; every breach is still an event
    (row,) = monitor.status()
    assert row["ok"] is False and row["value"] == 170 and row["runs"] == 3 and not monitor.ok()


def test_distribution_budget_fires_on_each_crossing() -> None:
    bus = EventBus()
    monitor = BudgetMonitor([Budget("latency", 1.0, "p95", min_runs=5)])
    monitor.attach(bus)
    for i in range(4):
        bus.emit(finished(f"slow{i}", duration=5.0))
    assert monitor.breaches == [] and monitor.status()[0]["value"] is None  # not enough runs yet
    bus.emit(finished("slow4", duration=5.0))
    assert len(monitor.breaches) == 1 and monitor.breaches[0].runs == 5
    bus.emit(finished("slow5", duration=5.0))
    assert len(monitor.breaches) == 1  # still over: no new event
    for i in range(200):
        bus.emit(finished(f"fast{i}", duration=0.1))
    assert monitor.status()[0]["ok"] is True and monitor.ok()
    for i in range(100):
        bus.emit(finished(f"slow-again{i}", duration=5.0))
    assert len(monitor.breaches) == 2


def test_memory_budget_uses_measured_growth() -> None:
    bus = EventBus()
    monitor = BudgetMonitor("memory <= 10MB")
    monitor.attach(bus)
    bus.emit(RunStarted(run_id="big"))
    block = resident(40_000_000)
    bus.emit(finished("big"))
    del block
    assert len(monitor.breaches) == 1 and monitor.breaches[0].value >= 30_000_000
    assert monitor.histograms["memory"].count == 1


async def test_breaches_of_a_real_run_are_in_its_events_and_the_store(sim: SimServer, tmp_path: Path) -> None:
    agent = make_agent(sim)
    store = RunStore(tmp_path / "b.db")
    store.attach(agent.bus)
    BudgetMonitor("steps <= 1, latency <= 1000s").attach(agent.bus)
    result = await agent.run("go")
    await agent.client.aclose()
    breaches = [e for e in result.events if isinstance(e, BudgetBreached)]
    assert [(b.run_id, b.budget, b.value) for b in breaches] == [(result.run_id, "max steps <= 1", 2)]
    await store.aflush()
    typed = store.events(result.run_id, typed=True)
    assert [e for e in typed if isinstance(e, BudgetBreached)] == breaches
    store.close()


async def test_await_sampler_attributes_wall_time_to_what_the_task_awaited() -> None:
    gate = asyncio.Event()

    async def inner_wait() -> None:
        await gate.wait()

    async def outer() -> None:
        await asyncio.gather(inner_wait(), asyncio.sleep(0))

    task = asyncio.create_task(outer())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    chain = await_chain(task)
    assert any("outer" in f for f in chain) and any("inner_wait" in f for f in chain)  # through the gather
    assert any("Event.wait" in f for f in chain) and chain[-1].startswith("[await")
    sampler = AwaitSampler(task, interval=0.001).start()
    while sum(sampler.seconds.values()) < 0.02:  # bounded by the samples it waits for, not by a clock
        await asyncio.sleep(0.001)
    gate.set()
    await task
    sampler.stop()
    top = next(chain for chain, _ in sampler.most_common() if chain != LOOP_BUSY)
    assert any("inner_wait" in f for f in top)
    assert "inner_wait" in sampler.table()
