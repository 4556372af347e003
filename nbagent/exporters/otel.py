"""OpenTelemetry export of a runtime's runs: one trace per finished run, and OTel metrics.

::

    from nbagent.exporters import enable_otel

    enable_otel(rt, endpoint="http://127.0.0.1:6006")   # Phoenix; or Langfuse, Jaeger, any OTLP/HTTP collector

Each run becomes a trace when it ends, built from its :class:`~nbagent.record.RunRecord` (see
:mod:`nbagent.exporters.otel_spans`); spans leave through a ``BatchSpanProcessor`` (a background thread; the
event loop never waits on the collector). The exporter is a part of the runtime (``rt.part("otel")``): closing
the runtime flushes and shuts it down. When export is on is decided in :mod:`nbagent.exporters.otel_config`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from ..record import RunRecord
from .otel_config import metrics_url, otel_options, traces_url
from .otel_spans import export_record, model_calls

if TYPE_CHECKING:  # pragma: no cover
    from ..agent.loop import RunResult
    from ..events import Event
    from ..runtime import Runtime

__all__ = ["OtelExporter", "enable_otel"]

log = logging.getLogger("nbagent.exporters.otel")


class OtelExporter:
    """Exports the runs of one runtime (or given records) as OpenTelemetry traces and metrics.

    ``span_exporter``/``metric_readers`` replace the OTLP/HTTP ones (e.g. the SDK's in-memory exporter and
    reader); other options are those of :func:`~nbagent.exporters.otel_config.otel_options`.
    """

    def __init__(self, runtime: Runtime | None = None, *, endpoint: str | None = None,
                 headers: Mapping[str, str] | None = None, service_name: str = "nbagent", project: str | None = None,
                 provider: str = "openai", metrics: bool = False, span_exporter: SpanExporter | None = None,
                 metric_readers: Sequence[MetricReader] | None = None) -> None:
        attrs: dict[str, Any] = {"service.name": service_name}
        if project:
            attrs["openinference.project.name"] = project
        self.resource = Resource.create(attrs)
        self.provider_name = provider
        self.endpoint = endpoint
        if span_exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            span_exporter = OTLPSpanExporter(endpoint=traces_url(endpoint) if endpoint else None,
                                             headers=dict(headers) if headers else None)
        self.tracer_provider = TracerProvider(resource=self.resource)
        self.tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        from .. import __version__ as version

        self.tracer = self.tracer_provider.get_tracer("nbagent", version)
        readers = list(metric_readers or ())
        if metrics and not readers:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(
                endpoint=metrics_url(endpoint) if endpoint else None, headers=dict(headers) if headers else None)))
        self.meter_provider = MeterProvider(resource=self.resource, metric_readers=readers) if readers else None
        self._instruments(runtime)
        self.exported = 0
        """Runs exported so far."""
        self._runtime = runtime
        self._ended: dict[str, None] = {}  # runs whose end was seen but whose result has not come yet
        self._detach: list[Any] = []
        self.closed = False
        if runtime is not None:
            self._detach.append(runtime.bus.tap(self._on_event))
            runtime.bus.result_sinks.append(self._on_result)

    # --- metrics -----------------------------------------------------------------------------------

    def _instruments(self, runtime: Runtime | None) -> None:
        self._duration = self._tokens = self._run_duration = None
        if self.meter_provider is None:
            return
        meter = self.meter_provider.get_meter("nbagent")
        self._duration = meter.create_histogram("gen_ai.client.operation.duration", unit="s",
                                                description="Duration of model calls")
        self._tokens = meter.create_histogram("gen_ai.client.token.usage", unit="{token}",
                                              description="Tokens used per model call")
        self._run_duration = meter.create_histogram("nbagent.run.duration", unit="s", description="Run wall time")
        if runtime is None:
            return
        reg = runtime.metrics.global_

        def counter(name: str) -> Any:
            def observe(options: CallbackOptions) -> Iterable[Observation]:
                return [Observation(reg.value(name))]
            return observe

        def cache_hits(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(c.value, {"nbagent.cache": n.split(".")[1]}) for n, c in reg.counters.items()
                    if n.startswith("cache.") and n.endswith(".hits")]

        meter.create_observable_counter("nbagent.cost", [counter("cost.usd")], unit="USD",
                                        description="Cost of priced model calls")
        meter.create_observable_counter("nbagent.llm.calls", [counter("llm.calls")], unit="{call}")
        meter.create_observable_counter("nbagent.cache.hits", [cache_hits], unit="{hit}")
        meter.create_observable_gauge("nbagent.runs.in_flight", [counter("runs.in_flight")], unit="{run}")
        meter.create_observable_gauge("nbagent.tools.in_flight", [counter("tools.in_flight")], unit="{call}")

    def _record_metrics(self, record: RunRecord) -> None:
        if self._duration is None or self._tokens is None or self._run_duration is None:
            return
        for span in model_calls(record):
            if span.end is None:
                continue
            attrs = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": self.provider_name,
                     "gen_ai.request.model": record.model or span.name, "gen_ai.response.model": span.name}
            if span.status == "error":
                attrs["error.type"] = str(span.attrs.get("error") or "error").split(":", 1)[0]
            self._duration.record(span.end - span.start, attrs)
            for kind in ("input", "output"):
                self._tokens.record(int(span.attrs.get(f"{kind}_tokens") or 0), {**attrs, "gen_ai.token.type": kind})
        if record.duration is not None:
            self._run_duration.record(record.duration, {"nbagent.status": record.status})

    # --- export ------------------------------------------------------------------------------------

    def export(self, record: RunRecord) -> None:
        """Export one record as a trace (a finished one; a running one is exported as it stands)."""
        export_record(self.tracer, record, provider=self.provider_name)
        self._record_metrics(record)
        self.exported += 1

    def export_many(self, records: Iterable[RunRecord]) -> int:
        n = 0
        for rec in records:
            self.export(rec)
            n += 1
        return n

    def _on_event(self, ev: Event) -> None:
        if ev.kind == "run_finished" and ev.run_id is not None:
            self._ended[ev.run_id] = None

    def _on_result(self, result: RunResult) -> None:
        """A run's result, after its last event: its record is complete (output included)."""
        self._ended.pop(result.run_id, None)
        record = result.record
        if record is None or self.closed:
            return
        try:
            self.export(record)
        except Exception:  # noqa: BLE001 - telemetry must never break a run
            log.exception("exporting run %s to OpenTelemetry failed", result.run_id)

    def _export_ended(self) -> None:
        """Runs that ended with no result (cancelled from outside): export their records as they are."""
        if self._runtime is None:
            return
        for run_id in list(self._ended):
            rec = self._runtime.records.get(run_id)
            if rec is not None:
                self.export(rec)
        self._ended.clear()

    def flush(self, timeout_millis: int = 30_000) -> bool:
        """Send what is queued now (blocking; from async code use :meth:`aflush`)."""
        self._export_ended()
        ok = self.tracer_provider.force_flush(timeout_millis)
        if self.meter_provider is not None:
            ok = self.meter_provider.force_flush(timeout_millis) and ok
        return ok

    async def aflush(self, timeout_millis: int = 30_000) -> bool:
        self._export_ended()
        return await asyncio.to_thread(self.flush, timeout_millis)

    def close(self) -> None:
        """Flush and shut the providers down (blocking); the runtime's close calls :meth:`aclose`."""
        if self.closed:
            return
        self._export_ended()
        self.closed = True
        for detach in self._detach:
            detach()
        if self._runtime is not None and self._on_result in self._runtime.bus.result_sinks:
            self._runtime.bus.result_sinks.remove(self._on_result)
        self.tracer_provider.shutdown()
        if self.meter_provider is not None:
            self.meter_provider.shutdown()

    async def aclose(self) -> None:
        if not self.closed:
            self._export_ended()
            await asyncio.to_thread(self.close)

    def __repr__(self) -> str:
        return f"<OtelExporter {self.endpoint or 'default endpoint'}; {self.exported} runs exported>"


def enable_otel(runtime: Runtime | None = None, *, endpoint: str | None = None,
                headers: Mapping[str, str] | None = None, service_name: str | None = None,
                project: str | None = None, provider: str | None = None, metrics: bool | None = None,
                span_exporter: SpanExporter | None = None,
                metric_readers: Sequence[MetricReader] | None = None) -> OtelExporter:
    """Export every run of ``runtime`` (default: :func:`nbagent.runtime`) from now on; idempotent.

    Options not given come from the settings' ``[otel]`` table, then the standard ``OTEL_*`` variables.
    Returns the runtime's exporter (the part ``"otel"``), closed with the runtime.
    """
    if runtime is None:
        from ..runtime import runtime as default_runtime

        runtime = default_runtime()
    rt = runtime

    def make(rt: Runtime) -> OtelExporter:
        opts = otel_options(getattr(rt.settings, "otel", None), endpoint=endpoint, headers=headers,
                            service_name=service_name, project=project, provider=provider, metrics=metrics)
        return OtelExporter(rt, span_exporter=span_exporter, metric_readers=metric_readers, **opts)

    return rt.part("otel", make)
