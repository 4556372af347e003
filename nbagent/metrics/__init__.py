"""Metrics fed from the event bus: log-bucketed histograms, counters, gauges, per-run and global registries.

::

    index = RunMetricsIndex()
    detach = index.attach(bus)
    ...
    index.global_.snapshot()             # JSON-safe summaries
    index.for_run(run_id).to_dataframe()  # one row per metric (needs pandas)
    index.global_.hit_rate("response")

The built-in metric names, and how each event updates them, are listed in :mod:`nbagent.metrics.builtin`.
Histogram accuracy and quantile semantics are described in :mod:`nbagent.metrics.histogram`.
"""

from __future__ import annotations

from nbagent.metrics import builtin as _builtin  # noqa: F401, I001 - registers the built-in mapping
from nbagent.metrics.histogram import DEFAULT_ACCURACY, Histogram
from nbagent.metrics.index import RunMetricsIndex
from nbagent.metrics.registry import (
    DEFAULT_HANDLERS,
    Counter,
    Gauge,
    Handler,
    HandlerTable,
    Metric,
    MetricsRegistry,
    register_handler,
)

__all__ = [
    "DEFAULT_ACCURACY",
    "DEFAULT_HANDLERS",
    "Counter",
    "Gauge",
    "Handler",
    "HandlerTable",
    "Histogram",
    "Metric",
    "MetricsRegistry",
    "RunMetricsIndex",
    "register_handler",
]
