"""The persistent tier: one SQLite file (WAL) shared by the response and tool caches of every notebook.

All SQLite work runs on one dedicated worker thread; the event loop only hands jobs over and awaits them, and
writes are queued without waiting (:meth:`SQLiteStore.flush` waits for them). Entries are keyed by
``(kind, namespace, key)``: ``kind`` is ``response`` or ``tool``, ``namespace`` lets one notebook clear its own
entries. The SQL itself lives in :mod:`nbagent.cache.db`.

When the file holds more than ``max_entries`` entries or ``max_bytes`` bytes, entries are evicted (down to
``low_water`` of the limit) lowest :meth:`EvictionPolicy.score` first: what an entry saves (the original call's
latency plus its tokens priced in seconds), times how often it was used, discounted by how long it sat idle.

The store keeps the set of keys in the file per ``(kind, namespace)`` it has looked at, so a miss usually needs
no trip to the worker; the set is reloaded whenever another connection has written to the file since.

What is written is redacted first (``redact=True``, the default): API keys, tokens and the keys of configured
endpoints (:mod:`nbagent.store.redact`) are replaced by ``[REDACTED]`` in stored answers, tool outputs and
descriptions, on the worker thread. Cache keys are computed from the request as sent, so they do not change;
an answer served from the file later carries ``[REDACTED]`` where the secret was (the memory tier keeps the
original). Exports are redacted too, which covers files written before.

A file that is corrupt, unreadable or written by a newer version puts the store in the ``broken`` state; a
file locked by another process puts it in the ``locked`` state for ``retry_after`` seconds. Either way the
operation returns an :class:`Outcome` with a ``warning`` instead of raising, so a run never fails because of
its cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import user_dir
from . import db

__all__ = ["EvictionPolicy", "Outcome", "SQLiteStore", "default_cache_path"]

log = logging.getLogger("nbagent.cache")

Evicted = list[tuple[str, str, str]]  # (kind, key, reason)


def default_cache_path(env: Mapping[str, str] | None = None) -> Path:
    """``$NBAGENT_CACHE_PATH``, else ``cache.sqlite3`` in the nbagent user dir."""
    env = os.environ if env is None else env
    if env.get("NBAGENT_CACHE_PATH"):
        return Path(env["NBAGENT_CACHE_PATH"]).expanduser()
    return user_dir(env) / "cache.sqlite3"


@dataclass(frozen=True)
class EvictionPolicy:
    """How much an entry is worth keeping: ``score = value * (1 + hits) / (1 + idle / age_scale)``.

    ``value = latency + token_seconds * tokens``: the seconds the original call took plus its tokens priced in
    seconds (the default values one token like 2 ms of waiting). ``idle`` is the time since the entry was last
    used. The lowest score goes first; an eviction pass stops at ``low_water`` of the limit.
    """

    token_seconds: float = 0.002
    age_scale: float = 3600.0
    low_water: float = 0.9

    def score(self, latency: float, tokens: int, hits: int, idle: float) -> float:
        value = 1e-6 + max(latency, 0.0) + self.token_seconds * max(tokens, 0)
        return value * (1 + max(hits, 0)) / (1.0 + max(idle, 0.0) / self.age_scale)


@dataclass(slots=True)
class Outcome:
    """What one store job gave: its ``value``, a ``warning`` when the file could not be used, and the
    ``(kind, key, reason)`` of entries it evicted."""

    value: Any = None
    warning: str | None = None
    evicted: list[tuple[str, str, str]] = field(default_factory=list)


class SQLiteStore:
    """The SQLite file behind the caches, driven from one worker thread. Safe to share between caches."""

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        max_entries: int | None = 100_000,
        max_bytes: int | None = 256 * 2**20,
        policy: EvictionPolicy | None = None,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 0.2,
        retry_after: float = 30.0,
        open_now: bool = True,
        index_ttl: float = 1.0,
        redact: bool = True,
    ) -> None:
        self.path = Path(path) if path is not None else default_cache_path()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.policy = policy or EvictionPolicy()
        self.clock = clock
        self.busy_timeout = busy_timeout
        self.retry_after = retry_after
        self.entries = 0  # file-wide totals as last read by the worker
        self.bytes = 0
        self.state = "unopened"  # unopened | ok | locked | broken | closed
        self._retry_at = 0.0
        self._conn: sqlite3.Connection | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nbagent-cache-sqlite")
        self._closed = False
        self._touches: dict[tuple[str, str, str], list[float]] = {}  # (kind, ns, key) -> [hits, last_used]
        self._lock = threading.Lock()
        self._warning: str | None = None  # a failure not yet reported to a caller
        # (kind, namespace) -> keys in the file, so a miss needs no trip to the worker; reloaded whenever another
        # connection has written to the file (PRAGMA data_version) since the worker last looked
        self._index: dict[tuple[str, str], set[str]] = {}
        self._seen_version: int | None = None
        self._checked_at = -float("inf")  # time.monotonic() of the worker's last look at data_version
        self.index_ttl = index_ttl
        self.redact = redact
        if open_now:  # open (and create) the file in the background; a failure is reported by the next job
            with self._lock:
                self._executor.submit(self._warm_up)

    def __repr__(self) -> str:
        return f"<SQLiteStore {self.path} {self.state}>"

    @property
    def usable(self) -> bool:
        """False once the file is known broken or the store is closed (a locked file may come back)."""
        return self.state not in ("broken", "closed")

    # --- loop side -------------------------------------------------------------------------------

    def _submit(self, op: Callable[..., tuple[Any, Evicted]], *args: Any) -> Future[Outcome]:
        with self._lock:
            if self._closed:
                done: Future[Outcome] = Future()
                done.set_result(Outcome())
                return done
            return self._executor.submit(self._run, op, *args)

    async def _call(self, op: Callable[..., tuple[Any, Evicted]], *args: Any) -> Outcome:
        return await asyncio.wrap_future(self._submit(op, *args))

    def call_sync(self, op_name: str, *args: Any) -> Outcome:
        """Run one job (``open``, ``clear``, ``export``, ``summary``, ``reset``...) and wait, off any event loop."""
        return self._submit(getattr(self, f"_op_{op_name}"), *args).result()

    def known_absent(self, kind: str, namespace: str, key: str) -> bool:
        """True when ``key`` is surely not in the file as far as this process has seen (no trip to the worker).

        Another connection's writes are seen at the worker's next job, and the answer is only given within
        ``index_ttl`` seconds of the worker's last look, so trust it only where a stale "absent" costs a model
        call, never where it would change an outcome (replay mode always asks the file).
        """
        idx = self._index.get((kind, namespace))
        return (idx is not None and key not in idx and self.state == "ok"
                and time.monotonic() - self._checked_at < self.index_ttl)

    async def get(self, kind: str, namespace: str, key: str, ttl: float | None = None) -> Outcome:
        """The stored row ``(value, created, latency, tokens)`` or None; entries older than ``ttl`` are deleted."""
        if not self.usable:
            return Outcome(warning=self._take_warning())
        return await self._call(self._op_get, kind, namespace, key, ttl)

    def put_nowait(self, kind: str, namespace: str, key: str, value: str, *, latency: float, tokens: int,
                   created: float | None = None, description: str = "",
                   report: Callable[[Outcome], None] | None = None) -> None:
        """Queue a write (``created`` defaults to now); ``report(outcome)`` runs on the calling loop when done."""
        if not self.usable:
            return
        created = self.clock() if created is None else created
        idx = self._index.get((kind, namespace))
        if idx is not None:
            idx.add(key)
        fut = self._submit(self._op_put, kind, namespace, key, value, created, latency, tokens, description,
                           self._take_touches())
        if report is not None:
            _report_on_loop(fut, report)

    def touch(self, kind: str, namespace: str, key: str) -> None:
        """Count a hit served elsewhere (the memory tier); written in batches with the next write."""
        slot = self._touches.get((kind, namespace, key))
        if slot is None:
            self._touches[(kind, namespace, key)] = [1, self.clock()]
        else:
            slot[0] += 1
            slot[1] = self.clock()
        if len(self._touches) >= 256 and self.usable:
            self._submit(self._op_touch, self._take_touches())

    def _take_touches(self) -> dict[tuple[str, str, str], list[float]]:
        t, self._touches = self._touches, {}
        return t

    async def flush(self) -> Outcome:
        """Write the batched hit counts and wait until every queued write is done."""
        return await self._call(self._op_touch, self._take_touches())

    async def clear(self, kind: str | None = None, namespace: str | None = None) -> Outcome:
        """Delete the entries of ``kind`` in ``namespace`` (None: any); ``value`` is how many went."""
        return await self._call(self._op_clear, kind, namespace)

    async def export(self, path: str | os.PathLike[str], kind: str | None = None,
                     namespace: str | None = None) -> Outcome:
        """Write the entries as JSON lines to ``path``; ``value`` is how many were written."""
        return await self._call(self._op_export, str(path), kind, namespace)

    async def summary(self) -> Outcome:
        """Per ``(kind, namespace)``: entries, bytes, hits, tokens and seconds saved by those hits."""
        return await self._call(self._op_summary)

    async def reset(self) -> Outcome:
        """Delete the file (and its WAL) and start afresh: the way out of a corrupt file."""
        return await self._call(self._op_reset)

    async def aclose(self) -> None:
        """Flush, close the connection and stop the worker thread. Idempotent."""
        if self._closed:
            return
        await self._call(self._op_touch, self._take_touches())
        await self._call(self._op_close)
        with self._lock:
            self._closed = True
            self._executor.shutdown(wait=False)
        self.state = "closed"

    def close(self) -> None:
        """:meth:`aclose` for code outside an event loop."""
        if self._closed:
            return
        self.call_sync("touch", self._take_touches())
        self.call_sync("close")
        with self._lock:
            self._closed = True
            self._executor.shutdown(wait=True)
        self.state = "closed"

    # --- worker side ------------------------------------------------------------------------------

    def _run(self, op: Callable[..., tuple[Any, Evicted]], *args: Any) -> Outcome:
        now = self.clock()
        if op != self._op_reset:
            if self.state == "broken" or (self.state == "locked" and now < self._retry_at):
                return Outcome(warning=self._take_warning())
        try:
            if op.__name__ in ("_op_close", "_op_reset"):
                conn = self._conn
            else:
                conn = self._connect()
                self._check_version(conn)
            value, evicted = op(conn, now, *args)
        except (sqlite3.Error, OSError, ValueError) as exc:
            self._failed(exc, now)
            return Outcome(warning=self._take_warning())
        if self.state in ("unopened", "locked"):
            self.state = "ok"
        return Outcome(value, warning=self._take_warning(), evicted=evicted)

    def _take_warning(self) -> str | None:
        with self._lock:
            w, self._warning = self._warning, None
        return w

    def take_warning(self) -> str | None:
        """A failure found by a job whose outcome nobody read (such as the background open), once."""
        return self._take_warning()

    def _failed(self, exc: BaseException, now: float) -> None:
        self._drop_connection()
        text = str(exc)
        if isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text):
            self._retry_at = now + self.retry_after
            self._warning = (f"cache file {self.path} is locked by another process ({text}); going on without "
                             f"the persistent tier for {self.retry_after:g} s")
            self.state = "locked"
            return
        self._warning = (f"cache file {self.path} cannot be used ({type(exc).__name__}: {text}); going on with "
                         f"the in-memory tier only (`nbagent cache clear --all` starts a fresh file)")
        self.state = "broken"

    def _warm_up(self) -> None:
        warning = self._run(self._op_open).warning
        if warning is not None:
            with self._lock:
                self._warning = warning

    def _drop_connection(self) -> None:
        self._seen_version = None
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = db.open_connection(self.path, self.busy_timeout, self.policy.score)
            self.entries, self.bytes = db.totals(self._conn)
        return self._conn

    def _check_version(self, conn: sqlite3.Connection) -> None:
        looked = time.monotonic()  # before reading: the index is no older than this
        version = db.data_version(conn)
        if version != self._seen_version:
            self._seen_version = version
            for kind, ns in list(self._index):
                self._index[(kind, ns)] = db.keys(conn, kind, ns)
        self._checked_at = looked

    def _forget(self, kind: str, ns: str, key: str) -> None:
        idx = self._index.get((kind, ns))
        if idx is not None:
            idx.discard(key)

    def _op_open(self, conn: sqlite3.Connection, now: float) -> tuple[Any, Evicted]:
        return None, []

    def _op_get(self, conn: sqlite3.Connection, now: float, kind: str, ns: str, key: str,
                ttl: float | None) -> tuple[Any, Evicted]:
        if (kind, ns) not in self._index:
            self._index[(kind, ns)] = db.keys(conn, kind, ns)
        row = db.get(conn, kind, ns, key)
        if row is None:
            return None, []
        if ttl is not None and row[1] + ttl <= now:
            db.delete(conn, kind, ns, key)
            self._forget(kind, ns, key)
            self.entries, self.bytes = db.totals(conn)
            return None, [(kind, key, "ttl")]
        return row, []

    def _op_put(self, conn: sqlite3.Connection, now: float, kind: str, ns: str, key: str, value: str,
                created: float, latency: float, tokens: int, description: str,
                touches: dict[tuple[str, str, str], list[float]]) -> tuple[Any, Evicted]:
        if self.redact:
            value, description = _redacted(kind, value), _redacted("text", description)
        with db.tx(conn):
            db.upsert(conn, kind, ns, key, value, created, latency, tokens, description)
            db.write_touches(conn, touches)
            victims = db.evict(conn, now, self.max_entries, self.max_bytes, self.policy.low_water)
        idx = self._index.get((kind, ns))
        if idx is not None:
            idx.add(key)
        for v_kind, v_ns, v_key in victims:
            self._forget(v_kind, v_ns, v_key)
        self.entries, self.bytes = db.totals(conn)
        return None, [(v_kind, v_key, "size") for v_kind, _, v_key in victims]

    def _op_touch(self, conn: sqlite3.Connection | None, now: float,
                  touches: dict[tuple[str, str, str], list[float]]) -> tuple[Any, Evicted]:
        if touches and conn is not None:
            with db.tx(conn):
                db.write_touches(conn, touches)
        return None, []

    def _op_clear(self, conn: sqlite3.Connection, now: float, kind: str | None, ns: str | None) -> tuple[Any, Evicted]:
        n = db.clear(conn, kind, ns)
        for k, n_s in list(self._index):
            if kind in (None, k) and ns in (None, n_s):
                self._index[(k, n_s)] = set()
        self.entries, self.bytes = db.totals(conn)
        return n, []

    def _op_export(self, conn: sqlite3.Connection, now: float, path: str, kind: str | None,
                   ns: str | None) -> tuple[Any, Evicted]:
        return db.export(conn, path, kind, ns, _redactor().redact_obj if self.redact else None), []

    def _op_summary(self, conn: sqlite3.Connection, now: float) -> tuple[Any, Evicted]:
        self.entries, self.bytes = db.totals(conn)
        return db.summary(conn), []

    def _op_reset(self, conn: sqlite3.Connection | None, now: float) -> tuple[Any, Evicted]:
        self._drop_connection()
        self._index.clear()
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")
        self.state = "unopened"
        self._connect()
        return None, []

    def _op_close(self, conn: sqlite3.Connection | None, now: float) -> tuple[Any, Evicted]:
        self._drop_connection()
        return None, []


def _redactor() -> Any:
    from ..store.redact import default_redactor  # imported on the worker thread, at the first write

    return default_redactor()


def _redacted(kind: str, text: str) -> str:
    """``text`` with secrets replaced; a stored response (JSON) value by value, so it stays valid JSON."""
    red = _redactor()
    if not text or not red.might_contain(text):
        return text
    if kind == "response":
        try:
            value = json.loads(text)
        except ValueError:
            return str(red.redact(text))
        return json.dumps(red.redact_obj(value), separators=(",", ":"), ensure_ascii=False)
    return str(red.redact(text))


def _report_on_loop(fut: Future[Outcome], report: Callable[[Outcome], None]) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return

    def done(f: Future[Outcome]) -> None:
        try:
            outcome = f.result()
        except Exception:  # noqa: BLE001 - the worker never raises; be safe anyway
            log.exception("cache write failed")
            return
        if outcome.warning is None and not outcome.evicted:
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone (a finished asyncio.run)
            loop.call_soon_threadsafe(report, outcome)

    fut.add_done_callback(done)
