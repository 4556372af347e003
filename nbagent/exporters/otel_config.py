"""When OpenTelemetry export is on, and with which options (no opentelemetry import here).

The rule, first match wins:

1. ``NBAGENT_OTEL=0`` (``off``/``false``/``no``) or ``OTEL_SDK_DISABLED=true``: off.
2. ``NBAGENT_OTEL=1`` (``on``/``true``/``yes``): on.
3. ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set: on.
4. The settings' ``[otel]`` table has ``enabled = true`` or an ``endpoint``: on (``enabled = false`` is off).
5. Otherwise off: nothing is imported and runs cost nothing more.

Options: ``endpoint`` (the OTLP/HTTP base URL, ``/v1/traces`` is added; default: the standard variables, else
``http://localhost:4318``), ``headers`` (a table, or ``OTEL_EXPORTER_OTLP_HEADERS``), ``service_name``
(default ``OTEL_SERVICE_NAME``, else ``nbagent``), ``project`` (Phoenix's project; default
``PHOENIX_PROJECT_NAME``), ``provider`` (``gen_ai.provider.name``, default ``openai``) and ``metrics`` (also
export OTel metrics; default on when ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` is set).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["otel_options", "otel_requested"]

_TRUE = ("1", "on", "true", "yes")
_FALSE = ("0", "off", "false", "no")
OPTION_NAMES = ("enabled", "endpoint", "headers", "service_name", "project", "provider", "metrics")


def _flag(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{what} must be true or false, got {value!r}")


def otel_requested(table: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether export is on, by the rule of this module's docstring (``table``: the settings' ``[otel]``)."""
    env = os.environ if env is None else env
    switch = env.get("NBAGENT_OTEL", "").strip().lower()
    if switch in _FALSE or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if switch in _TRUE:
        return True
    if switch:
        raise ValueError(f"NBAGENT_OTEL must be 1 or 0, got {env['NBAGENT_OTEL']!r}")
    if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return True
    table = table or {}
    if "enabled" in table:
        return _flag(table["enabled"], "[otel] enabled")
    return bool(table.get("endpoint"))


def otel_options(table: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """The exporter's options: ``overrides`` (None ignored) over the ``[otel]`` table over the environment."""
    env = os.environ if env is None else env
    table = dict(table or {})
    unknown = set(table) - set(OPTION_NAMES)
    if unknown:
        raise ValueError(f"unknown [otel] setting(s): {', '.join(sorted(unknown))}; known: {', '.join(OPTION_NAMES)}")
    opts: dict[str, Any] = {
        "endpoint": None, "headers": None, "service_name": env.get("OTEL_SERVICE_NAME") or None,
        "project": env.get("PHOENIX_PROJECT_NAME") or None, "provider": "openai",
        "metrics": bool(env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")),
    }
    opts.update({k: v for k, v in table.items() if k != "enabled"})
    opts.update({k: v for k, v in overrides.items() if v is not None})
    opts["metrics"] = _flag(opts["metrics"], "otel metrics")
    opts["service_name"] = opts["service_name"] or "nbagent"
    return opts


def traces_url(endpoint: str) -> str:
    """``endpoint`` (an OTLP/HTTP base URL, or the full traces URL) as the traces URL."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def metrics_url(endpoint: str) -> str:
    """``endpoint`` (an OTLP/HTTP base URL, or a full traces URL) as the metrics URL."""
    endpoint = endpoint.rstrip("/").removesuffix("/v1/traces").removesuffix("/v1/metrics")
    return endpoint + "/v1/metrics"
