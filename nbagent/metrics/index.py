"""One global metrics registry plus one per run, kept in a bounded LRU: what a runtime's ``metrics`` is."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from nbagent.events import Event, EventBus
from nbagent.metrics.histogram import DEFAULT_ACCURACY
from nbagent.metrics.registry import DEFAULT_HANDLERS, Handler, HandlerTable, MetricsRegistry

__all__ = ["RunMetricsIndex"]


class RunMetricsIndex:
    """One global registry plus one registry per ``run_id``, kept in a bounded LRU.

    Every event updates :attr:`global_`; events with a ``run_id`` also update that run's registry. When more
    than ``max_runs`` runs are held, the run whose last event is oldest is dropped (:attr:`evicted` counts
    them). All the registries share one :class:`HandlerTable` (a child of :data:`DEFAULT_HANDLERS`), so
    :meth:`register` applies to the global registry and to every run.
    """

    def __init__(self, max_runs: int = 1000, accuracy: float = DEFAULT_ACCURACY) -> None:
        if max_runs < 1:
            raise ValueError(f"max_runs must be >= 1, got {max_runs!r}")
        self.max_runs = max_runs
        self.accuracy = accuracy
        self.handlers = HandlerTable(parent=DEFAULT_HANDLERS)
        self.global_ = MetricsRegistry(accuracy, handlers=self.handlers)
        self._runs: OrderedDict[str, MetricsRegistry] = OrderedDict()
        self.evicted = 0

    def observe(self, event: Event) -> None:
        """Update the global registry and, if the event has a ``run_id``, that run's registry."""
        self.global_.observe(event)
        run_id = event.run_id
        if run_id is None:
            return
        runs = self._runs
        reg = runs.get(run_id)
        if reg is None:
            reg = runs[run_id] = MetricsRegistry(self.accuracy, handlers=self.handlers)
            if len(runs) > self.max_runs:
                runs.popitem(last=False)
                self.evicted += 1
        else:
            runs.move_to_end(run_id)
        reg.observe(event)

    def attach(self, bus: EventBus) -> Callable[[], None]:
        """Tap ``bus``. Returns a function that detaches again."""
        return bus.tap(self.observe)

    def register(self, event_type: type[Event], handler: Handler) -> Callable[[], None]:
        """Add an event -> metric mapping to the global registry and every run's. Returns an unregister function."""
        return self.handlers.register(event_type, handler)

    def to_prometheus(self, prefix: str = "nbagent") -> str:
        """The global metrics in the Prometheus text format (see :func:`nbagent.exporters.to_prometheus`)."""
        return self.global_.to_prometheus(prefix)

    def for_run(self, run_id: str) -> MetricsRegistry | None:
        """The registry of ``run_id``, or None if that run was never seen or has been evicted."""
        return self._runs.get(run_id)

    def run_ids(self) -> list[str]:
        """The runs held, least recently updated first."""
        return list(self._runs)

    def discard(self, run_id: str) -> MetricsRegistry | None:
        """Drop one run's registry (returning it), if held."""
        return self._runs.pop(run_id, None)

    def clear(self) -> None:
        """Forget every run and every global metric."""
        self._runs.clear()
        self.global_.clear()

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def __len__(self) -> int:
        return len(self._runs)

    def __repr__(self) -> str:
        return f"RunMetricsIndex(runs={len(self._runs)}, max_runs={self.max_runs}, evicted={self.evicted})"
