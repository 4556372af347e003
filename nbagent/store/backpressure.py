"""How far the run store's writer is behind the runs, and the await that slows runs' ends when it is too far.

The store's tap numbers the events it queues (``RunStore.enqueued``) and notes when each run finished
(:attr:`Backlog.ends`: the event number of its ``RunFinished`` and the time it was queued). The writer, or the
writer process through its acknowledgements, reports how many events it has settled (committed, or counted as
dropped) in queue order (:meth:`Backlog.settle`). From the two:

* the *lag*: how long ago the oldest finished run that is not yet committed finished;
* the uncommitted finished runs (``len(ends)``) and events.

A run's end awaits :meth:`Backlog.admit`. It returns at once while the lag is under half of ``durable_within``,
at most ``max_runs`` finished runs (this one included) and at most ``max_events`` events are uncommitted;
otherwise the run waits until that is so again, or its own events are committed (for at most ``max_wait``
seconds, counted in ``timeouts``). So when the writer cannot keep up, runs end more slowly instead of piling up
finished runs that a crash would lose. Two bounds follow:

* by count, whatever the machine does: a run returns from its end only while at most ``max_runs`` finished
  runs are uncommitted, so at most ``max_runs`` runs that have returned are ever uncommitted (unless a wait
  timed out);
* in time, while the writer gets the CPU it needs: a run that returned is committed within about
  ``durable_within`` seconds (a writer starved of CPU for longer delays the runs that returned just before).

Nothing here blocks a thread: a waiting run's future is resolved from the writer's side with
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable

__all__ = ["Backlog"]

log = logging.getLogger("nbagent.store")


class Backlog:
    """The writer's progress against the queue, and the waiting runs (see the module docs)."""

    def __init__(self, *, durable_within: float | None, max_runs: int, max_events: int, max_wait: float,
                 wake: Callable[[], None]) -> None:
        self.durable_within = durable_within
        self.max_lag = None if durable_within is None else durable_within / 2
        self.max_runs = max_runs
        self.max_events = max_events
        self.max_wait = max_wait
        self._wake = wake
        self.settled = 0  # events committed or counted as dropped, in queue order
        # (event number of a RunFinished, time.monotonic() when it was queued), oldest first; the tap appends,
        # the writer's side pops what it settled
        self.ends: collections.deque[tuple[int, float]] = collections.deque()
        self._waiters: collections.deque[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = \
            collections.deque()
        self._lock = threading.Lock()  # taken by the writer's side only (the writer thread, the ack reader)
        self.open = True
        # counters
        self.waits = 0
        self.wait_seconds = 0.0
        self.timeouts = 0
        self.max_lag_seen = 0.0

    def lag(self, now: float | None = None) -> float:
        """Seconds since the oldest finished run that is not yet committed finished (0.0 when there is none)."""
        try:
            t = self.ends[0][1]
        except IndexError:
            return 0.0
        return max((time.monotonic() if now is None else now) - t, 0.0)

    def behind(self, seq: int) -> bool:
        """Whether a run whose last event is number ``seq`` should wait for the writer."""
        if not self.open or seq <= self.settled:
            return False
        if seq - self.settled > self.max_events or len(self.ends) > self.max_runs:
            return True
        return self.max_lag is not None and self.lag() > self.max_lag

    async def admit(self, seq: int) -> None:
        """Return at once unless the writer is behind; then wait until event ``seq`` is settled (at most
        ``max_wait`` seconds)."""
        if not self.behind(seq):
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._waiters.append((seq, loop, fut))
        self.waits += 1
        t0 = time.perf_counter()
        self._wake()
        if seq <= self.settled or not self.open:  # settled (or closed) while the waiter was being added
            fut.set_result(None)
        try:
            await asyncio.wait_for(fut, self.max_wait)
        except asyncio.TimeoutError:  # the builtin TimeoutError from Python 3.11 on
            self.timeouts += 1
            if self.timeouts == 1 or self.timeouts % 1000 == 0:
                log.warning("run store: the writer has been behind for %.1f s (%d runs went on without waiting "
                            "for it); finished runs may be lost in a crash", self.max_wait, self.timeouts)
        finally:
            self.wait_seconds += time.perf_counter() - t0

    def settle(self, n: int) -> None:
        """``n`` more events were committed or counted as dropped (the writer's side; any thread)."""
        if n <= 0:
            return
        with self._lock:
            self.settled += n
            settled = self.settled
            ends = self.ends
            if ends:
                lag = time.monotonic() - ends[0][1]
                if lag > self.max_lag_seen:
                    self.max_lag_seen = lag
                while ends and ends[0][0] <= settled:
                    ends.popleft()
            self._release(lambda seq: not self.behind(seq))

    def close(self) -> None:
        """Release every waiting run; later runs never wait."""
        with self._lock:
            self.open = False
            self._release(lambda seq: True)

    def _release(self, due: Callable[[int], bool]) -> None:
        """Wake the waiting runs, oldest first, up to the first that must go on waiting."""
        waiters = self._waiters
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        while waiters and due(waiters[0][0]):
            _, loop, fut = waiters.popleft()
            by_loop.setdefault(loop, []).append(fut)
        for loop, futs in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve, futs)
            except RuntimeError:  # that loop is closed: nobody waits there any more
                pass


def _resolve(futs: list[asyncio.Future[None]]) -> None:
    for fut in futs:
        if not fut.done():
            fut.set_result(None)
