"""``nbagent.fanout.map``: batches on the local loop, and on a local Ray instance."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nbagent import Agent, Settings, tool
from nbagent.events import Event, EventBus, RunFinished, RunStarted
from nbagent.fanout import Batch, BatchResult, RunSpec, amap
from nbagent.fanout import map as nb_map
from nbagent.runtime import Runtime
from nbagent.store import RunStore
from nbagent.testing import SimServer


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value-of-{key}"


def make_agent(url: str, system: str | None = None, **overrides: Any) -> Agent:
    settings = Settings.load(env={"NBAGENT_BASE_URL": url, "NBAGENT_MODEL": "sim"}, **overrides)
    bus = EventBus()
    return Agent("sim", [lookup], runtime=Runtime(settings, bus=bus), system=system)


class Peak:
    """Runs in flight on a bus, and the most seen at once."""

    def __init__(self, bus: EventBus) -> None:
        self.now = self.peak = 0
        bus.tap(self)

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, RunStarted):
            self.now += 1
            self.peak = max(self.peak, self.now)
        elif isinstance(ev, RunFinished):
            self.now -= 1


def test_map_blocks_outside_a_loop(sim: SimServer) -> None:
    agent = make_agent(sim.url)
    prompts = [f"q{i}" for i in range(12)]
    batch = nb_map(prompts, agent=agent, concurrency=4, progress=False)
    assert isinstance(batch, BatchResult) and len(batch) == 12 and batch.ok == 12 and not batch.failed
    assert batch.outputs == [f"Answer to: q{i} (tool said: value-of-x)" for i in range(12)]  # item order
    assert batch.metrics.counter("llm.calls").value == 24
    assert batch.metrics.histogram("run.duration").count == 12
    assert batch.executor == "local" and batch.throughput > 0 and "12 runs (12 ok" in batch.summary()
    df = batch.to_dataframe()
    assert list(df["prompt"]) == prompts and set(df["status"]) == {"ok"}


async def test_map_in_a_running_loop_returns_an_awaitable_batch(sim: SimServer) -> None:
    sim.configure(latency=0.02)
    agent = make_agent(sim.url)
    peak = Peak(agent.bus)
    specs: list[Any] = [{"prompt": f"p{i}", "name": f"item-{i}", "meta": {"i": i}, "lang": "en"} for i in range(10)]
    specs.append(RunSpec("last", name="the-last"))
    specs.append("plain prompt")
    batch = nb_map(specs, agent=agent, concurrency=3, progress=True, desc="test")
    assert isinstance(batch, Batch)
    result = await batch
    assert batch.done() and len(result) == 12 and result.ok == 12
    assert [r.name for r in result.results[:3]] == ["item-0", "item-1", "item-2"]
    assert result[10].name == "the-last" and result.outputs[11].startswith("Answer to: plain prompt")
    assert peak.peak == 3  # the concurrency bound holds, and is used
    df = result.to_dataframe()
    assert list(df["i"][:10]) == list(range(10)) and df["lang"][0] == "en"
    await agent.client.aclose()


async def test_amap_with_a_factory_and_failures(sim: SimServer) -> None:
    sim.configure(fault_rate=1.0, fault_kinds=("500",))
    made: list[Agent] = []

    def factory() -> Agent:
        made.append(make_agent(sim.url, retry__max_attempts=1))
        return made[-1]

    result = await amap(["a", "b", "c"], agent_factory=factory, concurrency=2, progress=False)
    assert len(made) == 1 and result.ok == 0 and len(result.failed) == 3
    assert {r.status for r in result} == {"error"} and result.metrics.counter("llm.errors").value == 3
    with pytest.raises(ValueError):
        await amap(["a"], agent=made[0], executor="dask")
    with pytest.raises(TypeError):
        RunSpec.of(42)  # type: ignore[arg-type]


# --- Ray -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_local() -> Iterator[Any]:
    ray = pytest.importorskip("ray")  # an optional extra; with it installed this always runs
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)])}})
    yield ray
    ray.shutdown()


def build_remote_agent(url: str) -> Agent:
    return make_agent(url)


async def test_map_on_ray_merges_results_and_metrics(ray_local: Any, tmp_path: Path) -> None:
    with SimServer(latency=0.01) as sim:
        agent = make_agent(sim.url, system="Be brief.")
        store = RunStore(tmp_path / "ray.db")
        prompts = [f"r{i}" for i in range(16)]
        batch = await amap(prompts, agent=agent, concurrency=6, executor="ray", store=store, progress=False)
        local = await amap(prompts[:4], agent=agent, concurrency=2, progress=False)
        await agent.client.aclose()
    assert batch.executor == "ray" and len(batch) == 16 and batch.ok == 16
    assert batch.outputs == [f"Answer to: r{i} (tool said: value-of-x)" for i in range(16)]
    assert batch[0].messages[0] == {"role": "system", "content": "Be brief."}  # the agent was rebuilt whole
    # every worker has its own process and pooled client...
    assert len(batch.workers) == 2 and len({w["pid"] for w in batch.workers}) == 2
    assert os.getpid() not in {w["pid"] for w in batch.workers}
    assert all(w["peak_in_flight"] >= 1 and w["transport"] for w in batch.workers)
    # ...and their metrics merge into the same figures a local batch has
    m = batch.metrics
    assert m.counter("llm.calls").value == 32 and m.counter("runs.finished").value == 16
    assert m.histogram("run.duration").count == 16 and m.histogram("tool.duration").count == 16
    assert set(m.names()) == set(local.metrics.names())
    # the driver's store kept the remote runs, events included
    rows = store.runs(limit=None)
    assert len(rows) == 16 and {r["status"] for r in rows} == {"ok"}
    one = store.load(batch[0].run_id)
    assert one.messages == batch[0].messages and len(one.events) == len(batch[0].events)
    store.close()


def test_map_on_ray_with_a_factory_blocks_outside_a_loop(ray_local: Any) -> None:
    with SimServer() as sim:
        url = sim.url
        batch = nb_map([{"prompt": "x", "name": "remote-x"}, "y", "z"], agent_factory=lambda: build_remote_agent(url),
                       executor="ray", concurrency=3, workers=1, progress=False)
    assert isinstance(batch, BatchResult) and batch.ok == 3 and len(batch.workers) == 1
    assert batch[0].name == "remote-x" and batch.outputs[1].startswith("Answer to: y")
    assert batch.metrics.counter("llm.calls").value == 6
