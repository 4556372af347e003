"""Counters, gauges and histograms fed from the event bus.

A :class:`MetricsRegistry` holds named metrics, created on first use. ``registry.attach(bus)`` taps an
:class:`~nbagent.events.EventBus` so every event updates the metrics inline; ``observe`` dispatches on
``type(event)`` with one dict lookup, so the cost per event is a few hundred nanoseconds per metric touched.
:class:`~nbagent.metrics.index.RunMetricsIndex` keeps one global registry plus one per ``run_id`` (bounded LRU).

Registries are JSON-safe and mergeable (``to_dict`` / ``from_dict`` / ``merge``), so metrics gathered in
several processes or workers fan in to one.

The built-in event -> metric mapping, with each metric's unit, is in :mod:`nbagent.metrics.builtin`; the
metric types in :mod:`nbagent.metrics.counters` and :mod:`nbagent.metrics.histogram`; the handler tables in
:mod:`nbagent.metrics.handlers` (their names are re-exported here).

Other packages add their own mappings with :func:`register_handler` (every registry) or
:meth:`MetricsRegistry.register` / :meth:`RunMetricsIndex.register` (one registry or one index). A handler is
a plain function ``handler(registry, event) -> None`` that updates metrics through ``registry.counter(name)``,
``registry.gauge(name)`` and ``registry.histogram(name)``. A handler registered for a base class also sees the
events of its subclasses (a handler for :class:`~nbagent.events.Event` sees everything).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from nbagent.events import Event, EventBus
from nbagent.metrics.counters import Counter, Gauge, Metric
from nbagent.metrics.handlers import DEFAULT_HANDLERS, Handler, HandlerTable, register_handler
from nbagent.metrics.histogram import DEFAULT_ACCURACY, Histogram

if TYPE_CHECKING:
    import pandas

__all__ = [
    "DEFAULT_HANDLERS",
    "Counter",
    "Gauge",
    "Handler",
    "HandlerTable",
    "Metric",
    "MetricsRegistry",
    "register_handler",
]

# --- the registry ---------------------------------------------------------------------------------


class MetricsRegistry:
    """Named counters, gauges and histograms, created on first use and updated from events.

    A name belongs to one metric type: asking for ``counter("x")`` after ``histogram("x")`` raises
    ``ValueError``. ``accuracy`` is the relative accuracy of the histograms this registry creates.
    """

    def __init__(self, accuracy: float = DEFAULT_ACCURACY, *, handlers: HandlerTable | None = None) -> None:
        Histogram(accuracy)  # validate early
        self.accuracy = accuracy
        self._histograms: dict[str, Histogram] = {}
        self._counters: dict[str, Counter] = {}
        self._gauges: dict[str, Gauge] = {}
        self._table = handlers if handlers is not None else DEFAULT_HANDLERS
        self._dispatch = self._table.dispatch
        self._own_table = False
        self.memo: dict[Any, Any] = {}
        """Scratch space for handlers to cache metric objects by key (cleared with the metrics)."""
        self.units: dict[str, str] = {}
        """The unit of each metric that declared one (``s``, ``tokens``, ``USD``, ``steps``...)."""

    # --- metric access ----------------------------------------------------------------------------

    def histogram(self, name: str, accuracy: float | None = None, *, unit: str = "s") -> Histogram:
        """The histogram called ``name``, created (with ``accuracy`` or the registry's, in ``unit``) if new."""
        h = self._histograms.get(name)
        if h is None:
            self._check_free(name, self._histograms)
            h = self._histograms[name] = Histogram(self.accuracy if accuracy is None else accuracy)
            self.units[name] = unit
        return h

    def counter(self, name: str, *, unit: str = "") -> Counter:
        """The counter called ``name``, created at 0 (counting ``unit``) if new."""
        c = self._counters.get(name)
        if c is None:
            self._check_free(name, self._counters)
            c = self._counters[name] = Counter()
            if unit:
                self.units[name] = unit
        return c

    def gauge(self, name: str, *, unit: str = "") -> Gauge:
        """The gauge called ``name``, created at 0 (measuring ``unit``) if new."""
        g = self._gauges.get(name)
        if g is None:
            self._check_free(name, self._gauges)
            g = self._gauges[name] = Gauge()
            if unit:
                self.units[name] = unit
        return g

    def unit(self, name: str) -> str:
        """The unit of metric ``name`` (``""`` for a plain count)."""
        return self.units.get(name, "s" if name in self._histograms else "")

    def _check_free(self, name: str, own: dict[str, Any]) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"metric names are non-empty strings, got {name!r}")
        for kind, d in (("histogram", self._histograms), ("counter", self._counters), ("gauge", self._gauges)):
            if d is not own and name in d:
                raise ValueError(f"metric {name!r} already exists as a {kind}")

    def get(self, name: str) -> Metric | None:
        """The metric called ``name`` of whatever type, or None (never creates one)."""
        return self._counters.get(name) or self._histograms.get(name) or self._gauges.get(name)

    def value(self, name: str, default: float = 0) -> float:
        """A counter's or gauge's value, or ``default`` when there is no such metric (never creates one)."""
        m = self._counters.get(name) or self._gauges.get(name)
        return default if m is None else m.value

    @property
    def histograms(self) -> Mapping[str, Histogram]:
        """Read-only view of the histograms by name."""
        return MappingProxyType(self._histograms)

    @property
    def counters(self) -> Mapping[str, Counter]:
        """Read-only view of the counters by name."""
        return MappingProxyType(self._counters)

    @property
    def gauges(self) -> Mapping[str, Gauge]:
        """Read-only view of the gauges by name."""
        return MappingProxyType(self._gauges)

    def names(self) -> list[str]:
        """Every metric name, sorted."""
        return sorted([*self._histograms, *self._counters, *self._gauges])

    def __contains__(self, name: object) -> bool:
        return name in self._counters or name in self._histograms or name in self._gauges

    def __len__(self) -> int:
        return len(self._histograms) + len(self._counters) + len(self._gauges)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def clear(self) -> None:
        """Forget every metric."""
        self._histograms.clear()
        self._counters.clear()
        self._gauges.clear()
        self.memo.clear()
        self.units.clear()

    # --- events -----------------------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """Update the metrics from one event (events with no mapping are ignored)."""
        try:
            handler = self._dispatch[type(event)]
        except KeyError:
            handler = self._table.resolve(type(event))
        if handler is not None:
            handler(self, event)

    def attach(self, bus: EventBus) -> Callable[[], None]:
        """Tap ``bus`` so that every event it emits is observed. Returns a function that detaches again."""
        return bus.tap(self.observe)

    def register(self, event_type: type[Event], handler: Handler) -> Callable[[], None]:
        """Add an event -> metric mapping to this registry only (on top of the shared ones).

        Returns a function that removes it again.
        """
        if not self._own_table:
            self._table = HandlerTable(parent=self._table)
            self._dispatch = self._table.dispatch
            self._own_table = True
        return self._table.register(event_type, handler)

    def hit_rate(self, cache: str = "response") -> float | None:
        """``hits / (hits + misses)`` of the cache called ``cache``, or None before any lookup."""
        hits = self.value(f"cache.{cache}.hits")
        misses = self.value(f"cache.{cache}.misses")
        total = hits + misses
        return hits / total if total else None

    # --- export and fan-in ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """A JSON-safe view: histogram summaries, counter values, gauge ``{"value", "max"}``."""
        return {
            "histograms": {n: self._histograms[n].summary() for n in sorted(self._histograms)},
            "counters": {n: self._counters[n].value for n in sorted(self._counters)},
            "gauges": {n: {"value": g.value, "max": g.max} for n, g in sorted(self._gauges.items())},
            "units": dict(sorted(self.units.items())),
        }

    def to_dict(self) -> dict[str, Any]:
        """A lossless JSON-safe dict; :meth:`from_dict` rebuilds the registry and :meth:`merge` adds it up."""
        return {
            "accuracy": self.accuracy,
            "histograms": {n: h.to_dict() for n, h in sorted(self._histograms.items())},
            "counters": {n: c.value for n, c in sorted(self._counters.items())},
            "gauges": {n: {"value": g.value, "max": g.max} for n, g in sorted(self._gauges.items())},
            "units": dict(sorted(self.units.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, handlers: HandlerTable | None = None) -> MetricsRegistry:
        """Rebuild a registry from :meth:`to_dict` output."""
        reg = cls(float(data.get("accuracy", DEFAULT_ACCURACY)), handlers=handlers)
        for name, h in data.get("histograms", {}).items():
            reg._check_free(name, reg._histograms)
            reg._histograms[name] = Histogram.from_dict(h)
        for name, v in data.get("counters", {}).items():
            reg.counter(name).value = v
        for name, g in data.get("gauges", {}).items():
            gauge = reg.gauge(name)
            gauge.value = g["value"]
            gauge._peak = -math.inf if g.get("max") is None else g["max"]
        reg.units.update(data.get("units", {}))
        return reg

    def merge(self, other: MetricsRegistry | Mapping[str, Any]) -> MetricsRegistry:
        """Add ``other`` (a registry or its ``to_dict()``) into this one, in place; returns ``self``.

        Histograms merge bucket by bucket (same accuracy required), counters add up, gauges merge as
        described in :class:`Gauge`.
        """
        if not isinstance(other, MetricsRegistry):
            other = MetricsRegistry.from_dict(other)
        for name, h in other._histograms.items():
            mine = self._histograms.get(name)
            if mine is None:
                self.histogram(name, h.accuracy).merge(h)
            else:
                mine.merge(h)
        for name, c in other._counters.items():
            self.counter(name).merge(c)
        for name, g in other._gauges.items():
            self.gauge(name).merge(g)
        for name, u in other.units.items():
            self.units.setdefault(name, u)
        return self

    def to_prometheus(self, prefix: str = "nbagent") -> str:
        """These metrics in the Prometheus text format (see :func:`nbagent.exporters.to_prometheus`)."""
        from nbagent.exporters.prometheus import to_prometheus

        return to_prometheus(self, prefix=prefix)

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per metric, sorted by name (needs pandas).

        Columns: ``name, type, count, mean, p50, p95, p99, min, max, value``. ``value`` is a counter's total,
        a gauge's current value, or a histogram's sum; ``max`` is a gauge's peak. Cells that do not apply are
        empty (NaN / None).
        """
        import pandas as pd

        columns = ["name", "type", "count", "mean", "p50", "p95", "p99", "min", "max", "value"]
        rows: list[dict[str, Any]] = []
        for name, h in self._histograms.items():
            s = h.summary()
            rows.append(
                {
                    "name": name,
                    "type": "histogram",
                    "count": s["count"],
                    "mean": s["mean"],
                    "p50": s["p50"],
                    "p95": s["p95"],
                    "p99": s["p99"],
                    "min": s["min"],
                    "max": s["max"],
                    "value": s["sum"],
                }
            )
        for name, c in self._counters.items():
            rows.append({"name": name, "type": "counter", "value": c.value})
        for name, g in self._gauges.items():
            rows.append({"name": name, "type": "gauge", "max": g.max, "value": g.value})
        rows.sort(key=lambda r: r["name"])
        df = pd.DataFrame(rows, columns=columns)
        return df.astype({"count": "Int64"})

    def __repr__(self) -> str:
        return (
            f"MetricsRegistry(histograms={len(self._histograms)}, counters={len(self._counters)}, "
            f"gauges={len(self._gauges)})"
        )
