"""The live dashboard: latency histograms, tokens over time, response- and policy-cache hit rates, runs in flight,
loop lag, CPU, memory.

``%agent dashboard`` or ``nbagent.dashboard()``. One plotly ``FigureWidget`` (plotly renders it through
``anywidget``) and a header of figures, redrawn by the registry's ticker at most ``max_hz`` times a second
and only for what changed, inside one ``batch_update()`` (one message per redraw), so many concurrent runs
do not flood the frontend. Below the widget a static rendering (HTML with SVG bars) is kept up to date as
runs end, for viewers without a widget manager.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import os
import resource
import time
from collections import deque
from typing import Any

import ipywidgets as widgets
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from IPython.display import DisplayHandle, display
from plotly.subplots import make_subplots

from ..metrics import Histogram, MetricsRegistry
from ..record import format_cost
from .integrations import sandbox_stats
from .kernel import as_parent, current_parent, update_display
from .session import RunRegistry, current
from .static import fmt_seconds, histogram_edges, histogram_svg

__all__ = ["Dashboard", "dashboard"]

HISTOGRAMS = (("LLM latency", "llm.latency"), ("time to first token", "llm.ttft"), ("tool time", "tool.duration"),
              ("sandbox lease wait", "@wait"), ("sandbox exec", "@exec"), ("event-loop lag", "loop.lag"))
SERIES_PANELS = (("tokens / s", 0), ("in flight", 1), ("cache hit rate", 2), ("kernel CPU %", 3),
                 ("kernel memory MiB", 4), ("LLM calls / s", 5))
#: (trace name, panel): one trace per column of a sample after its time.
SERIES = (("input", 0), ("output", 0), ("cached", 0), ("runs", 1), ("tools", 1), ("responses", 2), ("CPU %", 3),
          ("MiB", 4), ("calls/s", 5), ("policy decisions", 2))
SPLITS = (None, "model", "tag")
_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def _span_values(rec: Any, name: str) -> list[float]:
    """The values a histogram of the dashboard takes from one run's record (its spans)."""
    if name in ("llm.latency", "llm.ttft"):
        key = "latency" if name == "llm.latency" else "ttft"
        return [float(s.attrs[key]) for s in rec.spans
                if s.kind == "model" and not s.attrs.get("cached") and s.attrs.get(key) is not None]
    kind = {"tool.duration": "tool", "@wait": "lease", "@exec": "exec"}.get(name)
    return [float(s.duration) for s in rec.spans if s.kind == kind and s.duration is not None] if kind else []


def split_histograms(records: list[Any], name: str, by: str) -> dict[str, Histogram]:
    """One histogram of ``name`` per model (``by="model"``) or per tag (``by="tag"``; untagged runs apart)."""
    out: dict[str, Histogram] = {}
    for rec in records:
        values = _span_values(rec, name)
        if not values:
            continue
        keys = [rec.model or "unknown model"] if by == "model" else list(rec.tags) or ["untagged"]
        for key in keys:
            out.setdefault(key, Histogram()).record_many(values)
    return out


def series_svg(title: str, seconds: list[float], lines: list[tuple[str, list[float | None]]], *,
               width: int = 260, height: int = 110, top: float | None = None) -> str:
    """Lines over time as inline SVG (no script): ``seconds`` since the first sample, one ``(name, values)`` per
    line (None: no value); titled with each line's last value (– while no line has one)."""
    span = (seconds[-1] - seconds[0] if seconds else 0.0) or 1.0
    high = top if top is not None else max((v for _, vs in lines for v in vs if v is not None), default=0.0)
    high = high if high > 0 else 1.0
    pad, plot_h = 16, height - 34
    scale = (width - 2 * pad) / span
    paths, last = [], []
    for k, (name, values) in enumerate(lines):
        color = _COLORS[k % len(_COLORS)]
        points = [f"{pad + (t - seconds[0]) * scale:.1f},{18 + plot_h - plot_h * min(v, high) / high:.1f}"
                  for t, v in zip(seconds, values, strict=True) if v is not None]
        if len(points) == 1:  # one sample: a dot
            x, y = points[0].split(",")
            paths.append(f'<circle cx="{x}" cy="{y}" r="2" fill="{color}"/>')
        elif points:
            paths.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{" ".join(points)}">'
                         f"<title>{html.escape(name)}</title></polyline>")
        value = next((v for v in reversed(values) if v is not None), None)
        if value is not None:
            last.append(f'<tspan fill="{color}">{html.escape(name)} {value:,.3g}</tspan>' if len(lines) > 1
                        else f"{value:,.3g}")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="nbagent-series" '
        f'data-title="{html.escape(title)}" style="border:1px solid #ddd;border-radius:4px;background:#fff;'
        f'display:inline-block;margin:2px 8px 2px 0">'
        f'<text x="{pad}" y="12" font-size="11"><tspan font-weight="600">{html.escape(title)}</tspan> '
        f'{" ".join(last) or "–"}</text>{"".join(paths)}'
        f'<line x1="{pad}" y1="{18 + plot_h}" x2="{width - pad}" y2="{18 + plot_h}" stroke="#999"/>'
        f'<text x="{pad}" y="{height - 3}" font-size="10">{html.escape(fmt_seconds(span))} shown</text>'
        f'<text x="{width - pad}" y="{height - 3}" font-size="10" text-anchor="end">max {high:,.3g}</text></svg>'
    )


def _template() -> Any:
    """A light template built here (loading a named one costs a noticeable pause on first use)."""
    return go.layout.Template(layout=dict(plot_bgcolor="#f7f7f9", font=dict(size=11),
                                          xaxis=dict(gridcolor="#e5e5e5"), yaxis=dict(gridcolor="#e5e5e5")))


class ProcessSampler:
    """CPU percent and resident memory of this process.

    CPU is this process's CPU time (``time.process_time``, nanosecond resolution) over the wall time since the
    previous sample. A sample less than ``min_interval`` seconds after the previous one gives the last figure
    again (``None`` before the first full interval): over a few milliseconds, CPU time counted in clock ticks
    reads as hundreds of percent. Memory is the resident set now (psutil), else the peak (``resource``).
    """

    def __init__(self, *, min_interval: float = 0.5, clock: Any = time.monotonic, cpu_clock: Any = time.process_time,
                 cpus: int | None = None) -> None:
        try:
            import psutil

            self._proc: Any = psutil.Process(os.getpid())
        except ImportError:  # pragma: no cover - psutil is part of the notebook extra
            self._proc = None
        self.min_interval = min_interval
        self._clock, self._cpu_clock = clock, cpu_clock
        self._cpus = cpus or os.cpu_count() or 1
        self._last = (clock(), cpu_clock())
        self._cpu: float | None = None

    def cpu(self) -> float | None:
        """CPU percent over the last interval of at least ``min_interval`` seconds (up to 100 per core)."""
        now, used = self._clock(), self._cpu_clock()
        wall = now - self._last[0]
        if wall >= self.min_interval:
            self._cpu = min(max(100.0 * (used - self._last[1]) / wall, 0.0), 100.0 * self._cpus)
            self._last = (now, used)
        return self._cpu

    def memory(self) -> float:
        """Resident MiB."""
        if self._proc is not None:
            return float(self._proc.memory_info().rss) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # pragma: no cover

    def sample(self) -> tuple[float | None, float]:
        """``(cpu percent, or None before the first interval; resident MiB)``."""
        return self.cpu(), self.memory()


def _hist(reg: MetricsRegistry, name: str) -> Histogram | None:
    if name.startswith("@"):
        name = "sandbox.lease_wait" if name == "@wait" else "sandbox.exec"
    return reg.histograms.get(name)


class Dashboard(widgets.VBox):
    """Figures of every run on the registry's bus. Display it; it refreshes itself while it lives."""

    def __init__(self, registry: RunRegistry | None = None, *, max_hz: float = 4.0, window: int = 120,
                 split: str | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be None, 'model' or 'tag', got {split!r}")
        self.registry = registry or current()
        self.split = split
        self._split_traces: dict[tuple[int, str], Any] = {}
        self.max_hz = max_hz
        self.header = widgets.HTML()
        self.header.add_class("nbagent-dashboard-header")
        titles = [t for t, _ in HISTOGRAMS] + [t for t, _ in SERIES_PANELS]
        fig = make_subplots(rows=4, cols=3, subplot_titles=titles, vertical_spacing=0.09, horizontal_spacing=0.07)
        for i, (title, _) in enumerate(HISTOGRAMS):
            fig.add_trace(go.Bar(x=[], y=[], name=title, marker_color="#1f77b4", showlegend=False),
                          row=i // 3 + 1, col=i % 3 + 1)
            fig.update_xaxes(title_text="seconds", row=i // 3 + 1, col=i % 3 + 1, title_standoff=2)
        legends = {}
        for k, panel in enumerate(sorted({p for n, p in SERIES if sum(1 for _, q in SERIES if q == p) > 1})):
            legends[panel] = "legend" if k == 0 else f"legend{k + 1}"  # one legend per panel with several lines
        for name, panel in SERIES:
            fig.add_trace(go.Scatter(x=[], y=[], name=name, mode="lines", showlegend=panel in legends,
                                     legend=legends.get(panel, "legend")),
                          row=panel // 3 + 3, col=panel % 3 + 1)
        fig.update_yaxes(range=[0, 1], row=3, col=3)
        fig.update_layout(height=860, margin=dict(l=40, r=10, t=30, b=30), bargap=0, barmode="overlay",
                          template=_template())
        for panel, legend in legends.items():  # each legend at the top right of its panel
            ax = fig.get_subplot(panel // 3 + 3, panel % 3 + 1)
            fig.update_layout({legend: dict(x=ax.xaxis.domain[1], y=ax.yaxis.domain[1], xanchor="right",
                                            yanchor="top", bgcolor="rgba(255,255,255,0.6)", font=dict(size=9))})
        self.figure = go.FigureWidget(fig)
        self.figure.add_class("nbagent-figure")
        self.figure.add_class("nbagent-histograms")
        super().__init__([self.header, self.figure], layout=widgets.Layout(width="100%"))
        self.add_class("nbagent-dashboard")
        self._samples: deque[tuple[Any, ...]] = deque(maxlen=window)
        self._sampler = ProcessSampler()
        self._prev: tuple[float, ...] | None = None
        self._last_draw = self._last_sample = self._last_publish = 0.0
        self._drawn_events = -1
        self._drawn_samples = 0.0
        self._hist_counts: list[int] = [-1] * len(HISTOGRAMS)
        self._finished_seen = 0
        self._static: DisplayHandle | None = None
        self._parent: dict[str, Any] | None = None
        self.draws = 0
        self.registry.add_view(self)
        self.refresh(time.monotonic(), force=True)

    # --- showing ------------------------------------------------------------------------------------

    def _ipython_display_(self) -> None:
        self.show()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):
            bundle["text/plain"] = "nbagent dashboard (live view)"
        return bundle

    def show(self) -> Dashboard:
        """Display the widget and, below it, its static rendering (kept up to date as runs end)."""
        from IPython import get_ipython

        shell = get_ipython()
        self._parent = current_parent(shell)
        display(self._repr_mimebundle_(), raw=True)
        self._static = display(self.static_bundle(), raw=True, display_id=True)
        return self

    def close(self) -> None:
        self.registry.remove_view(self)
        super().close()

    # --- refreshing ---------------------------------------------------------------------------------

    def refresh(self, now: float, *, force: bool = False) -> None:
        """Sample and redraw if due (at most ``max_hz`` per second, and only what changed)."""
        if not force and now - self._last_draw < 1.0 / self.max_hz:
            return
        active = bool(self.registry.active())
        if force or now - self._last_sample >= (1.0 if active else 5.0):
            self._sample(now)
        events = self.registry.bus.emitted
        if force or events != self._drawn_events or self._last_sample != self._drawn_samples:
            self._last_draw = now
            self._draw(series=force or self._last_sample != self._drawn_samples)
            self._drawn_events, self._drawn_samples = events, self._last_sample
        finished = int(self.registry.metrics.global_.value("runs.finished"))
        if self._static is not None and finished != self._finished_seen and now - self._last_publish >= 2.0:
            self._finished_seen = finished
            self.publish()

    def _sample(self, now: float) -> None:
        reg = self.registry.metrics.global_
        totals = tuple(reg.value(k) for k in ("tokens.input", "tokens.output", "tokens.cached", "llm.calls"))
        prev = self._prev
        rates = [0.0] * len(totals)
        if prev is not None and now > prev[0]:
            rates = [(v - p) / (now - prev[0]) for v, p in zip(totals, prev[1:], strict=True)]
        self._prev = (now, *totals)
        cpu, mib = self._sampler.sample()
        self._samples.append((dt.datetime.now(), rates[0], rates[1], rates[2], reg.value("runs.in_flight"),
                              reg.value("tools.in_flight"), reg.hit_rate("response"), cpu, mib, rates[3],
                              reg.hit_rate("policy")))
        self._last_sample = now

    def _draw(self, *, series: bool) -> None:
        reg = self.registry.metrics.global_
        data = self.figure.data
        with self.figure.batch_update():  # one message for every trace that changed
            for i, (_, name) in enumerate(HISTOGRAMS):
                h = _hist(reg, name)
                count = h.count if h is not None else 0
                if count == self._hist_counts[i]:
                    continue
                self._hist_counts[i] = count
                groups = self._groups(name)
                edges = histogram_edges(h) if groups is None else []
                data[i].x = [(lo + hi) / 2 for lo, hi, _ in edges]  # type: ignore[attr-defined]
                data[i].width = [hi - lo for lo, hi, _ in edges]  # type: ignore[attr-defined]
                data[i].y = [n for _, _, n in edges]  # type: ignore[attr-defined]
                for key, gh in (groups or {}).items():
                    self._draw_group(i, key, gh)
                self._show_panel(i, count > 0)
            if series and self._samples:
                cols = list(zip(*self._samples, strict=True))
                x = np.array(cols[0], dtype="datetime64[ms]")  # arrays: cheap to validate and to send
                for k in range(len(SERIES)):
                    trace = data[len(HISTOGRAMS) + k]
                    y = np.array([np.nan if v is None else v for v in cols[k + 1]], dtype=float)
                    trace.x, trace.y = x, y  # type: ignore[attr-defined]
        self.header.value = self.header_html()
        self.draws += 1

    def _groups(self, name: str) -> dict[str, Histogram] | None:
        if self.split is None or name == "loop.lag":
            return None
        return split_histograms(self.registry.runtime.records.all(), name, self.split)

    def _draw_group(self, panel: int, key: str, h: Histogram) -> None:
        """The bars of one model's or tag's histogram in ``panel`` (its legend entry on the first panel)."""
        trace = self._split_traces.get((panel, key))
        if trace is None:
            color = _COLORS[len({k for _, k in self._split_traces}) % len(_COLORS)]
            color = next((t.marker.color for (_, k), t in self._split_traces.items() if k == key), color)
            shown = not any(k == key for _, k in self._split_traces)
            self.figure.add_trace(go.Bar(x=[], y=[], name=key, legendgroup=key, showlegend=shown, opacity=0.6,
                                         marker_color=color), row=panel // 3 + 1, col=panel % 3 + 1)
            trace = self._split_traces[(panel, key)] = self.figure.data[-1]
        edges = histogram_edges(h)
        trace.x = [(lo + hi) / 2 for lo, hi, _ in edges]
        trace.width = [hi - lo for lo, hi, _ in edges]
        trace.y = [n for _, _, n in edges]

    def _show_panel(self, i: int, visible: bool) -> None:
        """Hide a histogram panel (axes and title) while it has no data."""
        row, col = i // 3 + 1, i % 3 + 1
        self.figure.update_xaxes(visible=visible, row=row, col=col)
        self.figure.update_yaxes(visible=visible, row=row, col=col)
        self.figure.layout.annotations[i].text = HISTOGRAMS[i][0] if visible else ""

    # --- static -------------------------------------------------------------------------------------

    def header_html(self) -> str:
        """One line of figures: runs, tokens, cost, LLM latency, hit rate, loop lag, CPU, memory, sandboxes."""
        reg = self.registry.metrics.global_
        mon = self.registry.monitor.snapshot()
        v = reg.value
        statuses = ", ".join(f"{n.rsplit('.', 1)[1]} {int(c.value)}" for n, c in reg.counters.items()
                             if n.startswith("runs.status."))
        llm = reg.histograms.get("llm.latency")
        hit, policy_hit = reg.hit_rate("response"), reg.hit_rate("policy")
        cpu, mib = (self._samples[-1][7], self._samples[-1][8]) if self._samples else (None, 0.0)
        parts = [
            f"runs <b>{int(v('runs.started'))}</b> started, <b>{int(v('runs.in_flight'))}</b> in flight"
            + (f" ({html.escape(statuses)})" if statuses else ""),
            f'<span class="nbagent-dashboard-tokens">tokens <b>{int(v("tokens.input")):,}</b> in / '
            f'<b>{int(v("tokens.output")):,}</b> out / <b>{int(v("tokens.cached")):,}</b> cached</span>',
            "cost " + (format_cost(v("cost.usd")) if not v("cost.unpriced_calls") else
                       f"unknown ({int(v('cost.unpriced_calls'))} calls to models with no price; "
                       f"{format_cost(v('cost.usd'))} priced)"),
            f"LLM calls {int(v('llm.calls'))} (+{int(v('llm.cached'))} from cache), retries {int(v('llm.retries'))}"
            + (f", errors {int(v('llm.errors'))}" if v("llm.errors") else ""),
            f"LLM p50 {fmt_seconds(llm.p50 if llm else None)} p99 {fmt_seconds(llm.p99 if llm else None)}",
            f'<span class="nbagent-dashboard-hits">cache hit rate {"–" if hit is None else f"{hit:.0%}"}'
            + ("" if policy_hit is None else f", policy decisions {policy_hit:.0%} cached "
               f"({int(v('policy.allow'))} allowed, {int(v('policy.deny'))} denied)") + "</span>",
            f"loop lag p99 {fmt_seconds(mon['lag_p99'])}, {mon['blocks']} blocks",  # type: ignore[arg-type]
            f"kernel CPU {'–' if cpu is None else f'{cpu:.0f}%'} · {mib:.0f} MiB",
        ]
        limits = {n[len("llm.concurrency."):]: int(g.value) for n, g in reg.gauges.items()
                  if n.startswith("llm.concurrency.")}  # set by the adaptive limiter when a limit moves
        if limits:
            parts.append("LLM concurrency limit " + ", ".join(
                f"<b>{n}</b>" if len(limits) == 1 else f"{html.escape(e.split('@', 1)[0])} <b>{n}</b>"
                for e, n in limits.items()))
        sb = sandbox_stats(self.registry.runtime, create=False)
        if sb:
            parts.append(f"sandboxes {sb.get('active', 0)} active / {sb.get('idle', 0)} idle / "
                         f"{sb.get('total', 0)} of {sb.get('max_total', '?')}")
        warn = ""
        if mon["last_block"] is not None:
            warn = (f'<div style="color:#ef6c00">⚠ event loop blocked {mon["last_block_seconds"]:.2f} s by '
                    f"{html.escape(str(mon['last_block']) or 'unknown code')}</div>")
        return f'<div style="font-size:12px">{" · ".join(parts)}</div>{warn}'

    def static_bundle(self) -> dict[str, str]:
        """The header and the histograms as SVG bars: a mime bundle that needs no widget manager."""
        reg = self.registry.metrics.global_
        svgs = "".join(histogram_svg(title, _hist(reg, name)) for title, name in HISTOGRAMS)
        svgs = svgs or "<div>no latencies yet</div>"
        series = self.series_svgs()
        text = f"nbagent dashboard: {int(reg.value('runs.started'))} runs, {int(reg.value('tokens.input'))} in / " \
               f"{int(reg.value('tokens.output'))} out tokens"
        return {"text/plain": text, "text/html": f'<div class="nbagent-dashboard-static">{self.header_html()}'
                                                 f"<div>{svgs}</div><div>{series}</div></div>"}

    def series_svgs(self) -> str:
        """The panels over time (tokens / s, in flight, cache hit rate, CPU, memory, calls / s) as SVG lines."""
        if not self._samples:
            return ""
        cols = list(zip(*self._samples, strict=True))
        t0 = cols[0][0]
        seconds = [(t - t0).total_seconds() for t in cols[0]]
        out = []
        for title, panel in SERIES_PANELS:
            lines = [(name, list(cols[k + 1])) for k, (name, p) in enumerate(SERIES) if p == panel]
            out.append(series_svg(title, seconds, lines, top=1.0 if panel == 2 else None))
        return "".join(out)

    def publish(self, *, current: bool = False) -> None:
        """Refresh the static rendering (with the cell's header, or the current request's)."""
        if self._static is None:
            return
        from IPython import get_ipython

        shell = get_ipython()
        if current:  # under the current request, which headless clients (nbclient) record
            self.refresh(time.monotonic(), force=True)
            with as_parent(shell, current_parent(shell)):
                self.sync_figure()
        self._last_publish = time.monotonic()
        update_display(self._static, self.static_bundle(), shell=shell, parent=None if current else self._parent)

    def sync_figure(self) -> None:
        """Send the figure's whole data and layout as its widget state.

        Redraws reach the frontend as deltas (``batch_update``), which the frontend folds into its copy of the
        figure; the kernel's copy of the widget state keeps the figure as first shown. A notebook saved from
        the kernel's messages (nbclient, ``nbagent execute``) keeps that state, so it is sent whole when the
        static rendering is published under the current request. The frontend ignores it (same figure)."""
        plain = json.loads(pio.to_json(self.figure, validate=False))  # lists, not binary buffers: any reader
        self.figure._widget_layout = plain.get("layout", {})  # type: ignore[attr-defined]
        self.figure._widget_data = plain.get("data", [])  # type: ignore[attr-defined]


def warm_up() -> None:
    """Build (and drop) a figure like the dashboard's, so plotly's validators are loaded."""
    make_subplots(rows=4, cols=3).add_trace(go.Bar(x=[1], y=[1]), row=1, col=1).update_layout(template=_template())


def dashboard(registry: RunRegistry | None = None, *, split: str | None = None) -> Dashboard:
    """The live dashboard of every run in this kernel; display it (it is the value of the cell).

    ``split="model"`` or ``"tag"`` draws the latency histograms once per model or tag, overlaid."""
    return Dashboard(registry, split=split)
