"""``nbagent cache stats|clear|export``: look into and manage the cache file from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .sqlite import SQLiteStore, default_cache_path

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``cache`` command (with ``stats``, ``clear`` and ``export``) to an argparse subparsers object."""
    cache = subparsers.add_parser("cache", help="inspect, clear or export the response and tool cache")
    sub = cache.add_subparsers(dest="cache_command", metavar="ACTION")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--path", help="the cache file (default: $NBAGENT_CACHE_PATH or <user dir>/cache.sqlite3)")
    common.add_argument("--kind", choices=("response", "tool"), help="only entries of this kind")

    stats = sub.add_parser("stats", parents=[common], help="entries, size and savings per namespace")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=_cmd_stats)

    clear = sub.add_parser("clear", parents=[common], help="delete the entries of one namespace (or all)")
    which = clear.add_mutually_exclusive_group(required=True)
    which.add_argument("--namespace", "-n", help="the namespace to clear")
    which.add_argument("--all", action="store_true", help="every namespace (a corrupt file is replaced)")
    clear.set_defaults(func=_cmd_clear)

    export = sub.add_parser("export", parents=[common], help="write the entries as JSON lines")
    export.add_argument("output", help="the .jsonl file to write")
    export.add_argument("--namespace", "-n", help="only this namespace")
    export.set_defaults(func=_cmd_export)

    cache.set_defaults(func=lambda args: _usage(cache))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _open(args: argparse.Namespace) -> SQLiteStore:
    return SQLiteStore(args.path or default_cache_path(), max_entries=None, max_bytes=None, open_now=False)


def _fail(warning: str | None) -> int:
    print(f"nbagent: {warning}", file=sys.stderr)
    return 1


def _cmd_stats(args: argparse.Namespace) -> int:
    path = args.path or default_cache_path()
    if not os.path.exists(path):
        print(f"no cache file at {path}")
        return 0
    store = _open(args)
    try:
        outcome = store.call_sync("summary")
        if outcome.warning:
            return _fail(outcome.warning)
        rows = [r for r in outcome.value if args.kind is None or r["kind"] == args.kind]
        if args.json:
            print(json.dumps({"path": str(store.path), "entries": store.entries, "bytes": store.bytes,
                              "namespaces": rows}, indent=2))
            return 0
        print(f"{store.path}: {store.entries:,} entries, {store.bytes:,} bytes")
        if rows:
            print(f"{'kind':<9} {'namespace':<24} {'entries':>8} {'bytes':>12} {'hits':>8} {'tokens saved':>13} "
                  f"{'time saved':>11}")
        for r in rows:
            print(f"{r['kind']:<9} {r['namespace'][:24]:<24} {r['entries']:>8,} {r['bytes']:>12,} {r['hits']:>8,} "
                  f"{r['tokens_saved']:>13,} {r['latency_saved']:>10.1f}s")
        return 0
    finally:
        store.close()


def _cmd_clear(args: argparse.Namespace) -> int:
    path = args.path or default_cache_path()
    if not os.path.exists(path):
        print(f"no cache file at {path}")
        return 0
    store = _open(args)
    try:
        outcome = store.call_sync("clear", args.kind, None if args.all else args.namespace)
        if outcome.warning and args.all and store.state == "broken":
            outcome = store.call_sync("reset")
            if outcome.warning:
                return _fail(outcome.warning)
            print(f"replaced the unusable cache file {store.path} with an empty one")
            return 0
        if outcome.warning:
            return _fail(outcome.warning)
        where = "every namespace" if args.all else f"namespace {args.namespace!r}"
        print(f"deleted {outcome.value:,} entries of {where} from {store.path}")
        return 0
    finally:
        store.close()


def _cmd_export(args: argparse.Namespace) -> int:
    from ..store.cli import register_configured_keys

    path = args.path or default_cache_path()
    if not os.path.exists(path):
        return _fail(f"no cache file at {path}")
    register_configured_keys()  # entries written before a key was known are redacted on the way out too
    store = _open(args)
    try:
        outcome = store.call_sync("export", args.output, args.kind, args.namespace)
        if outcome.warning:
            return _fail(outcome.warning)
        print(f"wrote {outcome.value:,} entries to {args.output}")
        return 0
    finally:
        store.close()
