"""The SQL of the cache file: schema, opening, and the statements the store's worker thread runs.

Every function here takes a connection and blocks; only :class:`~nbagent.cache.sqlite.SQLiteStore`'s worker
thread calls them. The ``entries`` table holds one row per ``(kind, namespace, key)``; the one-row ``totals``
table is kept exact by triggers, so size checks cost one row read.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_VERSION", "NewerSchema", "open_connection"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    kind TEXT NOT NULL, namespace TEXT NOT NULL, key TEXT NOT NULL,
    value TEXT NOT NULL, size INTEGER NOT NULL,
    created REAL NOT NULL, last_used REAL NOT NULL, hits INTEGER NOT NULL DEFAULT 0,
    latency REAL NOT NULL DEFAULT 0, tokens INTEGER NOT NULL DEFAULT 0, description TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX IF NOT EXISTS entries_key ON entries (kind, namespace, key);
CREATE TABLE IF NOT EXISTS totals (id INTEGER PRIMARY KEY CHECK (id = 0), entries INTEGER NOT NULL,
                                   bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0);
CREATE TRIGGER IF NOT EXISTS entries_ins AFTER INSERT ON entries BEGIN
    UPDATE totals SET entries = entries + 1, bytes = bytes + new.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS entries_del AFTER DELETE ON entries BEGIN
    UPDATE totals SET entries = entries - 1, bytes = bytes - old.size WHERE id = 0; END;
CREATE TRIGGER IF NOT EXISTS entries_upd AFTER UPDATE OF size ON entries BEGIN
    UPDATE totals SET bytes = bytes - old.size + new.size WHERE id = 0; END;
"""

_UPSERT = (
    "INSERT INTO entries (kind, namespace, key, value, size, created, last_used, hits, latency, tokens, description) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?) ON CONFLICT (kind, namespace, key) DO UPDATE SET "
    "value = excluded.value, size = excluded.size, created = excluded.created, last_used = excluded.last_used, "
    "latency = excluded.latency, tokens = excluded.tokens, description = excluded.description"
)


class NewerSchema(sqlite3.DatabaseError):
    """The file was written by a newer version of nbagent."""


def open_connection(path: Path, busy_timeout: float, score: Callable[[float, int, int, float], float]
                    ) -> sqlite3.Connection:
    """Open (creating or migrating) the cache file in WAL mode, with ``nb_score`` available to SQL."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False)
    try:
        _enable_wal(conn, busy_timeout)
        conn.execute("PRAGMA synchronous=NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise NewerSchema(f"schema version {version} is newer than this nbagent ({SCHEMA_VERSION})")
        if version < SCHEMA_VERSION:
            with tx(conn):
                for stmt in _SCHEMA.split(";\n"):
                    if stmt.strip():
                        conn.execute(stmt)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.create_function("nb_score", 4, score, deterministic=True)
    except BaseException:
        conn.close()
        raise
    return conn


def _enable_wal(conn: sqlite3.Connection, busy_timeout: float, attempts: int = 8) -> None:
    """Switch to WAL. Two connections doing so at once may get SQLITE_BUSY straight away, without the busy
    handler waiting, so retry those (about half a second in all); a wait that ran out means a real lock."""
    for attempt in range(attempts):
        t0 = time.monotonic()
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            waited = time.monotonic() - t0
            if "locked" not in str(exc) or attempt == attempts - 1 or waited >= busy_timeout / 2:
                raise
            time.sleep(min(0.01 * 2**attempt, 0.1))


@contextlib.contextmanager
def tx(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction (``BEGIN IMMEDIATE``), rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """``(entries, bytes)`` of the whole file."""
    row = conn.execute("SELECT entries, bytes FROM totals WHERE id = 0").fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def data_version(conn: sqlite3.Connection) -> int:
    """Changes whenever another connection commits to the file."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def keys(conn: sqlite3.Connection, kind: str, ns: str) -> set[str]:
    return {r[0] for r in conn.execute("SELECT key FROM entries WHERE kind = ? AND namespace = ?", (kind, ns))}


def get(conn: sqlite3.Connection, kind: str, ns: str, key: str) -> tuple[str, float, float, int] | None:
    """``(value, created, latency, tokens)`` of one entry."""
    row = conn.execute("SELECT value, created, latency, tokens FROM entries WHERE kind = ? AND namespace = ? "
                       "AND key = ?", (kind, ns, key)).fetchone()
    return None if row is None else (row[0], row[1], row[2], row[3])


def delete(conn: sqlite3.Connection, kind: str, ns: str, key: str) -> None:
    with tx(conn):
        conn.execute("DELETE FROM entries WHERE kind = ? AND namespace = ? AND key = ?", (kind, ns, key))


def upsert(conn: sqlite3.Connection, kind: str, ns: str, key: str, value: str, created: float, latency: float,
           tokens: int, description: str) -> None:
    """Insert or replace one entry (its hit count is kept); call inside :func:`tx`."""
    size = len(value.encode("utf-8")) + len(description.encode("utf-8")) + len(key) + len(ns)
    conn.execute(_UPSERT, (kind, ns, key, value, size, created, created, latency, tokens, description))


def write_touches(conn: sqlite3.Connection, touches: dict[tuple[str, str, str], list[float]]) -> None:
    """Add batched hit counts (``(kind, ns, key) -> [hits, last_used]``); call inside :func:`tx`."""
    if touches:
        conn.executemany("UPDATE entries SET hits = hits + ?, last_used = max(last_used, ?) "
                         "WHERE kind = ? AND namespace = ? AND key = ?",
                         [(int(v[0]), v[1], *k) for k, v in touches.items()])


def evict(conn: sqlite3.Connection, now: float, max_entries: int | None, max_bytes: int | None,
          low_water: float) -> list[tuple[str, str, str]]:
    """Over a limit, delete lowest-``nb_score`` entries down to ``low_water`` of it; ``(kind, ns, key)`` of
    each. Call inside :func:`tx`."""
    entries, nbytes = totals(conn)
    if not ((max_entries is not None and entries > max_entries) or (max_bytes is not None and nbytes > max_bytes)):
        return []
    want_n = math.ceil(max_entries * low_water) if max_entries is not None else None
    want_b = math.ceil(max_bytes * low_water) if max_bytes is not None else None
    victims: list[tuple[int, str, str, str]] = []
    cur = conn.execute("SELECT rowid, kind, namespace, key, size FROM entries "
                       "ORDER BY nb_score(latency, tokens, hits, ? - last_used), last_used", (now,))
    for rowid, kind, ns, key, size in cur:
        if (want_n is None or entries <= want_n) and (want_b is None or nbytes <= want_b):
            break
        victims.append((rowid, kind, ns, key))
        entries -= 1
        nbytes -= size
    cur.close()
    conn.executemany("DELETE FROM entries WHERE rowid = ?", [(v[0],) for v in victims])
    return [(kind, ns, key) for _, kind, ns, key in victims]


def _filters(kind: str | None, ns: str | None) -> tuple[str, tuple[str, ...]]:
    clauses = [c for c, v in (("kind = ?", kind), ("namespace = ?", ns)) if v is not None]
    params = tuple(v for v in (kind, ns) if v is not None)
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def clear(conn: sqlite3.Connection, kind: str | None, ns: str | None) -> int:
    """Delete the entries of ``kind`` in ``ns`` (None: any); how many went."""
    where, params = _filters(kind, ns)
    with tx(conn):
        return int(conn.execute(f"DELETE FROM entries{where}", params).rowcount)


def export(conn: sqlite3.Connection, path: str, kind: str | None, ns: str | None,
           redact: Callable[[Any], Any] | None = None) -> int:
    """Write the entries as JSON lines, oldest first, each through ``redact`` when given; how many were written."""
    where, params = _filters(kind, ns)
    n = 0
    rows = conn.execute("SELECT kind, namespace, key, value, size, created, last_used, hits, latency, tokens, "
                        f"description FROM entries{where} ORDER BY created", params)
    with open(path, "w", encoding="utf-8") as out:
        for k, namespace, key, value, size, created, last_used, hits, latency, tokens, desc in rows:
            record = {"kind": k, "namespace": namespace, "key": key, "description": desc, "created": created,
                      "last_used": last_used, "hits": hits, "latency": latency, "tokens": tokens, "size": size,
                      "value": json.loads(value) if k == "response" else value}
            if redact is not None:
                record = redact(record)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def summary(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """Per ``(kind, namespace)``: entries, bytes, hits, and the tokens and seconds those hits saved."""
    rows = conn.execute(
        "SELECT kind, namespace, COUNT(*), SUM(size), SUM(hits), SUM(hits * tokens), SUM(hits * latency), "
        "MIN(created), MAX(last_used) FROM entries GROUP BY kind, namespace ORDER BY kind, namespace").fetchall()
    return [{"kind": r[0], "namespace": r[1], "entries": r[2], "bytes": r[3] or 0, "hits": r[4] or 0,
             "tokens_saved": r[5] or 0, "latency_saved": r[6] or 0.0, "oldest": r[7], "last_used": r[8]}
            for r in rows]
