"""The run store: every event, message and profile of every run, in SQLite, written behind the runs.

::

    import nbagent.store as store

    store.enable()                      # keep every run of the default runtime (the notebook does this)
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
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..events import EventBus
from .redact import add_secret, install_log_redaction, redact, redact_obj  # noqa: F401 - public

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
    "store_disabled",
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


def store_disabled() -> bool:
    """True when ``NBAGENT_STORE`` is ``0``/``off``/``false``/``no``: runs are then not kept."""
    return os.environ.get("NBAGENT_STORE", "").lower() in ("0", "off", "false", "no")


def active_store() -> RunStore | None:
    """The store of the default runtime (:func:`nbagent.runtime.runtime`), or None when it keeps no runs."""
    from ..runtime import runtime

    return runtime().store


def default_store() -> RunStore:
    """The default runtime's store, or a store at :func:`default_path` opened for reading (not attached)."""
    from .runs import RunStore

    return active_store() or RunStore()


def enable(bus: EventBus | None = None, **store_options: Any) -> RunStore | None:
    """Keep every run of the default runtime (``Runtime.enable_store``); idempotent.

    ``store_options`` (``path``, ``batch_size``, ``flush_interval``...) open a new store when given. Returns
    None, and keeps nothing, when ``NBAGENT_STORE`` is ``0``/``off``/``false``. ``bus`` must be the default
    runtime's bus when given (another runtime has its own ``enable_store``).
    """
    from ..runtime import runtime

    rt = runtime()
    if bus is not None and bus is not rt.bus:
        raise ValueError("store.enable(bus): that bus belongs to another runtime; use runtime.enable_store()")
    return rt.enable_store(**store_options)


def disable(bus: EventBus | None = None) -> None:
    """Stop keeping the default runtime's runs (the store is flushed)."""
    from ..runtime import runtime

    runtime().disable_store()


def _store_for(path: str | Path | None) -> tuple[RunStore, bool]:
    """The store to read (and whether it was opened here, to be closed after)."""
    if path is None:
        active = active_store()
        if active is not None:
            return active, False
    from .runs import RunStore

    return RunStore(path), True


def history(*, name: str | None = None, status: str | list[str] | None = None,
            since: float | str | datetime | None = None, until: float | str | datetime | None = None,
            limit: int | None = 50, path: str | Path | None = None) -> pandas.DataFrame:
    """Past runs, newest first, as a pandas DataFrame (filters as :meth:`RunStore.runs`)."""
    store, own = _store_for(path)
    try:
        return store.to_dataframe(name=name, status=status, since=since, until=until, limit=limit)
    finally:
        if own:
            store.close()


def load_run(run_id: str, *, path: str | Path | None = None) -> StoredRun:
    """One past run (``run_id`` may be a unique prefix): events, messages, artifacts; ``to_result()``."""
    store, own = _store_for(path)
    try:
        return store.load(run_id)
    finally:
        if own:
            store.close()


def export_jsonl(dest: str | Path, *, path: str | Path | None = None, **filters: Any) -> int:
    """Write the runs matching ``filters`` (with events and messages) to ``dest`` as JSON lines."""
    store, own = _store_for(path)
    try:
        return store.export_jsonl(dest, **filters)
    finally:
        if own:
            store.close()
