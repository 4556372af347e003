"""What a load test returns: :class:`BenchResult`, with text, JSON, CSV, HTML and plotly views.

plotly is imported only by :meth:`BenchResult.figure` (the notebook report); nothing else here needs it.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..metrics.histogram import Histogram

if TYPE_CHECKING:
    from .runner import _Collector

__all__ = ["PHASES", "BenchResult"]

#: Phases of a run with a latency distribution: the whole run, each model call (and its time to first
#: token when streaming), each tool call, sandbox lease waits, cache lookups, and the framework's overhead.
PHASES = ("run", "llm", "ttft", "tool", "sandbox_wait", "cache_lookup", "overhead")
_STATS = ("count", "mean", "p50", "p95", "p99", "max")


def _phase_summary(h: Histogram) -> dict[str, Any]:
    p50, p95, p99 = h.quantiles((0.5, 0.95, 0.99))
    return {"count": h.count, "mean": h.mean, "p50": p50, "p95": p95, "p99": p99, "max": h.max}


@dataclass
class BenchResult:
    """Figures of one load test. Times are seconds; ``throughput`` is finished runs per second."""

    completed: int
    duration: float
    throughput: float
    llm_calls_per_second: float
    statuses: dict[str, int]
    latency: dict[str, dict[str, Any]]
    retries: dict[str, int]
    llm_errors: dict[str, int]
    stop_reasons: dict[str, int]
    counts: dict[str, int]
    cache_hit_rate: float | None
    sandbox: dict[str, Any]
    memory: dict[str, Any]
    timeline: list[dict[str, float]] = field(default_factory=list, repr=False)
    time_totals: dict[str, float] = field(default_factory=dict, repr=False)
    timed_out: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    pool: dict[str, Any] = field(default_factory=dict, repr=False)
    budgets: list[dict[str, Any]] = field(default_factory=list)
    breaches: list[dict[str, Any]] = field(default_factory=list, repr=False)
    histograms: dict[str, Histogram] = field(default_factory=dict, repr=False)

    @classmethod
    def from_collector(cls, c: _Collector, *, duration: float, completed: int, timed_out: bool,
                       stop_reasons: dict[str, int], timeline: list[dict[str, float]],
                       time_totals: dict[str, float], memory_growth: int | None, peak_in_flight: int) -> BenchResult:
        counts = dict(c.counts)
        hits = sum(v for k, v in counts.items() if k.startswith("cache_hits."))
        misses = sum(v for k, v in counts.items() if k.startswith("cache_misses."))
        leases = counts.get("sandbox_leases", 0)
        wait = c.phases["sandbox_wait"]
        sandbox = {
            "leases": leases,
            "waited": counts.get("sandbox_waited", 0),
            "contention": counts.get("sandbox_waited", 0) / leases if leases else None,
            "timeouts": counts.get("sandbox_timeouts", 0),
            "wait_p95": wait.p95,
            "waiting_peak": c.waiting_peak,
        }
        memory = {
            "rss_growth": memory_growth,
            "peak_in_flight": peak_in_flight,
            "per_in_flight_run": (memory_growth / peak_in_flight) if (memory_growth and peak_in_flight) else None,
        }
        return cls(
            completed=completed, duration=duration, throughput=completed / duration if duration else 0.0,
            llm_calls_per_second=counts.get("llm_calls", 0) / duration if duration else 0.0,
            statuses=dict(c.statuses), latency={p: _phase_summary(h) for p, h in c.phases.items()},
            retries=dict(c.retries), llm_errors=dict(c.llm_errors), stop_reasons=stop_reasons, counts=counts,
            cache_hit_rate=hits / (hits + misses) if (hits + misses) else None, sandbox=sandbox, memory=memory,
            timeline=timeline, time_totals=time_totals, timed_out=timed_out, histograms=dict(c.phases),
        )

    # --- figures -----------------------------------------------------------------------------------

    @property
    def ok(self) -> int:
        return self.statuses.get("ok", 0)

    @property
    def errors(self) -> int:
        """Runs that did not end ``ok``."""
        return sum(v for k, v in self.statuses.items() if k != "ok")

    @property
    def retry_count(self) -> int:
        return sum(self.retries.values())

    @property
    def budgets_ok(self) -> bool:
        return all(b.get("ok") is not False for b in self.budgets)

    # --- views -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (histograms as their summaries)."""
        return {
            "config": self.config, "completed": self.completed, "duration": self.duration,
            "throughput": self.throughput, "llm_calls_per_second": self.llm_calls_per_second,
            "statuses": self.statuses, "errors": self.errors, "retries": self.retries,
            "retry_count": self.retry_count, "llm_errors": self.llm_errors, "stop_reasons": self.stop_reasons,
            "latency": self.latency, "cache_hit_rate": self.cache_hit_rate, "sandbox": self.sandbox,
            "memory": self.memory, "counts": self.counts, "pool": self.pool, "budgets": self.budgets,
            "breaches": self.breaches, "timed_out": self.timed_out, "time_totals": self.time_totals,
            "timeline": self.timeline,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """The result as JSON; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, default=str)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    def to_csv(self, path: str | Path | None = None) -> str:
        """One row per phase: ``phase, count, mean, p50, p95, p99, max`` (seconds); also to ``path``."""
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["phase", *_STATS])
        for phase in PHASES:
            s = self.latency.get(phase, {})
            w.writerow([phase, *("" if s.get(k) is None else s.get(k) for k in _STATS)])
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    def summary(self) -> str:
        """A few lines of text: the figures that matter."""
        c = self.config
        lines = [
            f"{self.completed} runs at concurrency {c.get('concurrency', '?')} in {self.duration:.2f} s: "
            f"{self.throughput:.1f} runs/s, {self.llm_calls_per_second:.1f} model calls/s",
            "status: " + ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
            + f"; retries {self.retry_count}" + (f" ({_fmt_counts(self.retries)})" if self.retries else "")
            + (f"; model errors {_fmt_counts(self.llm_errors)}" if self.llm_errors else ""),
            f"{'phase':<13}{'count':>8}{'p50':>10}{'p95':>10}{'p99':>10}{'max':>10}",
        ]
        for phase in PHASES:
            s = self.latency.get(phase, {})
            if not s.get("count"):
                continue
            lines.append(f"{phase:<13}{s['count']:>8}" + "".join(f"{_ms(s.get(k)):>10}" for k in ("p50", "p95",
                                                                                                  "p99", "max")))
        extra = []
        if self.cache_hit_rate is not None:
            extra.append(f"cache hit rate {self.cache_hit_rate:.1%}")
        if self.sandbox.get("leases"):
            extra.append(f"sandbox leases {self.sandbox['leases']}, waited {self.sandbox['waited']}, "
                         f"timeouts {self.sandbox['timeouts']}")
        if self.memory.get("per_in_flight_run"):
            extra.append(f"memory {self.memory['per_in_flight_run'] / 1024:.0f} KiB per in-flight run")
        if extra:
            lines.append("; ".join(extra))
        for b in self.budgets:
            state = "ok" if b["ok"] else ("OVER" if b["ok"] is False else "n/a")
            value = "n/a" if b["value"] is None else f"{b['value']:.4g}"
            lines.append(f"budget {b['budget']}: {state} (value {value}, limit {b['limit']:.4g})")
        if self.timed_out:
            lines.append("timed out: the runs still in flight were cancelled")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def to_html(self) -> str:
        """An HTML report without plotly: headline figures and the per-phase latency table."""
        head = (f"<p><b>{self.completed}</b> runs, concurrency <b>{self.config.get('concurrency', '?')}</b>, "
                f"{self.duration:.2f} s: <b>{self.throughput:.1f}</b> runs/s, {self.llm_calls_per_second:.1f} "
                f"model calls/s; errors <b>{self.errors}</b>, retries <b>{self.retry_count}</b>"
                + (f", cache hit rate {self.cache_hit_rate:.1%}" if self.cache_hit_rate is not None else "")
                + "</p>")
        rows = "".join(
            f"<tr><td>{p}</td><td>{self.latency[p]['count']}</td>"
            + "".join(f"<td>{_ms(self.latency[p].get(k))}</td>" for k in ("p50", "p95", "p99", "max")) + "</tr>"
            for p in PHASES if self.latency.get(p, {}).get("count"))
        table = ("<table><thead><tr><th>phase</th><th>count</th><th>p50</th><th>p95</th><th>p99</th><th>max</th>"
                 f"</tr></thead><tbody>{rows}</tbody></table>")
        budgets = ""
        if self.budgets:
            budgets = "<ul>" + "".join(
                f"<li>{b['budget']}: {'ok' if b['ok'] else 'OVER' if b['ok'] is False else 'n/a'}</li>"
                for b in self.budgets) + "</ul>"
        return f"<div class='nbagent-bench'>{head}{table}{budgets}</div>"

    def _repr_html_(self) -> str:
        return self.to_html()

    def figure(self) -> Any:
        """A plotly figure: latency percentiles per phase, and throughput / in-flight runs over time."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=("latency per phase (ms)", "progress over time"),
                            specs=[[{}, {"secondary_y": True}]])
        phases = [p for p in PHASES if self.latency.get(p, {}).get("count")]
        for q in ("p50", "p95", "p99"):
            fig.add_trace(go.Bar(name=q, x=phases, y=[(self.latency[p].get(q) or 0) * 1000 for p in phases]),
                          row=1, col=1)
        t = [p["t"] for p in self.timeline]
        rate = [0.0]
        for a, b in zip(self.timeline, self.timeline[1:], strict=False):
            dt = b["t"] - a["t"]
            rate.append((b["completed"] - a["completed"]) / dt if dt > 0 else 0.0)
        fig.add_trace(go.Scatter(name="runs/s", x=t, y=rate, mode="lines"), row=1, col=2)
        fig.add_trace(go.Scatter(name="in flight", x=t, y=[p["in_flight"] for p in self.timeline], mode="lines",
                                 line={"dash": "dot"}), row=1, col=2, secondary_y=True)
        fig.update_layout(barmode="group", height=380, margin={"t": 40, "b": 30, "l": 40, "r": 40},
                          title=f"{self.completed} runs at concurrency {self.config.get('concurrency', '?')}: "
                                f"{self.throughput:.1f} runs/s")
        fig.update_xaxes(title_text="seconds", row=1, col=2)
        return fig


def _ms(v: float | None) -> str:
    return "" if v is None else f"{v * 1000:.1f} ms"


def _fmt_counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(d.items()))
