"""``nbagent history``: past runs from the run store, one run in detail, or an export to JSON lines."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("history", help="list past runs from the run store, show one, or export them")
    p.add_argument("run_id", nargs="?", help="show this run (a unique prefix is enough)")
    p.add_argument("--name", help="runs whose name contains this (or matches a glob with * ?)")
    p.add_argument("--status", action="append", help="ok, error, limit, stuck, cancelled, running, interrupted")
    p.add_argument("--since", help="started at or after: an ISO date/time or an age such as 2h, 3d")
    p.add_argument("--until", help="started before: an ISO date/time or an age")
    p.add_argument("--limit", type=int, default=30, help="at most this many runs (default 30)")
    p.add_argument("--events", action="store_true", help="with RUN_ID: list its events")
    p.add_argument("--messages", action="store_true", help="with RUN_ID: print its messages")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--export", metavar="PATH", help="write the selected runs, events and messages as JSON lines")
    p.add_argument("--db", metavar="PATH", help="the store database (default: $NBAGENT_STORE_PATH or the home dir)")
    p.set_defaults(func=_cmd_history)


def register_configured_keys() -> None:
    """Make the redactor know the API keys of the settings (environment, config file profiles), so output of
    rows stored before a key was known is redacted too."""
    from ..config import Settings
    from .redact import add_secret

    try:
        settings = Settings.load()
    except Exception:  # noqa: BLE001 - a broken config file must not stop reading the history
        return
    for key in (settings.api_key, *(p.api_key for p in settings.profiles.values())):
        add_secret(key)


def _cmd_history(args: argparse.Namespace) -> int:
    from . import RunStore

    register_configured_keys()
    store = RunStore(args.db)
    try:
        if args.run_id:
            return _show(store, args)
        filters: dict[str, Any] = {"name": args.name, "status": args.status, "since": args.since,
                                   "until": args.until, "limit": args.limit}
        if args.export:
            n = store.export_jsonl(args.export, **filters)
            print(f"wrote {n} lines to {args.export}", file=sys.stderr)
            return 0
        rows = store.runs(**filters)
    except ValueError as exc:
        print(f"nbagent history: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    rows = store.redacted(rows)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"no runs in {store.path}")
        return 0
    print(f"{'run_id':<13}{'name':<22}{'status':<12}{'started':<20}{'time':>9}{'steps':>6}{'tokens':>9}  prompt")
    for r in rows:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"])) if r["started"] else "?"
        took = f"{r['duration']:.2f}s" if r["duration"] is not None else ""
        tokens = (r["input_tokens"] or 0) + (r["output_tokens"] or 0)
        prompt = (r["prompt"] or "").replace("\n", " ")[:50]
        print(f"{r['run_id']:<13}{r['name'][:21]:<22}{r['status']:<12}{started:<20}{took:>9}{r['steps']:>6}"
              f"{tokens:>9}  {prompt}")
    return 0


def _show(store: Any, args: argparse.Namespace) -> int:
    try:
        run = store.load(args.run_id)
    except KeyError as exc:
        print(f"nbagent history: {exc.args[0]}", file=sys.stderr)
        return 1
    if args.json:
        events = store.events(run.run_id) if args.events else None
        print(json.dumps(store.redacted({"run": run.info, "messages": run.messages if args.messages else None,
                                         "events": events, "breakdown": run.breakdown()}), indent=2, default=str))
        return 0
    run.info, run.messages = store.redacted(run.info), store.redacted(run.messages)
    print(run.summary())
    b = run.breakdown()
    print("time: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in b.items()))
    if run.info.get("error"):
        print(f"error: {run.info['error']}")
    if run.output:
        print(f"output: {run.output[:500]}")
    if args.events:
        t0 = run.info.get("started") or 0.0
        for ev in store.redacted(store.events(run.run_id)):
            fields = {k: v for k, v in ev.items() if k not in ("kind", "run_id", "ts")}
            print(f"  +{ev['ts'] - t0:8.3f}s {ev['kind']:<16} {json.dumps(fields, default=str)[:150]}")
    if args.messages:
        for m in run.messages:
            content = m.get("content") or ""
            calls = m.get("tool_calls")
            if calls:
                content += " " + json.dumps([c.get("function") for c in calls])
            print(f"  [{m.get('role')}] {str(content)[:300]}")
    return 0
