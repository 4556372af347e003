"""Batches: events and results packed into plain tuples, and the transaction that writes a batch.

The tap's side (:class:`Packer`) turns each event into ``(class id, field values)`` with one C-level
``attrgetter`` call, announcing a class with a schema record the first time it appears. Such records pickle
cheaply, so the same stream feeds the writer thread and the writer process (:mod:`nbagent.store.proc`).
The writing side (:class:`BatchWriter`) encodes a run's events in a batch as one JSON array of
``[schema id, values]`` pairs (one C-level encoder call, no per-event object built), redacts the free text,
and commits a batch in one transaction: one ``events`` row per run and one multi-row statement per table,
with one upsert of each run's row however many of its start, end and result the batch holds.

One bad value never costs another: text SQLite cannot take (a lone surrogate, as ``os.fsdecode`` makes of
undecodable bytes) is written with that character backslash-escaped (``\\udcff``), and a batch that still fails
for its data is split in halves until only the records that fail are lost (and counted).
"""

from __future__ import annotations

import dataclasses
import json
import operator
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..events import Event
from .codec import _SAFE_TEXT, EVENT_SQL, SCHEMA_SQL, dumps, rows_sql, run_sql
from .escape import describe_error, escape_text, escaped
from .redact import Redactor

__all__ = ["SCHEMA", "RESULT", "BatchWriter", "Marker", "Packer", "ResultRecord", "WriteFailed", "connect",
           "count_events", "split"]

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


def escape_records(records: list[Any]) -> list[Any]:
    """Batch records (see :mod:`nbagent.store.batch`) with every text escaped by :func:`escape_text`."""
    out: list[Any] = []
    for rec in records:
        if rec[0] >= 0:
            out.append((rec[0], tuple(escaped(v) for v in rec[1])))
        elif rec[0] == RESULT:
            out.append((RESULT, rec[1], escaped(rec[2]), escape_text(str(rec[3])), escaped(rec[4]),
                        {k: escaped(v) for k, v in rec[5].items()}))
        else:
            out.append(rec)
    return out


class WriteFailed(Exception):
    """Part or all of a batch could not be committed: ``lost`` counts the events lost per run, ``written`` the
    events committed anyway, ``drops`` the dropped counts that could not be added to their runs."""

    def __init__(self, cause: BaseException, lost: dict[str | None, int], written: int = 0,
                 drops: dict[str, int] | None = None) -> None:
        super().__init__(describe_error(cause))
        self.cause = cause
        self.lost = lost
        self.written = written
        self.drops = drops or {}


class BatchWriter:
    """Writes batches of records, one transaction each. Holds the schemas announced so far."""

    def __init__(self, redactor: Redactor | None, pid: int, host: str) -> None:
        self.redactor = redactor
        self.pid = pid
        self.host = host
        # class id -> (kind, field names after run_id and ts, positions of free-text values, role)
        self._schemas: dict[int, tuple[str, tuple[str, ...], tuple[int, ...], Any]] = {}
        # class id -> (its event_schemas id in the database written, positions of free-text values, role);
        # role: None, or (1, getter of name, model, prompt, tags) for a run's start, (2, getter of status ... error)
        self._classes: dict[int, tuple[int, tuple[int, ...], Any]] = {}

    def learn(self, records: list[Any]) -> None:
        """Take in the schema records of a batch that will not be written (so later batches decode)."""
        for rec in records:
            if rec[0] == SCHEMA:
                _, cid, kind, names, text = rec
                fields = tuple(names[2:])
                schema = (kind, fields, tuple(names.index(n) for n in text if n in names), _role(kind, names))
                if self._schemas.get(cid) != schema:
                    self._schemas[cid] = schema
                    self._classes.pop(cid, None)  # its database id is looked up before the next write

    def write(self, conn: sqlite3.Connection, records: list[Any], drops: dict[str, int]) -> int:
        """Commit ``records`` (and add ``drops`` to the runs' dropped counts) in one transaction; returns the
        number of events written. Raises :class:`WriteFailed` when any of them could not be committed (see the
        module docs: bad text is escaped, and bad records cost only themselves)."""
        self.learn(records)
        try:
            if len(self._classes) < len(self._schemas):
                _retry(lambda: self._register(conn))
        except Exception as exc:  # noqa: BLE001 - a failing database must not stop the writer
            raise WriteFailed(exc, count_events(records), 0, drops) from exc
        failed: list[tuple[BaseException, list[Any], dict[str, int]]] = []
        written = self._write_part(conn, records, drops, failed)
        if failed:
            lost: dict[str | None, int] = {}
            drops_left: dict[str, int] = {}
            for _, part, part_drops in failed:
                for rid, n in count_events(part).items():
                    lost[rid] = lost.get(rid, 0) + n
                drops_left.update(part_drops)
            raise WriteFailed(failed[0][0], lost, written, drops_left) from failed[0][0]
        return written

    def _write_part(self, conn: sqlite3.Connection, records: list[Any], drops: dict[str, int],
                    failed: list[tuple[BaseException, list[Any], dict[str, int]]], text_escaped: bool = False) -> int:
        """Commit ``records`` in one transaction; on an error of their data, escape their text, then split
        them in halves; what fails alone is added to ``failed``. Returns the number of events committed."""
        try:
            rows, runs, artifacts, n_events = self._rows(records)
            _retry(lambda: self._commit(conn, rows, runs, artifacts, drops))
            return n_events
        except sqlite3.OperationalError as exc:  # the database itself (locked, full, I/O): no part would go
            failed.append((exc, records, drops))
            return 0
        except Exception as exc:  # noqa: BLE001 - bad data must cost only the records that carry it
            if not text_escaped and isinstance(exc, UnicodeError):
                return self._write_part(conn, escape_records(records), drops, failed, text_escaped=True)
            body = [i for i, rec in enumerate(records) if rec[0] != SCHEMA]
            if len(body) <= 1:
                failed.append((exc, records, drops))
                return 0
            cut = body[len(body) // 2]
            return (self._write_part(conn, records[:cut], drops, failed, text_escaped)
                    + self._write_part(conn, records[cut:], {}, failed, text_escaped))

    def _register(self, conn: sqlite3.Connection) -> None:
        """Give every class learnt its ``event_schemas`` id (added once per database, in its own transaction)."""
        todo = {cid: s for cid, s in self._schemas.items() if cid not in self._classes}
        found: dict[int, int] = {}
        conn.execute("BEGIN IMMEDIATE")
        try:
            for cid, (kind, fields, _, _) in todo.items():
                names = json.dumps(list(fields))
                conn.execute(SCHEMA_SQL, (kind, names))
                found[cid] = conn.execute("SELECT id FROM event_schemas WHERE kind = ? AND fields = ?",
                                          (kind, names)).fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for cid, sid in found.items():
            self._classes[cid] = (sid, todo[cid][2], todo[cid][3])

    def _rows(self, records: list[Any]) -> tuple[list[Any], dict[Any, list[Any]], list[Any], int]:
        classes = self._classes
        segments: dict[str | None, list[Any]] = {}
        texts: list[str] = []  # the free text of the batch, for one quick test for secrets
        roles: list[tuple[Any, tuple[Any, ...]]] = []
        results: list[tuple[Any, ...]] = []
        n_events = 0
        for rec in records:
            cid = rec[0]
            if cid >= 0:
                sid, text, role = classes[cid]
                values = rec[1]
                seg = segments.get(values[0])
                if seg is None:
                    segments[values[0]] = [(sid, values)]
                else:
                    seg.append((sid, values))
                n_events += 1
                if text:
                    for i in text:
                        v = values[i]
                        if v and isinstance(v, str):
                            texts.append(v)
                if role is not None:
                    roles.append((role, values))
            elif cid == RESULT:
                results.append(rec)
        artifacts: list[Any] = []
        encoded: list[tuple[Any, ...]] = []
        for rec in results:
            _, run_id, messages, output, timings, arts = rec
            encoded.append((run_id, output, dumps(timings), dumps(messages)))
            texts.extend(encoded[-1][1:])
            for name, value in arts.items():
                artifacts.append((run_id, name, self.text(value) if isinstance(value, str) else self.dumps(value)))
        red = self.redactor
        if red is not None and texts and red.might_contain("\n".join(texts)):
            # seldom: a secret, or what looks like one; redact each free-text value as it is written
            roles = self._redact(segments, roles, results, encoded)
        runs: dict[Any, list[Any]] = {}  # run_id -> the [start, end, result] parts of its row
        for role, values in roles:
            parts = runs.get(values[0])
            if parts is None:
                parts = runs[values[0]] = [None, None, None]
            if role[0] == 1:
                name, model, prompt, tags = role[1](values)
                parts[0] = (name, model, prompt, dumps(list(tags or ())), values[1])  # ...; started
            else:
                d = role[1](values)  # status ... error (as in the row); started, if new: the end - duration
                parts[1] = (d[0], d[1], values[1], *d[2:], values[1] - d[2])
        for run_id, output, timings_json, messages_json in encoded:
            parts = runs.get(run_id)
            if parts is None:
                parts = runs[run_id] = [None, None, None]
            parts[2] = (output, timings_json, messages_json)
        pid, host = self.pid, self.host
        by_shape: dict[Any, list[Any]] = {}  # one upsert per shape of row (which of the parts it has)
        for run_id, (start, end, result) in runs.items():
            row = (run_id, *(start[:4] if start else ()), *(end[:10] if end else ()), *(result or ()),
                   *((start[4],) if start else (end[10],) if end else ()), pid, host)
            shape = (start is not None, end is not None, result is not None)
            rows_of = by_shape.get(shape)
            if rows_of is None:
                by_shape[shape] = [row]
            else:
                rows_of.append(row)
        rows = [(rid, evs[0][1][1], len(evs), dumps(evs)) for rid, evs in segments.items()]
        return rows, by_shape, artifacts, n_events

    def _redact(self, segments: dict[str | None, list[Any]], roles: list[Any], results: list[Any],
                encoded: list[tuple[Any, ...]]) -> list[Any]:
        """Redact the free text of a batch's events and results in place; returns ``roles`` redacted too."""
        red = self.redactor
        assert red is not None
        text_of = {sid: text for sid, text, _ in self._classes.values()}
        redacted: dict[int, tuple[Any, ...]] = {}
        for seg in segments.values():
            for k, (sid, values) in enumerate(seg):
                text = text_of[sid]
                if not text:
                    continue
                new = list(values)
                for i in text:
                    v = new[i]
                    if v and isinstance(v, str):
                        new[i] = red.redact(v)
                if any(new[i] is not values[i] for i in text):
                    seg[k] = (sid, tuple(new))
                    redacted[id(values)] = seg[k][1]
        for k, rec in enumerate(results):
            _, run_id, messages, output, timings, _ = rec
            encoded[k] = (run_id, red.redact(output), self.dumps(timings), self.dumps(messages))
        return [(role, redacted.get(id(values), values)) for role, values in roles]

    def text(self, value: str) -> str:
        """``value`` redacted when a redactor is set."""
        red = self.redactor
        return value if red is None or not red.might_contain(value) else red.redact(value)

    def dumps(self, value: Any) -> str:
        """JSON of any value, redacted when a redactor is set."""
        text = dumps(value)
        red = self.redactor
        if red is None or not red.might_contain(text):
            return text
        return dumps(red.redact_obj(value))

    @staticmethod
    def _commit(conn: sqlite3.Connection, rows: list[Any], runs: dict[Any, list[Any]], artifacts: list[Any],
                drops: dict[str, int]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            # multi-row statements: a statement step per row would cost a GIL hand-off per row
            _insert(conn, EVENT_SQL, rows)
            for shape, run_rows in runs.items():
                _insert(conn, run_sql(*shape), run_rows)
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


def _retry(fn: Callable[[], None]) -> None:
    """``fn()``, again after 50 ms while another connection holds the database (for up to 5 s)."""
    for attempt in range(100):
        try:
            fn()
            return
        except sqlite3.OperationalError as exc:
            if ("locked" in str(exc) or "busy" in str(exc)) and attempt < 99:
                time.sleep(0.05)
                continue
            raise


_MAX_ROWS = 1000  # rows per statement: at most 20 values each, well under SQLite's 32,766 variables


def _insert(conn: sqlite3.Connection, template: str, rows: list[Any]) -> None:
    for k in range(0, len(rows), _MAX_ROWS):
        chunk = rows[k:k + _MAX_ROWS]
        conn.execute(rows_sql(template, len(chunk)), [v for r in chunk for v in r])


_START = ("name", "model", "prompt", "tags")
_FINISH = ("status", "stop_reason", "duration", "steps", "input_tokens", "output_tokens", "cached_tokens", "cost",
           "error")


def _role(kind: str, names: tuple[str, ...]) -> Any:
    """What an event of ``kind`` writes in its run's row: (1, getter) for a start, (2, getter) for an end."""
    wanted = _START if kind == "run_started" else _FINISH if kind == "run_finished" else None
    if wanted is None or not set(wanted) <= set(names):
        return None
    return (1 if kind == "run_started" else 2, operator.itemgetter(*(names.index(n) for n in wanted)))


class Marker:
    """A flush request: set once everything queued before it is committed."""

    __slots__ = ("done", "callback")

    def __init__(self, callback: Callable[[], None] | None = None) -> None:
        self.done = threading.Event()
        self.callback = callback

    def fire(self) -> None:
        self.done.set()
        if self.callback is not None:
            self.callback()


class ResultRecord:
    """What a run's events do not carry: its messages, output, timings and profile."""

    __slots__ = ("run_id", "messages", "output", "timings", "artifacts")

    def __init__(self, run_id: str, messages: list[Any], output: str, timings: dict[str, float],
                 artifacts: dict[str, Any]) -> None:
        self.run_id = run_id
        self.messages = messages
        self.output = output
        self.timings = timings
        self.artifacts = artifacts
