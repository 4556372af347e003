"""Caches that make re-run notebooks fast and replayable offline.

* :class:`ResponseCache` — model responses, keyed by the canonical request (:mod:`nbagent.cache.keys`); an
  in-memory LRU (``cachetools``) in front of one SQLite file; single-flight; modes ``off``, ``read-write``,
  ``record`` and ``replay``. ``Agent(..., cache=ResponseCache())``.
* :class:`ToolCache` — outputs of tools declared ``@tool(cache=True)``. ``Agent(..., tool_cache=ToolCache())``.

Both publish ``CacheHit`` / ``CacheMiss`` / ``CacheStored`` / ``CacheEvicted`` / ``CacheWarning`` events, which the
metrics registry turns into ``cache.<response|tool>.*`` metrics; :meth:`ResponseCache.stats` gives the same
figures directly. ``nbagent cache stats|clear|export`` manages the file from the command line.
"""

from __future__ import annotations

from .base import MODES, CacheMode
from .keys import canonical_json, request_key, tool_key
from .sqlite import EvictionPolicy, SQLiteStore, default_cache_path
from .stats import CacheStats
from .tier_registry import CacheTier, register_tier, tiers, unregister_tier
from .tiered import CachedModel, ResponseCache
from .tools import ToolCache

__all__ = [
    "MODES",
    "CacheMode",
    "CacheStats",
    "CacheTier",
    "CachedModel",
    "EvictionPolicy",
    "ResponseCache",
    "SQLiteStore",
    "ToolCache",
    "canonical_json",
    "default_cache_path",
    "register_tier",
    "request_key",
    "tiers",
    "tool_key",
    "unregister_tier",
]
