"""The run store: every event of every run in SQLite, written behind the run by one thread.

::

    store = RunStore()            # <nbagent home>/runs.db, or $NBAGENT_STORE_PATH
    store.attach(agent.bus)       # from now on every event (and each run's messages) is kept
    ...
    store.runs(status="error", since="1d")
    store.load(run_id).events

How it stays off the run's back:

* ``record(event)`` (the bus tap) appends the event to a deque and returns: no serialisation, no lock, no
  I/O on the event loop. When ``batch_size`` events are waiting, or a run finishes, it wakes the writer (once
  the writer process writes, only a much longer queue does; otherwise the clock).
* One writer thread wakes at least every ``flush_interval`` seconds and packs the waiting events into tuples
  (:mod:`nbagent.store.batch`). It either writes them itself or hands them to a writer process
  (:mod:`nbagent.store.proc`); whichever writes is the only connection that writes, and it serialises and
  redacts the events and commits them in transactions of at most ``batch_size`` events, one ``events`` row
  per run per transaction (see :mod:`nbagent.store.migrations`) and one multi-row statement per table.
  SQLite runs in WAL mode with ``synchronous=NORMAL``: a commit needs no fsync, and a process that is killed
  loses nothing it committed (only a power cut can; ``synchronous="FULL"`` closes that too).
* ``writer``: ``"thread"`` writes in this process; ``"process"`` starts the writer process at once;
  ``"auto"`` (the default, or ``$NBAGENT_STORE_WRITER``) writes in the thread and starts the process once
  the store takes more than ``AUTO_PROCESS_RATE`` events per second on a machine with more than one core.
  The thread's encoding and inserts hold the GIL, so in a CPU-bound client they come out of the event loop's
  time; the process does them on another core. A custom redactor (a subclass) keeps the thread.
* Durability: a finished run is committed within about ``durable_within`` seconds (0.25 s) of its end,
  whatever the load, and at most ``max_uncommitted_runs`` runs that have ended are ever uncommitted. The
  tap never waits; instead each run's end awaits :meth:`admit`, which returns at once unless the writer is
  behind (the oldest uncommitted finished run ended more than ``durable_within / 2`` ago, or more than
  ``max_uncommitted_runs`` finished runs or ``queue_size / 2`` events are uncommitted) and then waits until
  it no longer is, or the run's own events are committed (at most ``max_wait`` seconds). See
  :mod:`nbagent.store.backpressure`.
* A full queue: at ``queue_size`` uncommitted events (queued, or handed to the writer process and not yet
  committed), an event emitted on an event loop is dropped and counted
  (``stats()["dropped"]``, the ``dropped`` column of its run, and a warning), never waited for; a plain
  thread (a script, a worker thread) with ``on_full="wait"`` waits for room for at most ``max_wait``
  seconds (``stats()["waits"]``, ``["wait_seconds"]``). Nothing is lost without a count.
* Flushes: at the end of each run (the writer is woken at once and waits ``end_grace``, 10 ms, so that runs
  ending together share a commit), on :meth:`flush` / :meth:`aflush`, on :meth:`close`, and at interpreter
  exit (which is also how a Jupyter kernel shuts down).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import logging
import os
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import user_dir
from ..events import Event, EventBus, RunFinished, RunStarted
from .backpressure import Backlog
from .batch import BatchWriter, Packer
from .batch import Marker as _Marker
from .batch import ResultRecord as _Result
from .proc import WriterProcess
from .query import RunQueries
from .redact import Redactor, default_redactor
from .writer import StoreWriter

__all__ = ["RunStore", "default_path"]

log = logging.getLogger("nbagent.store")

DB_NAME = "runs.db"


def default_path() -> Path:
    """``$NBAGENT_STORE_PATH``, else ``<nbagent home>/runs.db`` (the home honours ``$NBAGENT_HOME``)."""
    env = os.environ.get("NBAGENT_STORE_PATH")
    return Path(env).expanduser() if env else user_dir() / DB_NAME


class RunStore(StoreWriter, RunQueries):
    """Write-behind SQLite store of runs, events, messages and profiles (see the module docs)."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        batch_size: int = 50,
        flush_interval: float = 0.1,
        queue_size: int = 100_000,
        on_full: str = "wait",
        max_wait: float = 5.0,
        synchronous: str = "NORMAL",
        end_grace: float = 0.01,
        redactor: Redactor | None = None,
        redact: bool = True,
        writer: str | None = None,
        durable_within: float | None = 0.25,
        max_uncommitted_runs: int = 1000,
    ) -> None:
        if on_full not in ("wait", "drop"):
            raise ValueError("on_full must be 'wait' or 'drop'")
        if batch_size < 1 or queue_size < 1 or flush_interval <= 0:
            raise ValueError("batch_size and queue_size must be >= 1 and flush_interval > 0")
        if max_uncommitted_runs < 1:
            raise ValueError("max_uncommitted_runs must be >= 1")
        if durable_within is not None and durable_within <= 0:
            raise ValueError("durable_within must be positive seconds (or None: runs never wait for the writer)")
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError("synchronous must be OFF, NORMAL, FULL or EXTRA")
        writer = (writer or os.environ.get("NBAGENT_STORE_WRITER") or "auto").lower()
        if writer not in ("auto", "thread", "process"):
            raise ValueError("writer must be 'auto', 'thread' or 'process'")
        self.path = Path(path).expanduser() if path is not None else default_path()
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.queue_size = queue_size
        self.on_full = on_full
        self.max_wait = max_wait
        self.synchronous = synchronous.upper()
        self.end_grace = min(end_grace, flush_interval)
        self.redactor = (redactor or default_redactor()) if redact else None
        # a custom redactor (a subclass) only works in this process
        self.writer = writer if self.redactor is None or type(self.redactor) is Redactor else "thread"
        self._pending: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._room = threading.Condition()
        self._ready = threading.Event()
        self._closing = False
        self._flush_now = False  # set by flush() and by a full queue: drain without the run-end grace
        self._waiters = 0
        self._accepting = True  # False once the writer has stopped: later events are counted as dropped
        self._closed = False
        self._error: BaseException | None = None
        self._drop_lock = threading.Lock()
        self._run_drops: dict[str, int] = {}
        self._runs_seen: dict[str, None] = {}  # runs started on an attached bus, until their result comes
        self._detach: list[Callable[[], None]] = []
        self._pid = os.getpid()
        self._host = socket.gethostname()
        self._packer = Packer()
        self._local = BatchWriter(self.redactor, self._pid, self._host)
        self._conn: sqlite3.Connection | None = None
        self._proc: WriterProcess | None = None  # the writer process, once started
        self._via_proc = False  # batches go to the writer process (once it is ready); see _set_via_proc
        self._wake_at, self._wake_on_end = batch_size, True
        self._interval = flush_interval  # the writer thread's longest sleep (shorter once the process writes)
        self.durable_within = durable_within
        self._backlog = Backlog(durable_within=durable_within, max_runs=max_uncommitted_runs,
                                max_events=max(queue_size // 2, 1), max_wait=max_wait, wake=self._wake_now)
        self._shed_logged = 0.0  # time.monotonic() of the last "queue full" warning
        self._announce = False
        self._rate = (time.monotonic(), 0)  # when and at what count "auto" last measured the event rate
        # counters (written by one thread each; read without locks)
        self.enqueued = 0
        self.written = 0
        self.commits = 0
        self.dropped = 0
        self.waits = 0
        self.wait_seconds = 0.0
        self.write_errors = 0
        self.max_pending = 0
        self._thread = threading.Thread(target=self._writer, name="nbagent-run-store", daemon=True)
        self._thread.start()
        _open_stores.add(self)

    # --- feeding -----------------------------------------------------------------------------------

    def attach(self, bus: EventBus) -> Callable[[], None]:
        """Keep every event of ``bus`` and the messages of its runs. Returns a function that detaches."""
        remove_tap = bus.tap(self.record)
        bus.result_sinks.append(self.save_result)
        bus.run_end_gates.append(self.admit)

        def detach() -> None:
            remove_tap()
            if self.save_result in bus.result_sinks:
                bus.result_sinks.remove(self.save_result)
            if self.admit in bus.run_end_gates:
                bus.run_end_gates.remove(self.admit)

        self._detach.append(detach)
        return detach

    def record(self, event: Event) -> None:
        """Queue one event (the bus tap). Never does I/O and never waits on an event loop (see above)."""
        if not self._accepting:
            self._count_drop(event.run_id)
            return
        pending = self._pending
        n = len(pending)
        if self.enqueued - self._backlog.settled >= self.queue_size and not self._make_room(event):
            return
        pending.append(event)
        self.enqueued += 1
        if n >= self.max_pending:
            self.max_pending = n + 1
        cls = type(event)
        if cls is RunStarted:
            seen = self._runs_seen
            seen[event.run_id] = None  # type: ignore[index]
            if len(seen) > 100_000:  # runs whose result never came (events from elsewhere): forget the oldest
                del seen[next(iter(seen))]
        elif cls is RunFinished:
            self._backlog.ends.append((self.enqueued, time.monotonic()))
        if n + 1 >= self._wake_at or (cls is RunFinished and self._wake_on_end):
            if not self._wake.is_set():
                self._wake.set()

    async def admit(self) -> None:
        """Await at the end of a run (after its ``RunFinished``): returns at once unless the writer is behind,
        then waits until it no longer is, or the run's events are committed (at most ``max_wait`` seconds).
        Never blocks the loop."""
        await self._backlog.admit(self.enqueued)

    def _wake_now(self) -> None:
        self._flush_now = True
        self._wake.set()

    def _make_room(self, event: Event) -> bool:
        if self.on_full == "wait" and not self._closed and self._thread.is_alive() and not _on_event_loop():
            t0 = time.perf_counter()
            deadline = t0 + self.max_wait
            self.waits += 1
            self._flush_now = True
            self._wake.set()
            with self._room:
                self._waiters += 1
                try:
                    while self._full():
                        left = deadline - time.perf_counter()
                        if left <= 0:
                            break
                        self._room.wait(min(left, 0.05))
                finally:
                    self._waiters -= 1
            self.wait_seconds += time.perf_counter() - t0
            if not self._full():
                return True
        self._count_drop(event.run_id)
        if not self._wake.is_set():
            self._wake_now()
        now = time.monotonic()
        if now - self._shed_logged >= 10.0:
            self._shed_logged = now
            log.warning("run store %s: %d events are not yet committed; dropping new events (%d so far, counted "
                        "in stats()['dropped'] and in their runs' rows)", self.path,
                        self.enqueued - self._backlog.settled, self.dropped)
        return False

    def _full(self) -> bool:
        """``queue_size`` events are uncommitted (in the queue, or handed to the writer process)."""
        return self.enqueued - self._backlog.settled >= self.queue_size and self._accepting

    def _count_drop(self, run_id: str | None, n: int = 1) -> None:
        with self._drop_lock:
            self.dropped += n
            if run_id is not None:
                self._run_drops[run_id] = self._run_drops.get(run_id, 0) + n

    def save_result(self, result: Any) -> None:
        """Keep what a :class:`~nbagent.agent.RunResult` adds to its events: messages, output, timings, profile."""
        self._runs_seen.pop(result.run_id, None)
        if not self._accepting:
            return
        artifacts: dict[str, Any] = {}
        profile = getattr(result, "profile", None)
        if profile is not None:
            artifacts.update(profile.artifacts())
        self._pending.append(_Result(result.run_id, list(result.messages), result.output or "",
                                     dict(result.timings), artifacts))
        if self._wake_on_end:
            self._wake.set()

    def save_run(self, result: Any) -> None:
        """Keep a whole run that happened elsewhere (a worker process): its events, then its result."""
        for ev in result.events:
            self.record(ev)
        self.save_result(result)

    # --- flushing ----------------------------------------------------------------------------------

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Block until everything queued so far is committed; False on timeout or a dead writer."""
        if not self._thread.is_alive():
            return not self._pending
        marker = _Marker()
        self._pending.append(marker)
        self._flush_now = True
        self._wake.set()
        return marker.done.wait(timeout)

    async def aflush(self) -> None:
        """:meth:`flush` without blocking the event loop."""
        if not self._thread.is_alive():
            return
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            if not fut.done():
                fut.set_result(None)

        def wake() -> None:
            loop.call_soon_threadsafe(done)

        self._pending.append(_Marker(wake))
        self._flush_now = True
        self._wake.set()
        await fut

    def close(self, timeout: float | None = 30.0) -> None:
        """Detach from every bus, commit what is queued, stop the writer. Idempotent."""
        if self._closed:
            return
        for detach in self._detach:
            detach()
        self._detach.clear()
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        self._closed = True
        self._backlog.close()
        if not self._thread.is_alive():
            self._fail_pending()  # anything that slipped in as the writer stopped
        _open_stores.discard(self)

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """Counters: events queued, written, dropped; commits; waits; queue length and lag; errors.

        ``pending`` / ``max_pending``: events in this process's queue now / at most; ``uncommitted``: events
        queued and not yet committed (nor counted as dropped), including those handed to the writer process;
        ``lag`` / ``max_lag``: seconds since the oldest uncommitted finished run ended, now / at most;
        ``admit_waits``, ``admit_wait_seconds``, ``admit_timeouts``: runs' ends that waited for the writer.
        """
        bl = self._backlog
        return {
            "path": str(self.path), "enqueued": self.enqueued, "written": self.written, "commits": self.commits,
            "dropped": self.dropped, "waits": self.waits, "wait_seconds": self.wait_seconds,
            "pending": len(self._pending), "max_pending": self.max_pending, "write_errors": self.write_errors,
            "uncommitted": self.enqueued - bl.settled, "lag": bl.lag(), "max_lag": bl.max_lag_seen,
            "durable_within": self.durable_within, "admit_waits": bl.waits, "admit_wait_seconds": bl.wait_seconds,
            "admit_timeouts": bl.timeouts,
            "writer_alive": self._thread.is_alive(), "error": None if self._error is None else repr(self._error),
            "writer": "process" if self._via_proc else "thread",
            "writer_pid": self._proc.pid if self._via_proc and self._proc is not None else None,
        }

    def __repr__(self) -> str:
        return f"<RunStore {self.path} written={self.written} pending={len(self._pending)} dropped={self.dropped}>"

    # --- reading (see RunQueries) ------------------------------------------------------------------

    def _before_read(self, flush: bool) -> None:
        self._ready.wait(30.0)
        if self._error is not None:
            raise self._error
        if flush and self._thread.is_alive():
            self.flush()  # also covers the batch the writer has taken off the queue but not yet committed


def _on_event_loop() -> bool:
    """Whether this thread runs an event loop (which must never wait on the store)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


_open_stores: weakref.WeakSet[RunStore] = weakref.WeakSet()


def close_all() -> None:
    """Flush and close every open store (registered with :mod:`atexit`)."""
    for store in list(_open_stores):
        try:
            store.close()
        except Exception:  # noqa: BLE001 - at exit, keep closing the others
            log.exception("closing run store %s failed", store.path)


atexit.register(close_all)
