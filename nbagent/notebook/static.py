"""Static renderings: HTML (with inline SVG charts) that shows the numbers without any JavaScript.

A widget view alone renders nothing in nbconvert HTML or on GitHub, so every live view also publishes one of
these: a run's summary when it ends, the dashboard's figures as SVG bars. Everything is escaped; nothing
here touches a widget.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..metrics import Histogram
from ..record import format_cost
from ..timeline import describe_breakdown, timeline
from .state import RunState, StepItem

__all__ = ["histogram_bins", "histogram_edges", "histogram_svg", "metrics_table", "run_summary_html", "stop_reason",
           "svg_bars", "table_html", "text_summary", "waterfall_html", "where_time_went"]

STATUS_COLORS = {"ok": "#2e7d32", "error": "#c62828", "cancelled": "#6d4c41", "limit": "#ef6c00",
                 "stuck": "#ef6c00", "running": "#1565c0", "starting": "#1565c0"}
_BOX = "font-family:var(--jp-ui-font-family,sans-serif);font-size:12px;line-height:1.4;"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt_seconds(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if value < 1:
        return f"{value * 1000:.1f} ms"
    return f"{value:.2f} s"


def badge(status: str) -> str:
    color = STATUS_COLORS.get(status, "#555")
    return (f'<span style="background:{color};color:#fff;border-radius:3px;padding:0 6px;'
            f'font-weight:600">{_e(status)}</span>')


def stop_reason(state: RunState) -> str:
    """Why the run stopped, unless the error line says it already (a failed run's reason is its error)."""
    reason = state.stop_reason
    if reason and state.error and state.status != "ok" and reason in state.error:
        return ""
    return reason


def text_summary(state: RunState) -> str:
    """One line of plain text: name, status, steps, tokens, time."""
    return (f"{state.name}: {state.status}"
            + (f" ({state.stop_reason})" if state.stop_reason and state.stop_reason != "stop" else "")
            + f" · {len(state.cards)} steps · {state.input_tokens:,} in / {state.output_tokens:,} out / "
              f"{state.cached_tokens:,} cached tokens · {state.elapsed():.2f} s")


def tokens_line(state: RunState) -> str:
    out = state.live_output_tokens
    approx = "~" if state.streamed_chars and not state.done else ""
    return (f'<span class="nbagent-token-counter" data-input-tokens="{state.input_tokens}" '
            f'data-output-tokens="{out}" data-cached-tokens="{state.cached_tokens}">'
            f"tokens <b>{state.input_tokens:,}</b> in / <b>{approx}{out:,}</b> out / "
            f"<b>{state.cached_tokens:,}</b> cached</span>")


def step_rows(state: RunState) -> list[list[str]]:
    rows: list[list[str]] = []
    for card in state.cards:
        for item in card.items:
            mark = "" if item.ok else " ⚠"
            rows.append([str(card.step), item.kind, item.label + mark, item.detail])
    return rows


def where_time_went(state: RunState) -> str:
    """The run's breakdown in words (``model wait 1.20 s, ..., client overhead 4 ms``); "" before it starts."""
    rec = state.record
    if rec.started is None:
        return ""
    return describe_breakdown(rec.breakdown(None if rec.ended is not None else state.started + state.elapsed()))


def waterfall_html(state: RunState, *, max_rows: int = 60, tail: bool = False, width: int = 720) -> str:
    """The run's waterfall as inline SVG (no script), or "" before the run starts."""
    rec = state.record
    if rec.started is None:
        return ""
    now = None if rec.ended is not None else state.started + state.elapsed()
    return timeline(rec, now=now, max_rows=max_rows, tail=tail, width=width).to_svg()


def run_summary_html(state: RunState) -> str:
    """The static summary of a run: status, tokens, where the time went, the waterfall, answer and steps."""
    timing_bars = svg_bars(
        [(f"#{c.step}", _card_seconds(c.items)) for c in state.cards[-40:]],
        title="seconds per step", width=360, height=90,
    ) if state.cards else ""
    answer = _e(state.text[:4000]) + ("…" if len(state.text) > 4000 else "")
    error = (f'<div style="color:#c62828;white-space:pre-wrap">{_e(state.error)}</div>'
             if state.error and state.status != "ok" else "")
    warnings = "".join(f'<div style="color:#ef6c00">⚠ {_e(w)}</div>' for w in state.warnings)
    rows = step_rows(state)
    steps = table_html(["step", "kind", "what", "detail"], rows[-200:]) if rows else ""
    where = where_time_went(state)
    where_line = (f'<div class="nbagent-breakdown">where the time went: {_e(where)}</div>' if where else "")
    svg = waterfall_html(state)
    waterfall = f"<details open><summary>waterfall</summary>{svg}</details>" if svg else ""
    profile = (f'<details><summary>profile: where the time went</summary><pre style="max-height:30em;'
               f'overflow:auto">{_e(state.profile_text)}</pre></details>' if state.profile_text else "")
    return (
        f'<div class="nbagent-summary" data-run="{_e(state.name)}" data-status="{_e(state.status)}" '
        f'data-input-tokens="{state.input_tokens}" data-output-tokens="{state.output_tokens}" '
        f'data-cached-tokens="{state.cached_tokens}" style="{_BOX}border-left:3px solid '
        f'{STATUS_COLORS.get(state.status, "#555")};padding:2px 8px">'
        f"<div><b>{_e(state.name)}</b> {badge(state.status)} {_e(stop_reason(state))} · {state.elapsed():.2f} s · "
        f"{len(state.cards)} steps · {state.requests} model calls · {state.tool_calls} tool calls · "
        f"{tokens_line(state)} · {format_cost(state.cost)}</div>{error}{warnings}{where_line}{waterfall}"
        f"<details><summary>answer and steps</summary>"
        f'<pre style="white-space:pre-wrap;max-height:20em;overflow:auto">{answer}</pre>{timing_bars}{steps}'
        f"</details>{profile}</div>"
    )


def _card_seconds(items: Iterable[StepItem]) -> float:
    return sum(item.seconds for item in items)


def table_html(header: Sequence[str], rows: Iterable[Sequence[object]], *, caption: str = "") -> str:
    """A compact HTML table (cells escaped)."""
    cap = f"<caption style='text-align:left;font-weight:600'>{_e(caption)}</caption>" if caption else ""
    head = "".join(f"<th style='text-align:left;padding:1px 8px'>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td style='text-align:left;padding:1px 8px'>{_e(c)}</td>" for c in row) + "</tr>"
        for row in rows
    )
    return f'<table class="nbagent-table" style="{_BOX}border-collapse:collapse">{cap}<tr>{head}</tr>{body}</table>'


def metrics_table(snapshot: Mapping[str, Any], *, caption: str = "") -> str:
    """A :meth:`MetricsRegistry.snapshot` as one table: histograms then counters and gauges, each value in its
    metric's unit (seconds print as ms / s; steps, ratios, tokens and dollars as themselves)."""
    units = snapshot.get("units", {})
    rows: list[list[object]] = []
    for name, s in snapshot.get("histograms", {}).items():
        unit = units.get(name, "s")
        rows.append([name, s["count"], *(fmt_value(s[k], unit) for k in ("p50", "p95", "p99", "max"))])
    counters = snapshot.get("counters", {})
    unpriced = int(counters.get("cost.unpriced_calls", 0) or 0)
    for name, v in counters.items():
        value = fmt_value(v, units.get(name, ""))
        if name == "cost.usd" and unpriced:
            value = f"unknown ({unpriced} calls to models with no price, {value} priced; set one in [prices])"
        rows.append([name, value, "", "", "", ""])
    for name, g in snapshot.get("gauges", {}).items():
        unit = units.get(name, "")
        rows.append([name, fmt_value(g["value"], unit), "", "", "", f"peak {fmt_value(g['max'], unit)}"])
    return table_html(["metric", "count / value", "p50", "p95", "p99", "max"], rows, caption=caption)


def fmt_value(value: float | None, unit: str) -> str:
    """A metric's value in its unit: seconds as ms / s, dollars as ``$0.000038``, else the number and unit."""
    if unit == "s":
        return fmt_seconds(value)
    if unit == "USD":
        return "–" if value is None else format_cost(float(value))
    if value is None:
        return "–"
    if unit == "ratio":
        return f"{value:.3f}"
    text = _num(value)
    return f"{text} {unit}" if unit and unit not in ("calls", "lookups") else text


def _num(v: Any) -> str:
    if v is None:
        return "–"
    return f"{v:,.6f}".rstrip("0").rstrip(".") if isinstance(v, float) and not v.is_integer() else f"{int(v):,}"


def histogram_bins(h: Histogram | None, per_decade: int = 8) -> tuple[list[float], list[int], list[str]]:
    """Coarse log bins of a histogram for plotting: ``(centres, counts, labels)``."""
    edges = histogram_edges(h, per_decade)
    return ([math.sqrt(lo * hi) if lo > 0 else 0.0 for lo, hi, _ in edges], [n for _, _, n in edges],
            [fmt_seconds(math.sqrt(lo * hi) if lo > 0 else 0.0) for lo, hi, _ in edges])


def histogram_edges(h: Histogram | None, per_decade: int = 8) -> list[tuple[float, float, int]]:
    """Coarse log bins of a histogram with their true edges: ``[(low, high, count)]``, lowest first (values
    at or below 0 in a first bin from 0 to the next bin's low edge)."""
    if h is None or h.count == 0:
        return []
    bins: dict[int, int] = {}
    zero = 0
    for lo, hi, n in h.buckets():
        if hi <= 0:
            zero += n
            continue
        key = math.floor(math.log10(math.sqrt(lo * hi)) * per_decade)
        bins[key] = bins.get(key, 0) + n
    out = [(10 ** (k / per_decade), 10 ** ((k + 1) / per_decade), bins[k]) for k in sorted(bins)]
    if zero:
        out.insert(0, (0.0, out[0][0] if out else 1e-6, zero))
    return out


def svg_bars(bars: Sequence[tuple[str, float]], *, title: str = "", width: int = 300, height: int = 110,
             color: str = "#1f77b4") -> str:
    """A tiny inline SVG bar chart (no JavaScript); labels of the first and last bar under the axis."""
    if not bars:
        return ""
    top = max((v for _, v in bars), default=0) or 1.0
    pad, n = 16, len(bars)
    bw = (width - 2 * pad) / n
    plot_h = height - 34
    rects = []
    for i, (label, v) in enumerate(bars):
        h = plot_h * v / top
        rects.append(f'<rect x="{pad + i * bw:.1f}" y="{18 + plot_h - h:.1f}" width="{max(bw - 1, 1):.1f}" '
                     f'height="{h:.1f}" fill="{color}"><title>{_e(label)}: {v:g}</title></rect>')
    first, last = _e(bars[0][0]), _e(bars[-1][0])
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'style="{_BOX}display:inline-block;margin:2px 8px 2px 0">'
        f'<text x="{pad}" y="12" font-size="11" font-weight="600">{_e(title)}</text>{"".join(rects)}'
        f'<line x1="{pad}" y1="{18 + plot_h}" x2="{width - pad}" y2="{18 + plot_h}" stroke="#999"/>'
        f'<text x="{pad}" y="{height - 3}" font-size="10">{first}</text>'
        f'<text x="{width - pad}" y="{height - 3}" font-size="10" text-anchor="end">{last}</text></svg>'
    )


def histogram_svg(title: str, h: Histogram | None, *, unit: str = "s", width: int = 260,
                  height: int = 110) -> str:
    """A histogram on a numeric axis (bars as wide as their buckets), titled with its count and p50 / p99;
    an empty string when there is no data (a panel with nothing to show is left out)."""
    edges = histogram_edges(h)
    if h is None or not edges:
        return ""
    label = f"{title}: n={h.count}, p50 {fmt_value(h.p50, unit)}, p99 {fmt_value(h.p99, unit)}"
    x0, x1 = edges[0][0], edges[-1][1]
    span = (x1 - x0) or 1.0
    top = max(n for _, _, n in edges)
    pad, plot_h = 16, height - 34
    scale = (width - 2 * pad) / span
    rects = []
    for lo, hi, n in edges:
        bh = plot_h * n / top
        rects.append(f'<rect x="{pad + (lo - x0) * scale:.1f}" y="{18 + plot_h - bh:.1f}" '
                     f'width="{max((hi - lo) * scale, 1):.1f}" height="{bh:.1f}" fill="#1f77b4">'
                     f"<title>{_e(fmt_value(lo, unit))} – {_e(fmt_value(hi, unit))}: {n}</title></rect>")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="nbagent-histogram" '
        f'style="{_BOX}display:inline-block;margin:2px 8px 2px 0">'
        f'<text x="{pad}" y="12" font-size="11" font-weight="600">{_e(label)}</text>{"".join(rects)}'
        f'<line x1="{pad}" y1="{18 + plot_h}" x2="{width - pad}" y2="{18 + plot_h}" stroke="#999"/>'
        f'<text x="{pad}" y="{height - 3}" font-size="10">{_e(fmt_value(x0, unit))}</text>'
        f'<text x="{width - pad}" y="{height - 3}" font-size="10" text-anchor="end">'
        f"{_e(fmt_value(x1, unit))}</text></svg>"
    )
