"""The warm pool's state machine: slots, the FIFO queue, creation, checks, destruction and reaping.

Everything here runs on one event loop and mutates state only between ``await`` points, so no lock is
ever held: a slot is taken synchronously before a creation starts, a waiter is handed a sandbox
synchronously, and the reaper removes entries from the idle lists synchronously.

Life of a sandbox: created (``creating``) -> ``idle`` or handed to the oldest waiter -> ``leased`` ->
returned -> ``checking`` (processes killed, workspace wiped, health checked) -> ``idle`` again, or
``destroying`` when it was broken, dirty, retired, evicted, idle too long or the pool closed.
"""

from __future__ import annotations

import asyncio
import bisect
import enum
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from ..errors import SandboxError
from ..events import Event, EventBus
from ..metrics import MetricsRegistry
from .backend import SandboxBackend, SandboxDriver, SandboxLabels
from .events import SandboxChecked, SandboxCreated, SandboxDestroyed
from .spec import PoolConfig, SandboxSpec

__all__ = ["PoolEntry", "Pool", "State", "Waiter"]

log = logging.getLogger("nbagent.sandbox")


class State(enum.Enum):
    IDLE = "idle"
    LEASED = "leased"
    CHECKING = "checking"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"


class PoolEntry:
    """One pooled sandbox (it exists: creation succeeded)."""

    __slots__ = ("driver", "spec", "state", "created", "idle_since", "leases", "broken", "__weakref__")

    def __init__(self, driver: SandboxDriver, spec: SandboxSpec, now: float) -> None:
        self.driver = driver
        self.spec = spec
        self.state = State.IDLE
        self.created = now
        self.idle_since = now
        self.leases = 0
        self.broken = False


@dataclass(eq=False, slots=True)
class Waiter:
    """A queued lease request; ``ticket`` is its arrival order."""

    ticket: int
    spec: SandboxSpec
    fut: asyncio.Future[PoolEntry] = field(repr=False)


class Pool:
    """Slots, queue and lifecycle of pooled sandboxes (see the module docstring)."""

    def __init__(
        self,
        config: PoolConfig,
        *,
        bus: EventBus,
        backend: Callable[[str], SandboxBackend],
        labels: Callable[[], SandboxLabels],
        clock: Callable[[], float],
    ) -> None:
        self.config = config
        self.bus = bus
        self._backend = backend
        self._labels = labels
        self._clock = clock
        self.loop: asyncio.AbstractEventLoop | None = None
        self.default_key: SandboxSpec | None = None
        self.closed = False
        self.idle: dict[SandboxSpec, list[PoolEntry]] = {}  # oldest first; leases take the newest
        self.leased: set[PoolEntry] = set()
        self.waiters: list[Waiter] = []  # sorted by ticket
        self.creating: Counter[SandboxSpec] = Counter()
        self.checking: Counter[SandboxSpec] = Counter()
        self.destroying = 0
        self.total = 0
        self._evicting = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._refill_after = 0.0
        self._backoff = 1.0
        self.totals: Counter[str] = Counter()
        self.destroyed: Counter[str] = Counter()
        self.facts = MetricsRegistry()
        """The pool's and its manager's own events, folded by the metrics handlers (what ``stats()`` reads)."""
        self.on_returned: Callable[[], None] | None = None

    # --- leases ---------------------------------------------------------------------------------


    def emit(self, event: Event) -> None:
        """Publish ``event`` and fold it into :attr:`facts`."""
        self.facts.observe(event)
        self.bus.emit(event)
    def take_idle(self, key: SandboxSpec) -> PoolEntry | None:
        """The newest idle sandbox of ``key``, leased, if nobody queued for it first."""
        idle = self.idle.get(key)
        if not idle or any(w.spec == key for w in self.waiters):
            return None
        entry = idle.pop()
        self._mark_leased(entry)
        self.pump()  # keep the warm pool at min_idle
        return entry

    def enqueue(self, ticket: int, key: SandboxSpec) -> Waiter:
        assert self.loop is not None
        waiter = Waiter(ticket, key, self.loop.create_future())
        bisect.insort(self.waiters, waiter, key=lambda w: w.ticket)
        self.pump()
        return waiter

    def abandon(self, waiter: Waiter) -> None:
        """A waiter gave up (timeout or cancellation): whatever it was handed goes straight back."""
        if waiter in self.waiters:
            self.waiters.remove(waiter)
        if not waiter.fut.done():
            waiter.fut.cancel()
        elif not waiter.fut.cancelled() and waiter.fut.exception() is None:
            entry = waiter.fut.result()
            self.leased.discard(entry)
            self._offer(entry)  # never used by anyone: no check needed

    def release(self, entry: PoolEntry) -> None:
        """A lease ended: check the sandbox (or destroy it when broken, retired or closing)."""
        if entry.state is not State.LEASED:  # destroyed under the lease by close()
            return
        self.leased.discard(entry)
        if not self.leased and self.on_returned is not None:
            self.on_returned()
        if self.closed:
            self.destroy(entry, "shutdown")
        elif entry.broken:
            self.destroy(entry, "broken")
        elif self.config.max_leases is not None and entry.leases >= self.config.max_leases:
            self.destroy(entry, "retired")
        else:
            entry.state = State.CHECKING
            self.checking[entry.spec] += 1
            self.spawn(self._check(entry))

    def _mark_leased(self, entry: PoolEntry) -> None:
        entry.state = State.LEASED
        self.leased.add(entry)

    # --- supply ---------------------------------------------------------------------------------

    def _supply(self, spec: SandboxSpec) -> int:
        return len(self.idle.get(spec, ())) + self.creating[spec] + self.checking[spec]

    def pump(self) -> None:
        """Serve queued requests from idle sandboxes, start creations (and evictions) for the rest,
        oldest first, then refill the warm pool."""
        if self.closed:
            return
        for w in list(self.waiters):
            idle = self.idle.get(w.spec)
            if idle:
                self.waiters.remove(w)
                entry = idle.pop()
                self._mark_leased(entry)
                w.fut.set_result(entry)
        free = self.config.max_total - self.total
        evicting = self._evicting
        claimed: Counter[SandboxSpec] = Counter()
        for w in self.waiters:
            if claimed[w.spec] < self._supply(w.spec):
                claimed[w.spec] += 1
            elif free > 0:
                free -= 1
                claimed[w.spec] += 1
                self._spawn_create(w.spec)
            elif evicting > 0:
                evicting -= 1  # a slot is already on its way for this one
            else:
                victim = self._eviction_candidate(w.spec)
                if victim is not None:
                    self.destroy(victim, "evicted", eviction=True)
        key = self.default_key
        if key is not None and not self.waiters and free > 0 and self._clock() >= self._refill_after:
            for _ in range(min(free, self.config.min_idle - self._supply(key))):
                self._spawn_create(key)

    def _eviction_candidate(self, wanted: SandboxSpec) -> PoolEntry | None:
        oldest: PoolEntry | None = None
        for spec, idle in self.idle.items():
            if spec != wanted and idle and (oldest is None or idle[0].idle_since < oldest.idle_since):
                oldest = idle[0]
        if oldest is not None:
            self.idle[oldest.spec].remove(oldest)
        return oldest

    def _spawn_create(self, spec: SandboxSpec) -> None:
        self.creating[spec] += 1
        self.total += 1
        self.spawn(self._create(spec))

    async def _create(self, spec: SandboxSpec) -> None:
        started = self._clock()
        try:
            driver = await self._backend(spec.backend).create(spec, self._labels())
        except BaseException as e:
            self.creating[spec] -= 1
            self.total -= 1
            if not isinstance(e, Exception):
                raise
            self._create_failed(spec, e, self._clock() - started)
            return
        self.creating[spec] -= 1
        seconds = self._clock() - started
        self._backoff = 1.0
        self.totals["created"] += 1
        self.emit(SandboxCreated(sandbox_id=driver.id, backend=driver.backend, image=spec.image, seconds=seconds))
        self._offer(PoolEntry(driver, spec, self._clock()))

    def _create_failed(self, spec: SandboxSpec, e: Exception, seconds: float) -> None:
        self.totals["create_failures"] += 1
        self.emit(SandboxCreated(backend=spec.backend, image=spec.image, seconds=seconds, ok=False,
                                 error=f"{type(e).__name__}: {e}"))
        err = e if isinstance(e, SandboxError) else SandboxError(f"could not create a {spec.backend} sandbox: {e}")
        if err is not e:
            err.__cause__ = e
        for w in self.waiters:  # the oldest request for this spec hears why
            if w.spec == spec:
                self.waiters.remove(w)
                w.fut.set_exception(err)
                break
        else:
            log.warning("warm-pool sandbox creation failed (retrying in %.0fs): %s", self._backoff, err)
            self._refill_after = self._clock() + self._backoff
            self._backoff = min(self._backoff * 2, 60.0)
        self.pump()

    def _offer(self, entry: PoolEntry) -> None:
        """A ready sandbox: to the oldest request for its spec, else to the idle list."""
        if self.closed:
            self.destroy(entry, "shutdown")
            return
        for w in self.waiters:
            if w.spec == entry.spec:
                self.waiters.remove(w)
                self._mark_leased(entry)
                w.fut.set_result(entry)
                return
        entry.state = State.IDLE
        entry.idle_since = self._clock()
        self.idle.setdefault(entry.spec, []).append(entry)
        self.pump()

    async def _check(self, entry: PoolEntry) -> None:
        started = self._clock()
        problem: str | None
        try:
            problem = await asyncio.wait_for(entry.driver.check(), self.config.check_timeout)
        except asyncio.TimeoutError:
            problem = f"the health check took over {self.config.check_timeout:g}s"
        except Exception as e:
            problem = f"the health check failed: {type(e).__name__}: {e}"
        finally:
            self.checking[entry.spec] -= 1
        self.emit(SandboxChecked(sandbox_id=entry.driver.id, backend=entry.driver.backend,
                                 seconds=self._clock() - started, problem=problem))
        if problem is not None:
            log.info("sandbox %s failed its check and is replaced: %s", entry.driver.id, problem)
            self.destroy(entry, "unhealthy")
        else:
            self._offer(entry)

    # --- removal --------------------------------------------------------------------------------

    def destroy(self, entry: PoolEntry, reason: str, *, eviction: bool = False) -> None:
        self.leased.discard(entry)
        entry.state = State.DESTROYING
        self.destroying += 1
        self._evicting += eviction
        self.spawn(self._destroy(entry, reason, eviction))

    async def _destroy(self, entry: PoolEntry, reason: str, eviction: bool) -> None:
        error: str | None = None
        try:
            await entry.driver.destroy()
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            log.warning("could not destroy sandbox %s: %s", entry.driver.id, error)
        finally:
            entry.state = State.DESTROYED
            self.destroying -= 1
            self._evicting -= eviction
            self.total -= 1
        self.destroyed[reason] += 1
        self.emit(SandboxDestroyed(sandbox_id=entry.driver.id, backend=entry.driver.backend, reason=reason,
                                   lifetime=self._clock() - entry.created, leases=entry.leases, error=error))
        self.pump()

    def reap(self) -> int:
        """Destroy sandboxes idle for longer than ``idle_ttl`` (keeping ``min_idle`` of the default spec
        warm); return how many. Only idle sandboxes are ever touched."""
        now = self._clock()
        reaped = 0
        for spec, idle in self.idle.items():
            keep = self.config.min_idle if spec == self.default_key else 0
            while len(idle) > keep and now - idle[0].idle_since >= self.config.idle_ttl:
                entry = idle.pop(0)
                assert entry.state is State.IDLE
                self.destroy(entry, "idle")
                reaped += 1
        self.pump()  # also retries a warm-pool refill after a failure
        return reaped

    def close(self) -> None:
        """Fail every waiter and destroy every idle sandbox; leased ones are destroyed when returned
        (or by :meth:`destroy_leased`)."""
        self.closed = True
        for w in self.waiters:
            if not w.fut.done():
                w.fut.set_exception(SandboxError("the sandbox manager was closed"))
                w.fut.exception()  # a waiter that is gone must not log "never retrieved"
        self.waiters.clear()
        for idle in self.idle.values():
            while idle:
                self.destroy(idle.pop(), "shutdown")

    def destroy_leased(self) -> None:
        for entry in list(self.leased):
            self.destroy(entry, "shutdown")

    # --- tasks ----------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self.loop is not None
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox pool task failed", exc_info=task.exception())

    async def settle(self) -> None:
        """Wait until no creation, check or destruction is in flight."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
