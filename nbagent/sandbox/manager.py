"""Sandbox leases over a warm pool.

::

    async with manager.lease(spec) as sb:
        result = await sb.exec("python3 -c 'print(1)'")

How the pool keeps its promises, all on one event loop and with no lock held across an ``await``:

* **Hard limit.** Every sandbox that exists (creating, idle, leased, being checked or destroyed) holds one
  of ``max_total`` slots. A slot is taken synchronously before creation starts and given back only when
  the sandbox is gone.
* **Parallel creation.** Creations run as background tasks outside any lock, as many at once as there
  are free slots and unmet requests. A creation belongs to the pool, not to the request that caused it,
  so a request that gives up never leaves a half-made sandbox behind.
* **FIFO fairness.** Requests wait in one queue; whatever becomes free goes to the oldest request for its
  spec. An idle sandbox of another spec is evicted to free a slot for the oldest request.
* **The reaper cannot reap a lease.** It only ever takes entries out of the idle lists, synchronously; a
  leased sandbox is never in an idle list.
* **Returned sandboxes are checked.** Leftover processes are killed, the workspace is wiped and the
  sandbox is checked before it is idle again; a dirty or broken one is destroyed and replaced, never
  leased again.
* **Orphans.** Sandboxes are labelled with the owner pid, its start time, the host and the manager id;
  ``prune_orphans()`` (run on start) removes those whose owner process is gone. ``aclose()`` destroys
  everything; an ``atexit`` hook removes what is left if the program exits without it.

Backends come from :mod:`nbagent.sandbox.backend_registry` by name; the manager makes one instance of each
backend it uses (or takes the instances given to it) and never names a backend itself.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import time
import weakref
from collections.abc import AsyncIterator, Callable, Mapping

from ..errors import LeaseTimeout, SandboxError
from ..events import EventBus, default_bus
from . import backend_registry as registry
from .backend import LABEL_MANAGER, SandboxBackend, SandboxLabels, SandboxRecord, new_manager_id
from .events import SandboxDestroyed, SandboxLeased, SandboxLeaseTimedOut, SandboxReleased
from .pool import Pool
from .sandbox import Sandbox, exec_event
from .spec import ExecResult, PoolConfig, SandboxSpec
from .stats import SandboxStats, percentiles

__all__ = ["SandboxManager", "default_manager"]

log = logging.getLogger("nbagent.sandbox")


class SandboxManager:
    """Leases sandboxes from a warm pool. See the module docstring for the guarantees.

    ``spec`` is the default for :meth:`lease` and the one kept warm (``pool.min_idle``). ``backends`` maps
    a backend name to an instance (registered backends are made on first use when not given; given ones
    are also the only ones :meth:`list_sandboxes` and :meth:`prune_orphans` look at). Events go
    to ``bus`` (default: the process-wide bus). ``prune_on_start`` removes orphans when the manager starts.
    ``clock`` is injectable for tests.
    """

    def __init__(
        self,
        spec: SandboxSpec | None = None,
        pool: PoolConfig | None = None,
        *,
        bus: EventBus | None = None,
        backends: Mapping[str, SandboxBackend] | None = None,
        prune_on_start: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.spec = spec or SandboxSpec()
        self.pool = pool or PoolConfig()
        self.bus = bus if bus is not None else default_bus()
        self.id = new_manager_id()
        self.prune_on_start = prune_on_start
        self._clock = clock
        self._backends = registry.BackendSet(backends)
        self._used: set[str] = set()  # backends this manager created sandboxes on
        self._resolved: dict[SandboxSpec, SandboxSpec] = {}
        self._pool = Pool(self.pool, bus=self.bus, backend=self._backend_to_create, clock=clock,
                          labels=lambda: SandboxLabels.for_this_process(self.id))
        self._tickets = itertools.count()
        self._arriving: set[int] = set()  # tickets of requests still waiting for start-up
        self._started: asyncio.Future[None] | None = None
        self._reaper: asyncio.Task[None] | None = None
        ref = weakref.ref(self)
        self._atexit = lambda: _atexit_cleanup(ref)
        atexit.register(self._atexit)

    @property
    def closed(self) -> bool:
        return self._pool.closed

    # --- public API -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Remove orphaned sandboxes, start the reaper and fill the warm pool. Leasing starts it too."""
        if self.closed:
            raise SandboxError("the sandbox manager is closed")
        loop = asyncio.get_running_loop()
        if self._pool.loop is not None and self._pool.loop is not loop:
            raise SandboxError("this sandbox manager belongs to another event loop")
        if self._started is None:
            self._pool.loop = loop
            self._started = loop.create_task(self._start())
        await asyncio.shield(self._started)

    @contextlib.asynccontextmanager
    async def lease(
        self, spec: SandboxSpec | None = None, *, run_id: str | None = None, timeout: float | None = None
    ) -> AsyncIterator[Sandbox]:
        """Lease a sandbox for the ``async with`` block; it goes back to the pool (checked) afterwards.

        Waits first-come first-served for at most ``timeout`` seconds (default ``pool.lease_timeout``),
        then raises :class:`~nbagent.errors.LeaseTimeout`. A failed creation raises
        :class:`~nbagent.errors.SandboxError`.
        """
        sb = await self._acquire(spec or self.spec, run_id, timeout)
        try:
            yield sb
        finally:
            self._release(sb)

    def stats(self) -> SandboxStats:
        """Gauges, totals and p50/p95 of lease wait, exec and create times."""
        p = self._pool
        t = p.totals
        return SandboxStats(
            active=len(p.leased),
            idle=sum(len(v) for v in p.idle.values()),
            creating=sum(p.creating.values()),
            checking=sum(p.checking.values()),
            destroying=p.destroying,
            waiting=len(p.waiters),
            total=p.total,
            max_total=self.pool.max_total,
            created=t["created"],
            create_failures=t["create_failures"],
            leases=t["leases"],
            warm_leases=t["warm_leases"],
            lease_timeouts=t["lease_timeouts"],
            execs=t["execs"],
            exec_timeouts=t["exec_timeouts"],
            exec_errors=t["exec_errors"],
            destroyed=dict(p.destroyed),
            **percentiles(p.facts),
        )

    def reap(self) -> int:
        """Destroy sandboxes idle longer than ``idle_ttl`` (keeping ``min_idle`` warm); return how many.
        The reaper task calls this every ``reap_interval``. Only idle sandboxes are ever touched."""
        return self._pool.reap()

    async def settle(self) -> None:
        """Wait until no creation, check or destruction is in flight."""
        await self._pool.settle()

    async def list_sandboxes(self) -> list[SandboxRecord]:
        """Every labelled sandbox the reachable backends know of, from any process."""
        out: list[SandboxRecord] = []
        for backend in await self._backends.reachable():
            out.extend(await backend.list_sandboxes())
        return out

    async def prune_orphans(self) -> list[SandboxRecord]:
        """Remove labelled sandboxes whose owner process is dead; return what was removed."""
        removed: list[SandboxRecord] = []
        for backend in await self._backends.reachable():
            try:
                records = await backend.list_sandboxes()
                dead = await asyncio.to_thread(_orphans, records)
            except SandboxError as e:
                log.warning("cannot list %s sandboxes: %s", backend.name, e)
                continue
            for record in dead:
                try:
                    await backend.remove(record.id)
                except SandboxError as e:
                    log.warning("cannot remove orphaned sandbox %s: %s", record.id, e)
                    continue
                removed.append(record)
                self._pool.destroyed["orphan"] += 1
                self._pool.emit(SandboxDestroyed(sandbox_id=record.id, backend=record.backend, reason="orphan"))
        if removed:
            log.info("removed %d orphaned sandbox(es)", len(removed))
        return removed

    async def aclose(self, *, grace: float = 5.0) -> None:
        """Stop leasing, wait up to ``grace`` seconds for active leases to end, then destroy every sandbox
        (including still-leased ones) and wait until they are gone."""
        pool = self._pool
        if not pool.closed:
            pool.close()
            if self._reaper is not None:
                self._reaper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._reaper
            if pool.leased:
                returned = asyncio.Event()
                pool.on_returned = returned.set
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(returned.wait(), grace)
            pool.destroy_leased()
        await pool.settle()
        await self._backends.aclose()
        atexit.unregister(self._atexit)

    async def __aenter__(self) -> SandboxManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def cleanup_sync(self) -> None:
        """Best-effort removal of this manager's sandboxes when no event loop runs (interpreter exit):
        runs :meth:`remove_own` on a private loop. Never raises."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            log.debug("sandbox cleanup skipped: an event loop is running in this thread")
            return
        try:
            asyncio.run(self.remove_own())
        except Exception as e:  # exit-time cleanup must never raise
            log.debug("sandbox cleanup failed: %s", e)

    async def remove_own(self) -> int:
        """Remove every sandbox labelled with this manager's id, from the backends it created sandboxes
        on (whatever the pool thinks of them); return how many."""
        removed = 0
        for name in sorted(self._used):
            backend = self._backends.get(name)
            try:
                records = await backend.list_sandboxes()
            except Exception as e:
                log.debug("cannot list %s sandboxes: %s", name, e)
                continue
            for record in records:
                if record.labels.get(LABEL_MANAGER) != self.id:
                    continue
                try:
                    await backend.remove(record.id)
                    removed += 1
                except Exception as e:
                    log.debug("cannot remove sandbox %s: %s", record.id, e)
        return removed

    # --- leasing --------------------------------------------------------------------------------

    async def _acquire(self, spec: SandboxSpec, run_id: str | None, timeout: float | None) -> Sandbox:
        if self.closed:
            raise SandboxError("the sandbox manager is closed")
        started = self._clock()
        ticket = next(self._tickets)  # arrival order, kept even if start-up makes this request wait
        key = self._ready_key(spec)
        if key is None:
            self._arriving.add(ticket)
            try:
                await self.start()
                key = await self._resolve(spec)
            finally:
                self._arriving.discard(ticket)
        limit = self.pool.lease_timeout if timeout is None else timeout
        pool = self._pool
        entry = pool.take_idle(key) if not any(t < ticket for t in self._arriving) else None
        warm = entry is not None
        if entry is None:
            waiter = pool.enqueue(ticket, key)
            try:
                remaining = max(0.0, limit - (self._clock() - started))
                done, _ = await asyncio.wait({waiter.fut}, timeout=remaining)
            except BaseException:
                pool.abandon(waiter)
                raise
            if not done:
                pool.abandon(waiter)
                pool.totals["lease_timeouts"] += 1
                self._pool.emit(SandboxLeaseTimedOut(run_id=run_id, backend=key.backend,
                                                     wait=self._clock() - started, waiting=len(pool.waiters)))
                raise LeaseTimeout(
                    f"no {key.backend} sandbox became free within {limit:g}s "
                    f"({len(pool.leased)} leased of max_total={self.pool.max_total}, {len(pool.waiters)} waiting)"
                )
            entry = waiter.fut.result()  # a failed creation raises here
        entry.leases += 1
        wait = self._clock() - started
        pool.totals["leases"] += 1
        pool.totals["warm_leases"] += warm
        sb = Sandbox(entry, self, run_id)
        self._pool.emit(SandboxLeased(run_id=run_id, sandbox_id=sb.id, backend=sb.backend, wait=wait,
                                      reuse_count=entry.leases - 1, warm=warm))
        return sb

    def _ready_key(self, spec: SandboxSpec) -> SandboxSpec | None:
        """The resolved spec when nothing needs awaiting (started, spec resolved, nobody ahead)."""
        if self._started is None or not self._started.done() or self._arriving:
            return None
        if asyncio.get_running_loop() is not self._pool.loop:
            return None  # start() raises the right error
        return spec if spec.backend != "auto" else self._resolved.get(spec)

    def _release(self, sb: Sandbox) -> None:
        if not sb._open:
            return
        sb._close()
        self._pool.emit(SandboxReleased(run_id=sb.run_id, sandbox_id=sb.id, backend=sb.backend,
                                        held=time.monotonic() - sb.leased_at, execs=sb.execs))
        self._pool.release(sb._entry)

    def _exec_done(
        self, sb: Sandbox, lang: str, seconds: float, result: ExecResult | None, error: BaseException | None = None
    ) -> None:
        totals = self._pool.totals
        totals["execs"] += 1
        if result is None:
            totals["exec_errors"] += 1
        else:
            totals["exec_timeouts"] += result.timed_out
        self._pool.emit(exec_event(sb, lang, seconds, result, error))

    # --- plumbing -------------------------------------------------------------------------------

    async def _start(self) -> None:
        try:
            self._pool.default_key = await self._resolve(self.spec)
        except SandboxError as e:
            log.warning("default sandbox spec unusable: %s", e)
        if self.prune_on_start:
            try:
                await self.prune_orphans()
            except Exception as e:  # pruning is housekeeping: never fatal
                log.warning("orphan pruning failed: %s", e)
        if not self.closed:
            assert self._pool.loop is not None
            self._reaper = self._pool.loop.create_task(self._reap_forever())
            self._pool.pump()

    async def _reap_forever(self) -> None:
        while not self.closed:
            await asyncio.sleep(self.pool.reap_interval)
            try:
                self._pool.reap()
            except Exception:  # the reaper must outlive a bug in one pass
                log.exception("sandbox reaper pass failed")

    async def _resolve(self, spec: SandboxSpec) -> SandboxSpec:
        if spec.backend != "auto":
            return spec
        resolved = self._resolved.get(spec)
        if resolved is None:
            name = await self._backends.first_available()
            resolved = spec.replace(backend=name)
            self._resolved[spec] = resolved
        return resolved

    def _backend_to_create(self, name: str) -> SandboxBackend:
        backend = self._backends.get(name)
        self._used.add(name)
        return backend


def _orphans(records: list[SandboxRecord]) -> list[SandboxRecord]:
    return [r for r in records if not r.owner_alive]


def _atexit_cleanup(ref: weakref.ref[SandboxManager]) -> None:
    manager = ref()
    if manager is not None:
        manager.cleanup_sync()


def default_manager() -> SandboxManager:
    """The default runtime's sandbox manager, which sandbox tools use unless given one (made on first use from
    the settings' ``[sandbox]`` table; a new one is made if the old one was closed or its event loop is gone)."""
    from ..runtime import runtime

    return runtime().sandboxes
