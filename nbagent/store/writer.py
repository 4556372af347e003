"""The writer side of :class:`~nbagent.store.RunStore`: the one thread that drains the queue, and the writer
process it may hand batches to (see :mod:`nbagent.store.runs` for the whole design).

Mixed into ``RunStore``: the attributes below are set by its ``__init__``; the loop side (the tap, flushes
and admission) stays in :mod:`nbagent.store.runs`, the read side in :mod:`nbagent.store.query`.
"""

from __future__ import annotations

import collections
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ..events import Event
from .backpressure import Backlog
from .batch import BatchWriter, Packer, WriteFailed, connect
from .batch import Marker as _Marker
from .batch import ResultRecord as _Result
from .migrations import migrate
from .proc import WriterProcess
from .redact import Redactor

__all__ = ["AUTO_PROCESS_RATE", "StoreWriter"]

log = logging.getLogger("nbagent.store")

# writer="auto" starts a writer process once the store takes this many events per second
AUTO_PROCESS_RATE = 1000


class StoreWriter:
    """The writer thread's half of the run store."""

    path: Path
    synchronous: str
    batch_size: int
    flush_interval: float
    queue_size: int
    end_grace: float
    durable_within: float | None
    redactor: Redactor | None
    writer: str
    enqueued: int
    written: int
    commits: int
    write_errors: int
    max_pending: int
    _pending: collections.deque[Any]
    _wake: threading.Event
    _room: threading.Condition
    _ready: threading.Event
    _closing: bool
    _flush_now: bool
    _waiters: int
    _accepting: bool
    _error: BaseException | None
    _drop_lock: threading.Lock
    _run_drops: dict[str, int]
    _pid: int
    _host: str
    _packer: Packer
    _local: BatchWriter
    _conn: sqlite3.Connection | None
    _proc: WriterProcess | None
    _via_proc: bool
    _wake_at: int
    _wake_on_end: bool
    _interval: float
    _backlog: Backlog
    _announce: bool
    _rate: tuple[float, int]

    def _count_drop(self, run_id: str | None, n: int = 1) -> None:  # pragma: no cover - RunStore's
        raise NotImplementedError

    def _writer(self) -> None:
        try:
            conn = self._conn = connect(self.path, self.synchronous)
            migrate(conn)
        except BaseException as exc:  # noqa: BLE001 - reported through stats() and on read
            self._error = exc
            log.error("run store %s cannot be opened: %s", self.path, exc)
            self._ready.set()
            self._fail_pending()
            return
        self._ready.set()
        if self.writer == "process" and self._start_process():
            assert self._proc is not None
            self._proc.ready.wait(30.0)  # until then events wait in the queue
        try:
            while True:
                woke = self._wake.wait(self._interval)
                self._wake.clear()
                if woke and not self._flush_now and not self._closing and len(self._pending) < self.batch_size:
                    # woken by a run's end: let the runs ending around it join the same commit
                    time.sleep(self.end_grace)
                self._flush_now = False
                self._choose_writer()
                self._drain()
                if self._closing and not self._pending:
                    break
        finally:
            if self._proc is not None:
                self._proc.close()
            self._fail_pending()
            conn.close()

    def _start_process(self) -> bool:
        try:
            self._proc = WriterProcess(path=self.path, synchronous=self.synchronous, batch_size=self.batch_size,
                                       flush_interval=self.flush_interval, redactor=self.redactor, pid=self._pid,
                                       host=self._host, on_written=self._acked, on_lost=self._lost,
                                       on_settled=self._backlog.settle)
            return True
        except Exception as exc:  # noqa: BLE001 - no child process: keep writing in this thread
            log.warning("run store %s: no writer process (%s); writing in-process", self.path, exc)
            self.writer = "thread"
            return False

    def _choose_writer(self) -> None:
        """Start the writer process when ``auto`` sees a busy store; use it once ready; leave it if it died."""
        proc = self._proc
        if proc is None:
            if self.writer == "auto" and not self._closing:
                now = time.monotonic()
                t0, n0 = self._rate
                if now - t0 >= 0.5:
                    self._rate = (now, self.enqueued)
                    if (self.enqueued - n0) / (now - t0) >= AUTO_PROCESS_RATE and (os.cpu_count() or 1) > 1:
                        self._start_process()
            return
        if proc.dead:
            if self._via_proc:
                self._set_via_proc(False)
                self._local.learn(self._packer.schemas())  # classes first seen while the process wrote
            self.writer = "thread"  # do not start another
        elif not self._via_proc and proc.ready.is_set():
            self._set_via_proc(True)
            self._announce = True  # the process learns the classes seen so far with its first batch

    def _set_via_proc(self, on: bool) -> None:
        """Send batches to the writer process or not, and wake the writer thread to suit.

        The thread is woken at ``batch_size`` events and at each run's end; with the process, which commits
        each hand-over in one transaction, only by the clock (every ``durable_within / 5`` seconds at most),
        a big queue or a run waiting in :meth:`admit` (each wake-up takes the GIL from the event loop).
        """
        self._via_proc = on
        self._wake_on_end = not on
        big_queue = max(self.batch_size, min(20 * self.batch_size, self.queue_size // 4))
        self._wake_at = big_queue if on else self.batch_size
        self._interval = self.flush_interval
        if on and self.durable_within is not None:
            self._interval = min(self.flush_interval, self.durable_within / 5)

    def _fail_pending(self) -> None:
        """Count what can no longer be written, and release anyone waiting."""
        self._accepting = False
        n = 0
        while self._pending:
            item = self._pending.popleft()
            if isinstance(item, Event):
                self._count_drop(item.run_id)
                n += 1
            elif isinstance(item, _Marker):
                item.fire()
        self._backlog.settle(n)
        self._backlog.close()
        with self._room:
            self._room.notify_all()

    def _drain(self) -> None:
        pending = self._pending
        size = len(pending)
        if size > self.max_pending:
            self.max_pending = size
        packer = self._packer
        pack = packer.event
        while pending:
            if not self._via_proc:
                self._choose_writer()  # a queue that never empties must not keep "auto" from switching
            # the process takes bigger messages (it commits what arrives together): fewer hand-offs
            limit = self.batch_size * (20 if self._via_proc else 1)
            records: list[Any] = []
            markers: list[_Marker] = []
            events = rows = 0
            while pending and rows < limit:
                item = pending.popleft()
                cls = type(item)
                if cls is _Marker:
                    markers.append(item)
                elif cls is _Result:
                    records.append(packer.result(item.run_id, item.messages, item.output, item.timings,
                                                 item.artifacts))
                    rows += 1
                else:
                    pack(item, records)
                    events += 1
                    rows += 1
            with self._drop_lock:
                drops, self._run_drops = self._run_drops, {}
            proc = self._proc
            if self._via_proc and proc is not None:
                if self._announce:
                    records[:0] = packer.schemas()
                    self._announce = False
                # the last hand-over of a drain is committed at once (not gathered with later ones)
                if proc.send(records, drops, markers, events, commit_now=bool(markers) or not pending):
                    continue
                self._choose_writer()  # the process died under us: this batch and the rest are written here
            self._write_here(records, drops, events)
            self._backlog.settle(events)
            if self._waiters:
                with self._room:
                    self._room.notify_all()
            for marker in markers:
                marker.fire()

    def _write_here(self, records: list[Any], drops: dict[str, int], n_events: int) -> None:
        assert self._conn is not None
        if not records and not drops:
            return
        try:
            self.written += self._local.write(self._conn, records, drops)
            self.commits += 1
        except WriteFailed as exc:
            self.written += exc.written
            self._lost(exc.lost, exc.drops, str(exc))

    def _acked(self, written: int, commits: int) -> None:
        self.written += written
        self.commits += commits

    def _lost(self, lost: dict[str | None, int], drops: dict[str, int], error: str) -> None:
        """A batch could not be committed: count its events as dropped and keep its runs' drop counts."""
        self.write_errors += 1
        log.error("run store %s: %d events could not be written: %s", self.path, sum(lost.values()), error)
        for rid, n in lost.items():
            self._count_drop(rid, n)
        with self._drop_lock:
            for rid, n in drops.items():
                self._run_drops[rid] = self._run_drops.get(rid, 0) + n
