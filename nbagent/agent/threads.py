"""Where sync tools run: daemon threads of one runtime, bounded, so that a stuck tool cannot starve others.

``asyncio.to_thread`` uses the loop's default executor: a sync tool that never returns (``time.sleep(10**6)``)
keeps one of its few threads forever, and after a handful of such calls every sync tool — and everything else
using the default executor — waits; ``asyncio.run()`` then waits for the stuck threads at exit. Here calls run
in daemon threads (the interpreter does not wait for them), at most ``size`` at a time; a call whose caller gave
up (timeout or cancel) while its thread runs on is counted as stuck and frees its slot, and once ``max_stuck``
threads are stuck new calls fail at once with a clear error instead of piling up.

Threads are kept between calls: a thread that finished its call waits (up to ``idle_timeout`` seconds) for the
next one, so a call costs a queue hand-over, not a thread start (which blocks the loop until the new thread
runs). A stuck call keeps its thread; the next call gets another.

Answers go back through one inbox per loop: a thread appends its answer and wakes the loop only when no
wake-up is pending, and the loop settles every answer waiting at once. Quick tools that finish close
together cost one wake-up of the loop (a write to its self-pipe, a pass of the selector), not one each:
about half the CPU of a hand-over with many runs in flight.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ToolError

__all__ = ["ToolThreads"]

_Job = tuple[contextvars.Context, Callable[..., Any], tuple[Any, ...], dict[str, Any],
             "_Inbox", "asyncio.Future[Any]", list[bool]]


def _settle(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if fut.done():
        return
    if ok:
        fut.set_result(value)
        return
    try:
        fut.set_exception(value)
    except TypeError:  # StopIteration cannot be a future's exception (PEP 479): the same, as RuntimeError
        err = RuntimeError(f"the tool raised {type(value).__name__}: {value}")
        err.__cause__ = value
        fut.set_exception(err)


class _Inbox:
    """The answers of tool threads waiting for one loop (see the module docstring)."""

    __slots__ = ("loop", "items", "scheduled", "lock")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: collections.deque[tuple[asyncio.Future[Any], bool, Any]] = collections.deque()
        self.scheduled = False  # a drain is on its way to the loop
        self.lock = threading.Lock()

    def put(self, fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
        """From a tool thread: queue one answer; wake the loop unless a drain is already on its way."""
        self.items.append((fut, ok, value))
        with self.lock:
            if self.scheduled:
                return  # that drain takes this answer too: it clears the flag before it empties the queue
            self.scheduled = True
        try:
            if not self.loop.is_closed():
                self.loop.call_soon_threadsafe(self.drain)
                return
        except RuntimeError:  # the loop closed meanwhile
            pass
        self.items.clear()  # nobody is left to hear these answers: do not keep them

    def drain(self) -> None:
        """On the loop: settle every answer waiting (one that cannot be settled never strands the rest)."""
        with self.lock:
            self.scheduled = False
        items = self.items
        while items:
            fut, ok, value = items.popleft()
            try:
                _settle(fut, ok, value)
            except Exception as exc:  # noqa: BLE001 - fail that call alone
                if not fut.done():
                    fut.set_exception(RuntimeError(f"the tool's answer could not be delivered: {exc!r}"))


class ToolThreads:
    """Runs sync tools (see the module docstring). ``stats()`` says how many run and how many are stuck."""

    def __init__(self, size: int = 16, max_stuck: int = 64, idle_timeout: float = 30.0) -> None:
        self.size = size
        self.max_stuck = max_stuck
        self.idle_timeout = idle_timeout
        self.running = 0
        self.stuck = 0
        self.calls = 0
        self.threads = 0  # threads started so far
        self._idle = 0  # threads waiting for a call and not yet promised one
        self._closed = False
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._slots: dict[asyncio.AbstractEventLoop, tuple[asyncio.Semaphore, _Inbox]] = {}

    def stats(self) -> dict[str, int]:
        return {"size": self.size, "running": self.running, "stuck": self.stuck, "calls": self.calls,
                "threads": self.threads, "idle": self._idle}

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in a daemon thread; cancelling the await abandons (and counts) the thread."""
        if self.stuck >= self.max_stuck:
            raise ToolError(f"{self.stuck} sync tool calls are stuck in their threads (a tool that never "
                            f"returns?); refusing new sync tool calls until they end")
        loop = asyncio.get_running_loop()
        per_loop = self._slots.get(loop)
        if per_loop is None:
            per_loop = self._slots[loop] = (asyncio.Semaphore(self.size), _Inbox(loop))
        slots, inbox = per_loop
        async with slots:
            fut: asyncio.Future[Any] = loop.create_future()
            abandoned = [False]
            with self._lock:
                self.running += 1
                self.calls += 1
                start = self._idle == 0
                if not start:
                    self._idle -= 1  # promised to this call
                else:
                    self.threads += 1
            self._jobs.put((contextvars.copy_context(), fn, args, kwargs, inbox, fut, abandoned))
            if start:
                threading.Thread(target=self._work, name="nbagent-tool", daemon=True).start()
            try:
                return await fut  # a cancel cancels ``fut`` too: the thread's late answer is then dropped
            except asyncio.CancelledError:
                with self._lock:
                    if not abandoned[0]:  # the thread has not finished the call: it is stuck in it
                        abandoned[0] = True
                        self.stuck += 1
                raise

    def _work(self) -> None:
        """A thread's life: run calls until none comes for ``idle_timeout`` seconds (or the pool closes)."""
        jobs = self._jobs
        while True:
            try:
                job = jobs.get(timeout=self.idle_timeout)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # more idle threads than promised calls: this one may go
                        self._idle -= 1
                        return
                continue  # every idle thread is promised a call: one is on its way
            if job is None:
                return
            ctx, fn, args, kwargs, inbox, fut, abandoned = job
            try:
                result, ok = ctx.run(fn, *args, **kwargs), True
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                result, ok = exc, False
            del job
            with self._lock:
                self.running -= 1
                if abandoned[0]:
                    self.stuck -= 1
                abandoned[0] = True  # settled: a late cancel no longer counts it as stuck
                closed = self._closed
                if not closed:
                    self._idle += 1  # before the caller hears back: its next call finds this thread
            inbox.put(fut, ok, result)
            del ctx, fn, args, kwargs, inbox, fut, abandoned, result
            if closed:
                return

    def close(self) -> None:
        """Let the idle threads end (threads running a call end after it)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, 0
        for _ in range(idle):
            self._jobs.put(None)
