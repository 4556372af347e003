"""The :class:`CacheStats` snapshot of one cache, read from the fold of its own events."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..metrics import MetricsRegistry

__all__ = ["CacheStats", "cache_stats"]

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


def cache_stats(facts: MetricsRegistry, *, cache: str, namespace: str, mode: str, memory_entries: int,
                entries: int, nbytes: int, persistent: str) -> CacheStats:
    """A :class:`CacheStats` read from ``facts``: the cache's own events, folded by the metrics handlers.

    A cache feeds each event it emits to its own :class:`~nbagent.metrics.MetricsRegistry` as well as to the
    bus, so ``cache.stats()`` and the runtime's metrics are one fold of the same events, never two counts.
    """
    prefix = f"cache.{cache}."
    counters = facts.counters
    hits_by_tier = dict.fromkeys(TIERS, 0)
    lookup_p50: dict[str, float] = {}
    for name, counter in counters.items():
        if name.startswith(prefix + "hits."):
            hits_by_tier[name[len(prefix) + 5:]] = int(counter.value)
    for name, hist in facts.histograms.items():
        if name.startswith(prefix + "lookup.") and hist.p50 is not None:
            lookup_p50[name[len(prefix) + 7:]] = float(hist.p50)
    hits = sum(hits_by_tier.values())
    misses = int(facts.value(prefix + "misses"))
    total = hits + misses
    return CacheStats(
        cache=cache, namespace=namespace, mode=mode, hits=hits, misses=misses, hits_by_tier=hits_by_tier,
        hit_rate=hits / total if total else None,
        hit_rate_by_tier={t: (n / total if total else 0.0) for t, n in hits_by_tier.items()},
        memory_entries=memory_entries, entries=entries, bytes=nbytes,
        tokens_saved=int(facts.value(prefix + "tokens_saved")),
        latency_saved=float(facts.value(prefix + "latency_saved")),
        stores=int(facts.value(prefix + "stores")), evictions=int(facts.value(prefix + "evictions")),
        warnings=int(facts.value(prefix + "warnings")), lookup_p50=lookup_p50, persistent=persistent,
    )
