"""A finished :class:`~nbagent.record.RunRecord` as one OpenTelemetry trace.

The run is the root span (``invoke_agent <name>``); below it the steps, the model calls (``chat <model>``,
following the OpenTelemetry GenAI semantic conventions, with their attempts and retry backoffs), the tool
calls (``execute_tool <tool>``) with their policy decisions, approval waits, sandbox leases and execs, and the
tool-cache lookups. The first-token wait of an attempt is a span event; a response served by the response
cache is a model span with ``nbagent.cache.hit = true``. OpenInference attributes (``openinference.span.kind``,
``llm.token_count.*``, ``input.value``...) are set too, so Arize Phoenix shows kinds and token counts.

Span times come from the record (epoch seconds to nanoseconds); every string that leaves goes through
:func:`nbagent.store.redact.redact`. Imports opentelemetry: import this module only when exporting.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from ..record import RunRecord, Span
from ..store.redact import redact

__all__ = ["export_record", "model_calls"]

Attr = str | bool | int | float | list[str] | list[int] | list[float] | list[bool]

# OpenInference span kinds (what Phoenix groups and colours spans by)
_OI_KIND = {"run": "AGENT", "step": "CHAIN", "model": "LLM", "tool": "TOOL", "policy": "GUARDRAIL",
            "approval": "GUARDRAIL", "cache": "RETRIEVER"}


def _ns(seconds: float) -> int:
    return int(seconds * 1_000_000_000)


def _clean(attrs: dict[str, Any]) -> dict[str, Attr]:
    """Attributes OpenTelemetry accepts: None dropped, strings redacted, other values made strings."""
    out: dict[str, Attr] = {}
    for key, value in attrs.items():
        if value is None:
            continue
        if isinstance(value, str):
            out[key] = redact(value)
        elif isinstance(value, (bool, int, float)):
            out[key] = value
        elif isinstance(value, (list, tuple)):
            items = [v for v in value if v is not None]
            if all(isinstance(v, str) for v in items):
                out[key] = [redact(v) for v in items]
            elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
                out[key] = [float(v) for v in items] if any(isinstance(v, float) for v in items) else list(items)
            else:
                out[key] = [redact(str(v)) for v in items]
        else:
            out[key] = redact(str(value))
    return out


def _model_attrs(span: Span, record: RunRecord, provider: str) -> dict[str, Any]:
    a = span.attrs
    inp, out = int(a.get("input_tokens") or 0), int(a.get("output_tokens") or 0)
    finish = a.get("finish_reason")
    return {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": provider, "gen_ai.system": provider,
        "gen_ai.request.model": record.model or span.name, "gen_ai.response.model": span.name,
        "gen_ai.usage.input_tokens": inp, "gen_ai.usage.output_tokens": out,
        "gen_ai.usage.cache_read.input_tokens": a.get("cached_tokens"),
        "gen_ai.response.finish_reasons": [finish] if finish else None,
        "gen_ai.request.stream": a.get("stream"),
        "nbagent.cache.hit": bool(a.get("cached", False)), "nbagent.attempts": a.get("attempts"),
        "nbagent.ttft_seconds": a.get("ttft"), "nbagent.cost_usd": a.get("cost"),
        "nbagent.tool_calls": a.get("tool_calls"), "error.type": _error_type(a.get("error")),
        "nbagent.error": a.get("error"),
        "llm.model_name": span.name, "llm.provider": provider, "llm.token_count.prompt": inp,
        "llm.token_count.completion": out, "llm.token_count.total": inp + out,
    }


def _error_type(error: Any) -> str | None:
    return error.split(":", 1)[0] if isinstance(error, str) and error else None


def _span_shape(span: Span, record: RunRecord, provider: str) -> tuple[str, SpanKind, dict[str, Any]]:
    """The OpenTelemetry name, kind and attributes of one record span."""
    a, kind = span.attrs, span.kind
    if kind == "run":
        return f"invoke_agent {record.name or 'agent'}", SpanKind.INTERNAL, {
            "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": record.name,
            "gen_ai.request.model": record.model, "gen_ai.provider.name": provider,
            "gen_ai.usage.input_tokens": record.input_tokens, "gen_ai.usage.output_tokens": record.output_tokens,
            "nbagent.run_id": record.run_id, "nbagent.status": record.status,
            "nbagent.stop_reason": record.stop_reason, "nbagent.error": record.error,
            "nbagent.tags": list(record.tags) or None, "nbagent.steps": record.steps,
            "nbagent.llm_calls": record.llm_calls, "nbagent.cached_calls": record.cached_calls,
            "nbagent.retries": record.retries, "nbagent.retry_wait_seconds": record.retry_wait,
            "nbagent.tool_calls": record.tool_calls, "nbagent.tool_errors": record.tool_errors,
            "nbagent.cached_tokens": record.cached_tokens, "nbagent.cost_usd": record.cost,
            "nbagent.limit": record.limit, "error.type": _error_type(record.error),
            "input.value": record.prompt or None, "output.value": record.output or None,
        }
    if kind == "step":
        return span.name, SpanKind.INTERNAL, {}
    if kind == "model":
        return f"chat {span.name}", SpanKind.CLIENT, _model_attrs(span, record, provider)
    if kind == "attempt":
        return span.name, SpanKind.CLIENT, {"nbagent.attempt": a.get("attempt"),
                                            "nbagent.ttft_seconds": a.get("ttft"),
                                            "nbagent.retry.reason": a.get("reason")}
    if kind == "backoff":
        return "retry backoff", SpanKind.INTERNAL, {"nbagent.retry.reason": a.get("reason"),
                                                    "nbagent.retry.retry_after": a.get("retry_after")}
    if kind == "tool":
        return f"execute_tool {span.name}", SpanKind.INTERNAL, {
            "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": span.name,
            "gen_ai.tool.call.arguments": a.get("arguments"), "gen_ai.tool.call.result": a.get("output_preview"),
            "nbagent.error": a.get("error"), "error.type": _error_type(a.get("error")),
            "nbagent.tool.output_chars": a.get("output_chars"), "nbagent.tool.truncated": a.get("truncated"),
            "tool.name": span.name, "input.value": a.get("arguments"), "output.value": a.get("output_preview"),
        }
    if kind in ("policy", "approval"):
        return f"{kind} {a.get('action', '')}".strip(), SpanKind.INTERNAL, {
            "nbagent.policy.action": a.get("action"), "nbagent.policy.decided_by": a.get("decided_by"),
            "nbagent.policy.reason": a.get("reason"), "nbagent.policy.cached": a.get("cached")}
    if kind == "lease":
        return f"sandbox.lease {span.name.removeprefix('lease ')}", SpanKind.INTERNAL, {
            "nbagent.sandbox.warm": a.get("warm"), "nbagent.sandbox.id": a.get("sandbox_id")}
    if kind == "exec":
        return f"sandbox.exec {span.name}", SpanKind.INTERNAL, {
            "nbagent.sandbox.exit_code": a.get("exit_code"), "nbagent.sandbox.timed_out": a.get("timed_out")}
    if kind == "cache":
        return span.name, SpanKind.INTERNAL, {"nbagent.cache.hit": a.get("hit"), "nbagent.cache.tier": a.get("tier")}
    return f"{kind} {span.name}".strip(), SpanKind.INTERNAL, {f"nbagent.{k}": v for k, v in a.items()}


def _status(span: Span, record: RunRecord) -> Status | None:
    if span.status == "error":
        message = span.attrs.get("error") or (record.error if span.kind == "run" else None) or "error"
        return Status(StatusCode.ERROR, redact(str(message)))
    if span.kind == "run" and span.status == "ok":
        return Status(StatusCode.OK)
    return None


def _emit(tracer: Tracer, span: Span, record: RunRecord, parent: Any, provider: str, end_default: float) -> None:
    name, kind, attrs = _span_shape(span, record, provider)
    attrs["nbagent.span.kind"] = span.kind
    if span.status not in ("ok", "error"):
        attrs["nbagent.span.status"] = span.status
    oi_kind = _OI_KIND.get(span.kind)
    if oi_kind is not None:
        attrs["openinference.span.kind"] = oi_kind
    ctx = trace.set_span_in_context(parent) if parent is not None else None
    end = span.end if span.end is not None else end_default
    otel = tracer.start_span(redact(name), context=ctx, kind=kind, attributes=_clean(attrs),
                             start_time=_ns(span.start))
    status = _status(span, record)
    if status is not None:
        otel.set_status(status)
    children: Iterable[Span] = span.children
    if span.kind == "model" and span.attrs.get("cached"):
        children = ()  # the response-cache lookup is the span itself (nbagent.cache.hit)
    for child in children:
        if child.kind in ("wait", "generate"):  # moments of an attempt, not operations of their own
            if child.kind == "wait" and child.end is not None:
                otel.add_event("gen_ai.first_token" if child.name == "first token" else "gen_ai.response",
                               timestamp=_ns(child.end))
            continue
        if child.kind == "backoff":
            otel.add_event("retry", _clean({"nbagent.retry.reason": child.attrs.get("reason")}),
                           timestamp=_ns(child.start))
        _emit(tracer, child, record, otel, provider, end)
    otel.end(end_time=_ns(max(end, span.start)))


def export_record(tracer: Tracer, record: RunRecord, *, provider: str = "openai") -> None:
    """Emit ``record`` as one trace through ``tracer`` (its spans end at once, with the record's times)."""
    root = record.root
    end = record.ended if record.ended is not None else max([s.end or s.start for _, s in root.walk()])
    _emit(tracer, root, record, None, provider, end)


def model_calls(record: RunRecord) -> Iterable[Span]:
    """The model-call spans of a record (for metrics recorded at export)."""
    return (s for _, s in record.root.walk() if s.kind == "model")

