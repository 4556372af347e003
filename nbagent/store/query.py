"""Reading the run store: list runs, load one run, export to pandas and JSONL, replay a run's events.

Reads open their own short-lived SQLite connection; in WAL mode they never wait for the writer. The methods
block and are meant for scripts, the CLI and notebook cells; code on the event loop uses the ``a``-prefixed
twins (:meth:`RunQueries.aruns`, :meth:`RunQueries.aload`), which run the same query in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..events import Event, EventBus
from .codec import event_from_dict

if TYPE_CHECKING:
    import pandas

    from ..agent.loop import RunResult
    from ..metrics import MetricsRegistry
    from ..record import RunRecord

__all__ = ["RunQueries", "StoredRun", "parse_time"]

_RUN_COLUMNS = ("run_id", "name", "model", "status", "stop_reason", "started", "finished", "duration", "steps",
                "input_tokens", "output_tokens", "cached_tokens", "cost", "error", "prompt", "output", "timings",
                "pid", "host", "dropped", "tags")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: float | int | str | datetime | None) -> float | None:
    """Epoch seconds from a number, a datetime, an ISO date/time, or an age such as ``"90s"``, ``"2h"``, ``"3d"``."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    if isinstance(value, datetime):
        return value.timestamp()
    text = value.strip()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhdw])", text)
    if m:
        return time.time() - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"cannot read a time from {value!r}: use an ISO date, epoch seconds or an age like '2h'")\
            from None


@dataclass
class StoredRun:
    """One run read back from the store: its row, events, messages and artifacts."""

    info: dict[str, Any]
    events: list[Any] = field(default_factory=list, repr=False)
    messages: list[dict[str, Any]] = field(default_factory=list, repr=False)
    artifacts: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def run_id(self) -> str:
        return str(self.info["run_id"])

    @property
    def name(self) -> str:
        return str(self.info.get("name") or "")

    @property
    def status(self) -> str:
        return str(self.info.get("status") or "")

    @property
    def output(self) -> str:
        return str(self.info.get("output") or "")

    @property
    def timings(self) -> dict[str, float]:
        return dict(self.info.get("timings") or {})

    @property
    def profile_html(self) -> str | None:
        """The stored sampling profile of the run (when it ran with ``profile=True``)."""
        return self.artifacts.get("profile.html")

    def typed_events(self) -> list[Event]:
        return [e for e in self.events if isinstance(e, Event)]

    def metrics(self) -> MetricsRegistry:
        """A metrics registry rebuilt from the stored events (what the live dashboard showed)."""
        from ..metrics import MetricsRegistry

        reg = MetricsRegistry()
        for ev in self.typed_events():
            reg.observe(ev)
        return reg

    def breakdown(self) -> dict[str, float]:
        """Where the run's wall time went: the breakdown of its record (:meth:`~nbagent.record.RunRecord.breakdown`,
        the live run's, with the same keys and seconds), folded from the stored events.

        A run stored without events gives the breakdown its profile stored, if any (else zeros)."""
        from ..record import BREAKDOWN_KEYS

        if self.typed_events():
            return self.record.breakdown()
        stored = json.loads(self.artifacts.get("breakdown") or "{}")
        return {k: float(stored.get(k, 0.0)) for k in BREAKDOWN_KEYS}

    def replay(self, bus: EventBus) -> int:
        """Emit the stored events on ``bus`` in order (a dashboard subscribed to it redraws the run).

        Use a bus no store is attached to, or the events are stored a second time.
        """
        events = self.typed_events()
        for ev in events:
            bus.emit(ev)
        return len(events)

    @property
    def record(self) -> RunRecord:
        """The run's :class:`~nbagent.record.RunRecord`, folded from the stored events (equal to the live one)."""
        from ..record import RunRecord

        rec = RunRecord.from_events(self.run_id, self.typed_events())
        rec.output, rec.messages = self.output, list(self.messages)
        return rec

    def timeline(self, **kwargs: Any) -> Any:
        """The run's waterfall (see :func:`nbagent.timeline.timeline`)."""
        from ..timeline import timeline

        return timeline(self.record, **kwargs)

    def to_result(self) -> RunResult:
        """The run as a :class:`~nbagent.agent.RunResult` (for code that shows results, such as dashboards)."""
        from ..agent.loop import RunResult
        from ..llm.types import TokenUsage
        from ..llm.usage import RunUsage

        rec = self.record
        usage = RunUsage(steps=rec.steps, requests=rec.llm_calls, cache_hits=rec.cached_calls,
                         tool_calls=rec.tool_calls,
                         tokens=TokenUsage(rec.input_tokens, rec.output_tokens, rec.cached_tokens),
                         cost=rec.priced_cost, unpriced_calls=rec.unpriced_calls)
        return RunResult(run_id=self.run_id, name=self.name, output=self.output, status=self.status,
                         stop_reason=str(self.info.get("stop_reason") or ""), messages=list(self.messages),
                         usage=usage, timings=self.timings, events=rec.events, record=rec)

    def summary(self) -> str:
        i = self.info
        dur = i.get("duration")
        took = f"{dur:.2f} s" if isinstance(dur, (int, float)) else "?"
        return (f"{self.name} [{self.run_id}]: {self.status} ({i.get('stop_reason') or ''}) in {took}; "
                f"{i.get('steps', 0)} steps; tokens in {i.get('input_tokens', 0):,} / out "
                f"{i.get('output_tokens', 0):,}; {len(self.events)} events, {len(self.messages)} messages")


class RunQueries:
    """The read side of :class:`~nbagent.store.RunStore` (mixed in; needs ``path`` and ``_before_read``)."""

    path: Path
    redactor: Any = None  # a Redactor: exports pass through it (what was stored is redacted already)

    def _before_read(self, flush: bool) -> None:  # pragma: no cover - overridden
        pass

    def redacted(self, value: Any) -> Any:
        """``value`` (JSON-like) with secrets known now replaced: for exports of rows written before a key was
        known, or by an older version."""
        red = self.redactor
        if red is None or not red.might_contain(json.dumps(value, default=str)):
            return value
        return red.redact_obj(value)

    @contextmanager
    def _read(self, flush: bool = True) -> Iterator[sqlite3.Connection]:
        self._before_read(flush)
        conn = sqlite3.connect(self.path, timeout=30.0)
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.close()

    # --- runs --------------------------------------------------------------------------------------

    def runs(self, *, name: str | None = None, status: str | Sequence[str] | None = None,
             since: float | str | datetime | None = None, until: float | str | datetime | None = None,
             tag: str | None = None, limit: int | None = 100, offset: int = 0,
             flush: bool = True) -> list[dict[str, Any]]:
        """Runs, newest first. ``name`` matches a substring (or a glob with ``*``/``?``); ``status`` one or more
        of ok, error, limit, stuck, cancelled, running, interrupted; ``since``/``until`` as in :func:`parse_time`;
        ``tag`` keeps the runs with that tag.
        """
        where: list[str] = []
        args: list[Any] = []
        if tag:
            where.append("EXISTS (SELECT 1 FROM json_each(runs.tags) WHERE json_each.value = ?)")
            args.append(tag)
        if name:
            if any(c in name for c in "*?["):
                where.append("name GLOB ?")
                args.append(name)
            else:
                where.append("name LIKE ? ESCAPE '\\'")
                args.append("%" + name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        statuses = [status] if isinstance(status, str) else list(status or [])
        if statuses:
            sql_statuses = {"running" if s == "interrupted" else s for s in statuses}
            where.append(f"status IN ({', '.join('?' * len(sql_statuses))})")
            args.extend(sorted(sql_statuses))
        t0, t1 = parse_time(since), parse_time(until)
        if t0 is not None:
            where.append("started >= ?")
            args.append(t0)
        if t1 is not None:
            where.append("started < ?")
            args.append(t1)
        sql = f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started DESC, rowid DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)} OFFSET {int(offset)}"
        with self._read(flush) as conn:
            rows = [_run_dict(r) for r in conn.execute(sql, args)]
        if statuses and set(statuses) & {"running", "interrupted"}:
            rows = [r for r in rows if r["status"] not in ("running", "interrupted") or r["status"] in statuses]
        return rows

    def run(self, run_id: str, *, flush: bool = True) -> dict[str, Any] | None:
        """One run's row (``run_id`` may be a unique prefix), or None."""
        with self._read(flush) as conn:
            rows = conn.execute(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs WHERE run_id >= ? AND run_id < ? "
                                "LIMIT 2", (run_id, run_id + "\uffff")).fetchall()
        exact = [r for r in rows if r["run_id"] == run_id]
        if exact:
            return _run_dict(exact[0])
        return _run_dict(rows[0]) if len(rows) == 1 else None

    def events(self, run_id: str, *, kinds: Iterable[str] | None = None, typed: bool = False,
               flush: bool = True) -> list[Any]:
        """A run's events in order, as dicts (``Event.to_dict()`` shape) or typed events with ``typed=True``."""
        wanted = set(kinds or ())
        out: list[dict[str, Any]] = []
        schemas: dict[int, tuple[str, list[str]]] | None = None
        with self._read(flush) as conn:
            for (data,) in conn.execute("SELECT data FROM events WHERE run_id = ? ORDER BY id", (run_id,)):
                for ev in json.loads(data):
                    if isinstance(ev, list):  # [schema id, [run_id, ts, values...]]
                        if schemas is None:
                            schemas = {i: (k, json.loads(f)) for i, k, f in
                                       conn.execute("SELECT id, kind, fields FROM event_schemas")}
                        sid, values = ev
                        kind, names = schemas.get(sid, ("", []))
                        if not wanted or kind in wanted:
                            d = {"kind": kind, "run_id": run_id, "ts": values[1],
                                 **dict(zip(names, values[2:], strict=False))}
                            if len(values) - 2 > len(names):  # an unknown schema: keep the values
                                d["values"] = values[2 + len(names):]
                            out.append(d)
                    elif not wanted or ev.get("kind") in wanted:  # an object (databases before m004)
                        out.append({"kind": ev.pop("kind", ""), "run_id": run_id, "ts": ev.pop("ts", 0.0), **ev})
        return [event_from_dict(d) for d in out] if typed else out

    def messages(self, run_id: str, *, flush: bool = True) -> list[dict[str, Any]]:
        """A run's messages (system, user, assistant, tool...) in order."""
        with self._read(flush) as conn:
            row = conn.execute("SELECT messages FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return list(json.loads(row[0])) if row is not None and row[0] else []

    def artifacts(self, run_id: str, *, flush: bool = True) -> dict[str, str]:
        """A run's artifacts by name (``profile.html``, ``profile.txt``, ``breakdown``...)."""
        with self._read(flush) as conn:
            return {r["name"]: r["data"] for r in
                    conn.execute("SELECT name, data FROM artifacts WHERE run_id = ? ORDER BY name", (run_id,))}

    def load(self, run_id: str, *, flush: bool = True) -> StoredRun:
        """Everything about one run; ``KeyError`` when there is no such run."""
        info = self.run(run_id, flush=flush)
        if info is None:
            raise KeyError(f"no run {run_id!r} in {self.path}")
        rid = info["run_id"]
        return StoredRun(info, self.events(rid, typed=True, flush=False), self.messages(rid, flush=False),
                         self.artifacts(rid, flush=False))

    def replay(self, run_id: str, bus: EventBus) -> int:
        """Emit a stored run's events on ``bus``, in order; returns how many."""
        return self.load(run_id).replay(bus)

    def count_events(self, run_id: str | None = None, *, flush: bool = True) -> int:
        with self._read(flush) as conn:
            if run_id is None:
                return int(conn.execute("SELECT coalesce(sum(n), 0) FROM events").fetchone()[0])
            return int(conn.execute("SELECT coalesce(sum(n), 0) FROM events WHERE run_id = ?",
                                    (run_id,)).fetchone()[0])

    def prune(self, older_than: float | str | datetime) -> int:
        """Delete runs started before ``older_than`` (and their events and artifacts); returns how many."""
        t = parse_time(older_than)
        with self._read(True) as conn:
            ids = [r[0] for r in conn.execute("SELECT run_id FROM runs WHERE started < ?", (t,))]
            with conn:
                for table in ("events", "artifacts", "runs"):
                    conn.executemany(f"DELETE FROM {table} WHERE run_id = ?", [(i,) for i in ids])
        return len(ids)

    # --- export ------------------------------------------------------------------------------------

    def to_dataframe(self, **filters: Any) -> pandas.DataFrame:
        """The runs matching ``filters`` (as :meth:`runs`) as a pandas DataFrame, one row per run."""
        import pandas as pd

        rows = self.runs(**filters)
        df = pd.DataFrame(rows, columns=list(_RUN_COLUMNS))
        for col in ("started", "finished"):
            df[col] = pd.to_datetime(df[col], unit="s", utc=True)
        return df

    def events_dataframe(self, run_id: str) -> pandas.DataFrame:
        """One run's events as a DataFrame: ``ts, kind, run_id`` then every event field (NaN where absent)."""
        import pandas as pd

        df = pd.DataFrame(self.events(run_id))
        if not df.empty:
            df["ts"] = pd.to_datetime(df["ts"], unit="s", utc=True)
        return df

    def export_jsonl(self, dest: str | Path | IO[str], *, run_ids: Iterable[str] | None = None,
                     events: bool = True, messages: bool = True, **filters: Any) -> int:
        """Write runs as JSON lines: a ``{"record": "run", ...}`` line per run, then its ``"event"`` and
        ``"message"`` lines. Selects ``run_ids`` or the runs matching ``filters``; returns the lines written."""
        if run_ids is not None:
            rows = [r for r in (self.run(i) for i in run_ids) if r is not None]
        else:
            filters.setdefault("limit", None)
            rows = self.runs(**filters)
        if isinstance(dest, (str, Path)):
            with open(dest, "w", encoding="utf-8") as fh:
                return self._write_jsonl(fh, rows, events, messages)
        return self._write_jsonl(dest, rows, events, messages)

    def _write_jsonl(self, fh: IO[str], rows: list[dict[str, Any]], events: bool, messages: bool) -> int:
        n = 0
        red = self.redactor

        def write(record: dict[str, Any]) -> None:
            line = json.dumps(record, default=str)
            if red is not None and red.might_contain(line):
                line = json.dumps(red.redact_obj(record), default=str)
            fh.write(line + "\n")

        for row in rows:
            write({"record": "run", **row})
            n += 1
            if events:
                for ev in self.events(row["run_id"], flush=False):
                    write({"record": "event", **ev})
                    n += 1
            if messages:
                for i, msg in enumerate(self.messages(row["run_id"], flush=False)):
                    write({"record": "message", "run_id": row["run_id"], "idx": i, **msg})
                    n += 1
        return n

    # --- async twins -------------------------------------------------------------------------------

    async def aruns(self, **filters: Any) -> list[dict[str, Any]]:
        """:meth:`runs` in a worker thread."""
        return await asyncio.to_thread(lambda: self.runs(**filters))

    async def aload(self, run_id: str) -> StoredRun:
        """:meth:`load` in a worker thread."""
        return await asyncio.to_thread(self.load, run_id)


_HOST = socket.gethostname()


def _run_dict(row: sqlite3.Row) -> dict[str, Any]:
    d = dict(row)
    d["tags"] = json.loads(d.get("tags") or "[]")
    if d.get("timings"):
        d["timings"] = json.loads(d["timings"])
    if d.get("status") == "running" and d.get("host") == _HOST and d.get("pid") and not _alive(int(d["pid"])):
        d["status"] = "interrupted"  # the process that ran it is gone without a RunFinished
    return d


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
