"""The built-in fold: how each event kind of the core changes a :class:`~nbagent.record.RunRecord`.

Registered on import of :mod:`nbagent.record`; packages with events of their own register theirs with
:func:`nbagent.record.register_span_handler` (see :mod:`nbagent.mcp.events`).
"""

from __future__ import annotations

from typing import Any

from .record import RunRecord, Span, register_span_handler

__all__: list[str] = []


def _run_started(r: RunRecord, e: Any) -> None:
    r.name, r.model, r.prompt, r.started = e.name, e.model, e.prompt, e.ts
    r.tags = tuple(getattr(e, "tags", ()) or ())
    r.root = Span("run", e.name, e.ts, attrs={"model": e.model})


def _step_started(r: RunRecord, e: Any) -> None:
    if r._step is not None and r._step.end is None:
        r._step.end = e.ts
    r.steps = e.step
    r._step = r.root.add("step", f"step {e.step}", e.ts)


def _llm_request(r: RunRecord, e: Any) -> None:
    key = "m" + e.request_id
    model = r._open.get(key)
    if model is None:
        model = r.open_span(key, r._step or r.root, "model", e.model or r.model, e.ts, stream=e.stream)
    r.attempts += 1
    r.open_span("a" + e.request_id, model, "attempt", f"attempt {e.attempt}", e.ts, attempt=e.attempt)


def _llm_first_token(r: RunRecord, e: Any) -> None:
    attempt = r._open.get("a" + e.request_id)
    if attempt is not None:
        attempt.add("wait", "first token", attempt.start, attempt.start + e.ttft)
        attempt.attrs["ttft"] = e.ttft


def _llm_retry(r: RunRecord, e: Any) -> None:
    r.retries += 1
    r.retry_wait += e.wait
    attempt = r.close_span("a" + e.request_id, e.ts, "error")
    if attempt is not None:
        attempt.attrs["reason"] = e.reason
        if not attempt.children:  # the time waited for an answer that never came
            attempt.add("wait", "no answer", attempt.start, e.ts)
    model = r._open.get("m" + e.request_id)
    if model is not None:
        model.add("backoff", f"retry after {e.reason}", e.ts, e.ts + e.wait, reason=e.reason,
                  retry_after=e.retry_after)


def _llm_response(r: RunRecord, e: Any) -> None:
    attrs = {"input_tokens": e.input_tokens, "output_tokens": e.output_tokens, "cached_tokens": e.cached_tokens,
             "finish_reason": e.finish_reason, "tool_calls": e.tool_calls, "cost": e.cost}
    r.input_tokens += e.input_tokens
    r.output_tokens += e.output_tokens
    r.cached_tokens += e.cached_tokens
    if e.cached:
        r.cached_calls += 1
        model = (r._step or r.root).add("model", e.model or r.model, e.ts - e.latency, e.ts, cached=True, **attrs)
        model.add("cache", "response cache", model.start, e.ts)
        return
    r.llm_calls += 1
    if e.cost is None:
        r.unpriced_calls += 1
    else:
        r.priced_cost += e.cost
    attempt = r.close_span("a" + e.request_id, e.ts)
    if attempt is not None:
        first = attempt.start + e.ttft if e.ttft is not None else None
        if first is None:
            attempt.add("wait", "response", attempt.start, e.ts)
        else:
            if not any(c.kind == "wait" for c in attempt.children):
                attempt.add("wait", "first token", attempt.start, first)
            attempt.add("generate", "generating", first, e.ts)
    model = r.close_span("m" + e.request_id, e.ts) or (r._step or r.root).add(
        "model", e.model or r.model, e.ts - e.latency, e.ts)
    model.attrs.update(attrs, latency=e.latency, ttft=e.ttft, attempts=e.attempts)


def _llm_failed(r: RunRecord, e: Any) -> None:
    r.llm_errors += 1
    attempt = r.close_span("a" + e.request_id, e.ts, "error")
    if attempt is not None and not attempt.children:
        attempt.add("wait", "no answer", attempt.start, e.ts)
    model = r.close_span("m" + e.request_id, e.ts, "error")
    if model is not None:
        model.attrs.update(error=f"{e.error_type}: {e.message}", attempts=e.attempts)


def _tool_started(r: RunRecord, e: Any) -> None:
    r.open_span("t" + e.call_id, r._step or r.root, "tool", e.name, e.ts, arguments=e.arguments)


def _tool_finished(r: RunRecord, e: Any) -> None:
    r.tool_calls += 1
    if not e.ok:
        r.tool_errors += 1
    span = r.close_span("t" + e.call_id, e.ts, "ok" if e.ok else "error")
    if span is None:
        span = (r._step or r.root).add("tool", e.name, e.ts - e.duration, e.ts)
        span.status = "ok" if e.ok else "error"
    span.attrs.update(error=e.error, output_chars=e.output_chars, truncated=e.truncated,
                      output_preview=e.output_preview[:200])


def _policy_decided(r: RunRecord, e: Any) -> None:
    parent = next((s for s in reversed(r._open.values()) if s.kind == "tool" and s.name == e.tool), None)
    kind = "approval" if e.decided_by in ("callback", "timeout") else "policy"
    span = (parent or r._step or r.root).add(kind, f"{e.action} ({e.decided_by})", e.ts - e.seconds, e.ts,
                                             action=e.action, decided_by=e.decided_by, reason=e.reason, tool=e.tool,
                                             cached=e.cached)
    span.status = "ok" if e.action == "allow" else "denied"


def _cache_lookup(r: RunRecord, e: Any) -> None:
    if e.cache == "response":
        return  # a hit is drawn with the cached model call; a miss is the model call that follows
    hit = e.kind == "cache_hit"
    r.parent_for().add("cache", f"{e.cache} cache {'hit' if hit else 'miss'}", e.ts - e.lookup_seconds, e.ts,
                       hit=hit, tier=getattr(e, "tier", None))


def _sandbox_leased(r: RunRecord, e: Any) -> None:
    r.parent_for().add("lease", f"lease {e.backend}", e.ts - e.wait, e.ts, warm=e.warm, sandbox_id=e.sandbox_id)


def _sandbox_exec(r: RunRecord, e: Any) -> None:
    span = r.parent_for().add("exec", f"{e.lang} in {e.backend}", e.ts - e.seconds, e.ts, exit_code=e.exit_code,
                              timed_out=e.timed_out)
    span.status = "ok" if e.ok and not e.timed_out and e.exit_code in (0, None) else "error"


def _limit_hit(r: RunRecord, e: Any) -> None:
    r.limit = e.limit


def _run_finished(r: RunRecord, e: Any) -> None:
    r.status, r.stop_reason, r.error, r.ended = e.status, e.stop_reason, e.error, e.ts
    r.root.end, r.root.status = e.ts, e.status
    for span in r._open.values():
        span.end, span.status = e.ts, "cancelled"
    r._open.clear()
    if r._step is not None and r._step.end is None:
        r._step.end = e.ts


for _kind, _handler in (
    ("run_started", _run_started), ("step_started", _step_started), ("llm_request", _llm_request),
    ("llm_first_token", _llm_first_token), ("llm_retry", _llm_retry), ("llm_response", _llm_response),
    ("llm_failed", _llm_failed), ("tool_started", _tool_started), ("tool_finished", _tool_finished),
    ("policy_decided", _policy_decided), ("cache_hit", _cache_lookup), ("cache_miss", _cache_lookup),
    ("sandbox_leased", _sandbox_leased), ("sandbox_exec", _sandbox_exec), ("limit_hit", _limit_hit),
    ("run_finished", _run_finished),
):
    register_span_handler(_kind, _handler)
del _kind, _handler


