"""Events to rows and back.

An event is stored as ``[schema id, [run_id, ts, field values...]]`` (its kind and field names are in the
``event_schemas`` table; older databases hold objects with ``kind``, ``ts`` and the fields), in a segment: the
JSON array of a run's events written in one batch. Free-text fields (a prompt, tool arguments, an error
message...) go through the redactor first; identifiers and numbers do not, which keeps the per-event cost low.
Reading back, :func:`event_from_dict` rebuilds the typed event from its ``kind`` (events of packages that were
never imported come back as plain dicts).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from ..events import Event

__all__ = ["EVENT_SQL", "SCHEMA_SQL", "dumps", "event_class", "event_from_dict", "rows_sql", "run_sql"]

# string fields that never carry user text: identifiers, enums, names
_SAFE_TEXT = frozenset({
    "run_id", "request_id", "call_id", "model", "name", "status", "cache", "tier", "key", "usage_source",
    "finish_reason", "error_type", "limit", "sandbox_id", "backend", "image", "lang", "budget", "metric", "stat",
})  # not "stop_reason" nor "reason": an error's stop reason quotes its message, a policy's reason its rule
# modules whose events may be in a store; imported on demand when an unknown kind is read
_EVENT_MODULES = ("nbagent.sandbox.events", "nbagent.metrics.budgets", "nbagent.policy", "nbagent.mcp.events")

_dumps = json.JSONEncoder(ensure_ascii=False, default=str, check_circular=False, separators=(",", ":")).encode
# the same encoder's C core, called directly: ``JSONEncoder.encode`` builds it anew on every call (about 1 us)
_c_encode = (None if c_make_encoder is None else
             c_make_encoder(None, str, encode_basestring, None, ":", ",", False, False, True))


def dumps(value: Any) -> str:
    """Compact JSON (non-ASCII kept, unknown types as ``str``), as ``_dumps`` but without its set-up per call."""
    if _c_encode is None:
        return _dumps(value)
    return "".join(_c_encode(value, 0))


_kinds: dict[str, type[Event]] = {}


def _walk(cls: type[Event]) -> None:
    for sub in cls.__subclasses__():
        kind = sub.__dict__.get("kind")
        # ``dataclass(slots=True)`` leaves the class it replaced among the subclasses: take the public one
        module = sys.modules.get(sub.__module__)
        if isinstance(kind, str) and getattr(module, sub.__qualname__, None) is sub:
            _kinds.setdefault(kind, sub)
        _walk(sub)


def event_class(kind: str) -> type[Event] | None:
    """The event class of ``kind``, or None when no imported module defines it."""
    cls = _kinds.get(kind)
    if cls is None:
        _walk(Event)
        cls = _kinds.get(kind)
    if cls is None:
        for name in _EVENT_MODULES:
            try:
                importlib.import_module(name)
            except ImportError:
                continue
        _walk(Event)
        cls = _kinds.get(kind)
    return cls


def event_from_dict(data: dict[str, Any]) -> Event | dict[str, Any]:
    """The typed event for a stored dict (``kind``, ``run_id``, ``ts`` and fields); the dict when unknown."""
    cls = event_class(data.get("kind", ""))
    if cls is None:
        return data
    known = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in data.items() if k in known})
    except TypeError:
        return data


# --- the writer's statements -------------------------------------------------------------------

# a run's row is written by one upsert per transaction, of the parts the transaction has: its start (name,
# model, prompt, tags; started, pid, host), its end (status ... error; started if new) and its result (output ...)
_START_COLUMNS = ("name", "model", "prompt", "tags")
_FINISH_COLUMNS = ("status", "stop_reason", "finished", "duration", "steps", "input_tokens", "output_tokens",
                   "cached_tokens", "cost", "error")
_RESULT_COLUMNS = ("output", "timings", "messages")
EVENT_SQL = "INSERT INTO events (run_id, ts, n, data) VALUES {rows}"
SCHEMA_SQL = "INSERT OR IGNORE INTO event_schemas (kind, fields) VALUES (?, ?)"
_SQL_CACHE: dict[tuple[str, int], str] = {}


def run_sql(start: bool, finish: bool, result: bool) -> str:
    """The upsert of a run's row from the parts present, its values ``(run_id, start columns..., finish
    columns..., result columns..., [started,] pid, host)``; ``started`` is taken from a start, or set from an
    end when the row is new, and ``pid``/``host`` are updated by a start only."""
    cols = ["run_id", *(_START_COLUMNS if start else ()), *(_FINISH_COLUMNS if finish else ()),
            *(_RESULT_COLUMNS if result else ()), *(("started",) if start or finish else ()), "pid", "host"]
    update = [*(_START_COLUMNS if start else ()), *(_FINISH_COLUMNS if finish else ()),
              *(_RESULT_COLUMNS if result else ()), *(("started", "pid", "host") if start else ())]
    return (f"INSERT INTO runs ({', '.join(cols)}) VALUES {{rows}} ON CONFLICT(run_id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in update))


def rows_sql(template: str, n: int) -> str:
    sql = _SQL_CACHE.get((template, n))
    if sql is None:
        width = template.split("VALUES")[0].count(",") + 1
        group = "(" + ",".join("?" * width) + ")"
        sql = _SQL_CACHE[(template, n)] = template.replace("{rows}", ",".join([group] * n))
    return sql
