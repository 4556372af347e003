"""Append-only, named schema migrations of the run store.

Each migration is a ``(name, sql)`` pair applied once, in order, in its own transaction, and recorded in the
``_migrations`` table. Never edit or reorder a migration that has shipped: add a new one at the end, named
``m<NNN>_<what>`` with the next number.

Tables (after every migration):

``runs``
    one row per run: ``run_id`` (primary key), ``name``, ``model``, ``prompt``, ``status`` (``running`` until
    the run ends), ``stop_reason``, ``started`` / ``finished`` (epoch seconds), ``duration``, ``steps``,
    token counts, ``cost`` (NULL when a model's price is unknown, since ``m005``), ``error``, ``output``,
    ``timings`` and ``messages`` (JSON: the conversation, one object per message), ``pid`` and ``host`` of
    the writer, ``dropped`` (events of this run the store had to drop; 0 unless the queue overflowed),
    ``tags`` (a JSON array of the run's tags, from ``RunStarted.tags``, since ``m006``).
``events``
    every event, in segments: one row per run per committed batch, ``id`` (insertion order), ``run_id``
    (NULL outside runs), ``ts`` (of the first event), ``n`` (events in the segment) and ``data``: a JSON
    array of the events in order (secrets redacted), each ``[schema id, [run_id, ts, field values...]]``
    with its kind and field names in ``event_schemas`` (since m004; before, each event was an object with
    ``kind``, ``ts`` and its fields, which the reads still take). A row per event would cost a SQL row (and
    a GIL hand-off) per event; a segment costs one per run per batch, and a crash still loses at most the
    batch being written. Values without keys cost a third of the objects' encoding.
``event_schemas``
    ``id``, ``kind`` and ``fields`` (a JSON array of the field names after ``run_id`` and ``ts``) of each
    event class written, added the first time a writer meets the class.
``artifacts``
    named blobs attached to a run: ``profile.html``, ``profile.txt``, ``breakdown`` (JSON) ...
"""

from __future__ import annotations

import sqlite3
import time

__all__ = ["MIGRATIONS", "applied", "migrate"]

MIGRATIONS: list[tuple[str, str]] = [
    (
        "m001_runs_events",
        """
        CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            prompt TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'running',
            stop_reason TEXT NOT NULL DEFAULT '',
            started REAL,
            finished REAL,
            duration REAL,
            steps INTEGER NOT NULL DEFAULT 0,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            cost REAL NOT NULL DEFAULT 0,
            error TEXT,
            pid INTEGER,
            host TEXT
        );
        CREATE INDEX runs_started ON runs(started);
        CREATE INDEX runs_name ON runs(name);
        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            run_id TEXT,
            ts REAL NOT NULL,
            n INTEGER NOT NULL,
            data TEXT NOT NULL
        );
        CREATE INDEX events_run ON events(run_id, id);
        """,
    ),
    (
        "m002_results_artifacts",
        """
        ALTER TABLE runs ADD COLUMN output TEXT NOT NULL DEFAULT '';
        ALTER TABLE runs ADD COLUMN timings TEXT;
        ALTER TABLE runs ADD COLUMN messages TEXT;
        CREATE TABLE artifacts (
            run_id TEXT NOT NULL,
            name TEXT NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (run_id, name)
        );
        """,
    ),
    (
        "m003_dropped_counts",
        """
        ALTER TABLE runs ADD COLUMN dropped INTEGER NOT NULL DEFAULT 0;
        """,
    ),
    (
        "m004_event_schemas",
        """
        CREATE TABLE event_schemas (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            fields TEXT NOT NULL,
            UNIQUE (kind, fields)
        );
        """,
    ),
    (
        "m005_cost_unknown",
        """
        CREATE TABLE runs_m005 (
            run_id TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            model TEXT NOT NULL DEFAULT '',
            prompt TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL DEFAULT 'running',
            stop_reason TEXT NOT NULL DEFAULT '',
            started REAL,
            finished REAL,
            duration REAL,
            steps INTEGER NOT NULL DEFAULT 0,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cached_tokens INTEGER NOT NULL DEFAULT 0,
            cost REAL DEFAULT 0,
            error TEXT,
            pid INTEGER,
            host TEXT,
            output TEXT NOT NULL DEFAULT '',
            timings TEXT,
            messages TEXT,
            dropped INTEGER NOT NULL DEFAULT 0
        );
        INSERT INTO runs_m005 SELECT run_id, name, model, prompt, status, stop_reason, started, finished, duration,
            steps, input_tokens, output_tokens, cached_tokens, cost, error, pid, host, output, timings, messages,
            dropped FROM runs;
        DROP TABLE runs;
        ALTER TABLE runs_m005 RENAME TO runs;
        CREATE INDEX runs_started ON runs(started);
        CREATE INDEX runs_name ON runs(name);
        """,
    ),
    (
        "m006_run_tags",
        """
        ALTER TABLE runs ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
        """,
    ),
]


def applied(conn: sqlite3.Connection) -> list[str]:
    """Names of the migrations already applied to this database, in order."""
    conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied REAL NOT NULL)")
    return [row[0] for row in conn.execute("SELECT name FROM _migrations ORDER BY rowid")]


def migrate(conn: sqlite3.Connection, migrations: list[tuple[str, str]] | None = None) -> list[str]:
    """Apply the missing migrations in order; returns the names applied now.

    ``conn`` must be in autocommit mode (``isolation_level=None``); each migration runs in one
    ``BEGIN IMMEDIATE`` transaction, so two processes opening a new database at once do not both apply it.
    """
    todo = MIGRATIONS if migrations is None else migrations
    done_now: list[str] = []
    applied(conn)
    for name, sql in todo:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if conn.execute("SELECT 1 FROM _migrations WHERE name = ?", (name,)).fetchone():
                conn.execute("COMMIT")
                continue
            for statement in _statements(sql):
                conn.execute(statement)
            conn.execute("INSERT INTO _migrations (name, applied) VALUES (?, ?)", (name, time.time()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        done_now.append(name)
    return done_now


def _statements(sql: str) -> list[str]:
    """Split a migration's SQL on ``;`` (migrations hold no string literals with semicolons)."""
    return [s.strip() for s in sql.split(";") if s.strip()]
