"""The load generator: N agent runs at concurrency C (optionally ramped up) against one endpoint.

By default the endpoint is the built-in simulated server, started in a child process (so its CPU is not
counted against the client) with the chosen latency and fault rate. Every event of the runs is tapped to
build the figures: throughput, latency percentiles per phase of a run, retries and errors, cache hit rate,
sandbox contention, memory. See :class:`~nbagent.bench.report.BenchResult` for what comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter as _Counter
from collections.abc import Iterable
from typing import Any

from nbagent.runtime import Runtime

from ..control import BatchControl
from ..events import Event, EventBus
from ..fanout import progress_bar
from ..metrics.histogram import Histogram
from ..metrics.profile import rss_bytes
from .report import PHASES, BenchResult

__all__ = ["bench", "run_bench"]

DEFAULT_PROMPT = "Look up the key 'x' and tell me its value."


class _Collector:
    """One bus tap that turns the events of the bench's runs into per-phase histograms and counts."""

    def __init__(self) -> None:
        self.phases: dict[str, Histogram] = {p: Histogram() for p in PHASES}
        self.counts: _Counter[str] = _Counter()
        self.retries: _Counter[str] = _Counter()
        self.llm_errors: _Counter[str] = _Counter()
        self.statuses: _Counter[str] = _Counter()
        self.waiting_peak = 0
        self.in_flight = 0

    def on_event(self, ev: Event) -> None:
        kind = ev.kind
        c = self.counts
        if kind == "llm_response":
            if getattr(ev, "cached", False):
                c["llm_cached"] += 1
            else:
                c["llm_calls"] += 1
                self.phases["llm"].record(ev.latency)  # type: ignore[attr-defined]
                ttft = getattr(ev, "ttft", None)
                if ttft is not None:
                    self.phases["ttft"].record(ttft)
        elif kind == "run_started":
            self.in_flight += 1
        elif kind == "run_finished":
            self.in_flight -= 1
            self.statuses[ev.status] += 1  # type: ignore[attr-defined]
            self.phases["run"].record(ev.duration)  # type: ignore[attr-defined]
        elif kind == "tool_finished":
            c["tool_calls"] += 1
            if not ev.ok:  # type: ignore[attr-defined]
                c["tool_errors"] += 1
            self.phases["tool"].record(ev.duration)  # type: ignore[attr-defined]
        elif kind == "llm_retry":
            self.retries[ev.reason] += 1  # type: ignore[attr-defined]
        elif kind == "llm_failed":
            self.llm_errors[ev.error_type] += 1  # type: ignore[attr-defined]
        elif kind == "cache_hit":
            c[f"cache_hits.{getattr(ev, 'cache', 'response')}"] += 1
            self.phases["cache_lookup"].record(getattr(ev, "lookup_seconds", 0.0))
        elif kind == "cache_miss":
            c[f"cache_misses.{getattr(ev, 'cache', 'response')}"] += 1
            self.phases["cache_lookup"].record(getattr(ev, "lookup_seconds", 0.0))
        elif kind == "sandbox_leased":
            c["sandbox_leases"] += 1
            wait = float(getattr(ev, "wait", 0.0))
            if wait > 0.001:
                c["sandbox_waited"] += 1
            self.phases["sandbox_wait"].record(wait)
        elif kind == "sandbox_lease_timeout":
            c["sandbox_timeouts"] += 1
            self.waiting_peak = max(self.waiting_peak, int(getattr(ev, "waiting", 0)))
            self.phases["sandbox_wait"].record(float(getattr(ev, "wait", 0.0)))


@contextlib.asynccontextmanager
async def _endpoint(base_url: str | None, sim: str, sim_options: dict[str, Any]) -> Any:
    """Yield ``(base_url, server)``: the given URL, or a simulated server started for the bench."""
    if base_url is not None:
        yield base_url, None
        return
    from ..testing import SimServer

    server: Any
    if sim == "process":
        server = await asyncio.to_thread(SimServer.spawn, **sim_options)
    elif sim == "thread":
        server = SimServer(**sim_options)
        await asyncio.to_thread(server.start)
    else:
        raise ValueError("sim must be 'process' or 'thread'")
    try:
        yield server.url, server
    finally:
        await asyncio.to_thread(server.stop)


async def bench(
    runs: int = 100,
    concurrency: int = 10,
    *,
    ramp_up: float = 0.0,
    prompt: str = DEFAULT_PROMPT,
    agent: Any = None,
    base_url: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    latency: float = 0.05,
    fault_rate: float = 0.0,
    fault_kinds: Iterable[str] = ("500",),
    tool_calls: int = 1,
    stream: bool = False,
    seed: int = 0,
    settings: Any = None,
    budgets: Any = None,
    progress: bool = True,
    sim: str = "process",
    timeout: float | None = None,
    sample_interval: float = 0.25,
    control: BatchControl | None = None,
) -> BenchResult:
    """Run ``runs`` agent runs, ``concurrency`` at a time, and measure them.

    ``agent`` benchmarks your own agent (its bus is tapped; its endpoint is used). Otherwise an agent with one
    tool is built against ``base_url`` (any OpenAI-compatible endpoint; ``model``/``api_key`` as for
    :class:`~nbagent.Agent`) or, by default, against the simulated server started with ``latency`` seconds per
    answer, ``fault_rate`` (e.g. 0.05) of faults of ``fault_kinds``, and ``tool_calls`` tool calls per run.
    ``ramp_up`` seconds spread the start of the ``concurrency`` workers linearly. ``budgets`` (a
    :func:`~nbagent.metrics.budgets.parse_budgets` spec) are checked on every run. Failed runs are counted,
    never raised. ``timeout`` cancels what is still running after that many seconds. ``control`` (a
    :class:`~nbagent.control.BatchControl`) pauses the bench or changes its concurrency while it runs.
    """
    if runs < 1 or concurrency < 1:
        raise ValueError("runs and concurrency must be >= 1")
    concurrency = min(concurrency, runs)
    fault_kinds = tuple(fault_kinds) if not isinstance(fault_kinds, str) else (fault_kinds,)
    sim_options = {"latency": latency, "fault_rate": fault_rate, "fault_kinds": fault_kinds, "seed": seed,
                   "tool_calls_per_run": tool_calls, "record_history": False}
    config = {"runs": runs, "concurrency": concurrency, "ramp_up": ramp_up, "prompt": prompt,
              "endpoint": base_url or ("custom agent" if agent is not None else f"simulated ({sim})"),
              "latency": latency, "fault_rate": fault_rate, "fault_kinds": list(fault_kinds),
              "tool_calls": tool_calls, "stream": stream}
    from ..metrics.budgets import BudgetMonitor

    async with contextlib.AsyncExitStack() as stack:
        client = None
        if agent is None:
            url, _server = await stack.enter_async_context(_endpoint(base_url, sim, sim_options))
            agent, client = _default_agent(url, model, api_key, settings, stream, tool_calls)
            config["model"] = agent.model_name
        bus: EventBus = agent.bus
        collector = _Collector()
        stack.callback(bus.tap(collector.on_event))
        monitor = None
        if budgets:
            monitor = BudgetMonitor(budgets)
            stack.callback(monitor.attach(bus))
        bar = progress_bar(runs, progress, f"bench c={concurrency}")
        if bar is not None:
            stack.callback(bar.close)
        if client is not None:
            stack.push_async_callback(client.aclose)
        if control is None:
            control = BatchControl(concurrency)
        control.agent = agent
        result = await _drive(agent, prompt, runs, control, ramp_up, timeout, sample_interval, collector, bar)
        pool = agent.client.pool_stats() if hasattr(agent, "client") else {}
    result.config = config
    result.pool = pool
    if monitor is not None:
        result.budgets = monitor.status()
        result.breaches = [b.to_dict() for b in monitor.breaches]
    return result


def _default_agent(url: str, model: str | None, api_key: str | None, settings: Any, stream: bool,
                   tool_calls: int) -> tuple[Any, Any]:
    from ..agent import Agent, tool
    from ..config import Settings
    from ..llm import LLMClient

    @tool
    def lookup(key: str) -> str:
        """Look a key up."""
        return f"value-of-{key}"

    base = settings or Settings.load()
    s = base.replace(base_url=url, model=model or base.model or "sim", api_key=api_key)
    if tool_calls >= s.limits.stuck_repeats > 0:  # the simulated model repeats the same call on purpose
        s.limits.stuck_repeats = 0
    if s.limits.max_steps is not None and s.limits.max_steps <= tool_calls:
        s.limits.max_steps = tool_calls + 1
    bus = EventBus()
    client = LLMClient(s, bus=bus)
    return Agent(s.model, [lookup], runtime=Runtime(s, bus=bus, client=client), stream=stream), client


async def _drive(agent: Any, prompt: str, runs: int, control: BatchControl, ramp_up: float, timeout: float | None,
                 sample_interval: float, collector: _Collector, bar: Any) -> BenchResult:
    concurrency = control.concurrency
    next_index = iter(range(runs))
    overhead = Histogram()
    breakdown_totals: dict[str, float] = {}
    stop_reasons: _Counter[str] = _Counter()
    timeline: list[dict[str, float]] = []
    done = 0
    rss0 = rss_bytes()
    rss_peak = rss0
    started = time.perf_counter()

    async def worker(w: int) -> None:
        nonlocal done
        if ramp_up > 0 and w < concurrency:  # the first workers ramp up; those added later start at once
            await asyncio.sleep(ramp_up * w / concurrency)
        for i in next_index:
            await control.start_run()  # waits while paused or at the concurrency
            try:
                result = await agent.run(prompt, name=f"bench-{i}")
            finally:
                control.end_run()
            overhead.record(result.timings.get("overhead", 0.0))
            for k, v in result.timings.items():
                breakdown_totals[k] = breakdown_totals.get(k, 0.0) + v
            if result.status != "ok":
                stop_reasons[result.stop_reason.split(":")[0]] += 1
            done += 1
            if bar is not None:
                bar.update(1)

    async def sampler() -> None:
        nonlocal rss_peak
        while True:
            await asyncio.sleep(sample_interval)
            rss = rss_bytes()
            if rss is not None and (rss_peak is None or rss > rss_peak):
                rss_peak = rss
            timeline.append({"t": time.perf_counter() - started, "completed": done,
                             "in_flight": collector.in_flight, "rss": rss or 0})
            if bar is not None:
                retries = sum(collector.retries.values())
                bar.set_postfix(in_flight=collector.in_flight, retries=retries,
                                errors=sum(v for k, v in collector.statuses.items() if k != "ok"), refresh=False)

    sampling = asyncio.ensure_future(sampler())
    tasks: list[asyncio.Task[None]] = []

    def grow() -> None:  # one worker per run that may be in flight
        live = sum(1 for t in tasks if not t.done())
        for _ in range(min(control.concurrency, runs) - live):
            tasks.append(asyncio.ensure_future(worker(len(tasks))))

    stop_growing = control.on_change(grow)
    grow()
    timed_out = False
    deadline = None if timeout is None else time.perf_counter() + timeout
    try:
        while True:
            pending = {t for t in tasks if not t.done()}
            left = None if deadline is None else deadline - time.perf_counter()
            if not pending or (left is not None and left <= 0):
                break
            await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_EXCEPTION)
            for t in tasks:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    raise t.exception()  # type: ignore[misc]
        pending = {t for t in tasks if not t.done()}
        if pending:
            timed_out = True
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    finally:
        stop_growing()
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling
        for t in tasks:
            t.cancel()
    duration = time.perf_counter() - started
    timeline.append({"t": duration, "completed": done, "in_flight": collector.in_flight, "rss": rss_bytes() or 0})
    collector.phases["overhead"] = overhead
    peak_in_flight = max((p["in_flight"] for p in timeline), default=0) or concurrency
    growth = (rss_peak - rss0) if (rss_peak is not None and rss0 is not None) else None
    return BenchResult.from_collector(collector, duration=duration, completed=done, timed_out=timed_out,
                                      stop_reasons=dict(stop_reasons), timeline=timeline,
                                      time_totals=breakdown_totals, memory_growth=growth,
                                      peak_in_flight=int(peak_in_flight))


def run_bench(runs: int = 100, concurrency: int = 10, **options: Any) -> BenchResult:
    """Blocking :func:`bench`. Inside a running event loop (a notebook cell) it runs on a helper thread with
    its own loop and waits for it; from async code prefer ``await bench(...)``."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(bench(runs, concurrency, **options))
    if options.get("agent") is not None:
        raise RuntimeError("run_bench(agent=...) inside a running event loop would move the agent's connection "
                           "pool to another loop: use `await bench(..., agent=...)`")
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(bench(runs, concurrency, **options))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="nbagent-bench", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]  # type: ignore[no-any-return]
