"""Live control of a batch: pause, resume, and change its concurrency or its runs' limits while it runs.

::

    batch = nbagent.map(prompts, agent=agent, concurrency=20)   # in a notebook: returns at once
    batch.pause()              # no new run starts, and runs in flight start no new model call
    batch.set_concurrency(5)   # at most 5 runs in flight from now on
    batch.set_limits(max_steps=4, max_cost=0.05)   # the batch agent's limits, seen by every run's next step
    batch.resume()

A :class:`BatchControl` is what :func:`nbagent.map` and :func:`nbagent.bench.bench` obey. Pausing closes a
:class:`Gate` that the agent loop awaits before each model call (:func:`before_model_call`); the gate is found
through a context variable that only the batch's own tasks set, so other runs are never held.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["BatchControl", "Gate", "before_model_call", "call_in_loop"]

_current_gate: contextvars.ContextVar[Gate | None] = contextvars.ContextVar("nbagent_gate", default=None)


def call_in_loop(loop: asyncio.AbstractEventLoop | None, fn: Callable[..., Any], *args: Any) -> None:
    """Call ``fn(*args)`` in ``loop``'s thread: now when already there, else soon and thread-safely.

    A notebook frontend may deliver widget events on another thread (JupyterLab sends comm messages to a
    kernel subshell, which has a thread and an event loop of its own). A change made there to ``loop``'s
    futures or tasks would neither be safe nor wake ``loop`` up: it is handed over instead.
    """
    try:
        running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is None or running is loop or loop.is_closed():
        fn(*args)
    else:
        loop.call_soon_threadsafe(fn, *args)


class Gate:
    """Open or closed; ``await gate.wait()`` returns at once when open, else when it opens."""

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self.waiting = 0

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    def open(self) -> None:
        self._open.set()

    def close(self) -> None:
        self._open.clear()

    async def wait(self) -> None:
        if self._open.is_set():
            return
        self.waiting += 1
        try:
            await self._open.wait()
        finally:
            self.waiting -= 1

    def enter(self) -> None:
        """Make this the gate of the current task (and of the tasks it starts)."""
        _current_gate.set(self)


async def before_model_call() -> None:
    """Wait while the gate of the current task's batch is closed (no gate, or an open one: no wait)."""
    gate = _current_gate.get()
    if gate is not None and not gate.is_open:
        await gate.wait()


class BatchControl:
    """The live settings of a batch: ``paused``, ``concurrency`` (runs in flight) and the runs' limits.

    The batch's workers call ``await start_run()`` before a run (it waits while paused or while
    ``concurrency`` runs are in flight) and ``end_run()`` after it. Use it from the batch's event loop.
    """

    def __init__(self, concurrency: int, *, agent: Any = None) -> None:
        self.concurrency = _check_concurrency(concurrency)
        self.agent = agent
        self.gate = Gate()
        self.in_flight = 0
        self.started = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._listeners: list[Callable[[], None]] = []

    @property
    def paused(self) -> bool:
        return not self.gate.is_open

    def pause(self) -> None:
        """Start no new run, and no new model call in the runs in flight (their current call finishes)."""
        self.gate.close()
        self._notify()

    def resume(self) -> None:
        """Undo :meth:`pause`."""
        self.gate.open()
        self._notify()

    def set_concurrency(self, n: int) -> None:
        """At most ``n`` runs in flight from now on (runs above it finish; none is cancelled)."""
        self.concurrency = _check_concurrency(n)
        self._notify()

    def set_limits(self, **limits: Any) -> None:
        """Change the batch agent's usage limits (``max_steps``, ``max_cost``...): new runs get them, and runs
        in flight see them at their next step."""
        if self.agent is None:
            raise RuntimeError("this batch has no agent yet: set limits once it has started")
        target = self.agent.limits
        unknown = [k for k in limits if k not in getattr(target, "__dataclass_fields__", {})]
        if unknown:
            known = ", ".join(getattr(target, "__dataclass_fields__", {}))
            raise TypeError(f"unknown limit(s) {', '.join(unknown)}; known: {known}")
        for name, value in limits.items():
            setattr(target, name, value)
        self._notify()

    def on_change(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn()`` after every change (pause, resume, concurrency, limits): the batch grows its workers
        there, and its notebook controls redraw. Returns the function that stops it."""
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def _notify(self) -> None:
        self._wake()
        for fn in tuple(self._listeners):
            fn()

    def _wake(self) -> None:
        room = self.concurrency - self.in_flight
        while self._waiters and room > 0:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                room -= 1

    async def start_run(self) -> None:
        """Wait for a place: not paused and fewer than ``concurrency`` runs in flight; then take it. The calling
        task (and the tasks it starts) then waits at the gate before each model call."""
        self.gate.enter()
        while self.paused or self.in_flight >= self.concurrency:
            if self.paused:
                await self.gate.wait()
                continue
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if not fut.done():
                    self._waiters.remove(fut)
        self.in_flight += 1
        self.started += 1

    def end_run(self) -> None:
        self.in_flight -= 1
        self._wake()

    def stats(self) -> dict[str, Any]:
        return {"paused": self.paused, "concurrency": self.concurrency, "in_flight": self.in_flight,
                "started": self.started, "waiting_on_pause": self.gate.waiting}


def _check_concurrency(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {n!r}")
    return n
