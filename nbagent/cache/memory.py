"""The in-memory tier: a ``cachetools`` LRU (time-aware when a TTL is set) that reports what it evicts.

Entries carry their creation time on the wall clock, so an entry promoted from the persistent tier keeps the
TTL it started with instead of getting a fresh one. Evictions (size and TTL) are collected in
:attr:`MemoryTier.evicted` for the caller to turn into events.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache, TLRUCache

from ..llm.types import ModelResponse, TokenUsage, ToolCall

__all__ = ["CacheEntry", "MemoryTier", "decode_response", "encode_response"]


@dataclass(slots=True)
class CacheEntry:
    """One cached value with what it saves.

    ``value`` is a :class:`ModelResponse` (response cache) or the tool's output text (tool cache); ``latency`` is
    how long the original call took and ``tokens`` how many tokens it used, so a hit knows what it saved.
    """

    key: str
    value: Any
    created: float
    latency: float = 0.0
    tokens: int = 0


def encode_response(resp: ModelResponse) -> str:
    """A compact JSON text of ``resp`` for the persistent tier."""
    u = resp.usage
    return json.dumps({
        "text": resp.text,
        "tool_calls": [[tc.id, tc.name, tc.arguments] for tc in resp.tool_calls],
        "finish_reason": resp.finish_reason,
        "usage": [u.input_tokens, u.output_tokens, u.cached_tokens],
        "usage_source": resp.usage_source,
        "model": resp.model,
        "latency": resp.latency,
        "ttft": resp.ttft,
        "attempts": resp.attempts,
        "chunks": resp.chunks,
    }, separators=(",", ":"), ensure_ascii=False)


def decode_response(text: str) -> ModelResponse:
    """The :class:`ModelResponse` stored by :func:`encode_response`."""
    d = json.loads(text)
    u = d.get("usage") or [0, 0, 0]
    return ModelResponse(
        text=d.get("text") or "",
        tool_calls=[ToolCall(id=c[0], name=c[1], arguments=c[2]) for c in d.get("tool_calls") or ()],
        finish_reason=d.get("finish_reason"),
        usage=TokenUsage(int(u[0]), int(u[1]), int(u[2])),
        usage_source=d.get("usage_source") or "server",
        model=d.get("model") or "",
        latency=float(d.get("latency") or 0.0),
        ttft=d.get("ttft"),
        attempts=int(d.get("attempts") or 1),
        chunks=d.get("chunks"),
    )


class _Reporting:
    """Mixin for cachetools caches: record evicted keys with the reason (``size`` or ``ttl``)."""

    evicted: list[tuple[str, str]]

    def popitem(self) -> tuple[Any, Any]:
        key, value = super().popitem()  # type: ignore[misc]
        self.evicted.append((key, "size"))
        return key, value

    def expire(self, time: Any = None) -> list[tuple[Any, Any]]:
        gone = super().expire(time)  # type: ignore[misc]
        self.evicted.extend((k, "ttl") for k, _ in gone)
        return gone  # type: ignore[no-any-return]


class _LRU(_Reporting, LRUCache[str, CacheEntry]):
    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize)
        self.evicted = []


class _TLRU(_Reporting, TLRUCache[str, CacheEntry, float]):
    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float]) -> None:
        super().__init__(maxsize, lambda _k, e, _now: e.created + ttl, timer)
        self.evicted = []


class MemoryTier:
    """Up to ``maxsize`` entries, least recently used out first; with ``ttl`` entries also expire
    ``ttl`` seconds after they were created (by ``clock``, wall-clock seconds).
    """

    def __init__(self, maxsize: int, ttl: float | None = None, clock: Callable[[], float] | None = None) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.ttl = ttl
        self._cache: _LRU | _TLRU
        if ttl is None:
            self._cache = _LRU(maxsize)
        else:
            self._cache = _TLRU(maxsize, ttl, clock or time.time)

    @property
    def evicted(self) -> list[tuple[str, str]]:
        """``(key, reason)`` of entries evicted since the caller last emptied this list."""
        return self._cache.evicted

    def get(self, key: str) -> CacheEntry | None:
        """The live entry under ``key``, or None (expired entries are dropped and reported first)."""
        cache = self._cache
        if self.ttl is not None:
            cache.expire()
        return cache.get(key)

    def put(self, entry: CacheEntry) -> None:
        """Store ``entry`` (an entry that has already expired is not stored)."""
        self._cache[entry.key] = entry

    def pop(self, key: str) -> CacheEntry | None:
        return self._cache.pop(key, None)

    def clear(self) -> int:
        n = len(self._cache)
        self._cache.clear()
        return n

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: str) -> bool:
        return key in self._cache
