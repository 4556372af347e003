"""The rows of ``%agent list``, ``%agent history`` and ``%agent cache``: every figure in words and its unit.

Durations print as ms / s, costs with :func:`~nbagent.record.format_cost` (``unknown`` when a price is
missing), times in the kernel's local time zone.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from ..metrics import MetricsRegistry
from ..record import format_cost
from .integrations import cache_stats
from .state import shorten
from .static import fmt_seconds

__all__ = ["CACHE_HEADER", "HISTORY_HEADER", "LIST_HEADER", "cache_rows", "history_rows", "list_rows",
           "local_time"]

LIST_HEADER = ["name", "status", "elapsed", "steps", "in", "out", "cached", "cost", "model", "tags"]
HISTORY_HEADER = ["started", "name", "status", "reason", "duration", "steps", "in", "out", "cost", "model", "tags",
                  "prompt"]
CACHE_HEADER = ["cache", "figure", "value"]


def local_time(epoch: float | None) -> str:
    """Epoch seconds as ``2024-05-01 14:03:27`` in the local time zone (``–`` when unknown)."""
    if epoch is None:
        return "–"
    return dt.datetime.fromtimestamp(float(epoch)).strftime("%Y-%m-%d %H:%M:%S")


def list_rows(entries: Iterable[Any]) -> list[list[Any]]:
    """One row per run of the kernel (:class:`~nbagent.notebook.session.RunEntry`)."""
    return [[e.name, e.state.status, fmt_seconds(e.state.elapsed()), len(e.state.cards), e.state.input_tokens,
             e.state.output_tokens, e.state.cached_tokens, format_cost(e.state.cost), e.state.model,
             ", ".join(e.state.record.tags)] for e in entries]


def history_rows(rows: Iterable[Mapping[str, Any]], *, hosts: bool = False) -> list[list[Any]]:
    """Stored runs (``RunStore.runs()`` dicts, newest first) as table rows; ``hosts`` adds pid and host."""
    out: list[list[Any]] = []
    for r in rows:
        cost = r.get("cost")
        row = [local_time(r.get("started")), r.get("name") or "", r.get("status") or "", r.get("stop_reason") or "",
               fmt_seconds(r.get("duration")), r.get("steps") or 0, r.get("input_tokens") or 0,
               r.get("output_tokens") or 0, format_cost(None if cost is None else float(cost)),
               r.get("model") or "", ", ".join(r.get("tags") or ()), shorten(r.get("prompt") or "", 60)]
        if hosts:
            row += [r.get("pid"), r.get("host")]
        out.append(row)
    return out


def cache_rows(reg: MetricsRegistry, caches: Mapping[str, Any]) -> list[list[Any]]:
    """The response cache, the tool cache and the policy decision cache, each with its own figures.

    The cache file's size is shown once: the response and tool caches of a mode share one file, so its
    entries and bytes are not repeated under the tool cache.
    """
    rows: list[list[Any]] = []
    for cache, what in (("response", "responses"), ("tool", "tool results"), ("policy", "decisions")):
        hits, misses = int(reg.value(f"cache.{cache}.hits")), int(reg.value(f"cache.{cache}.misses"))
        rate = reg.hit_rate(cache)
        if rate is None:
            if cache == "response":
                rows.append([cache, "hit rate", "– (no lookups yet)"])
            continue
        rows.append([cache, "hit rate", f"{rate:.1%} ({hits:,} hits, {misses:,} misses)"])
        saved_s = reg.value(f"cache.{cache}.latency_saved")
        saved_tokens = int(reg.value(f"cache.{cache}.tokens_saved"))
        if saved_tokens:
            rows.append([cache, "tokens saved", f"{saved_tokens:,} tokens"])
        if saved_s:
            rows.append([cache, "time saved", fmt_seconds(saved_s)])
        stored = int(reg.value(f"cache.{cache}.stores"))
        if stored:
            rows.append([cache, f"{what} stored", f"{stored:,}"])
    files: set[tuple[Any, ...]] = set()
    for mode, cache in caches.items():
        stats = cache_stats(cache) or {}
        kind = "tool" if mode.endswith(":tools") else "response"
        label = f"{kind} ({mode.split(':')[0]})"
        if stats.get("memory_entries") is not None:
            rows.append([label, "entries in memory", f"{int(stats['memory_entries']):,}"])
        p50 = stats.get("lookup_p50") or {}
        if p50:
            rows.append([label, "lookup p50", ", ".join(f"{t} {fmt_seconds(v)}" for t, v in p50.items())])
        key = (stats.get("entries"), stats.get("bytes"), stats.get("persistent"))
        if kind == "response" and key not in files and stats.get("persistent") is not None:
            files.add(key)
            rows.append([f"cache file ({mode})", "entries, size",
                         f"{int(stats.get('entries') or 0):,} entries, {_bytes(int(stats.get('bytes') or 0))} "
                         f"({stats['persistent']})"])
    if not caches:
        rows.append(["response", "state", "not used yet (%%agent --cache read-write|record|replay)"])
    return rows


def _bytes(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"  # pragma: no cover
