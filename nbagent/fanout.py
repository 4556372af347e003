"""Fan-out: run a batch of prompts with bounded concurrency, on this event loop or on a Ray cluster.

::

    batch = await nbagent.map(prompts, agent=agent, concurrency=20)      # notebook: on the kernel's loop
    batch = nbagent.map(prompts, agent=agent, concurrency=20)            # script: blocks until done
    batch = nbagent.map(specs, agent=agent, executor="ray", address="ray://head:10001")

    batch.outputs, batch.ok, batch.failed, batch.metrics.histogram("run.duration").p95, batch.to_dataframe()

Items are prompts, dicts or :class:`RunSpec` (``prompt``, ``name``, ``deps``, ``meta``). Results keep the
order of the items. ``batch.metrics`` merges the metrics of every run (histograms merge exactly, so the
figures are the same whether the runs ran here or on many machines).

With ``executor="ray"`` the batch is spread over Ray actors (``workers``, default one per CPU of the
cluster, each with its own agent and pooled HTTP client and ``concurrency / workers`` runs in flight);
``ray.init(address)`` is called when Ray is not initialised yet. The agent is rebuilt in each worker from
its model, tools, system prompt, settings and limits (tools are shipped with cloudpickle), or from
``agent_factory``, a picklable zero-argument function returning an :class:`~nbagent.Agent`. Each finished
remote run comes back with its events, so the driver's run store (``store``, by default the
default runtime's) keeps remote runs too. Ray is an optional extra: ``nbagent[ray]``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .control import BatchControl
from .metrics import MetricsRegistry

if TYPE_CHECKING:
    import pandas

    from .agent import Agent, RunResult

__all__ = ["Batch", "BatchResult", "RunSpec", "amap", "map", "run_many"]


@dataclass
class RunSpec:
    """One item of a batch: the prompt, and optionally a run name, per-run deps and free metadata."""

    prompt: str
    name: str | None = None
    deps: Any = None
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, item: str | Mapping[str, Any] | RunSpec) -> RunSpec:
        if isinstance(item, RunSpec):
            return item
        if isinstance(item, str):
            return cls(item)
        if isinstance(item, Mapping):
            extra = {k: v for k, v in item.items() if k not in ("prompt", "name", "deps", "meta")}
            return cls(str(item["prompt"]), item.get("name"), item.get("deps"), {**item.get("meta", {}), **extra})
        raise TypeError(f"a batch item must be a prompt, a dict or a RunSpec, got {type(item).__name__}")


@dataclass
class BatchResult:
    """The runs of a batch, in item order, with their merged metrics."""

    results: list[RunResult]
    specs: list[RunSpec]
    metrics: MetricsRegistry
    duration: float
    executor: str = "local"
    workers: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None
    """When the batch started (seconds since the epoch): where the waterfall's time and queueing start."""

    @property
    def outputs(self) -> list[str]:
        return [r.output for r in self.results]

    @property
    def ok(self) -> int:
        return sum(1 for r in self.results if r.ok)

    @property
    def failed(self) -> list[RunResult]:
        return [r for r in self.results if not r.ok]

    @property
    def throughput(self) -> float:
        return len(self.results) / self.duration if self.duration else 0.0

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Any:
        return iter(self.results)

    def __getitem__(self, i: int) -> RunResult:
        return self.results[i]

    def summary(self) -> str:
        h = self.metrics.histograms.get("run.duration")
        lat = f"; run p50 {h.p50:.3f} s, p95 {h.p95:.3f} s" if h is not None and h.count else ""
        return (f"{len(self.results)} runs ({self.ok} ok, {len(self.results) - self.ok} not) in {self.duration:.2f} s "
                f"on {self.executor}{f' ({len(self.workers)} workers)' if self.workers else ''}: "
                f"{self.throughput:.1f} runs/s{lat}")

    def timeline(self, **options: Any) -> Any:
        """The batch's waterfall: a row per run on shared time, split by where each run's time went, after its
        queueing since the batch started (see :func:`nbagent.timeline.timeline`)."""
        from .record import RunRecord
        from .timeline import timeline

        records = [r.record if r.record is not None else RunRecord.from_events(r.run_id, r.events)
                   for r in self.results]
        options.setdefault("start", self.started_at)
        return timeline(records, **options)

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per run: name, status, stop reason, output, steps, tokens, cost, timings, and spec meta."""
        import pandas as pd

        rows = []
        for spec, r in zip(self.specs, self.results, strict=True):
            u = r.usage
            rows.append({"run_id": r.run_id, "name": r.name, "prompt": spec.prompt, "status": r.status,
                         "stop_reason": r.stop_reason, "output": r.output, "steps": u.steps,
                         "input_tokens": u.tokens.input_tokens, "output_tokens": u.tokens.output_tokens,
                         "cost": u.cost, **{f"time_{k}": v for k, v in r.timings.items()}, **spec.meta})
        return pd.DataFrame(rows)


class Batch:
    """A batch running on the current event loop: ``await batch`` gives the :class:`BatchResult`.

    Live control (local executor): :meth:`pause`, :meth:`resume`, :meth:`set_concurrency`, :meth:`set_limits`
    (see :mod:`nbagent.control`).
    """

    def __init__(self, task: asyncio.Task[BatchResult], control: BatchControl | None = None,
                 bar: Any = None) -> None:
        self.task = task
        self.control = control
        self.bar = bar
        self.widget: Any = None  # its live controls, when shown in a notebook

    def _control(self) -> BatchControl:
        if self.control is None:
            raise RuntimeError("live control needs executor='local'")
        return self.control

    def pause(self) -> None:
        """Start no new run, and no new model call in the runs in flight (their current call finishes)."""
        self._control().pause()

    def resume(self) -> None:
        self._control().resume()

    @property
    def paused(self) -> bool:
        return self._control().paused

    def set_concurrency(self, n: int) -> None:
        """At most ``n`` runs in flight from now on (more workers start if needed; none is cancelled)."""
        self._control().set_concurrency(n)

    def set_limits(self, **limits: Any) -> None:
        """Change the usage limits of the batch's agent (``max_steps=``, ``max_cost=``...): new runs get
        them and runs in flight see them at their next step."""
        self._control().set_limits(**limits)

    def stats(self) -> dict[str, Any]:
        """Paused or not, concurrency, runs in flight and started."""
        return self._control().stats()

    def cancel(self) -> None:
        self.task.cancel()

    def done(self) -> bool:
        return self.task.done()

    def __await__(self) -> Generator[Any, None, BatchResult]:
        try:
            return (yield from self.task.__await__())
        finally:  # in the awaiting cell: its final progress line is sent under that cell (saved notebooks)
            deliver = getattr(self.bar, "deliver", None)
            if deliver is not None:
                deliver()


def map(  # noqa: A001 - nbagent.map is the public name
    items: Iterable[str | Mapping[str, Any] | RunSpec],
    *,
    agent: Agent | None = None,
    concurrency: int = 8,
    executor: str = "local",
    progress: bool = True,
    controls: bool = True,
    **options: Any,
) -> Any:
    """Run a batch (see the module docs). Inside a running event loop (a notebook) this starts the batch
    on that loop and returns a :class:`Batch` to ``await``; otherwise it blocks and returns the
    :class:`BatchResult`. Options: ``agent_factory``, ``workers``, ``address``, ``store``, ``desc``.

    In a notebook, ``controls`` shows the batch's live controls under its progress line: Pause/Resume, the
    concurrency and the runs' limits (:mod:`nbagent.notebook.batch_controls`; local executor only).
    """
    control = BatchControl(concurrency, agent=agent) if executor == "local" else None
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    bar: Any = progress
    if loop is not None and progress is True:  # shown now, in the calling cell, before the batch starts
        items = [RunSpec.of(i) for i in items]
        bar = progress_bar(len(items), True, str(options.get("desc", "map")))
        bar = False if bar is None else bar
    coro = amap(items, agent=agent, concurrency=concurrency, executor=executor, progress=bar, control=control,
                **options)
    if loop is not None:
        batch = Batch(loop.create_task(coro, name="nbagent:map"), control, bar if bar is not False else None)
        if controls and control is not None and "IPython" in sys.modules:
            batch.widget = _show_controls(control, batch.task)
        return batch

    async def main() -> BatchResult:
        try:
            return await coro
        finally:
            from .runtime import runtime

            # the pools belong to this loop, which ends here
            await (agent.runtime if agent is not None else runtime()).close_pools()

    return asyncio.run(main())


run_many = map
"""``nbagent.run_many``: :func:`map` under a name that does not shadow the builtin."""


async def amap(
    items: Iterable[str | Mapping[str, Any] | RunSpec],
    *,
    agent: Agent | None = None,
    concurrency: int = 8,
    executor: str = "local",
    progress: Any = True,
    agent_factory: Callable[[], Agent] | None = None,
    workers: int | None = None,
    address: str | None = None,
    store: Any = None,
    desc: str = "map",
    control: BatchControl | None = None,
) -> BatchResult:
    """Run a batch and return its :class:`BatchResult` (see the module docs).

    Without ``agent`` or ``agent_factory`` the agent comes from the settings and environment. ``store`` (a
    :class:`~nbagent.store.RunStore`, None for the default runtime's, or False) keeps the runs that come back
    from Ray workers; local runs are kept by the store of the agent's runtime. ``control`` (a
    :class:`~nbagent.control.BatchControl`) pauses the batch or changes its concurrency while it runs.
    ``progress``: a bar counting runs (a progress line in a notebook, tqdm elsewhere), or an object with
    ``update(n)`` and ``close()`` to count them.
    """
    specs = [RunSpec.of(i) for i in items]
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    bar = progress_bar(len(specs), progress, desc) if isinstance(progress, bool) else progress
    started, started_at = time.perf_counter(), time.time()
    try:
        if executor == "local":
            if agent is None:
                agent = agent_factory() if agent_factory is not None else _default_agent()
            if control is None:
                control = BatchControl(concurrency)
            control.agent = agent
            results = await _run_local(agent, specs, control, bar)
            worker_stats = [agent.client.pool_stats()] if hasattr(agent, "client") else []
            regs: list[Any] = [r.metrics() for r in results]
        elif executor == "ray":
            store = _driver_store(store)
            from .fanout_ray import run_on_ray

            results, regs, worker_stats = await run_on_ray(
                specs, agent=agent, agent_factory=agent_factory, concurrency=concurrency, workers=workers,
                address=address, bar=bar, on_result=store.save_run if store is not None else None)
        else:
            raise ValueError(f"unknown executor {executor!r}: use 'local' or 'ray'")
    finally:
        if bar is not None:
            bar.close()
    metrics = MetricsRegistry()
    for reg in regs:
        metrics.merge(reg)
    return BatchResult(results=results, specs=specs, metrics=metrics, duration=time.perf_counter() - started,
                       executor=executor, workers=worker_stats, started_at=started_at)


async def _run_local(agent: Agent, specs: list[RunSpec], control: BatchControl, bar: Any) -> list[RunResult]:
    results: list[RunResult | None] = [None] * len(specs)
    todo = iter(range(len(specs)))
    watch = getattr(bar, "run_started", None)  # a notebook's progress line draws a line per run it is told of
    if watch is not None and hasattr(bar, "records"):
        bar.records = agent.runtime.records
    tasks: list[asyncio.Task[None]] = []

    async def worker() -> None:
        for i in todo:
            spec = specs[i]
            await control.start_run()  # waits while paused or at the concurrency
            name = spec.name or agent.runtime.new_run_name()
            if watch is not None:
                watch(name)
            try:
                results[i] = await agent.run(spec.prompt, name=name, deps=spec.deps)
            finally:
                control.end_run()
            if bar is not None:
                bar.update(1)

    def grow() -> None:  # one worker per run that may be in flight
        live = sum(1 for t in tasks if not t.done())
        for _ in range(min(control.concurrency, len(specs)) - live):
            tasks.append(asyncio.ensure_future(worker()))

    stop_growing = control.on_change(grow)
    grow()
    try:
        while True:
            pending = [t for t in tasks if not t.done()]
            if not pending:
                break
            await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
    finally:
        stop_growing()
        for t in tasks:
            t.cancel()
    return [r for r in results if r is not None]


def _default_agent() -> Agent:
    """An agent from the settings and environment, on the default runtime."""
    from .agent import Agent

    return Agent()


def _driver_store(store: Any) -> Any:
    if store is False:
        return None
    if store is None:
        from .runtime import runtime

        return runtime().store
    return store


def _show_controls(control: BatchControl, task: asyncio.Task[Any]) -> Any:
    """The batch's live controls in the current cell when this runs in a notebook kernel (else None)."""
    try:
        from .notebook.kernel import kernel_shell
    except ImportError:  # pragma: no cover - IPython without the notebook extra's parts
        return None
    if kernel_shell() is None:
        return None
    from .notebook.batch_controls import show_controls

    return show_controls(control, task)


def progress_bar(total: int, enabled: bool, desc: str) -> Any:
    """A bar counting runs (None when disabled or tqdm is missing); kept on screen when done.

    In a notebook kernel, a progress line whose final state a saved notebook keeps
    (:mod:`nbagent.notebook.progress`); elsewhere a tqdm bar."""
    if not enabled:
        return None
    if "IPython" in sys.modules:  # never imported here: a script stays free of IPython
        try:
            from .notebook.progress import progress
        except ImportError:  # pragma: no cover - IPython without the notebook extra's parts
            pass
        else:
            line = progress(total, desc)
            if line is not None:
                return line
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="run", mininterval=0.2)
