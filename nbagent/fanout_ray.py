"""``nbagent.map(..., executor="ray")``: the batch spread over Ray actors, each with its own agent (rebuilt from
an :class:`AgentRecipe` or an ``agent_factory``) and pooled client. Imported only for Ray batches; Ray is an
optional extra (``nbagent[ray]``).
"""

from __future__ import annotations

import asyncio
import math
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .fanout import RunSpec, _default_agent

if TYPE_CHECKING:
    from .agent import Agent, RunResult

__all__ = ["AgentRecipe", "MapWorker", "portable", "run_on_ray"]


def portable(result: RunResult) -> RunResult:
    """``result`` made safe to send to another process: an error that does not pickle becomes a RuntimeError
    carrying its text, and the profiler output is dropped to its figures."""
    if result.error is not None:
        try:
            pickle.dumps(result.error)
        except Exception:  # noqa: BLE001 - any pickling failure
            result.error = RuntimeError(f"{type(result.error).__name__}: {result.error}")
    return result


@dataclass
class AgentRecipe:
    """What it takes to rebuild an agent in another process: every setting of it (``Agent.spec()``) and its
    settings; the runtime (bus, pooled client, store) is made there."""

    spec: dict[str, Any]
    settings: Any

    @classmethod
    def from_agent(cls, agent: Agent) -> AgentRecipe:
        from .llm.client import EndpointModel

        spec = agent.spec()
        if isinstance(spec["model"], EndpointModel):
            spec["model"] = agent.model_name
        endpoint = getattr(agent, "_endpoint", None)
        if endpoint is not None:  # resolved here (maybe the embedded model's address): the worker uses it too
            spec["base_url"], spec["api_key"] = endpoint.base_url, endpoint.api_key
        return cls(spec=spec, settings=agent.settings)

    def build(self) -> Agent:
        import copy

        from .agent import Agent
        from .runtime import Runtime

        spec = dict(self.spec, limits=copy.copy(self.spec["limits"]))
        return Agent(**spec, runtime=Runtime(self.settings))


class MapWorker:
    """A Ray actor: one agent with its own pooled client, running the runs it is sent on its event loop."""

    def __init__(self, recipe: AgentRecipe | Callable[[], Agent] | None) -> None:
        self._recipe = recipe
        self._agent: Agent | None = None

    def _get(self) -> Agent:
        if self._agent is None:
            r = self._recipe
            self._agent = r.build() if isinstance(r, AgentRecipe) else r() if r is not None else _default_agent()
        return self._agent

    async def run(self, spec: RunSpec) -> tuple[RunResult, dict[str, Any]]:
        result = await self._get().run(spec.prompt, name=spec.name, deps=spec.deps)
        return portable(result), result.metrics().to_dict()

    async def stats(self) -> dict[str, Any]:
        import os
        import socket

        out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
        if self._agent is not None:
            out.update(self._agent.client.pool_stats())
        return out

    async def close(self) -> None:
        if self._agent is not None:
            await self._agent.runtime.aclose()


async def run_on_ray(specs: list[RunSpec], *, agent: Agent | None, agent_factory: Callable[[], Agent] | None,
                      concurrency: int, workers: int | None, address: str | None, bar: Any,
                      on_result: Callable[[RunResult], None] | None,
                      ) -> tuple[list[RunResult], list[dict[str, Any]], list[dict[str, Any]]]:
    try:
        import ray
    except ImportError:
        raise ImportError("executor='ray' needs Ray: pip install 'nbagent[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address) if address else ray.init()
    recipe: AgentRecipe | Callable[[], Agent] | None = agent_factory
    if recipe is None and agent is not None:
        recipe = AgentRecipe.from_agent(agent)
    n = len(specs)
    cpus = int(ray.cluster_resources().get("CPU", 1)) or 1
    n_workers = max(1, min(workers or cpus, concurrency, n or 1))
    per = max(1, math.ceil(concurrency / n_workers))
    actor_cls: Any = ray.remote(MapWorker)
    options = {"max_concurrency": per, "num_cpus": 0, "scheduling_strategy": "SPREAD"}
    actors: list[Any] = [actor_cls.options(**options).remote(recipe) for _ in range(n_workers)]
    results: list[RunResult | None] = [None] * n
    regs: list[dict[str, Any]] = [{} for _ in range(n)]
    todo = iter(range(n))

    async def feed(actor: Any) -> None:
        for i in todo:
            result, reg = await actor.run.remote(specs[i])
            results[i], regs[i] = result, reg
            if on_result is not None:
                on_result(result)
            if bar is not None:
                bar.update(1)

    try:
        await asyncio.gather(*(feed(actors[k % n_workers]) for k in range(min(concurrency, n))))
        stats = list(await asyncio.gather(*(a.stats.remote() for a in actors)))
        await asyncio.gather(*(a.close.remote() for a in actors))
    finally:
        for a in actors:
            ray.kill(a)
    return [r for r in results if r is not None], regs, stats
