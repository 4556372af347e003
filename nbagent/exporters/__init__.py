"""Exporters of a runtime's runs and metrics: OpenTelemetry traces and metrics, Prometheus text.

::

    from nbagent.exporters import enable_otel, serve_prometheus, to_prometheus

    enable_otel(rt, endpoint="http://127.0.0.1:6006")   # each finished run -> one trace (Phoenix, Jaeger...)
    print(to_prometheus(rt.metrics.global_))            # the text exposition format
    server = await serve_prometheus(rt, port=9464)      # GET http://127.0.0.1:9464/metrics

Nothing here imports opentelemetry until export is turned on (:func:`autostart` only reads the environment and
the settings). See docs/observability.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .otel_config import otel_options, otel_requested

if TYPE_CHECKING:  # pragma: no cover
    from ..runtime import Runtime
    from .otel import OtelExporter, enable_otel
    from .prometheus import PrometheusServer, serve_prometheus, to_prometheus

__all__ = ["OtelExporter", "PrometheusServer", "autostart", "enable_otel", "otel_options", "otel_requested",
           "serve_prometheus", "to_prometheus"]

_LAZY = {"OtelExporter": "otel", "enable_otel": "otel", "PrometheusServer": "prometheus",
         "serve_prometheus": "prometheus", "to_prometheus": "prometheus"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def autostart(rt: Runtime, table: dict[str, Any] | None = None) -> None:
    """Turn OpenTelemetry export on for ``rt`` when the environment or ``table`` (the settings' ``[otel]``)
    asks for it (the rule is in :mod:`nbagent.exporters.otel_config`); a no-op, importing nothing, otherwise."""
    if rt.part_if_started("otel") is not None or not otel_requested(table):
        return
    try:
        from .otel import enable_otel
    except ImportError as exc:
        raise ImportError(f"OpenTelemetry export is on but its packages are missing ({exc.name}): "
                          "pip install 'nbagent[otel]', or set NBAGENT_OTEL=0") from exc
    enable_otel(rt)
