"""Hit/miss accounting of one cache and the :class:`CacheStats` snapshot it gives."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..metrics.histogram import Histogram

__all__ = ["CacheStats", "Tally"]

TIERS = ("memory", "inflight", "sqlite")


@dataclass(frozen=True)
class CacheStats:
    """A snapshot of one cache's counters.

    ``hits`` counts lookups answered without calling upstream, by tier: ``memory``, ``sqlite`` and
    ``inflight`` (the request waited for an identical one already in flight). ``hit_rate`` is
    ``hits / (hits + misses)``; ``hit_rate_by_tier[t]`` is the share of all lookups answered by tier ``t``.
    ``entries`` and ``bytes`` are the persistent file's totals (every namespace and kind: the file is the
    unit the size limits apply to); ``memory_entries`` is this cache's in-memory tier. ``tokens_saved`` and
    ``latency_saved`` (seconds) add up what the original calls behind the hits cost. ``lookup_p50`` is the
    median lookup time per tier in seconds (``miss`` for lookups that missed). ``persistent`` is the state of
    the SQLite tier: ``ok``, ``unopened``, ``locked``, ``broken``, ``closed`` or ``off``.
    """

    cache: str
    namespace: str
    mode: str
    hits: int
    misses: int
    hits_by_tier: dict[str, int]
    hit_rate: float | None
    hit_rate_by_tier: dict[str, float]
    memory_entries: int
    entries: int
    bytes: int
    tokens_saved: int
    latency_saved: float
    stores: int
    evictions: int
    warnings: int
    lookup_p50: dict[str, float]
    persistent: str

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    def __str__(self) -> str:
        rate = "n/a" if self.hit_rate is None else f"{self.hit_rate:.1%}"
        tiers = ", ".join(f"{t} {n}" for t, n in self.hits_by_tier.items() if n) or "none"
        p50 = ", ".join(f"{t} {v * 1e6:.0f} us" for t, v in self.lookup_p50.items()) or "n/a"
        return (f"{self.cache} cache [{self.namespace}, {self.mode}]: hit rate {rate} ({self.hits} hits: {tiers}; "
                f"{self.misses} misses); saved {self.tokens_saved:,} tokens and {self.latency_saved:.2f} s; "
                f"{self.memory_entries} in memory, {self.entries} on disk ({self.bytes:,} bytes, {self.persistent}); "
                f"{self.stores} stored, {self.evictions} evicted, {self.warnings} warnings; lookup p50 {p50}")


@dataclass
class Tally:
    """Running counters of one cache (updated on the event loop)."""

    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIERS, 0))
    misses: int = 0
    lookups: dict[str, Histogram] = field(default_factory=dict)
    tokens_saved: int = 0
    latency_saved: float = 0.0
    stores: int = 0
    evictions: int = 0
    warnings: int = 0

    def hit(self, tier: str, lookup: float, tokens: int, latency: float) -> None:
        self.hits[tier] = self.hits.get(tier, 0) + 1
        self._lookup(tier, lookup)
        self.tokens_saved += tokens
        self.latency_saved += latency

    def miss(self, lookup: float) -> None:
        self.misses += 1
        self._lookup("miss", lookup)

    def _lookup(self, tier: str, seconds: float) -> None:
        h = self.lookups.get(tier)
        if h is None:
            h = self.lookups[tier] = Histogram()
        h.record(seconds)

    def snapshot(self, *, cache: str, namespace: str, mode: str, memory_entries: int, entries: int, nbytes: int,
                 persistent: str) -> CacheStats:
        hits = sum(self.hits.values())
        total = hits + self.misses
        p50 = {t: h.p50 for t, h in self.lookups.items() if h.p50 is not None}
        return CacheStats(
            cache=cache, namespace=namespace, mode=mode, hits=hits, misses=self.misses,
            hits_by_tier=dict(self.hits), hit_rate=hits / total if total else None,
            hit_rate_by_tier={t: (n / total if total else 0.0) for t, n in self.hits.items()},
            memory_entries=memory_entries, entries=entries, bytes=nbytes, tokens_saved=self.tokens_saved,
            latency_saved=self.latency_saved, stores=self.stores, evictions=self.evictions, warnings=self.warnings,
            lookup_p50={t: float(v) for t, v in p50.items()}, persistent=persistent,
        )
