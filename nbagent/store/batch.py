"""Batches: events and results packed into plain tuples, and the transaction that writes a batch.

The tap's side (:class:`Packer`) turns each event into ``(class id, field values)`` with one C-level
``attrgetter`` call, announcing a class with a schema record the first time it appears. Such records pickle
cheaply, so the same stream feeds the writer thread and the writer process (:mod:`nbagent.store.proc`).
The writing side (:class:`BatchWriter`) rebuilds each event's JSON object (``kind``, ``ts`` and its other
fields, free text redacted) and commits a batch in one transaction: one ``events`` row per run (a JSON array
of that run's events) and one multi-row statement per table.
"""

from __future__ import annotations

import dataclasses
import operator
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..events import Event
from .codec import _SAFE_TEXT, EVENT_SQL, RESULT_SQL, RUN_FINISH_SQL, RUN_START_SQL, _dumps, rows_sql
from .redact import Redactor

__all__ = ["SCHEMA", "RESULT", "BatchWriter", "Packer", "WriteFailed", "connect", "count_events", "split"]

SCHEMA = -1  # (SCHEMA, class id, kind, field names, names of free-text fields)
RESULT = -2  # (RESULT, run_id, messages, output, timings, artifacts)
# an event is (class id >= 0, values), its values in the order of its schema's field names


def connect(path: Path, synchronous: str) -> sqlite3.Connection:
    """The writing connection: autocommit (transactions are explicit), WAL, ``synchronous`` as configured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False,
                           cached_statements=512)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


class Packer:
    """Events to ``(class id, values)`` records (see the module docs). Used by one thread at a time."""

    def __init__(self) -> None:
        self._classes: dict[type, tuple[int, Callable[[Any], tuple[Any, ...]]]] = {}
        self._schemas: list[tuple[Any, ...]] = []

    def schemas(self) -> list[tuple[Any, ...]]:
        """The schema records of every class seen so far (for a writer that joins later)."""
        return list(self._schemas)

    def event(self, ev: Event, out: list[Any]) -> None:
        entry = self._classes.get(type(ev))
        if entry is None:
            entry = self._announce(type(ev), out)
        out.append((entry[0], entry[1](ev)))

    def _announce(self, cls: type, out: list[Any]) -> tuple[int, Callable[[Any], tuple[Any, ...]]]:
        if dataclasses.is_dataclass(cls):
            fields = dataclasses.fields(cls)
            names = ("run_id", "ts", *(f.name for f in fields if f.name not in ("run_id", "ts")))
            text = tuple(f.name for f in fields if f.name not in ("run_id", "ts") and f.name not in _SAFE_TEXT
                         and "str" in str(f.type))
        else:
            names, text = ("run_id", "ts"), ()
        cid = len(self._classes)
        entry = self._classes[cls] = (cid, operator.attrgetter(*names))
        schema = (SCHEMA, cid, getattr(cls, "kind", "event"), names, text)
        self._schemas.append(schema)
        out.append(schema)
        return entry

    @staticmethod
    def result(run_id: str, messages: list[Any], output: str, timings: dict[str, float],
               artifacts: dict[str, Any]) -> tuple[Any, ...]:
        return (RESULT, run_id, messages, output, timings, artifacts)


def count_events(records: list[Any]) -> dict[str | None, int]:
    """Events per run in a list of records (to count them as dropped when their batch is lost)."""
    counts: dict[str | None, int] = {}
    for rec in records:
        if rec[0] >= 0:
            rid = rec[1][0]
            counts[rid] = counts.get(rid, 0) + 1
    return counts


def split(records: list[Any], size: int) -> Iterator[list[Any]]:
    """``records`` in pieces of at most ``size`` events and results (schema records ride along)."""
    if len(records) <= size:
        yield records
        return
    start = rows = 0
    for i, rec in enumerate(records):
        if rec[0] != SCHEMA:
            rows += 1
            if rows > size:
                yield records[start:i]
                start, rows = i, 1
    yield records[start:]


class WriteFailed(Exception):
    """A batch could not be committed; ``lost`` counts its events per run."""

    def __init__(self, cause: BaseException, lost: dict[str | None, int]) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.lost = lost


class BatchWriter:
    """Writes batches of records, one transaction each. Holds the schemas announced so far."""

    def __init__(self, redactor: Redactor | None, pid: int, host: str) -> None:
        self.redactor = redactor
        self.pid = pid
        self.host = host
        # class id -> (kind, field names after run_id and ts, free-text fields)
        self._schemas: dict[int, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}

    def learn(self, records: list[Any]) -> None:
        """Take in the schema records of a batch that will not be written (so later batches decode)."""
        for rec in records:
            if rec[0] == SCHEMA:
                self._schemas[rec[1]] = (rec[2], rec[3][2:], rec[4])

    def write(self, conn: sqlite3.Connection, records: list[Any], drops: dict[str, int]) -> int:
        """Commit ``records`` (and add ``drops`` to the runs' dropped counts) in one transaction; returns the
        number of events written. Raises :class:`WriteFailed` when nothing could be committed."""
        self.learn(records)
        try:
            rows, starts, finishes, results, artifacts, n_events = self._rows(records)
        except Exception as exc:  # noqa: BLE001 - bad data must not stop the writer
            raise WriteFailed(exc, count_events(records)) from exc
        for attempt in range(100):
            try:
                self._commit(conn, rows, starts, finishes, results, artifacts, drops)
            except sqlite3.OperationalError as exc:
                if ("locked" in str(exc) or "busy" in str(exc)) and attempt < 99:
                    time.sleep(0.05)
                    continue
                raise WriteFailed(exc, count_events(records)) from exc
            except Exception as exc:  # noqa: BLE001
                raise WriteFailed(exc, count_events(records)) from exc
            return n_events
        raise AssertionError("unreachable")

    def _rows(self, records: list[Any]) -> tuple[list[Any], list[Any], list[Any], list[Any], list[Any], int]:
        schemas = self._schemas
        red = self.redactor
        pid, host = self.pid, self.host
        segments: dict[str | None, list[dict[str, Any]]] = {}
        first_ts: dict[str | None, float] = {}
        starts: list[tuple[Any, ...]] = []
        finishes: list[tuple[Any, ...]] = []
        results: list[tuple[Any, ...]] = []
        artifacts: list[Any] = []
        n_events = 0
        for rec in records:
            cid = rec[0]
            if cid >= 0:
                kind, names, text = schemas[cid]
                values = rec[1]
                run_id, ts = values[0], values[1]
                data = dict(zip(names, values[2:], strict=True))
                if red is not None:
                    for n in text:
                        v = data[n]
                        if v and isinstance(v, str):
                            data[n] = red.redact(v)
                data["kind"] = kind
                data["ts"] = ts
                seg = segments.get(run_id)
                if seg is None:
                    segments[run_id] = [data]
                    first_ts[run_id] = ts
                else:
                    seg.append(data)
                n_events += 1
                if kind == "run_started":
                    starts.append((run_id, data["name"], data["model"], data["prompt"], ts, pid, host))
                elif kind == "run_finished":
                    d = data
                    finishes.append((run_id, d["status"], d["stop_reason"], ts, d["duration"], d["steps"],
                                     d["input_tokens"], d["output_tokens"], d["cached_tokens"], d["cost"],
                                     d["error"], ts - d["duration"], pid, host))
            elif cid == RESULT:
                self._result_rows(rec, results, artifacts)
        if len(starts) > 1 or len(finishes) > 1 or len(results) > 1:
            # one row per run in a multi-row upsert (a run seen twice keeps its last row)
            starts = list({r[0]: r for r in starts}.values())
            finishes = list({r[0]: r for r in finishes}.values())
            results = list({r[0]: r for r in results}.values())
        rows = [(rid, first_ts[rid], len(evs), _dumps(evs)) for rid, evs in segments.items()]
        return rows, starts, finishes, results, artifacts, n_events

    def _result_rows(self, rec: tuple[Any, ...], results: list[Any], artifacts: list[Any]) -> None:
        _, run_id, messages, output, timings, arts = rec
        red = self.redactor
        if red is not None:
            output = red.redact(output)
        results.append((run_id, output, self.dumps(timings), self.dumps(messages), self.pid, self.host))
        for name, value in arts.items():
            artifacts.append((run_id, name, value if isinstance(value, str) else self.dumps(value)))

    def dumps(self, value: Any) -> str:
        """JSON of any value, redacted when a redactor is set."""
        text = _dumps(value)
        red = self.redactor
        if red is None or not red.might_contain(text):
            return text
        return _dumps(red.redact_obj(value))

    @staticmethod
    def _commit(conn: sqlite3.Connection, rows: list[Any], starts: list[Any], finishes: list[Any],
                results: list[Any], artifacts: list[Any], drops: dict[str, int]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # multi-row statements: a statement step per row would cost a GIL hand-off per row
            if rows:
                conn.execute(rows_sql(EVENT_SQL, len(rows)), [v for r in rows for v in r])
            if starts:
                conn.execute(rows_sql(RUN_START_SQL, len(starts)), [v for r in starts for v in r])
            if finishes:
                conn.execute(rows_sql(RUN_FINISH_SQL, len(finishes)), [v for r in finishes for v in r])
            if results:
                conn.execute(rows_sql(RESULT_SQL, len(results)), [v for r in results for v in r])
            if artifacts:
                conn.executemany("INSERT OR REPLACE INTO artifacts (run_id, name, data) VALUES (?, ?, ?)",
                                 artifacts)
            if drops:
                conn.executemany("UPDATE runs SET dropped = dropped + ? WHERE run_id = ?",
                                 [(n, rid) for rid, n in drops.items()])
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
