"""The response cache: memory tier, then SQLite tier, then the model; single-flight; four modes.

``Agent(..., cache=ResponseCache())`` wraps the agent's model in a :class:`CachedModel`. A request is looked up
by its canonical key (:func:`nbagent.cache.keys.request_key`) in the memory tier, then the SQLite tier; on a miss
the wrapped model is called once however many identical requests are waiting (single-flight: the others await
the same answer and, if the server's answer is an error, get the same error; nothing is stored). A failure that
belongs to the caller who made the call (the leader) is not handed on: when the leader is cancelled, when its own
``on_text`` raises (or anything else that is not a model error), or when it timed out under timeouts other than
a waiting caller's, one waiting caller makes the call again for the others. Streams are stored with their chunks
and served back as streams (``on_text`` gets each stored chunk). A hit returns a copy of the stored response
with ``cached=True`` and ``latency`` set to the lookup time, and emits :class:`~nbagent.events.CacheHit` and an
:class:`~nbagent.events.LLMResponse` with ``cached=True`` and no tokens.

Modes: ``off`` (straight through), ``read-write`` (the default), ``record`` (always call, then store) and
``replay`` (never call: a request that was not recorded raises :class:`nbagent.errors.ReplayMiss`).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from ..errors import LLMError, LLMTimeout, ReplayMiss
from ..events import CacheHit, EventBus, LLMResponse, LLMTextDelta, default_bus
from ..events import CacheMiss as CacheMissEvent
from ..llm.text import json_encodable
from ..llm.types import Model, ModelRequest, ModelResponse, TextCallback, TokenUsage, ToolCall
from .base import MEMORY_ONLY, MODES, CacheCore, CacheMode
from .keys import describe_request, request_key
from .memory import CacheEntry, decode_response, encode_response
from .sqlite import EvictionPolicy, SQLiteStore
from .tier_registry import CacheTier
from .tools import ToolCache

__all__ = ["MODES", "CacheMode", "CachedModel", "ResponseCache"]


class _LeaderGone(Exception):
    """The call the others were waiting for failed for a reason of the leader's own: one of them takes over.

    ``error`` is the leader's error (None when it was cancelled) and ``timeouts`` the leader's timeouts: a
    timeout is handed on to the waiters whose timeouts are the same, since they would time out too.
    """

    def __init__(self, error: BaseException | None = None, timeouts: object = None) -> None:
        super().__init__("the leader of a single-flight call failed on its own")
        self.error = error
        self.timeouts = timeouts

    def shared_with(self, cm: CachedModel) -> BaseException | None:
        """The leader's timeout when ``cm`` runs under the same timeouts (it would time out too), else None."""
        if self.timeouts is not None and self.timeouts == _timeouts(cm):
            return self.error
        return None


def _own_failure(exc: BaseException, cm: CachedModel) -> BaseException:
    """What waiters get when the leader (calling through ``cm``) failed with ``exc``."""
    if isinstance(exc, asyncio.CancelledError):
        return _LeaderGone()
    if not isinstance(exc, LLMError):  # the leader's on_text raised, or something else of its own
        return _LeaderGone(exc)
    if isinstance(exc, LLMTimeout) or isinstance(exc.__cause__, LLMTimeout):
        return _LeaderGone(exc, _timeouts(cm))
    return exc  # the server's answer: the same for everyone


def _timeouts(cm: CachedModel) -> object:
    """The timeouts ``cm``'s calls run under: its client's HTTP and retry settings, else the model itself."""
    settings = getattr(getattr(cm.inner, "client", None), "settings", None)
    http, retry = getattr(settings, "http", None), getattr(settings, "retry", None)
    if http is None or retry is None:
        return cm.inner
    return (http.connect_timeout, http.read_timeout, http.write_timeout, http.pool_timeout, http.request_timeout,
            http.ttft_timeout, http.idle_timeout, retry.max_attempts)


class ResponseCache(CacheCore):
    """A tiered cache of model responses. ``Agent(..., cache=ResponseCache())`` uses it for every model call.

    ``path`` is the SQLite file (default ``$NBAGENT_CACHE_PATH`` or ``<user dir>/cache.sqlite3``; ``":memory:"``
    for no persistent tier). ``namespace`` separates notebooks sharing the file (lookups and :meth:`clear` stay
    inside it). ``mode`` is ``off``, ``read-write``, ``record`` or ``replay``. ``memory_size`` bounds the
    in-memory LRU (0: none); ``ttl`` (seconds, None: never) expires entries by age in both tiers;
    ``max_entries`` / ``max_bytes`` bound the file (see :class:`~nbagent.cache.sqlite.EvictionPolicy`).
    ``bus`` receives the cache events (default: the wrapped model's client bus, else the default bus);
    ``clock`` (wall-clock seconds) is injectable for tests.
    """

    kind: ClassVar[str] = "response"

    def __init__(self, path: str | os.PathLike[str] | None = None, *, namespace: str = "default",
                 mode: str = "read-write", memory_size: int = 1024, ttl: float | None = None,
                 max_entries: int | None = 100_000, max_bytes: int | None = 256 * 2**20,
                 bus: EventBus | None = None, clock: Callable[[], float] = time.time,
                 eviction: EvictionPolicy | None = None, store: SQLiteStore | None = None,
                 tiers: Sequence[str | CacheTier | tuple[str, CacheTier]] = ()) -> None:
        super().__init__(path, namespace=namespace, mode=mode, memory_size=memory_size, ttl=ttl,
                         max_entries=max_entries, max_bytes=max_bytes, bus=bus, clock=clock, eviction=eviction,
                         store=store, tiers=tiers)
        self._inflight: dict[str, asyncio.Future[CacheEntry]] = {}

    def __repr__(self) -> str:
        where = self.store.path if self.store else MEMORY_ONLY
        return f"<ResponseCache {where} namespace={self.namespace!r} mode={self._mode}>"

    def wrap(self, model: Model) -> CachedModel:
        """``model`` behind this cache."""
        if isinstance(model, CachedModel) and model.cache is self:
            return model
        return CachedModel(model, self)

    def tool_cache(self, **kwargs: Any) -> ToolCache:
        """A :class:`~nbagent.cache.tools.ToolCache` on the same file, namespace, bus and clock (``kwargs`` win)."""
        kwargs.setdefault("namespace", self.namespace)
        kwargs.setdefault("bus", self.bus)
        kwargs.setdefault("clock", self.clock)
        kwargs.setdefault("tiers", list(self.tiers))
        return ToolCache(store=self.store, **kwargs) if self.store else ToolCache(MEMORY_ONLY, **kwargs)

    async def _request(self, cm: CachedModel, req: ModelRequest, run_id: str | None,
                       on_text: TextCallback | None) -> ModelResponse:
        mode = self._mode
        if mode == "off":
            return await cm.inner.request(req, run_id=run_id, on_text=on_text)
        t0 = time.perf_counter()
        key = request_key(req, model=cm.model_name, base_url=cm.base_url)
        bus = cm.bus
        if mode == "record":
            return await self._call(cm, req, key, run_id, on_text)
        entry = self._mem_get(key, bus, run_id)
        if entry is not None:
            return await self._serve(cm, entry, "memory", key, t0, req, run_id, on_text)
        if mode == "replay":
            entry, tier = await self._lookup(key, bus, run_id, decode_response)
            if entry is not None:
                return await self._serve(cm, entry, tier, key, t0, req, run_id, on_text)
            self._miss(bus, key, t0, run_id)
            from ..store.redact import redact  # the message quotes the prompt: keep keys out of it

            raise ReplayMiss(redact(f"replay mode: no recorded answer for {describe_request(req, model=cm.model_name)} "
                                   f"[key {key}]; record it first with mode='record' or 'read-write'"), key=key)
        while (waiting := self._inflight.get(key)) is not None:
            try:
                entry = await asyncio.shield(waiting)
            except _LeaderGone as gone:
                shared = gone.shared_with(cm)
                if shared is None:
                    continue  # one of the waiters makes the call again
            else:
                return await self._serve(cm, entry, "inflight", key, t0, req, run_id, on_text)
            raise shared
        fut: asyncio.Future[CacheEntry] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            entry, tier = await self._lookup(key, bus, run_id, decode_response)
            if entry is not None:
                fut.set_result(entry)
                return await self._serve(cm, entry, tier, key, t0, req, run_id, on_text)
            self._miss(bus, key, t0, run_id)
            resp = await self._call(cm, req, key, run_id, on_text, fut)
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(_own_failure(exc, cm))
                fut.exception()  # retrieved: no "never retrieved" log when nobody was waiting
            raise
        finally:
            if self._inflight.get(key) is fut:
                del self._inflight[key]
        return resp

    def _miss(self, bus: EventBus, key: str, t0: float, run_id: str | None) -> None:
        lookup = time.perf_counter() - t0
        self._emit(bus, CacheMissEvent(run_id=run_id, cache="response", key=key, lookup_seconds=lookup))

    async def _call(self, cm: CachedModel, req: ModelRequest, key: str, run_id: str | None,
                    on_text: TextCallback | None, fut: asyncio.Future[CacheEntry] | None = None) -> ModelResponse:
        t0 = time.perf_counter()
        resp = await cm.inner.request(req, run_id=run_id, on_text=on_text)
        latency = resp.latency or (time.perf_counter() - t0)
        stored = _copy(resp, cached=False)
        entry = CacheEntry(key, stored, self.clock(), latency, resp.usage.total_tokens)
        self._put(entry, json_encodable(encode_response(stored)), describe_request(req, model=cm.model_name), cm.bus,
                  run_id)
        if fut is not None:
            fut.set_result(entry)
        return resp

    async def _serve(self, cm: CachedModel, entry: CacheEntry, tier: str, key: str, t0: float, req: ModelRequest,
                     run_id: str | None, on_text: TextCallback | None) -> ModelResponse:
        src: ModelResponse = entry.value
        lookup = time.perf_counter() - t0
        bus = cm.bus
        request_id = f"cache-{key[:12]}"
        chunks: list[str] | None = None
        if req.stream:
            chunks = list(src.chunks) if src.chunks is not None else ([src.text] if src.text else [])
            for chunk in chunks:
                if on_text is not None:
                    result = on_text(chunk)
                    if inspect.isawaitable(result):
                        await result
                bus.emit(LLMTextDelta(run_id=run_id, request_id=request_id, text=chunk))
        resp = _copy(src, cached=True, latency=lookup, ttft=lookup if req.stream else None, chunks=chunks)
        resp.attempts = 0
        self._touch(key)
        self._emit(bus, CacheHit(run_id=run_id, cache="response", tier=tier, key=key, lookup_seconds=lookup,
                                 tokens_saved=entry.tokens, latency_saved=entry.latency))
        bus.emit(LLMResponse(run_id=run_id, request_id=request_id, model=src.model or cm.model_name, latency=lookup,
                             ttft=resp.ttft, attempts=0, input_tokens=0, output_tokens=0, cached_tokens=0,
                             usage_source=src.usage_source, finish_reason=src.finish_reason,
                             tool_calls=len(src.tool_calls), cost=0.0, cached=True))
        return resp


def _copy(src: ModelResponse, *, cached: bool, latency: float | None = None, ttft: float | None = None,
          chunks: list[str] | None = None) -> ModelResponse:
    u = src.usage
    return ModelResponse(
        text=src.text, tool_calls=[ToolCall(tc.id, tc.name, tc.arguments) for tc in src.tool_calls],
        finish_reason=src.finish_reason, usage=TokenUsage(u.input_tokens, u.output_tokens, u.cached_tokens),
        usage_source=src.usage_source, model=src.model, latency=src.latency if latency is None else latency,
        ttft=src.ttft if latency is None else ttft, attempts=src.attempts,
        chunks=(list(src.chunks) if src.chunks is not None else None) if latency is None else chunks,
        cached=cached)


class CachedModel:
    """A :class:`~nbagent.llm.types.Model` answered from a :class:`ResponseCache` when it can.

    ``model_name`` and ``base_url`` are the wrapped model's (they are part of every key). Events go to the
    cache's bus, else the wrapped model's client bus, else the default bus.
    """

    def __init__(self, inner: Model, cache: ResponseCache) -> None:
        self.inner = inner
        self.cache = cache
        self.model_name: str = getattr(inner, "model_name", None) or ""
        self.base_url: str = getattr(inner, "base_url", None) or ""
        client_bus = getattr(getattr(inner, "client", None), "bus", None)
        self.bus: EventBus = cache.bus or (client_bus if isinstance(client_bus, EventBus) else None) or default_bus()

    def __repr__(self) -> str:
        return f"<CachedModel {self.model_name or '?'} @ {self.base_url or '?'} via {self.cache!r}>"

    async def request(self, req: ModelRequest, *, run_id: str | None = None,
                      on_text: TextCallback | None = None) -> ModelResponse:
        """The cached answer to ``req`` if there is one (by mode), else the wrapped model's."""
        return await self.cache._request(self, req, run_id, on_text)
