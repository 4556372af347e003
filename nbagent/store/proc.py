"""The writer process: JSON encoding, redaction and SQLite commits on another core.

A :class:`~nbagent.store.RunStore` whose process emits events fast (the client is CPU-bound) hands its
batches to a child process instead of writing them in its own writer thread, whose work would otherwise hold
the GIL and come out of the event loop's time. The store's writer thread still takes the events off the queue;
it packs them into tuples (:mod:`nbagent.store.batch`), pickles them and sends them over a socket. The child
encodes, redacts and commits them in transactions of at most ``batch_size`` events and acknowledges each batch.

* Commits: the child commits each hand-over of the parent (what the writer thread took off the queue at one
  wake-up, sent as one or more batches, the last marked ``commit_now``) in one transaction and acknowledges it
  at once: the acknowledgements tell the store how far behind its writer is (:mod:`nbagent.store.backpressure`).
* Flushes: a flush marker is released when the child has acknowledged every batch sent before it.
* Counting: the parent counts written events from the acknowledgements; events of a batch the child could
  not commit, or that were in flight when the child died, are counted as dropped (a batch committed just
  before the child died may be counted twice: over-counted, never silent). After the child dies the store
  goes back to writing in its thread.
* Parent death: the child commits everything it received, then sees the end of the socket (or, should
  another process hold the socket open, that its parent changed) and exits. It ignores SIGINT, so a
  Ctrl-C in the parent leaves it to commit what the parent's exit flush sends.
* Secrets: exact secrets known to the parent's redactor are sent along, and again whenever one is added.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .batch import RESULT, SCHEMA, BatchWriter, WriteFailed, connect, count_events, split
from .codec import _dumps
from .redact import Redactor

__all__ = ["WriterProcess", "main"]

log = logging.getLogger("nbagent.store")

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_POLL = 1.0  # seconds between the child's checks that its parent is still there
_ACK_EVERY = 1.0  # the child acknowledges at least this often (at once after a hand-over or a flush)
_MERGE = 20  # the child commits up to this many batches' worth in one transaction...
_GATHER = 0.1  # ...arriving within this many seconds (at most flush_interval) of the first
# the child runs at its parent's priority: runs wait for it once it falls behind (the store's durability bound),
# so a child starved by a lower priority would slow the runs it was meant to spare


class WriterProcess:
    """The parent's handle on one writer process: send batches, get acknowledgements (on a reader thread)."""

    def __init__(self, *, path: Path, synchronous: str, batch_size: int, flush_interval: float,
                 redactor: Redactor | None, pid: int, host: str, on_written: Callable[[int, int], None],
                 on_lost: Callable[[dict[str | None, int], dict[str, int], str], None],
                 on_settled: Callable[[int], None] = lambda n: None) -> None:
        self.on_written = on_written
        self.on_lost = on_lost
        self.on_settled = on_settled
        self.redactor = redactor
        self.ready = threading.Event()
        self.dead = False
        self._closing = False
        self._lock = threading.Lock()
        self._seq = 0
        # batches sent and not yet acknowledged, pickled: bytes are not tracked by the garbage collector, where
        # the records, held for up to a second, would be promoted to its oldest generation and make every full
        # collection of this process longer; they are read back only when the child dies
        self._inflight: dict[int, tuple[bytes, dict[str, int], list[Any], int]] = {}
        self._secrets: tuple[str, ...] | None = None
        parent_end, child_end = socket.socketpair()
        try:
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from nbagent.store.proc import main; main()", str(child_end.fileno())],
                pass_fds=(child_end.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
        except BaseException:
            parent_end.close()
            raise
        finally:
            child_end.close()
        self.pid = self.process.pid
        self._conn = Connection(parent_end.detach())
        hello = (str(path), synchronous, batch_size, flush_interval, pid, host, redactor is not None,
                 redactor.secrets if redactor is not None else ())
        self._send(("hello", *hello))
        self._reader = threading.Thread(target=self._read, name="nbagent-run-store-acks", daemon=True)
        self._reader.start()

    def _send(self, msg: tuple[Any, ...]) -> bool:
        try:
            self._conn.send_bytes(pickle.dumps(msg, _PROTOCOL))
            return True
        except (OSError, ValueError):
            return False

    def send(self, records: list[Any], drops: dict[str, int], markers: list[Any], n_events: int = 0, *,
             commit_now: bool = True) -> bool:
        """Hand over a batch of ``n_events`` events; its markers fire once it is committed. ``commit_now``: the
        child commits it (with what it gathered before) without waiting for more. False when the child is
        already gone (the caller writes the batch itself); once accepted, a batch that does not make it is
        counted lost."""
        with self._lock:
            if self.dead:
                return False
            self._seq += 1
            seq = self._seq
            secrets = None
            if self.redactor is not None and self.redactor.secrets is not self._secrets:
                secrets = self._secrets = self.redactor.secrets
            now = commit_now or bool(markers)
            try:
                data = pickle.dumps(("batch", seq, records, drops, secrets, now), _PROTOCOL)
            except Exception:  # noqa: BLE001 - a value pickle cannot take: send what JSON keeps of it
                data = pickle.dumps(("batch", seq, _plain(records), drops, secrets, now), _PROTOCOL)
            self._inflight[seq] = (data, drops, markers, n_events)
        try:
            self._conn.send_bytes(data)
        except (OSError, ValueError):
            self._died("the writer process is gone")
        return True

    def _read(self) -> None:
        while True:
            try:
                msg = pickle.loads(self._conn.recv_bytes())
            except (EOFError, OSError, pickle.UnpicklingError):
                break
            if msg[0] == "ready":
                self.ready.set()
            elif msg[0] == "ack":
                _, seq, written, commits, lost, drops_back, error = msg
                done = []
                with self._lock:  # an acknowledgement covers every batch up to its number
                    inflight = self._inflight
                    while inflight:
                        first = next(iter(inflight))
                        if first > seq:
                            break
                        done.append(inflight.pop(first))
                self.on_written(written, commits)
                if lost or drops_back:
                    self.on_lost(lost, drops_back, error)
                self.on_settled(sum(entry[3] for entry in done))
                for entry in done:
                    for marker in entry[2]:
                        marker.fire()
        self._died("" if self._closing else "the writer process exited")

    def _died(self, reason: str) -> None:
        with self._lock:
            if self.dead:
                return
            self.dead = True
            inflight, self._inflight = self._inflight, {}
        if reason:
            log.error("run store: %s (%d batches in flight counted as dropped); writing in-process from now on",
                      reason, len(inflight))
        for data, drops, markers, n_events in inflight.values():
            self.on_lost(count_events(pickle.loads(data)[2]), drops, reason or "closed")
            self.on_settled(n_events)
            for marker in markers:
                marker.fire()
        self.ready.set()  # nobody waits for a child that will never be ready

    def close(self, timeout: float | None = 30.0) -> None:
        """Let the child commit everything sent, then reap it."""
        self._closing = True
        self._send(("close",))
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.error("run store: the writer process did not finish within %s s; killing it", timeout)
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout)
        self._conn.close()
        self._died("")


def _plain(records: list[Any]) -> list[Any]:
    """Records with every value as JSON would store it (plain, picklable data)."""

    def plain(value: Any) -> Any:
        return json.loads(_dumps(value))

    out: list[Any] = []
    for rec in records:
        if rec[0] >= 0:
            out.append((rec[0], tuple(plain(v) for v in rec[1])))
        elif rec[0] == RESULT:
            out.append((RESULT, rec[1], plain(rec[2]), str(rec[3]), plain(rec[4]), plain(rec[5])))
        else:  # a schema record
            out.append(rec)
    return out


# --- the child ------------------------------------------------------------------------------------


def main() -> None:
    """Entry point of the writer process: ``python -c '...main()' <socket fd>``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(int(sys.argv[1]))
    parent = os.getppid()
    _, path, synchronous, batch_size, interval, pid, host, redact, secrets = pickle.loads(conn.recv_bytes())
    db: sqlite3.Connection | None = None
    acks = _Acks(conn)
    try:
        db = connect(Path(path), synchronous)
        writer = BatchWriter(Redactor(secrets, env={}) if redact else None, pid, host)
        conn.send_bytes(pickle.dumps(("ready", os.getpid()), _PROTOCOL))
        while True:
            if not conn.poll(_ACK_EVERY if acks.seq else _POLL):
                acks.send()  # idle: report what was written
                if os.getppid() != parent:
                    break  # the parent is gone but something else holds the socket open
                continue
            batches, stop = _gather(conn, batch_size, interval)
            if batches:
                records = [rec for b in batches for rec in b[2]]
                drops: dict[str, int] = {}
                for b in batches:
                    for rid, n in b[3].items():
                        drops[rid] = drops.get(rid, 0) + n
                for b in batches:
                    _add_secrets(writer, b[4])
                _write(writer, db, batch_size * _MERGE, records, drops, acks)
                acks.seq = batches[-1][1]
                if (any(b[5] for b in batches) or acks.lost or acks.drops_back
                        or time.monotonic() - acks.sent >= _ACK_EVERY):
                    acks.send()
            if stop:
                break  # closed, or the parent is gone: everything it sent is committed
    finally:
        acks.send()
        if db is not None:
            db.close()
        conn.close()


class _Acks:
    """What the child has done since its last acknowledgement (sent on a flush, a failure, or every second)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.seq = 0  # the last batch handled, 0 once acknowledged
        self.written = self.commits = 0
        self.lost: dict[str | None, int] = {}
        self.drops_back: dict[str, int] = {}
        self.error = ""
        self.sent = time.monotonic()

    def send(self) -> None:
        if not self.seq:
            return
        msg = ("ack", self.seq, self.written, self.commits, self.lost, self.drops_back, self.error)
        self.seq = self.written = self.commits = 0
        self.lost, self.drops_back, self.error = {}, {}, ""
        self.sent = time.monotonic()
        try:
            self.conn.send_bytes(pickle.dumps(msg, _PROTOCOL))
        except OSError:
            pass  # the parent is gone; keep committing what it sent


def _gather(conn: Connection, batch_size: int, interval: float) -> tuple[list[tuple[Any, ...]], bool]:
    """The batches to commit together, and whether to stop after them: those arriving within ``_GATHER``
    (or ``interval``) seconds of the first, up to ``_MERGE`` batches' worth; a flush ends the gathering at once."""
    batches: list[tuple[Any, ...]] = []
    rows = 0
    deadline = time.monotonic() + min(interval, _GATHER)
    try:
        while True:
            msg = pickle.loads(conn.recv_bytes())
            if msg[0] != "batch":
                return batches, True
            batches.append(msg)
            rows += len(msg[2])
            if msg[5] or rows >= batch_size * _MERGE or not conn.poll(max(deadline - time.monotonic(), 0.0)):
                return batches, False
    except (EOFError, OSError):
        return batches, True


def _add_secrets(writer: BatchWriter, secrets: tuple[str, ...] | None) -> None:
    if secrets and writer.redactor is not None:
        for s in secrets:
            writer.redactor.add_secret(s)


def _write(writer: BatchWriter, db: sqlite3.Connection, batch_size: int, records: list[Any], drops: dict[str, int],
           acks: _Acks) -> None:
    for i, chunk in enumerate(split(records, batch_size)):
        if not (drops and i == 0) and all(rec[0] == SCHEMA for rec in chunk):
            writer.learn(chunk)  # nothing to commit (a flush marker's empty batch)
            continue
        try:
            acks.written += writer.write(db, chunk, drops if i == 0 else {})
            acks.commits += 1
        except WriteFailed as exc:
            acks.written += exc.written
            acks.error = str(exc)
            for rid, n in exc.lost.items():
                acks.lost[rid] = acks.lost.get(rid, 0) + n
            for rid, n in exc.drops.items():
                acks.drops_back[rid] = acks.drops_back.get(rid, 0) + n
