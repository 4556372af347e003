"""What the response and tool caches share: the tiers, the counters, event reporting and management."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

from ..events import CacheEvicted, CacheStored, CacheWarning, Event, EventBus, default_bus
from ..llm.text import encodable
from ..llm.types import ModelResponse
from ..metrics import MetricsRegistry
from .memory import CacheEntry, MemoryTier, encode_response
from .sqlite import EvictionPolicy, Outcome, SQLiteStore
from .stats import CacheStats, cache_stats
from .tier_registry import BUILTIN_TIERS, CacheTier, make_tier

__all__ = ["MEMORY_ONLY", "MODES", "CacheCore", "CacheMode"]

CacheMode = Literal["off", "read-write", "record", "replay"]
MODES: tuple[str, ...] = ("off", "read-write", "record", "replay")
MEMORY_ONLY = ":memory:"


def _check_mode(mode: str) -> str:
    m = mode.strip().lower().replace("_", "-")
    if m not in MODES:
        raise ValueError(f"unknown cache mode {mode!r}; expected one of {', '.join(MODES)}")
    return m


class CacheCore:
    """What the response and tool caches share: tiers, counters and event reporting."""

    kind: ClassVar[str] = "response"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        namespace: str = "default",
        mode: str = "read-write",
        memory_size: int = 1024,
        ttl: float | None = None,
        max_entries: int | None = 100_000,
        max_bytes: int | None = 256 * 2**20,
        bus: EventBus | None = None,
        clock: Callable[[], float] = time.time,
        eviction: EvictionPolicy | None = None,
        store: SQLiteStore | None = None,
        tiers: Sequence[str | CacheTier | tuple[str, CacheTier]] = (),
    ) -> None:
        if ttl is not None and ttl <= 0:
            raise ValueError("ttl must be positive (or None for no expiry)")
        self.namespace = namespace
        self._mode = _check_mode(mode)
        self.ttl = ttl
        self.clock = clock
        self.bus = bus
        self.memory = MemoryTier(memory_size, ttl, clock) if memory_size > 0 else None
        self._owns_store = store is None and str(path) != MEMORY_ONLY
        if store is not None:
            self.store: SQLiteStore | None = store
        elif str(path) == MEMORY_ONLY:
            self.store = None
        else:
            self.store = SQLiteStore(path, max_entries=max_entries, max_bytes=max_bytes, policy=eviction,
                                     clock=clock)
        self.facts = MetricsRegistry()
        """This cache's own events, folded by the metrics handlers: what :meth:`stats` reads."""
        self.tiers: list[tuple[str, CacheTier]] = []
        """Tiers after memory and SQLite (:mod:`nbagent.cache.tier_registry`), by name, in lookup order."""
        for t in tiers:
            if isinstance(t, str) and t in BUILTIN_TIERS:
                continue  # always there
            if isinstance(t, tuple):
                self.tiers.append(t)
            else:
                self.tiers.append((t, make_tier(t)) if isinstance(t, str) else (type(t).__name__, t))
        self._tier_tasks: set[asyncio.Task[None]] = set()

    @property
    def mode(self) -> str:
        """``off``, ``read-write``, ``record`` or ``replay``; may be changed at any time."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = _check_mode(value)

    # --- tiers ----------------------------------------------------------------------------------

    def _mem_get(self, key: str, bus: EventBus, run_id: str | None) -> CacheEntry | None:
        memory = self.memory
        if memory is None:
            return None
        entry = memory.get(key)
        if memory.evicted:
            self._memory_evictions(bus, run_id)
        return entry

    def _memory_evictions(self, bus: EventBus, run_id: str | None) -> None:
        assert self.memory is not None
        gone, self.memory.evicted[:] = list(self.memory.evicted), []
        for key, reason in gone:
            self._emit(bus, CacheEvicted(run_id=run_id, cache=self.kind, tier="memory", key=key, reason=reason))

    async def _disk_get(self, key: str, bus: EventBus, run_id: str | None,
                        decode: Callable[[str], Any]) -> CacheEntry | None:
        store = self.store
        if store is None:
            return None
        if not store.usable:
            self._pending_warning(store, bus, run_id)
            return None
        if self._mode != "replay" and store.known_absent(self.kind, self.namespace, key):
            return None
        outcome = await store.get(self.kind, self.namespace, key, self.ttl)
        self._handle(outcome, bus, run_id)
        row = outcome.value
        if row is None:
            return None
        try:
            entry = CacheEntry(key, decode(row[0]), float(row[1]), float(row[2]), int(row[3]))
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            self._warn(bus, run_id, f"unreadable cache entry {key} ({type(exc).__name__}: {exc}); treated as a miss")
            return None
        if self.memory is not None:
            self.memory.put(entry)
            if self.memory.evicted:
                self._memory_evictions(bus, run_id)
        return entry

    async def _lookup(self, key: str, bus: EventBus, run_id: str | None,
                      decode: Callable[[str], Any]) -> tuple[CacheEntry | None, str]:
        """The entry from SQLite or a further tier (and the name of the tier that had it)."""
        entry = await self._disk_get(key, bus, run_id, decode)
        if entry is not None or not self.tiers:
            return entry, "sqlite"
        tkey = f"{self.kind}:{self.namespace}:{key}"
        for name, tier in self.tiers:
            try:
                text = await tier.get(tkey)
            except Exception as exc:  # noqa: BLE001 - a tier that fails is a miss, reported
                self._warn(bus, run_id, f"cache tier {name} failed to read: {type(exc).__name__}: {exc}")
                continue
            if text is None:
                continue
            try:
                row = json.loads(text)
                entry = CacheEntry(key, decode(row["value"]), float(row["created"]), float(row["latency"]),
                                   int(row["tokens"]))
            except (ValueError, TypeError, KeyError) as exc:
                self._warn(bus, run_id, f"unreadable entry {key} in tier {name} ({type(exc).__name__}); a miss")
                continue
            if self.ttl is not None and self.clock() - entry.created > self.ttl:
                continue
            if self.memory is not None:
                self.memory.put(entry)
            return entry, name
        return None, "sqlite"

    def _put_tiers(self, entry: CacheEntry, text: str, bus: EventBus, run_id: str | None) -> None:
        row = json.dumps({"value": text, "created": entry.created, "latency": entry.latency, "tokens": entry.tokens})
        tkey = f"{self.kind}:{self.namespace}:{entry.key}"
        for name, tier in self.tiers:
            async def put(name: str = name, tier: CacheTier = tier) -> None:
                try:
                    await tier.put(tkey, row, ttl=self.ttl)
                except Exception as exc:  # noqa: BLE001 - a tier that fails to write is reported, not raised
                    self._warn(bus, run_id, f"cache tier {name} failed to write: {type(exc).__name__}: {exc}")

            task = asyncio.get_running_loop().create_task(put())
            self._tier_tasks.add(task)
            task.add_done_callback(self._tier_tasks.discard)

    def _put(self, entry: CacheEntry, text: str, description: str, bus: EventBus, run_id: str | None) -> None:
        if self.memory is not None:
            self.memory.put(entry)
            if self.memory.evicted:
                self._memory_evictions(bus, run_id)
        store = self.store
        tier = "memory"
        if store is not None and not store.usable:
            self._pending_warning(store, bus, run_id)
        elif store is not None:
            tier = "sqlite"
            # SQLite stores UTF-8: a lone surrogate (an undecodable file name in a tool's output) is escaped
            store.put_nowait(self.kind, self.namespace, entry.key, encodable(text), latency=entry.latency,
                             tokens=entry.tokens, created=entry.created, description=encodable(description),
                             report=lambda o: self._handle(o, bus, run_id))
        if self.tiers:
            self._put_tiers(entry, text, bus, run_id)
        self._emit(bus, CacheStored(run_id=run_id, cache=self.kind, tier=tier, key=entry.key))

    def _touch(self, key: str) -> None:
        if self.store is not None and self.store.usable:
            self.store.touch(self.kind, self.namespace, key)

    def _handle(self, outcome: Outcome, bus: EventBus, run_id: str | None) -> None:
        if outcome.warning is not None:
            self._warn(bus, run_id, outcome.warning)
        for kind, key, reason in outcome.evicted:
            self._emit(bus, CacheEvicted(run_id=run_id, cache=kind, tier="sqlite", key=key, reason=reason))

    def _pending_warning(self, store: SQLiteStore, bus: EventBus, run_id: str | None) -> None:
        warning = store.take_warning()
        if warning is not None:
            self._warn(bus, run_id, warning)

    def _warn(self, bus: EventBus, run_id: str | None, message: str) -> None:
        self._emit(bus, CacheWarning(run_id=run_id, cache=self.kind, message=message))

    def _emit(self, bus: EventBus, event: Event) -> None:
        """Publish ``event`` and fold it into :attr:`facts`, so the stats and the bus see the same facts."""
        self.facts.observe(event)
        bus.emit(event)

    # --- management -----------------------------------------------------------------------------

    def stats(self) -> CacheStats:
        """Hits and misses by tier, hit rates, sizes, what the hits saved and lookup medians."""
        store = self.store
        return cache_stats(
            self.facts, cache=self.kind, namespace=self.namespace, mode=self._mode,
            memory_entries=len(self.memory) if self.memory is not None else 0,
            entries=store.entries if store else 0, nbytes=store.bytes if store else 0,
            persistent=store.state if store else "off")

    async def clear(self, namespace: str | None = None) -> int:
        """Delete this cache's entries in ``namespace`` (None: this cache's own; ``"*"``: every namespace).

        Returns how many persistent entries went (memory entries when there is no persistent tier). Clearing
        every namespace of a corrupt file deletes the file and starts a fresh one.
        """
        ns = self.namespace if namespace is None else namespace
        n = 0
        if self.memory is not None and ns in ("*", self.namespace):
            n = self.memory.clear()
        store = self.store
        if store is None:
            return n
        if ns == "*" and store.state == "broken":
            outcome = await store.reset()
            self._handle(outcome, self.bus or default_bus(), None)
            return 0
        outcome = await store.clear(self.kind, None if ns == "*" else ns)
        self._handle(outcome, self.bus or default_bus(), None)
        return int(outcome.value or 0)

    async def export(self, path: str | os.PathLike[str], *, namespace: str | None = None) -> int:
        """Write the entries (this namespace; ``"*"``: all) as JSON lines to ``path``; returns how many."""
        ns = self.namespace if namespace is None else namespace
        store = self.store
        if store is not None and store.usable:
            await store.flush()
            outcome = await store.export(path, self.kind, None if ns == "*" else ns)
            if outcome.warning is None:
                return int(outcome.value or 0)
            self._handle(outcome, self.bus or default_bus(), None)
        return await asyncio.to_thread(self._export_memory, str(path))

    def _export_memory(self, path: str) -> int:
        entries = list(self.memory._cache.values()) if self.memory is not None else []
        with open(path, "w", encoding="utf-8") as out:
            for e in entries:
                value = json.loads(encode_response(e.value)) if isinstance(e.value, ModelResponse) else e.value
                out.write(json.dumps({"kind": self.kind, "namespace": self.namespace, "key": e.key,
                                      "created": e.created, "latency": e.latency, "tokens": e.tokens,
                                      "value": value}, ensure_ascii=False) + "\n")
        return len(entries)

    async def flush(self) -> None:
        """Wait until queued writes to the persistent tiers are done."""
        if self._tier_tasks:
            await asyncio.gather(*tuple(self._tier_tasks), return_exceptions=True)
        if self.store is not None:
            self._handle(await self.store.flush(), self.bus or default_bus(), None)

    async def aclose(self) -> None:
        """Flush and, when this cache opened the SQLite file, close it."""
        await self.flush()
        if self.store is not None and self._owns_store:
            await self.store.aclose()
        for _name, tier in self.tiers:
            close = getattr(tier, "aclose", None)
            if close is not None:
                await close()
