"""The run store: every event, message and profile of every run, in SQLite, written behind the runs.

::

    import nbagent.store as store

    store.enable()                      # keep everything the default bus carries (the notebook does this)
    ...
    store.history(status="error", since="1d")     # a pandas DataFrame of runs
    run = store.load_run("3f2a")                  # events, messages, artifacts of one run (id prefix ok)
    run.to_result()                               # as a RunResult, for dashboards
    store.export_jsonl("runs.jsonl", since="7d")

The database is ``$NBAGENT_STORE_PATH`` or ``<nbagent home>/runs.db`` (home: ``$NBAGENT_HOME`` or the XDG
data dir). ``NBAGENT_STORE=off`` makes :func:`enable` a no-op. API keys and ``Authorization`` values never
reach the database (:mod:`nbagent.store.redact`). Writing is described in :mod:`nbagent.store.runs`.
"""

from __future__ import annotations

import os
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..events import EventBus, default_bus
from .redact import add_secret, install_log_redaction, redact, redact_obj

if TYPE_CHECKING:
    import pandas

    from .query import StoredRun, parse_time
    from .runs import RunStore, default_path

__all__ = [
    "RunStore",
    "StoredRun",
    "active_store",
    "add_secret",
    "default_path",
    "default_store",
    "disable",
    "enable",
    "export_jsonl",
    "history",
    "load_run",
    "parse_time",
    "redact",
    "redact_obj",
]

_LAZY = {"RunStore": "runs", "default_path": "runs", "StoredRun": "query", "parse_time": "query"}


def __getattr__(name: str) -> Any:
    """The writer and the queries are imported on first use: ``nbagent.store.redact`` (which resolving an
    endpoint imports, on the event loop) and :func:`active_store` (which every run's end asks) stay cheap."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_lock = threading.Lock()
_default: RunStore | None = None
_chosen = False  # the process-wide store was opened by enable(**store_options): keep it whatever its path
_attached: dict[int, Any] = {}


def default_store() -> RunStore:
    """The process-wide store: the one :func:`enable` opened with options, else the one at
    :func:`default_path` (opened on first use)."""
    global _default, _chosen
    from .runs import RunStore, default_path

    with _lock:
        if _default is None or _default._closed or (not _chosen and _default.path != default_path()):
            _default, _chosen = RunStore(), False
        return _default


def active_store() -> RunStore | None:
    """The process-wide store if :func:`enable` attached it to a bus, else None."""
    return _default if _attached and _default is not None and not _default._closed else None


def enable(bus: EventBus | None = None, **store_options: Any) -> RunStore | None:
    """Attach the process-wide store to ``bus`` (default: the default bus); idempotent per bus.

    ``store_options`` (``path``, ``batch_size``, ``flush_interval``...) open a new process-wide store when
    given. Returns None, and keeps nothing, when ``NBAGENT_STORE`` is ``0``/``off``/``false``.
    """
    global _default, _chosen
    if os.environ.get("NBAGENT_STORE", "").lower() in ("0", "off", "false", "no"):
        return None
    install_log_redaction()
    bus = bus or default_bus()
    if store_options:
        from .runs import RunStore

        with _lock:
            old = _default
            _default, _chosen = RunStore(**store_options), True
        if old is not None:
            _detach_all()
            old.close()
    store = default_store()
    with _lock:
        if id(bus) not in _attached:
            _attached[id(bus)] = (bus, store.attach(bus))
    return store


def disable(bus: EventBus | None = None) -> None:
    """Stop keeping the events of ``bus`` (default: every bus :func:`enable` attached to) and flush."""
    with _lock:
        if bus is None:
            _detach_all()
        else:
            entry = _attached.pop(id(bus), None)
            if entry is not None:
                entry[1]()
    if _default is not None and not _default._closed:
        _default.flush()


def _detach_all() -> None:
    for _bus, detach in list(_attached.values()):
        detach()
    _attached.clear()


def _store_for(path: str | Path | None) -> RunStore:
    if path is None:
        return default_store()
    from .runs import RunStore

    return RunStore(path)


def history(*, name: str | None = None, status: str | list[str] | None = None,
            since: float | str | datetime | None = None, until: float | str | datetime | None = None,
            limit: int | None = 50, path: str | Path | None = None) -> pandas.DataFrame:
    """Past runs, newest first, as a pandas DataFrame (filters as :meth:`RunStore.runs`)."""
    store = _store_for(path)
    try:
        return store.to_dataframe(name=name, status=status, since=since, until=until, limit=limit)
    finally:
        if path is not None:
            store.close()


def load_run(run_id: str, *, path: str | Path | None = None) -> StoredRun:
    """One past run (``run_id`` may be a unique prefix): events, messages, artifacts; ``to_result()``."""
    store = _store_for(path)
    try:
        return store.load(run_id)
    finally:
        if path is not None:
            store.close()


def export_jsonl(dest: str | Path, *, path: str | Path | None = None, **filters: Any) -> int:
    """Write the runs matching ``filters`` (with events and messages) to ``dest`` as JSON lines."""
    store = _store_for(path)
    try:
        return store.export_jsonl(dest, **filters)
    finally:
        if path is not None:
            store.close()
