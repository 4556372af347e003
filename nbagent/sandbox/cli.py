"""``nbagent sandboxes list`` and ``nbagent sandboxes prune``.

``register(subparsers)`` adds the commands to the main CLI; each runs one of the async functions
:func:`list_sandboxes` / :func:`prune_sandboxes`, which tests call directly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from ..errors import SandboxError
from . import backend_registry as registry
from .backend import SandboxBackend, SandboxRecord

__all__ = ["list_sandboxes", "prune_sandboxes", "register"]


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sandboxes list|prune`` to an argparse sub-parsers object."""
    parser: argparse.ArgumentParser = subparsers.add_parser("sandboxes", help="list or prune sandboxes")
    sub = parser.add_subparsers(dest="sandboxes_command", metavar="ACTION", required=True)
    ls = sub.add_parser("list", help="list labelled sandboxes of every process, with their owners")
    choices = (*registry.backends(), "all")
    ls.add_argument("--backend", choices=choices, default="all")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_cmd_list)
    prune = sub.add_parser("prune", help="remove sandboxes whose owner process is gone")
    prune.add_argument("--backend", choices=choices, default="all")
    prune.add_argument("--all", action="store_true", help="also remove sandboxes of running processes")
    prune.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    prune.set_defaults(func=_cmd_prune)
    return parser


def _backends(name: str, given: Mapping[str, SandboxBackend] | None) -> list[SandboxBackend]:
    if given is not None:
        return [b for n, b in given.items() if name in ("all", n)]
    return [registry.make_backend(n) for n in registry.backends() if name in ("all", n)]


async def _records(backend: SandboxBackend) -> list[SandboxRecord]:
    if not await backend.available():
        return []
    return await backend.list_sandboxes()


async def list_sandboxes(
    backend: str = "all", *, backends: Mapping[str, SandboxBackend] | None = None
) -> list[dict[str, Any]]:
    """Every labelled sandbox the backends know of, as dicts (id, backend, status, manager, owner_pid,
    owner_alive, age). Unreachable backends are skipped."""
    rows: list[dict[str, Any]] = []
    chosen = _backends(backend, backends)
    try:
        for b in chosen:
            records = await _records(b)
            rows.extend(await asyncio.to_thread(_rows, records))
    finally:
        for b in chosen if backends is None else ():
            await b.aclose()
    return rows


async def prune_sandboxes(
    backend: str = "all",
    *,
    everything: bool = False,
    dry_run: bool = False,
    backends: Mapping[str, SandboxBackend] | None = None,
) -> list[dict[str, Any]]:
    """Remove sandboxes whose owner process is dead (``everything``: all labelled sandboxes); return the
    rows of what was (or, with ``dry_run``, would be) removed."""
    removed: list[dict[str, Any]] = []
    chosen = _backends(backend, backends)
    try:
        for b in chosen:
            records = await _records(b)
            rows = await asyncio.to_thread(_rows, records)
            for row in rows:
                if not everything and row["owner_alive"]:
                    continue
                if not dry_run:
                    await b.remove(row["id"])
                removed.append(row)
    finally:
        for b in chosen if backends is None else ():
            await b.aclose()
    return removed


def _rows(records: list[SandboxRecord]) -> list[dict[str, Any]]:
    return [_row(r) for r in records]


def _row(record: SandboxRecord) -> dict[str, Any]:
    created = record.created
    return {
        "id": record.id,
        "backend": record.backend,
        "status": record.status,
        "manager": record.manager_id,
        "owner_pid": record.owner_pid,
        "owner_alive": record.owner_alive,
        "age": None if created is None else round(time.time() - created, 1),
    }


def format_table(rows: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    cols = ("id", "backend", "status", "manager", "owner_pid", "owner_alive", "age")
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip(), file=out)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip(), file=out)


def _cmd_list(args: argparse.Namespace) -> int:
    try:
        rows = asyncio.run(list_sandboxes(args.backend))
    except SandboxError as e:
        print(f"nbagent: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        format_table(rows, sys.stdout)
    else:
        print("no sandboxes")
    return 0


def _cmd_prune(args: argparse.Namespace) -> int:
    try:
        rows = asyncio.run(prune_sandboxes(args.backend, everything=args.all, dry_run=args.dry_run))
    except SandboxError as e:
        print(f"nbagent: {e}", file=sys.stderr)
        return 1
    verb = "would remove" if args.dry_run else "removed"
    for row in rows:
        print(f"{verb} {row['backend']} sandbox {row['id']} (owner pid {row['owner_pid']})")
    print(f"{verb} {len(rows)} sandbox(es)")
    return 0
