"""Waterfalls of runs and batches, where the time went in words, and Chrome trace-event JSON.

::

    result.record.timeline()            # one run: a row per span, bars against wall time (inline SVG)
    nbagent.timeline.timeline(records)  # a batch: a row per run on shared time, split by where time went
    result.record.to_chrome_trace()     # JSON for Perfetto / chrome://tracing

Everything here reads :class:`~nbagent.record.RunRecord` spans and renders plain strings (SVG, HTML, JSON):
no widget library, no JavaScript, so the same picture shows live in the run widget, in the static summary
that nbconvert and GitHub render, and for a stored run in a later kernel.
"""

from __future__ import annotations

import html
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .record import BREAKDOWN_KEYS, RunRecord, Span

__all__ = ["CATEGORY_LABELS", "Row", "Timeline", "batch_breakdown", "describe_breakdown", "format_seconds",
           "spark_svg", "timeline", "to_chrome_trace"]

#: What each breakdown category is called in words, in reading order (``queueing`` only for batches).
CATEGORY_LABELS: dict[str, str] = {
    "queueing": "queueing", "startup": "model start-up", "model_wait": "model wait", "generation": "generating",
    "tools": "tools", "sandbox_wait": "sandbox wait", "approval_wait": "approval wait",
    "retry_backoff": "retry backoff", "cache": "cache", "client_overhead": "client overhead",
}
COLORS: dict[str, str] = {
    "queueing": "#eeeeee", "startup": "#8d6e63", "model_wait": "#90caf9", "generation": "#1565c0",
    "tools": "#8e24aa", "sandbox_wait": "#b0bec5", "approval_wait": "#ef6c00", "retry_backoff": "#e53935",
    "cache": "#43a047", "client_overhead": "#d7ccc8",
    # span kinds that have no breakdown category of their own
    "run": "#9e9e9e", "step": "#bdbdbd", "exec": "#455a64", "policy": "#ffb74d", "model": "#90caf9",
}
_KIND_CATEGORY = {"approval": "approval_wait", "backoff": "retry_backoff", "lease": "sandbox_wait",
                  "tool": "tools", "generate": "generation", "wait": "model_wait", "attempt": "model_wait",
                  "cache": "cache", "startup": "startup"}
_FOLDED = frozenset({"attempt", "wait", "generate", "backoff"})  # drawn as segments of their model call's row
_FONT = "font-family:var(--jp-ui-font-family,sans-serif);font-size:11px;"


def format_seconds(seconds: float) -> str:
    """``1.20 s``, ``0.40 s``, ``40 ms``, ``4 ms``, ``0.4 ms``: how durations read in words."""
    if seconds >= 0.1:
        return f"{seconds:.2f} s"
    if seconds >= 0.001:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds * 1000:.1f} ms"


def describe_breakdown(breakdown: Mapping[str, float], *, minimum: float = 0.0005) -> str:
    """A breakdown in words, in reading order: ``model wait 1.20 s, generating 0.40 s, client overhead 4 ms``.

    Parts under ``minimum`` seconds are left out (client overhead is always said)."""
    words = [f"{label} {format_seconds(breakdown[key])}" for key, label in CATEGORY_LABELS.items()
             if key in breakdown and (breakdown[key] >= minimum or key == "client_overhead")]
    return ", ".join(words)


def batch_breakdown(records: Sequence[RunRecord], *, start: float | None = None,
                    now: float | None = None) -> dict[str, float]:
    """The summed breakdown of ``records`` plus ``queueing``: the time between the batch's start (default: the
    first run's start) and each run's start. The parts add up to the sum over runs of (end - batch start)."""
    out = dict.fromkeys(("queueing", *BREAKDOWN_KEYS), 0.0)
    t0 = _batch_start(records, start)
    for rec in records:
        if rec.started is not None:
            out["queueing"] += max(rec.started - t0, 0.0)
        for key, value in rec.breakdown(now).items():
            out[key] += value
    return out


@dataclass
class Row:
    """One row of a waterfall: a label, its depth, and bars ``(start, end, color key, hover text)``."""

    label: str
    depth: int
    kind: str
    status: str = "ok"
    bars: list[tuple[float, float, str, str]] = field(default_factory=list)


@dataclass
class Timeline:
    """A waterfall of one run or a batch (see :func:`timeline`); ``_repr_html_`` shows it in notebooks."""

    records: list[RunRecord]
    start: float
    end: float
    rows: list[Row]
    hidden: int = 0  # rows left out (``max_rows``)
    batch: bool = False
    width: int = 720
    now: float | None = None

    @property
    def wall(self) -> float:
        return max(self.end - self.start, 0.0)

    def breakdown(self) -> dict[str, float]:
        """Where the time went: the run's breakdown, or a batch's with queueing (see :func:`batch_breakdown`)."""
        if self.batch:
            return batch_breakdown(self.records, start=self.start, now=self.now)
        return self.records[0].breakdown(self.now) if self.records else {}

    def describe(self) -> str:
        """:meth:`breakdown` in words."""
        return describe_breakdown(self.breakdown())

    def to_chrome_trace(self) -> dict[str, Any]:
        return to_chrome_trace(self.records)

    def to_svg(self) -> str:
        """The waterfall as one ``<svg>`` element: labels on the left, bars against wall time, hover text in
        ``<title>`` elements, a time axis and a legend of the colors used."""
        label_w, row_h, top = 190, 14, 18
        plot_w = max(self.width - label_w - 10, 100)
        wall = self.wall or 1e-9
        scale = plot_w / wall
        out: list[str] = []
        used: dict[str, None] = {}
        for i, row in enumerate(self.rows):
            y = top + i * row_h
            indent = 8 * min(row.depth, 8)
            color = "#c62828" if row.status == "error" else ("#6d4c41" if row.status == "cancelled" else "#333")
            out.append(f'<text x="{2 + indent}" y="{y + 10}" fill="{color}">{_e(_cut(row.label, 34 - row.depth))}'
                       f"</text>")
            thin = row.kind in ("run", "step")
            for b0, b1, key, title in row.bars:
                x = label_w + (b0 - self.start) * scale
                w = max((b1 - b0) * scale, 1.0)
                used[key] = None
                h, dy = (4, 5) if thin else (10, 2)
                open_ = ' stroke="#1565c0" stroke-dasharray="2,1"' if title.endswith("(running)") else ""
                out.append(f'<rect class="nbagent-bar" data-kind="{_e(key)}" x="{x:.1f}" y="{y + dy}" '
                           f'width="{w:.1f}" height="{h}" fill="{COLORS.get(key, "#78909c")}"{open_}>'
                           f"<title>{_e(title)}</title></rect>")
        if self.hidden:
            out.append(f'<text x="2" y="{top + len(self.rows) * row_h + 10}" fill="#777">… {self.hidden} more rows'
                       f"</text>")
        n_rows = len(self.rows) + (1 if self.hidden else 0)
        axis_y = top + n_rows * row_h + 4
        ticks = []
        for k in range(5):
            t = wall * k / 4
            x = label_w + t * scale
            anchor = "start" if k == 0 else ("end" if k == 4 else "middle")
            ticks.append(f'<line x1="{x:.1f}" y1="{top - 2}" x2="{x:.1f}" y2="{axis_y}" stroke="#eee"/>'
                         f'<text x="{x:.1f}" y="{axis_y + 11}" text-anchor="{anchor}" fill="#555">'
                         f"{_e(format_seconds(t))}</text>")
        legend = []
        lx = label_w
        for key in used:
            name = CATEGORY_LABELS.get(key, key)
            legend.append(f'<rect x="{lx}" y="3" width="9" height="9" fill="{COLORS.get(key, "#78909c")}"/>'
                          f'<text x="{lx + 12}" y="11" fill="#555">{_e(name)}</text>')
            lx += 18 + 6 * len(name)
        title = "batch" if self.batch else (self.records[0].name or self.records[0].run_id if self.records else "")
        height = axis_y + 16
        return (f'<svg xmlns="http://www.w3.org/2000/svg" class="nbagent-timeline" width="{self.width}" '
                f'height="{height}" data-rows="{len(self.rows)}" style="{_FONT}display:block">'
                f'<text x="2" y="11" font-weight="600">{_e(_cut(title, 30))}</text>'
                f'{"".join(ticks)}{"".join(legend)}{"".join(out)}'
                f'<line x1="{label_w}" y1="{axis_y}" x2="{label_w + plot_w}" y2="{axis_y}" stroke="#999"/></svg>')

    def to_html(self) -> str:
        """The SVG with the breakdown in words under it (no script: renders in nbconvert and on GitHub)."""
        what = "where the time went (run-seconds from the batch start)" if self.batch else "where the time went"
        return (f'<div class="nbagent-waterfall" style="{_FONT}">{self.to_svg()}'
                f'<div class="nbagent-breakdown">{_e(what)}: {_e(self.describe())}</div></div>')

    def _repr_html_(self) -> str:
        return self.to_html()

    def __str__(self) -> str:
        return f"{len(self.rows)} rows over {format_seconds(self.wall)}: {self.describe()}"


def timeline(record_or_records: RunRecord | Iterable[RunRecord], *, now: float | None = None, width: int = 720,
             max_rows: int = 400, tail: bool = False, start: float | None = None) -> Timeline:
    """The waterfall of one run (a row per span) or of several (a row per run on shared time).

    One run: rows indented by depth; a model call's row is split into waiting for the first token,
    generating and retry backoffs; tool calls that ran in parallel overlap; policy, approval, sandbox lease
    and exec, and cache spans sit under their tool call. Several runs: each run's bar is split by its
    breakdown in time order, after its queueing since ``start`` (default: the first run's start).
    Spans still open end at ``now`` (default: the current time while a run is running). At most ``max_rows``
    rows are drawn: the first ones, or the newest with ``tail=True`` (a live view).
    """
    records = [record_or_records] if isinstance(record_or_records, RunRecord) else list(record_or_records)
    records = [r for r in records if r.started is not None or r.root.children]
    if now is None and any(r.ended is None for r in records):
        now = time.time()
    batch = not isinstance(record_or_records, RunRecord)
    rows: list[Row]
    if not records:
        t0 = t1 = now or 0.0
        rows = []
    elif batch:
        t0 = _batch_start(records, start)
        t1 = max(_end(r, now) for r in records)
        rows = [_run_row(r, t0, now) for r in records]
    else:
        rec = records[0]
        t0, t1 = _start(rec), _end(rec, now)
        rows = _span_rows(rec, now if now is not None else t1)
    hidden = max(len(rows) - max_rows, 0)
    if hidden:
        rows = rows[-max_rows:] if tail else rows[:max_rows]
    return Timeline(records, t0, max(t1, t0), rows, hidden, batch, width, now)


def spark_svg(record: RunRecord, *, start: float | None = None, end: float | None = None, now: float | None = None,
              width: int = 160, height: int = 10) -> str:
    """A one-line spark of a run's timeline: its wall time split by where the time went, as a small inline SVG.

    ``start`` and ``end`` set the time axis (runs of a batch share one, so a late start shows as an empty
    lead); by default the run's own. A running run is drawn to ``now`` (default: the current time). "" before
    the run starts.
    """
    if record.started is None:
        return ""
    if record.ended is None and now is None:
        now = time.time()
    t0 = _start(record) if start is None else start
    t1 = max(_end(record, now) if end is None else end, t0 + 1e-9)
    scale = width / (t1 - t0)
    bars = []
    for s0, s1, cat in record.segments(now):
        x = (s0 - t0) * scale
        bars.append(f'<rect x="{x:.1f}" y="0" width="{max((s1 - s0) * scale, 0.5):.1f}" height="{height}" '
                    f'fill="{COLORS.get(cat, "#78909c")}"><title>{_e(CATEGORY_LABELS.get(cat, cat))} '
                    f"{_e(format_seconds(s1 - s0))}</title></rect>")
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="nbagent-spark" width="{width}" height="{height}" '
            f'data-segments="{len(bars)}" style="display:inline-block;vertical-align:middle;background:#f5f5f5">'
            f'{"".join(bars)}</svg>')


# --- rows -------------------------------------------------------------------------------------------


def _span_rows(rec: RunRecord, now: float) -> list[Row]:
    rows: list[Row] = []
    for depth, span in rec.root.walk():
        if span.kind in _FOLDED:
            continue
        row = Row(_label(span), depth, span.kind, span.status)
        if span.kind == "model" and span.children:
            row.bars = _model_bars(span, now)
        else:
            key = _KIND_CATEGORY.get(span.kind, span.kind)
            row.bars = [(span.start, _span_end(span, now), key, _hover(span, now))]
        rows.append(row)
    return rows


def _model_bars(model: Span, now: float) -> list[tuple[float, float, str, str]]:
    head = _hover(model, now)
    bars: list[tuple[float, float, str, str]] = []
    for child in model.children:
        if child.kind == "attempt":
            parts = [c for c in child.children if c.kind in ("wait", "generate")]
            if not parts:  # no answer yet, or it failed before one: all of it waiting on the model
                bars.append((child.start, _span_end(child, now), "model_wait", f"{head} · {_hover(child, now)}"))
            for part in parts:
                key = "generation" if part.kind == "generate" else "model_wait"
                bars.append((part.start, _span_end(part, now), key, f"{head} · {child.name}: {_hover(part, now)}"))
        else:
            bars.append((child.start, _span_end(child, now), _KIND_CATEGORY.get(child.kind, child.kind),
                         f"{head} · {_hover(child, now)}"))
    return bars


def _run_row(rec: RunRecord, t0: float, now: float | None) -> Row:
    name = rec.name or rec.run_id
    row = Row(name, 0, "run", "error" if rec.status in ("error", "cancelled") else "ok")
    begin = _start(rec)
    if begin > t0:
        row.bars.append((t0, begin, "queueing", f"{name}: queued {format_seconds(begin - t0)}"))
    for s0, s1, cat in rec.segments(now):
        row.bars.append((s0, s1, cat, f"{name}: {CATEGORY_LABELS.get(cat, cat)} {format_seconds(s1 - s0)} "
                                      f"at +{format_seconds(s0 - t0)}"))
    if row.bars:  # the whole run's figures on the last bar's hover as well
        s0, s1, cat, text = row.bars[-1]
        status = rec.status if rec.ended is not None else "running"
        row.bars[-1] = (s0, s1, cat, f"{text} · {status}, {rec.steps} steps, "
                                     f"{describe_breakdown(rec.breakdown(now))}")
    return row


def _label(span: Span) -> str:
    if span.kind == "run":
        return span.name or "run"
    if span.kind == "model":
        return f"model {span.name}" + (" (cache hit)" if span.attrs.get("cached") else "")
    if span.kind == "tool":
        return f"tool {span.name}"
    return span.name or span.kind


def _hover(span: Span, now: float) -> str:
    end = _span_end(span, now)
    text = f"{_label(span)}: {format_seconds(end - span.start)}"
    a = span.attrs
    if span.kind == "model":
        if a.get("input_tokens") is not None:
            text += f", {a.get('input_tokens', 0):,} in / {a.get('output_tokens', 0):,} out tokens"
        if a.get("ttft") is not None:
            text += f", first token {format_seconds(a['ttft'])}"
        if (a.get("attempts") or 1) > 1:
            text += f", {a['attempts']} attempts"
    elif span.kind == "backoff" and a.get("reason"):
        text += f" ({a['reason']})"
    elif span.kind == "attempt" and a.get("reason"):
        text += f", failed: {a['reason']}"
    elif span.kind == "exec" and a.get("exit_code") is not None:
        text += f", exit {a['exit_code']}"
    if a.get("error"):
        text += f", {str(a['error'])[:200]}"
    if span.status not in ("ok", ""):
        text += f" [{span.status}]"
    if span.end is None:
        text += " (running)"
    return text


def _start(rec: RunRecord) -> float:
    return rec.started if rec.started is not None else rec.root.start


def _end(rec: RunRecord, now: float | None) -> float:
    if rec.ended is not None:
        return rec.ended
    return now if now is not None else (rec.events[-1].ts if rec.events else rec.root.start)


def _span_end(span: Span, now: float) -> float:
    return span.end if span.end is not None else max(now, span.start)


def _batch_start(records: Sequence[RunRecord], start: float | None) -> float:
    if start is not None:
        return start
    starts = [_start(r) for r in records]
    return min(starts) if starts else 0.0


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cut(text: str, limit: int) -> str:
    limit = max(limit, 4)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- Chrome trace-event JSON --------------------------------------------------------------------------


def to_chrome_trace(records: Iterable[RunRecord], *, now: float | None = None) -> dict[str, Any]:
    """``records`` as Chrome trace-event JSON (``json.dump`` it; open it in https://ui.perfetto.dev).

    Complete events (``ph: "X"``), microseconds since the first run's start; one process per run (``pid``),
    the run's steps and model calls on thread 1 and tool calls on threads 2, 3, ... so that calls that
    ran in parallel sit on separate threads; each tool call's policy, lease, exec and cache spans on its
    thread.
    """
    recs = [r for r in records if r.started is not None or r.root.children]
    origin = min((_start(r) for r in recs), default=0.0)
    events: list[dict[str, Any]] = []
    for pid, rec in enumerate(recs, start=1):
        end_of_run = _end(rec, now if now is not None else (time.time() if rec.ended is None else None))
        events.extend(_trace_run(rec, pid, origin, end_of_run))
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"origin_epoch_seconds": origin}}


def _trace_run(rec: RunRecord, pid: int, origin: float, end_of_run: float) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = [
        {"ph": "M", "name": "process_name", "pid": pid, "tid": 0,
         "args": {"name": f"{rec.name or 'run'} [{rec.run_id}]"}},
        {"ph": "M", "name": "thread_name", "pid": pid, "tid": 1, "args": {"name": "agent loop"}},
    ]
    lanes: list[float] = []  # when the last tool call on each tool thread ends

    def emit(span: Span, tid: int) -> None:
        end = span.end if span.end is not None else end_of_run
        events.append({"name": _label(span), "cat": span.kind, "ph": "X", "pid": pid, "tid": tid,
                       "ts": round((span.start - origin) * 1e6, 3),
                       "dur": round(max(end - span.start, 0.0) * 1e6, 3),
                       "args": {"status": span.status, **_json_safe(span.attrs)}})

    def visit(span: Span, tid: int) -> None:
        for child in span.children:
            child_tid = tid
            if child.kind == "tool" and tid == 1:
                lane = next((i for i, free in enumerate(lanes) if free <= child.start), None)
                if lane is None:
                    lane = len(lanes)
                    lanes.append(0.0)
                    events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": lane + 2,
                                   "args": {"name": f"tools {lane + 1}"}})
                lanes[lane] = child.end if child.end is not None else end_of_run
                child_tid = lane + 2
            emit(child, child_tid)
            visit(child, child_tid)

    emit(rec.root, 1)
    visit(rec.root, 1)
    return events


def _json_safe(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if value is None or isinstance(value, (bool, int, float, str)):
            out[key] = value
        else:
            out[key] = str(value)
    return out
