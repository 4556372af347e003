"""Performance budgets: declared limits checked against every run and against the metrics of many runs.

::

    budgets = parse_budgets("p95 latency <= 2s, tokens <= 4000, memory <= 50MB")
    monitor = BudgetMonitor(budgets)
    monitor.attach(bus)          # every RunFinished is checked; a breach emits BudgetBreached and logs a warning
    monitor.status()             # one row per budget, for a dashboard: value, limit, ok

A :class:`Budget` names a per-run measure, a statistic and a limit:

* measures: ``latency`` (run wall time, s), ``tokens`` (input + output), ``cost`` (USD), ``steps``,
  ``memory`` (bytes; the growth of the process's resident set during the run, measured, not estimated:
  exact for a run alone, an upper bound when runs overlap);
* statistics: ``max`` checks each run as it ends; ``mean``, ``p50``, ``p90``, ``p95``, ``p99`` check the
  distribution over the runs seen so far (once ``min_runs`` runs have ended).

A per-run breach emits a :class:`BudgetBreached` event for that run; a distribution budget emits one when it
goes from within to over its limit (not again until it has recovered). Each breach is also logged as a
warning on the ``nbagent.budgets`` logger, which notebooks show under the cell.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from ..events import Event, EventBus, RunFinished, RunStarted, _frozen
from .histogram import Histogram
from .profile import rss_bytes

__all__ = ["MEASURES", "STATS", "Budget", "BudgetBreached", "BudgetMonitor", "parse_budgets"]

log = logging.getLogger("nbagent.budgets")

MEASURES = ("latency", "tokens", "cost", "steps", "memory")
STATS = ("max", "mean", "p50", "p90", "p95", "p99")
_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
_UNITS = {"ms": 1e-3, "s": 1.0, "m": 60.0, "k": 1e3, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20,
          "gib": 2**30, "b": 1.0, "$": 1.0, "usd": 1.0, "": 1.0}


@dataclass(**_frozen)  # type: ignore[call-overload]
class BudgetBreached(Event):
    """A budget was exceeded: by one run (``stat == "max"``) or by the distribution of ``runs`` runs."""

    kind: ClassVar[str] = "budget_breached"
    budget: str = ""
    metric: str = ""
    stat: str = "max"
    value: float = 0.0
    limit: float = 0.0
    runs: int = 0


@dataclass(frozen=True)
class Budget:
    """``stat`` of ``metric`` must stay ``<= limit``."""

    metric: str
    limit: float
    stat: str = "max"
    min_runs: int = 10

    def __post_init__(self) -> None:
        if self.metric not in MEASURES:
            raise ValueError(f"unknown budget measure {self.metric!r}; expected one of {', '.join(MEASURES)}")
        if self.stat not in STATS:
            raise ValueError(f"unknown budget statistic {self.stat!r}; expected one of {', '.join(STATS)}")

    @property
    def name(self) -> str:
        return f"{self.stat} {self.metric} <= {self.limit:g}"

    def value_of(self, hist: Histogram) -> float | None:
        """The budget's statistic over ``hist``."""
        if self.stat == "max":
            return hist.max
        if self.stat == "mean":
            return hist.mean
        return hist.quantile(_QUANTILES[self.stat])


def parse_budgets(spec: str | Iterable[str | Budget]) -> list[Budget]:
    """Budgets from text such as ``"p95 latency <= 2s, tokens <= 4000, memory < 50MB"``.

    Each item is ``[stat] measure <= value[unit]`` (``<`` works too; the default stat is ``max``). Units:
    ``ms s m`` for latency, ``k`` for counts, ``KB MB GB KiB MiB GiB`` for memory, ``$`` for cost.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Budget] = []
    for item in items:
        if isinstance(item, Budget):
            out.append(item)
            continue
        text = item.strip()
        if not text:
            continue
        m = re.fullmatch(r"(?:(?P<stat>\w+)\s+)?(?P<metric>\w+)\s*(?:<=|<|=)\s*\$?\s*(?P<value>[\d.]+(?:e-?\d+)?)"
                         r"\s*(?P<unit>[A-Za-z$]*)", text)
        if not m:
            raise ValueError(f"cannot read a budget from {text!r}: write e.g. 'p95 latency <= 2s'")
        unit = m.group("unit").lower()
        if unit not in _UNITS:
            raise ValueError(f"unknown unit {m.group('unit')!r} in budget {text!r}")
        out.append(Budget(metric=m.group("metric").lower(), limit=float(m.group("value")) * _UNITS[unit],
                          stat=(m.group("stat") or "max").lower()))
    return out


def _measure(ev: RunFinished, rss_delta: float | None) -> dict[str, float]:
    out = {"latency": ev.duration, "tokens": float(ev.input_tokens + ev.output_tokens), "steps": float(ev.steps)}
    if ev.cost is not None:  # a run with no known price has no cost to check
        out["cost"] = ev.cost
    if rss_delta is not None:
        out["memory"] = max(rss_delta, 0.0)
    return out


class BudgetMonitor:
    """Checks budgets on every run that finishes on the buses it is attached to (see the module docs)."""

    def __init__(self, budgets: str | Iterable[str | Budget], *, memory: bool = True,
                 on_breach: Callable[[BudgetBreached], None] | None = None) -> None:
        self.budgets = parse_budgets(budgets)
        self.memory = memory and any(b.metric == "memory" for b in self.budgets)
        self.on_breach = on_breach
        self.histograms: dict[str, Histogram] = {m: Histogram() for m in MEASURES}
        self.breaches: list[BudgetBreached] = []
        self._over: set[Budget] = set()
        self._warned: set[Budget] = set()
        self._rss0: dict[str, int] = {}
        self._buses: list[EventBus] = []
        self.runs = 0

    def attach(self, bus: EventBus) -> Callable[[], None]:
        """Check the runs of ``bus`` from now on; returns a function that detaches."""
        self._buses.append(bus)
        remove = bus.tap(self._on_event)

        def detach() -> None:
            remove()
            if bus in self._buses:
                self._buses.remove(bus)

        return detach

    def _on_event(self, ev: Event) -> None:
        cls = type(ev)
        if cls is RunStarted:
            if self.memory and ev.run_id is not None:
                rss = rss_bytes()
                if rss is not None:
                    self._rss0[ev.run_id] = rss
        elif cls is RunFinished:
            self.observe(ev)  # type: ignore[arg-type]

    def observe(self, ev: RunFinished) -> list[BudgetBreached]:
        """Record one finished run and check every budget; returns the breaches it caused."""
        rss_delta: float | None = None
        start = self._rss0.pop(ev.run_id, None) if ev.run_id is not None else None
        if start is not None:
            now = rss_bytes()
            rss_delta = float(now - start) if now is not None else None
        values = _measure(ev, rss_delta)
        for name, v in values.items():
            self.histograms[name].record(v)
        self.runs += 1
        found: list[BudgetBreached] = []
        for b in self.budgets:
            if b.stat == "max":
                this = values.get(b.metric)
                if this is not None and this > b.limit:
                    found.append(self._breach(b, this, ev.run_id, 1))
                continue
            hist = self.histograms[b.metric]
            if hist.count < b.min_runs:
                continue
            value = b.value_of(hist)
            if value is None:
                continue
            if value > b.limit and b not in self._over:
                self._over.add(b)
                found.append(self._breach(b, value, ev.run_id, hist.count))
            elif value <= b.limit:
                self._over.discard(b)
        return found

    def _breach(self, b: Budget, value: float, run_id: str | None, runs: int) -> BudgetBreached:
        ev = BudgetBreached(run_id=run_id, budget=b.name, metric=b.metric, stat=b.stat, value=value, limit=b.limit,
                            runs=runs)
        self.breaches.append(ev)
        if b.stat != "max":
            log.warning("budget exceeded: %s over %d runs: %.6g", b.name, runs, value)
        elif b not in self._warned:  # one warning per budget; every breach is still an event
            self._warned.add(b)
            log.warning("budget exceeded: %s (run %s: %.6g); further runs over it are counted in "
                        "BudgetBreached events, not logged", b.name, run_id, value)
        for bus in self._buses:
            bus.emit(ev)
        if self.on_breach is not None:
            self.on_breach(ev)
        return ev

    def status(self) -> list[dict[str, Any]]:
        """One dict per budget: ``budget, metric, stat, limit, value, runs, ok`` (value None before data)."""
        rows = []
        for b in self.budgets:
            hist = self.histograms[b.metric]
            enough = hist.count >= (1 if b.stat == "max" else b.min_runs)
            value = b.value_of(hist) if enough else None
            rows.append({"budget": b.name, "metric": b.metric, "stat": b.stat, "limit": b.limit, "value": value,
                         "runs": hist.count, "ok": None if value is None else value <= b.limit})
        return rows

    def ok(self) -> bool:
        """True when no budget is currently over its limit (a ``max`` budget: no run ever was)."""
        return all(row["ok"] is not False for row in self.status())
