"""The runs of a notebook: started, listed, cancelled and awaited by name; their views refreshed at a bounded rate.

One :class:`RunRegistry` per kernel (:func:`current`). It starts each run as a task on the kernel's running
loop and returns at once. One bounded bus subscription feeds every run view; a single ticker task drains it
and redraws at most ``refresh_hz`` times per second, with at most ``max_renders_per_tick`` run views per
tick, so a hundred concurrent runs do not flood the frontend. Views only read :class:`RunState`; nothing
flows back into a run except ``RunHandle.cancel()``.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from ..agent import Agent, RunHandle, RunResult, Tool
from ..config import Settings
from ..events import EventBus, Subscription
from ..llm import LLMClient
from ..metrics.loopmon import LoopMonitor
from ..runtime import Runtime, set_runtime
from ..runtime import runtime as default_runtime
from .approvals import Approvals
from .entry import LiveView, RunEntry, RunView, failed_result
from .kernel import block_on, running_loop
from .state import RunState

__all__ = ["LiveView", "RunEntry", "RunRegistry", "RunView", "current", "shutdown"]


class RunRegistry:
    """Runs by name, the metrics of every run on ``bus``, the loop-lag monitor and the live views."""

    def __init__(
        self,
        runtime: Runtime | EventBus | None = None,
        *,
        settings: Settings | None = None,
        refresh_hz: float = 4.0,
        lag_threshold: float = 0.1,
        history_size: int = 200,
        max_renders_per_tick: int = 25,
        render_seconds_per_tick: float = 0.008,
    ) -> None:
        if not isinstance(runtime, Runtime):  # a bus (or nothing): a runtime of the registry's own
            runtime = Runtime(settings, bus=runtime, max_runs=max(history_size, 100))
            self._own_runtime = True
        else:
            self._own_runtime = False
        self.runtime = runtime
        self.bus = runtime.bus
        self.refresh_hz = refresh_hz
        self.max_renders_per_tick = max_renders_per_tick
        self.render_seconds_per_tick = render_seconds_per_tick
        self.entries: dict[str, RunEntry] = {}
        self.history: deque[RunEntry] = deque(maxlen=history_size)
        self.metrics = runtime.metrics
        self.monitor = LoopMonitor(threshold=lag_threshold, registry=self.metrics.global_, bus=self.bus)
        self.tools: dict[str, Tool] = {}
        """Tools that ``%%agent --tools`` finds by name (after the notebook's own variables)."""
        self.approvals = Approvals(self)
        """The ``ask`` callback of the notebook's policies: Approve / Deny in the run widget."""
        self._views: weakref.WeakSet[Any] = weakref.WeakSet()
        self._by_run_id: dict[str, RunEntry] = {}
        self._sub: Subscription | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._private_loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Task[None] | None = None
        self.ticks = 0
        self.renders = 0

    # --- configuration ------------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self.runtime.settings

    @property
    def client(self) -> LLMClient:
        """The runtime's pooled client, shared by every run of the notebook."""
        return self.runtime.client

    @property
    def caches(self) -> dict[str, Any]:
        """The runtime's response and tool caches made so far, by mode."""
        return self.runtime.caches()

    @property
    def default_policy(self) -> Any:
        """The runtime's policy (the settings' ``[policy]`` table; None when empty), asking in the run widget.

        One :class:`~nbagent.policy.Policy` for every run, so they share its decision cache.
        """
        return self.with_approvals(self.runtime.policy)

    def with_approvals(self, policy: Any) -> Any:
        """``policy``, asking in the run widget when it has no ``ask`` callback of its own."""
        if policy is not None and getattr(policy, "ask", False) is None:
            policy.ask = self.approvals
        return policy

    def entry_for_run(self, run_id: str) -> RunEntry | None:
        """The entry of a running run by its run id."""
        return self._by_run_id.get(run_id)

    def agent(self, model: str | None = None, tools: Iterable[Any] = (), **kwargs: Any) -> Agent:
        """An :class:`Agent` on this registry's runtime."""
        return Agent(model, list(tools), runtime=self.runtime, **kwargs)

    # --- runs ---------------------------------------------------------------------------------------

    def new_name(self) -> str:
        while True:
            name = self.runtime.new_run_name()
            if name not in self.entries:
                return name

    def check_name(self, name: str) -> None:
        """Raise ``ValueError`` when a run of that name is still running."""
        entry = self.entries.get(name)
        if entry is not None and not entry.done:
            raise ValueError(f"a run named {name!r} is still running (cancel it with %agent cancel {name})")

    def submit(self, agent: Agent | Callable[[], Agent], prompt: str, *, name: str | None = None,
               out: str | None = None, namespace: MutableMapping[str, Any] | None = None,
               view_factory: Callable[[RunEntry], RunView | None] | None = None, profile: bool = False) -> RunEntry:
        """Start a run in the background on the running loop and return its entry at once.

        ``agent`` may be a factory: an error while building the agent (bad settings) becomes a failed run,
        shown like any other. Outside a running loop the run goes to the end before this returns.
        """
        name = name or self.new_name()
        self.check_name(name)
        entry = RunEntry(name=name, prompt=prompt, state=RunState(name=name, prompt=prompt), out=out,
                         namespace=namespace, profile=profile)
        self.entries[name] = entry
        if out is not None and namespace is not None:
            namespace.pop(out, None)
        entry.view = view_factory(entry) if view_factory is not None else None
        try:
            built = agent if isinstance(agent, Agent) else agent()
        except Exception as exc:  # noqa: BLE001 - a run that cannot start is shown as a failed run
            self._finish(entry, failed_result(name, exc))
            self.flush()
            return entry
        entry.state.record.model = entry.state.record.model or built.model_name or ""
        if running_loop() is None:
            if self._private_loop is None:
                self._private_loop = asyncio.new_event_loop()
            block_on(self._start_and_wait(entry, built), loop=self._private_loop)
            return entry
        self._start(entry, built)
        return entry

    async def _start_and_wait(self, entry: RunEntry, agent: Agent) -> None:
        handle = self._start(entry, agent, ticker=False)
        try:
            await asyncio.wait([handle.task])
            await asyncio.sleep(0)  # let the done callback run
        finally:
            self.monitor.stop()
        self.flush()

    def _start(self, entry: RunEntry, agent: Agent, *, ticker: bool = True) -> RunHandle:
        self._ensure_ticker(start_task=ticker)
        handle = agent.start(entry.prompt, name=entry.name, profile=entry.profile)
        entry.handle = handle
        entry.state.run_id = handle.run_id
        self._by_run_id[handle.run_id] = entry
        if entry.out is not None and entry.namespace is not None:
            entry.namespace[entry.out] = handle  # awaitable until the result replaces it
        handle.task.add_done_callback(lambda task: self._task_done(entry, task))
        self.monitor.start()
        return handle

    def _task_done(self, entry: RunEntry, task: asyncio.Task[RunResult]) -> None:
        self.drain()  # the run's last events belong to the state before the result does
        if task.cancelled():
            result = failed_result(entry.name, asyncio.CancelledError(), status="cancelled")
        elif task.exception() is not None:
            result = failed_result(entry.name, task.exception())  # type: ignore[arg-type]
        else:
            result = task.result()
        self._finish(entry, result)

    def _finish(self, entry: RunEntry, result: RunResult) -> None:
        entry.result = result
        entry.state.finish(result)
        if entry.out is not None and entry.namespace is not None:
            entry.namespace[entry.out] = result
        self.history.append(entry)
        finished = [e for e in self.entries.values() if e.done]
        for old in finished[: max(len(finished) - (self.history.maxlen or 200), 0)]:
            self.entries.pop(old.name, None)

    def active(self) -> list[RunEntry]:
        return [e for e in self.entries.values() if not e.done]

    def get(self, name: str) -> RunEntry | None:
        return self.entries.get(name)

    def cancel(self, name: str) -> list[str]:
        """Cancel one run by name, or every running run with ``"all"``; the names cancelled."""
        if name == "all":
            targets = self.active()
        else:
            entry = self.entries.get(name)
            if entry is None:
                raise KeyError(name)
            targets = [] if entry.done else [entry]
        for entry in targets:
            if entry.handle is not None:
                entry.handle.cancel()
        return [e.name for e in targets]

    def wait(self, names: Iterable[str] | None = None, timeout: float | None = None) -> list[RunEntry]:
        """Block until the named runs (all running ones by default) end; returns their entries.

        The static renderings are then published again with the current request as parent (see
        :meth:`republish`).
        """
        entries = [self.entries[n] for n in names] if names is not None else self.active()
        tasks = [e.handle.task for e in entries if e.handle is not None and not e.handle.done()]
        if tasks:
            block_on(asyncio.wait(tasks, timeout=timeout), loop=self._private_loop)
        self.republish(entries)
        return entries

    # --- views --------------------------------------------------------------------------------------

    def add_view(self, view: LiveView) -> None:
        """Refresh ``view`` on every tick while it lives."""
        self._views.add(view)
        self._ensure_ticker()

    def remove_view(self, view: LiveView) -> None:
        self._views.discard(view)

    def _ensure_ticker(self, *, start_task: bool = True) -> None:
        if self._sub is None:
            self._sub = self.bus.subscribe(maxsize=100_000, predicate=self._wanted)
        loop = running_loop()
        if start_task and loop is not None and (self._ticker is None or self._ticker.done()):
            self._ticker = loop.create_task(self._tick_forever(), name="nbagent:notebook-ticker")

    def _wanted(self, ev: Any) -> bool:
        return ev.run_id in self._by_run_id or ev.kind == "loop_blocked"

    async def _tick_forever(self) -> None:
        period = 1.0 / max(self.refresh_hz, 0.1)
        while True:
            await asyncio.sleep(period if self._by_run_id else max(period, 1.0))
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - a broken view must not stop the others
                import logging

                logging.getLogger("nbagent.notebook").exception("refreshing the notebook views failed")
            if not self._by_run_id and not self._views and not self.active():
                self._ticker = None
                return

    def drain(self) -> None:
        """Fold the queued events into the states of their runs."""
        sub = self._sub
        if sub is None:
            return
        routes = self._by_run_id
        while (ev := sub.get_nowait()) is not None:
            if ev.kind == "loop_blocked":
                where = getattr(ev, "where", "") or "unknown code"
                for running in self.active():
                    running.state.warn(f"event loop blocked {getattr(ev, 'seconds', 0.0):.2f} s by {where}")
                continue
            entry = routes.get(ev.run_id or "")
            if entry is not None and not entry.done:
                state = entry.state
                if not state._shared:  # show the record the runtime folds: one fold of every run
                    record = self.runtime.records.get(ev.run_id or "")
                    if record is not None:
                        state.use_record(record)
                state.apply(ev)

    def tick(self, now: float | None = None, *, budget: int | None = None) -> None:
        """Drain events, redraw the run views that changed (at most ``budget``), refresh the live views."""
        now = time.monotonic() if now is None else now
        self.ticks += 1
        self.drain()
        budget = self.max_renders_per_tick if budget is None else budget
        running = len(self._by_run_id)
        clock_every = 1.0 if running <= 20 else 3.0  # how often the elapsed time of a running view moves
        due = [e for e in self.entries.values() if e.view is not None and self._due(e, now, clock_every)]
        due.sort(key=lambda e: (not e.done, e.rendered_at))
        stop_at = time.perf_counter() + self.render_seconds_per_tick
        for i, entry in enumerate(due[:budget]):
            if i and time.perf_counter() > stop_at:
                break  # the rest waits for the next tick: the loop stays responsive
            self._render(entry, now)
        for run_id, entry in list(self._by_run_id.items()):
            if entry.done and (entry.published or entry.view is None):
                del self._by_run_id[run_id]
        for view in list(self._views):
            view.refresh(now)
        if not self.active() and self.monitor.running:
            self.monitor.stop()

    def _due(self, entry: RunEntry, now: float, clock_every: float = 1.0) -> bool:
        if entry.done:
            return not entry.published or entry.rendered_version != entry.state.version
        return entry.rendered_version != entry.state.version or now - entry.rendered_at >= clock_every

    def _render(self, entry: RunEntry, now: float) -> None:
        assert entry.view is not None
        entry.rendered_version, entry.rendered_at = entry.state.version, now
        entry.view.render(entry.state)
        self.renders += 1
        if entry.done and not entry.published:
            entry.published = True
            entry.view.publish(entry.state)

    def flush(self) -> None:
        """Drain and redraw everything now, publishing the static rendering of runs that ended."""
        limit, self.render_seconds_per_tick = self.render_seconds_per_tick, float("inf")
        try:
            self.tick(budget=len(self.entries) + 1)
        finally:
            self.render_seconds_per_tick = limit
        for entry in self.entries.values():
            if entry.done and entry.view is None:
                entry.published = True

    def republish(self, entries: Iterable[RunEntry] = ()) -> None:
        """Publish the static renderings of ``entries`` and of every ended run not yet re-published, with the
        current request as parent.

        Headless clients (nbclient, ``nbconvert --execute``) record only the messages of the cell they are
        executing, so a summary sent when a run ended between two cells would be lost there; sent again from
        the next cell (the magics call this before each cell), it replaces the placeholder by its display id.
        """
        self.flush()
        targets = list(entries)
        targets += [e for e in self.entries.values() if e.done and not e.delivered and e not in targets]
        for entry in targets:
            if entry.done and entry.view is not None:
                entry.view.publish(entry.state, current=True)
                entry.delivered = True
        if targets:
            for view in list(self._views):
                view.publish(current=True)

    # --- lifecycle ----------------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel every run, stop the ticker and the monitor, detach from the bus, close the client.

        Inside a running loop the client closes in a task (see :meth:`aclose` to wait for it).
        """
        loop = running_loop()
        if loop is not None:
            self._closing = loop.create_task(self.aclose())
            return
        self._stop()
        if self._private_loop is not None:
            if self._own_runtime:
                self._private_loop.run_until_complete(self.runtime.aclose())
            self._private_loop.close()
            self._private_loop = None
        elif self._own_runtime:
            self.runtime.close()

    async def aclose(self) -> None:
        """:meth:`close`, waiting for the runs to end and the client to close."""
        tasks = [e.handle.task for e in self.active() if e.handle is not None]
        self._stop()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        if self._own_runtime:
            await self.runtime.aclose()

    def _stop(self) -> None:
        self.cancel("all")
        self.monitor.stop()
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if self._sub is not None:
            self._sub.close()
            self._sub = None


def current() -> RunRegistry:
    """The notebook's registry: a part of the default runtime (made on first use, closed with it)."""
    return default_runtime().part("notebook", RunRegistry)


def shutdown() -> None:
    """Close the notebook's registry and the default runtime that owns it (unloading the extension calls it)."""
    rt = set_runtime(None)
    if rt is None or rt.closed:
        return
    registry = rt.part_if_started("notebook")
    if registry is not None:
        registry._stop()
    private = None if registry is None else registry._private_loop
    if registry is not None and private is not None and running_loop() is None:
        private.run_until_complete(rt.aclose())  # the pools belong to the loop the runs used
        private.close()
        registry._private_loop = None
    else:
        rt.close()
