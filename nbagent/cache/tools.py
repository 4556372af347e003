"""The tool-result cache for tools declared deterministic with ``@tool(cache=True)``.

``Agent(..., tool_cache=ToolCache())`` looks every call of such a tool up by the tool's name and its canonical
arguments (argument order does not matter) before running it, and stores the output after. Same tiers as the
response cache (memory, then the shared SQLite file, entries of kind ``tool``); events carry ``cache="tool"``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from ..events import CacheHit, EventBus, default_bus
from ..events import CacheMiss as CacheMissEvent
from .base import CacheCore
from .keys import canonical_json, tool_key
from .memory import CacheEntry
from .sqlite import EvictionPolicy, SQLiteStore
from .tier_registry import CacheTier

__all__ = ["ToolCache"]


class ToolCache(CacheCore):
    """Outputs of deterministic tools, keyed by tool name and canonical arguments.

    Implements the agent's ``ToolResultCache`` protocol (``get`` / ``put``). Arguments as for
    :class:`~nbagent.cache.ResponseCache`. Modes: ``off`` (never cached), ``read-write`` (the default),
    ``record`` (always run the tool, store its output) and ``replay`` (use stored outputs, store nothing new:
    tools run locally, so a miss simply runs the tool). ``latency_saved`` of a hit is how long the tool took
    when its output was stored.
    """

    kind: ClassVar[str] = "tool"

    def __init__(self, path: str | os.PathLike[str] | None = None, *, namespace: str = "default",
                 mode: str = "read-write", memory_size: int = 1024, ttl: float | None = None,
                 max_entries: int | None = 100_000, max_bytes: int | None = 256 * 2**20,
                 bus: EventBus | None = None, clock: Callable[[], float] = time.time,
                 eviction: EvictionPolicy | None = None, store: SQLiteStore | None = None,
                 tiers: Sequence[str | CacheTier | tuple[str, CacheTier]] = ()) -> None:
        super().__init__(path, namespace=namespace, mode=mode, memory_size=memory_size, ttl=ttl,
                         max_entries=max_entries, max_bytes=max_bytes, bus=bus, clock=clock, eviction=eviction,
                         store=store, tiers=tiers)
        self._started: dict[str, float] = {}  # key -> when its miss was seen, to time the tool

    def __repr__(self) -> str:
        where = self.store.path if self.store else ":memory:"
        return f"<ToolCache {where} namespace={self.namespace!r} mode={self._mode}>"

    async def get(self, tool: str, arguments: dict[str, Any], *, run_id: str | None = None,
                  bus: EventBus | None = None) -> str | None:
        """The stored output of ``tool(**arguments)``, or None (then the agent runs the tool and calls put)."""
        if self._mode in ("off", "record"):
            return None
        t0 = time.perf_counter()
        bus = bus or self.bus or default_bus()
        key = tool_key(tool, arguments)
        tier = "memory"
        entry = self._mem_get(key, bus, run_id)
        if entry is None:
            entry, tier = await self._lookup(key, bus, run_id, str)
        lookup = time.perf_counter() - t0
        if entry is None:
            if len(self._started) > 10_000:
                self._started.clear()
            self._started[key] = time.perf_counter()
            self._emit(bus, CacheMissEvent(run_id=run_id, cache="tool", key=key, lookup_seconds=lookup))
            return None
        self._touch(key)
        self._emit(bus, CacheHit(run_id=run_id, cache="tool", tier=tier, key=key, lookup_seconds=lookup,
                                 tokens_saved=0, latency_saved=entry.latency))
        return str(entry.value)

    async def put(self, tool: str, arguments: dict[str, Any], output: str, *, run_id: str | None = None,
                  bus: EventBus | None = None) -> None:
        """Store the output of ``tool(**arguments)``."""
        if self._mode in ("off", "replay"):
            return
        key = tool_key(tool, arguments)
        started = self._started.pop(key, None)
        latency = time.perf_counter() - started if started is not None else 0.0
        entry = CacheEntry(key, output, self.clock(), latency, 0)
        desc = f"{tool}({canonical_json(arguments)[:200]})"
        self._put(entry, output, desc, bus or self.bus or default_bus(), run_id)
