"""Events to rows and back.

An event is stored as a JSON object with its ``kind``, ``ts`` and other fields (``run_id`` is the row's), in a
segment: the JSON array of a run's events written in one batch. Free-text
fields (a prompt, tool arguments, an error message...) go through the redactor first; identifiers and numbers
do not, which keeps the per-event cost low. Reading back, :func:`event_from_dict` rebuilds the typed event
from its ``kind`` (events of packages that were never imported come back as plain dicts).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from typing import Any

from ..events import Event

__all__ = ["EVENT_SQL", "RESULT_SQL", "RUN_FINISH_SQL", "RUN_START_SQL", "event_class", "event_from_dict", "rows_sql"]

# string fields that never carry user text: identifiers, enums, names
_SAFE_TEXT = frozenset({
    "run_id", "request_id", "call_id", "model", "name", "status", "stop_reason", "cache", "tier", "key", "reason",
    "usage_source", "finish_reason", "error_type", "limit", "sandbox_id", "backend", "image", "lang", "budget",
    "metric", "stat",
})
# modules whose events may be in a store; imported on demand when an unknown kind is read
_EVENT_MODULES = ("nbagent.sandbox.events", "nbagent.metrics.budgets", "nbagent.policy")

_dumps = json.JSONEncoder(ensure_ascii=False, default=str, check_circular=False, separators=(",", ":")).encode


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

# "{rows}" is replaced by as many "(?, ...)" groups as rows are written at once
RUN_START_SQL = (
    "INSERT INTO runs (run_id, name, model, prompt, started, pid, host) VALUES {rows} "
    "ON CONFLICT(run_id) DO UPDATE SET name = excluded.name, model = excluded.model, prompt = excluded.prompt, "
    "started = excluded.started, pid = excluded.pid, host = excluded.host"
)
RUN_FINISH_SQL = (
    "INSERT INTO runs (run_id, status, stop_reason, finished, duration, steps, input_tokens, output_tokens, "
    "cached_tokens, cost, error, started, pid, host) VALUES {rows} "
    "ON CONFLICT(run_id) DO UPDATE SET status = excluded.status, stop_reason = excluded.stop_reason, "
    "finished = excluded.finished, duration = excluded.duration, steps = excluded.steps, "
    "input_tokens = excluded.input_tokens, output_tokens = excluded.output_tokens, "
    "cached_tokens = excluded.cached_tokens, cost = excluded.cost, error = excluded.error"
)
RESULT_SQL = (
    "INSERT INTO runs (run_id, output, timings, messages, pid, host) VALUES {rows} "
    "ON CONFLICT(run_id) DO UPDATE SET output = excluded.output, timings = excluded.timings, "
    "messages = excluded.messages"
)
EVENT_SQL = "INSERT INTO events (run_id, ts, n, data) VALUES {rows}"
_SQL_CACHE: dict[tuple[str, int], str] = {}


def rows_sql(template: str, n: int) -> str:
    sql = _SQL_CACHE.get((template, n))
    if sql is None:
        width = template.split("VALUES")[0].count(",") + 1
        group = "(" + ",".join("?" * width) + ")"
        sql = _SQL_CACHE[(template, n)] = template.replace("{rows}", ",".join([group] * n))
    return sql
