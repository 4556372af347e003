"""The built-in event -> metric mapping (registered on import in :data:`DEFAULT_HANDLERS`).

Built-in metric names (a public contract; ``<x>`` is filled from the event field of that name). A metric's
unit is part of its definition (``registry.unit(name)``): histograms are in seconds unless the table says otherwise;
``run.steps`` counts steps, ``tokens.drift_ratio`` is a ratio, ``cost.usd`` is in US dollars.

==========================  =============================================  ==========  =========================
Event                       Metric                                         Type        Update
==========================  =============================================  ==========  =========================
RunStarted                  ``runs.started``                               counter     +1
                            ``runs.in_flight``                             gauge       +1
RunFinished                 ``runs.finished``                              counter     +1
                            ``runs.status.<status>``                       counter     +1
                            ``runs.in_flight``                             gauge       -1
                            ``run.duration``                               histogram   ``duration``
                            ``run.steps``                                  histogram   ``steps``
LimitHit                    ``limits.<limit>``                             counter     +1
LLMRequestStarted           ``llm.attempts``                               counter     +1
LLMResponse                 ``llm.calls``                                  counter     +1 if not ``cached``
                            ``llm.latency``                                histogram   ``latency`` (1)
                            ``llm.ttft``                                   histogram   ``ttft`` if not None (1)
                            ``llm.cached``                                 counter     +1 if ``cached``
                            ``llm.latency.cached``                         histogram   ``latency`` if ``cached``
                            ``tokens.input``                               counter     ``input_tokens``
                            ``tokens.output``                              counter     ``output_tokens``
                            ``tokens.cached``                              counter     ``cached_tokens``
                            ``cost.usd``                                   counter     ``cost`` (USD) when priced
                            ``cost.unpriced_calls``                        counter     +1 if ``cost`` is None
                            ``llm.usage_local``                            counter     +1 if ``usage_source``
                                                                                       is ``"local"``
LLMRetry                    ``llm.retries``                                counter     +1
                            ``llm.retries.<reason>``                       counter     +1
                            ``llm.retry_wait``                             histogram   ``wait``
LLMRequestFailed            ``llm.errors``                                 counter     +1
                            ``llm.errors.<error_type>``                    counter     +1
LLMResponse with            ``tokens.drift_checks``                        counter     +1
``input_tokens_local``      ``tokens.drift_ratio``                         histogram   ``|local - server| /
(or TokenDrift)                                                                        max(server, 1)``
ToolStarted                 ``tools.in_flight``                            gauge       +1
ToolFinished                ``tools.in_flight``                            gauge       -1
                            ``tool.calls``                                 counter     +1
                            ``tool.errors``                                counter     +1 if not ``ok``
                            ``tool.truncated``                             counter     +1 if ``truncated``
                            ``tool.duration``                              histogram   ``duration``
                            ``tool.duration.<name>``                       histogram   ``duration``
CacheHit                    ``cache.<cache>.hits``                         counter     +1
                            ``cache.<cache>.hits.<tier>``                  counter     +1
                            ``cache.<cache>.lookup.<tier>``                histogram   ``lookup_seconds``
                            ``cache.<cache>.tokens_saved``                 counter     ``tokens_saved``
                            ``cache.<cache>.latency_saved``                counter     ``latency_saved``
CacheMiss                   ``cache.<cache>.misses``                       counter     +1
                            ``cache.<cache>.lookup.miss``                  histogram   ``lookup_seconds``
CacheStored                 ``cache.<cache>.stores``                       counter     +1
CacheEvicted                ``cache.<cache>.evictions``                    counter     +1
CacheWarning                ``cache.<cache>.warnings``                     counter     +1
==========================  =============================================  ==========  =========================

(1) Responses served by the response cache (``cached=True``) go to ``llm.latency.cached`` instead, so that
``llm.latency`` and ``llm.ttft`` describe the model endpoint only. Token and cost counters take the event's
figures as they are. Counters ``tokens.*`` and ``cost.usd`` are fed by ``LLMResponse`` only, never by
``RunFinished`` (whose totals would count them twice).

"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nbagent.events import (
    CacheEvicted,
    CacheHit,
    CacheMiss,
    CacheStored,
    CacheWarning,
    Event,
    LimitHit,
    LLMRequestFailed,
    LLMRequestStarted,
    LLMResponse,
    LLMRetry,
    RunFinished,
    RunStarted,
    TokenDrift,
    ToolFinished,
    ToolStarted,
)
from nbagent.metrics.registry import DEFAULT_HANDLERS, MetricsRegistry

__all__: list[str] = []


#
# Handlers keep the metric objects they always touch in ``reg.memo`` (keyed by the handler, plus the event
# fields that go into the names), so the steady state skips name formatting and registry lookups. Metrics
# touched only on some events (errors, ttft, ...) are looked up by name when needed, so they only appear once
# they have something to show.


def _on_run_started(reg: MetricsRegistry, e: RunStarted) -> None:
    m = reg.memo.get(_on_run_started)
    if m is None:
        m = reg.memo[_on_run_started] = (reg.counter("runs.started"), reg.gauge("runs.in_flight"))
    m[0].value += 1
    m[1].inc()


def _on_run_finished(reg: MetricsRegistry, e: RunFinished) -> None:
    key = (_on_run_finished, e.status)
    m = reg.memo.get(key)
    if m is None:
        m = reg.memo[key] = (
            reg.counter("runs.finished"),
            reg.counter(f"runs.status.{e.status}"),
            reg.gauge("runs.in_flight"),
            reg.histogram("run.duration"),
            reg.histogram("run.steps", unit="steps"),
        )
    finished, status, in_flight, duration, steps = m
    finished.value += 1
    status.value += 1
    in_flight.dec()
    duration.record(e.duration)
    steps.record(e.steps)


def _on_limit_hit(reg: MetricsRegistry, e: LimitHit) -> None:
    reg.counter(f"limits.{e.limit}").value += 1


def _on_llm_request(reg: MetricsRegistry, e: LLMRequestStarted) -> None:
    m = reg.memo.get(_on_llm_request)
    if m is None:
        m = reg.memo[_on_llm_request] = reg.counter("llm.attempts")
    m.value += 1


def _on_llm_response(reg: MetricsRegistry, e: LLMResponse) -> None:
    m = reg.memo.get(_on_llm_response)
    if m is None:
        m = reg.memo[_on_llm_response] = (
            reg.counter("llm.calls", unit="calls"),
            reg.counter("tokens.input", unit="tokens"),
            reg.counter("tokens.output", unit="tokens"),
            reg.counter("tokens.cached", unit="tokens"),
            reg.counter("cost.usd", unit="USD"),
        )
    calls, tokens_in, tokens_out, tokens_cached, cost = m
    tokens_in.value += e.input_tokens
    tokens_out.value += e.output_tokens
    tokens_cached.value += e.cached_tokens
    if e.cost is None:
        reg.counter("cost.unpriced_calls", unit="calls").value += 1
    else:
        cost.value += e.cost
    if e.cached:  # served by the response cache: not a call to the endpoint
        reg.counter("llm.cached", unit="calls").value += 1
        reg.histogram("llm.latency.cached").record(e.latency)
    else:
        calls.value += 1
        reg.histogram("llm.latency").record(e.latency)
        if e.ttft is not None:
            reg.histogram("llm.ttft").record(e.ttft)
    if e.usage_source == "local":
        reg.counter("llm.usage_local").value += 1
    elif e.input_tokens_local:  # the local count of the prompt against the server's
        _on_token_drift(reg, e)


def _on_llm_retry(reg: MetricsRegistry, e: LLMRetry) -> None:
    key = (_on_llm_retry, e.reason)
    m = reg.memo.get(key)
    if m is None:
        m = reg.memo[key] = (
            reg.counter("llm.retries"),
            reg.counter(f"llm.retries.{e.reason}"),
            reg.histogram("llm.retry_wait"),
        )
    m[0].value += 1
    m[1].value += 1
    m[2].record(e.wait)


def _on_llm_failed(reg: MetricsRegistry, e: LLMRequestFailed) -> None:
    reg.counter("llm.errors").value += 1
    reg.counter(f"llm.errors.{e.error_type}").value += 1


def _on_token_drift(reg: MetricsRegistry, e: TokenDrift | LLMResponse) -> None:
    if isinstance(e, TokenDrift):
        local, server = e.local, e.server
    else:
        local, server = e.input_tokens_local, e.input_tokens
    m = reg.memo.get(_on_token_drift)
    if m is None:
        m = reg.memo[_on_token_drift] = (reg.counter("tokens.drift_checks"),
                                      reg.histogram("tokens.drift_ratio", unit="ratio"))
    m[0].value += 1
    m[1].record(abs(local - server) / max(server, 1))


def _on_tool_started(reg: MetricsRegistry, e: ToolStarted) -> None:
    m = reg.memo.get(_on_tool_started)
    if m is None:
        m = reg.memo[_on_tool_started] = reg.gauge("tools.in_flight")
    m.inc()


def _on_tool_finished(reg: MetricsRegistry, e: ToolFinished) -> None:
    key = (_on_tool_finished, e.name)
    m = reg.memo.get(key)
    if m is None:
        m = reg.memo[key] = (
            reg.gauge("tools.in_flight"),
            reg.counter("tool.calls"),
            reg.histogram("tool.duration"),
            reg.histogram(f"tool.duration.{e.name}"),
        )
    in_flight, calls, duration, duration_by_name = m
    in_flight.dec()
    calls.value += 1
    duration.record(e.duration)
    duration_by_name.record(e.duration)
    if not e.ok:
        reg.counter("tool.errors").value += 1
    if e.truncated:
        reg.counter("tool.truncated").value += 1


def _on_cache_hit(reg: MetricsRegistry, e: CacheHit) -> None:
    key = (_on_cache_hit, e.cache, e.tier)
    m = reg.memo.get(key)
    if m is None:
        c = e.cache
        m = reg.memo[key] = (
            reg.counter(f"cache.{c}.hits", unit="lookups"),
            reg.counter(f"cache.{c}.hits.{e.tier}"),
            reg.histogram(f"cache.{c}.lookup.{e.tier}"),
            reg.counter(f"cache.{c}.tokens_saved", unit="tokens"),
            reg.counter(f"cache.{c}.latency_saved", unit="s"),
        )
    hits, hits_tier, lookup, tokens_saved, latency_saved = m
    hits.value += 1
    hits_tier.value += 1
    lookup.record(e.lookup_seconds)
    tokens_saved.value += e.tokens_saved
    latency_saved.value += e.latency_saved


def _on_cache_miss(reg: MetricsRegistry, e: CacheMiss) -> None:
    key = (_on_cache_miss, e.cache)
    m = reg.memo.get(key)
    if m is None:
        m = reg.memo[key] = (reg.counter(f"cache.{e.cache}.misses", unit="lookups"),
                          reg.histogram(f"cache.{e.cache}.lookup.miss"))
    m[0].value += 1
    m[1].record(e.lookup_seconds)


def _on_cache_stored(reg: MetricsRegistry, e: CacheStored) -> None:
    reg.counter(f"cache.{e.cache}.stores").value += 1


def _on_cache_evicted(reg: MetricsRegistry, e: CacheEvicted) -> None:
    reg.counter(f"cache.{e.cache}.evictions").value += 1


def _on_cache_warning(reg: MetricsRegistry, e: CacheWarning) -> None:
    reg.counter(f"cache.{e.cache}.warnings").value += 1


_BUILTIN: tuple[tuple[type[Event], Callable[[MetricsRegistry, Any], None]], ...] = (
    (RunStarted, _on_run_started),
    (RunFinished, _on_run_finished),
    (LimitHit, _on_limit_hit),
    (LLMRequestStarted, _on_llm_request),
    (LLMResponse, _on_llm_response),
    (LLMRetry, _on_llm_retry),
    (LLMRequestFailed, _on_llm_failed),
    (TokenDrift, _on_token_drift),
    (ToolStarted, _on_tool_started),
    (ToolFinished, _on_tool_finished),
    (CacheHit, _on_cache_hit),
    (CacheMiss, _on_cache_miss),
    (CacheStored, _on_cache_stored),
    (CacheEvicted, _on_cache_evicted),
    (CacheWarning, _on_cache_warning),
)

for _event_type, _handler in _BUILTIN:
    DEFAULT_HANDLERS.register(_event_type, _handler)
del _event_type, _handler
