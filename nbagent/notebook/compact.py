"""Many runs from one cell: one line per run (status, elapsed, steps, tokens, cost, a spark of its timeline).

A cell that starts more than :data:`COMPACT_AFTER` runs (a loop over ``%%agent``, a script submitting many)
would stack as many full run widgets. :class:`CellRuns` groups the runs of one cell (by the request that
ran it); from the run after :data:`COMPACT_AFTER` on, the cell shows one :class:`CompactView` instead: the
runs already shown are collapsed into it, and clicking a line opens that run's full widget below the lines.
Like every live view it also publishes a static rendering (one line per run, each opening to the run's
summary) that nbconvert and GitHub show.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import anywidget
import ipywidgets as widgets
import traitlets
from IPython.display import DisplayHandle, display

from ..record import RunRecord, format_cost
from ..timeline import spark_svg
from .kernel import update_display
from .live import HIDE_STATIC_JS
from .state import RunState
from .static import STATUS_COLORS, run_summary_html

if TYPE_CHECKING:
    from .widgets import RunOutput

__all__ = ["COMPACT_AFTER", "CellRuns", "CompactLines", "CompactView", "cell_runs", "run_line_html",
           "run_lines_html"]

#: A cell shows up to this many full run widgets; the next run turns them into one compact view.
COMPACT_AFTER = 3
MAX_CELLS = 64  # cells whose groups are remembered (a cell's runs are grouped while it starts them)
_EMPTY = {"text/plain": ""}

_LINES_ESM = HIDE_STATIC_JS + r"""
function render({ model, el }) {
  hideStatic();
  el.classList.add("nbagent-live", "nbagent-compact");
  const draw = () => {
    const rows = model.get("rows");
    el.dataset.runs = String(Math.max(rows.length - 1, 0));
    el.innerHTML = rows.join("");
    const opened = model.get("opened");
    for (const line of el.querySelectorAll(".nbagent-line")) {
      if (line.dataset.run === opened) line.classList.add("nbagent-open");
    }
  };
  const click = (e) => {
    const line = e.target.closest(".nbagent-line");
    if (line) model.send({ toggle: line.dataset.run });
  };
  el.addEventListener("click", click);
  model.on("change:rows", draw);
  model.on("change:opened", draw);
  draw();
  return () => { model.off("change:rows", draw); model.off("change:opened", draw); };
}
export default { render };
"""
_LINES_CSS = """
.nbagent-compact .nbagent-line { cursor: pointer; }
.nbagent-compact .nbagent-line:hover, .nbagent-compact .nbagent-open { background: var(--jp-layout-color2, #eee); }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def run_line_html(state: RunState, *, start: float | None = None, end: float | None = None,
                  now: float | None = None, tag: str = "div") -> str:
    """One run on one line: name, status, elapsed, steps, tokens, cost and a spark of its timeline
    (``start`` / ``end``: the time axis the runs of a cell share)."""
    status = state.status
    color = STATUS_COLORS.get(status, "#555")
    shown = "asks approval" if state.pending_approval and not state.done else status
    spark = spark_svg(state.record, start=start, end=end, now=now)
    cells = [
        ("11em", f"<b>{_e(state.name)}</b>", "left"),
        ("7em", f'<span class="nbagent-line-status" style="color:{color};font-weight:600">{_e(shown)}</span>',
         "left"),
        ("5em", f"{state.elapsed():.1f} s", "right"),
        ("5em", f"{len(state.cards)} steps", "right"),
        ("13em", f"{state.input_tokens:,} in / {state.live_output_tokens:,} out", "right"),
        ("6em", _e(format_cost(state.cost)), "right"),
    ]
    spans = "".join(f'<span style="display:inline-block;width:{w};text-align:{a};overflow:hidden;'
                    f'text-overflow:ellipsis;vertical-align:middle">{c}</span>' for w, c, a in cells)
    return (f'<{tag} class="nbagent-line" data-run="{_e(state.name)}" data-status="{_e(status)}" '
            f'style="white-space:nowrap;font-size:12px;line-height:18px;border-left:3px solid {color};'
            f'padding-left:4px">{spans} {spark}</{tag}>')


def _header(states: list[RunState]) -> str:
    running = sum(not s.done for s in states)
    tokens = sum(s.input_tokens + s.output_tokens for s in states)
    costs = [s.cost for s in states]
    cost = None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)
    return (f'<div class="nbagent-compact-header" style="font-size:12px;opacity:.8">{len(states)} runs · '
            f"{running} running · {tokens:,} tokens · {_e(format_cost(cost))}</div>")


def _axis(states: list[RunState], now: float) -> tuple[float, float]:
    starts = [s.record.started for s in states if s.record.started is not None]
    t0 = min(starts) if starts else now
    ends = [s.record.ended if s.record.ended is not None else now for s in states if s.record.started is not None]
    return t0, max(ends, default=now)


def static_html(states: list[RunState], now: float | None = None) -> str:
    """The static form: a header and one line per run, each opening (``<details>``) to the run's summary."""
    now = time.time() if now is None else now
    t0, t1 = _axis(states, now)
    lines = "".join(f'<details style="margin:0">{run_line_html(s, start=t0, end=t1, now=now, tag="summary")}'
                    f"{run_summary_html(s) if s.done else ''}</details>" for s in states)
    return (f'<div class="nbagent-compact-static" data-runs="{len(states)}" '
            f'style="font-family:var(--jp-ui-font-family,sans-serif)">{_header(states)}{lines}</div>')


def run_lines_html(records: list[RunRecord], *, limit: int, now: float | None = None) -> str:
    """Lines for ``records`` (a batch's runs) on their shared time axis: running and failed runs first, then
    the most recent, at most ``limit``; a last line counts the rest by status."""
    now = time.time() if now is None else now
    states = []
    for rec in records:
        st = RunState(name=rec.name or rec.run_id, run_id=rec.run_id)
        st.use_record(rec)
        states.append(st)
    t0, t1 = _axis(states, now)
    order = sorted(range(len(states)), key=lambda i: (states[i].status == "ok" and states[i].done, -i))
    shown = sorted(order[:limit])
    rest: dict[str, int] = {}
    for i in order[limit:]:
        rest[states[i].status] = rest.get(states[i].status, 0) + 1
    more = ", ".join(f"{n} {status}" for status, n in sorted(rest.items()))
    tail = f'<div style="font-size:12px;opacity:.7">… and {sum(rest.values())} more ({_e(more)})</div>' if rest else ""
    lines = "".join(run_line_html(states[i], start=t0, end=t1, now=now) for i in shown)
    return f'<div class="nbagent-batch-lines" data-runs="{len(states)}">{lines}{tail}</div>'


class CompactLines(anywidget.AnyWidget):  # type: ignore[misc]
    """The lines of the compact view (``rows``: a header then a line per run); a click sends ``{toggle: name}``."""

    _esm = _LINES_ESM
    _css = _LINES_CSS
    rows = traitlets.List(traitlets.Unicode()).tag(sync=True)
    opened = traitlets.Unicode("").tag(sync=True)


class CompactView(widgets.VBox):
    """The lines of a cell's runs, and below them the full widget of the run whose line was clicked."""

    def __init__(self, group: CellRuns) -> None:
        self.lines = CompactLines()
        self.detail = widgets.VBox()
        self._group = group
        self.lines.on_msg(self._message)
        super().__init__([self.lines, self.detail])
        self.add_class("nbagent-compact-view")

    def _message(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and isinstance(content.get("toggle"), str):
            self._group.toggle(content["toggle"])

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):
            bundle["text/plain"] = f"nbagent: {len(self._group.members)} runs (live view)"
        return bundle


class CellRuns:
    """The runs one cell started. Up to :data:`COMPACT_AFTER` show their own widgets; then one compact view.

    Members call :meth:`render` with their state; the lines are redrawn at most ``max_hz`` times a second.
    """

    def __init__(self, shell: Any, parent: dict[str, Any] | None, *, max_hz: float = 2.0) -> None:
        self.shell = shell
        self.parent = parent
        self.members: list[RunOutput] = []
        self.states: dict[str, RunState] = {}
        self.view: CompactView | None = None
        self.compact = False
        self.max_hz = max_hz
        self._static: DisplayHandle | None = None
        self._drawn_at = 0.0
        self._scheduled: asyncio.TimerHandle | None = None
        self._published: tuple[Any, ...] = ()

    def add(self, out: RunOutput) -> bool:
        """Take ``out``; True when the cell now shows the compact view (``out`` must then show nothing itself)."""
        self.members.append(out)
        self.states.setdefault(out.name, RunState(name=out.name))
        if self.compact:
            return True
        if len(self.members) <= COMPACT_AFTER:
            return False
        self.compact = True
        live = any(m.live for m in self.members)
        if live:
            self.view = CompactView(self)
            display(self.view)
        self._static = display({"text/plain": f"{len(self.members)} runs",
                                "text/html": static_html(list(self.states.values()))}, raw=True, display_id=True)
        for member in self.members[:-1]:
            member.collapse()
        self.draw()
        return True

    def render(self, out: RunOutput, state: RunState) -> None:
        self.states[out.name] = state
        if self.view is None:
            return
        now = time.monotonic()
        wait = 1.0 / self.max_hz - (now - self._drawn_at)
        if wait <= 0 or state.done:
            self.draw()
            return
        if self._scheduled is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.draw()
                return
            self._scheduled = loop.call_later(wait, self.draw)

    def draw(self) -> None:
        """Redraw the lines now (a line per run on the time axis they share)."""
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        self._drawn_at = time.monotonic()
        if self.view is None:
            return
        states = list(self.states.values())
        now = time.time()
        t0, t1 = _axis(states, now)
        self.view.lines.rows = [_header(states), *(run_line_html(s, start=t0, end=t1, now=now) for s in states)]

    def publish(self, *, current: bool = False) -> None:
        """Replace the static rendering with the current lines (and the summaries of the runs that ended).

        Sent when the last run ends, and again from the next cell (``current``): not once per run that ends,
        since each rendering holds every ended run's summary (a frontend that draws the widget hides it).
        """
        states = list(self.states.values())
        if not current and not all(s.done for s in states):
            return
        key = (current, tuple((s.name, s.version, s.done) for s in states))
        if key == self._published:
            return  # every member publishes, and again from the next cell: once per change
        self._published = key
        update_display(self._static, {"text/plain": "\n".join(f"{s.name}: {s.status}" for s in states),
                                      "text/html": static_html(states)},
                       shell=self.shell, parent=None if current else self.parent)

    def is_open(self, name: str) -> bool:
        return self.view is not None and self.view.lines.opened == name

    def toggle(self, name: str) -> None:
        """Open the full widget of run ``name`` under the lines, or close it when it is the open one."""
        if self.is_open(name):
            assert self.view is not None
            self.view.lines.opened = ""
            self.view.detail.children = ()
            return
        self.open(name)

    def open(self, name: str) -> None:
        """Show the full widget of run ``name`` under the lines (in place of the one open before)."""
        member = next((m for m in self.members if m.name == name), None)
        if self.view is None or member is None:
            return
        self.view.lines.opened = name
        widget = member.widget  # made now if it was not (it opens itself here: nothing more to do)
        if widget is None or self.view.detail.children == (widget,):
            return
        widget.render(self.states[name])
        self.view.detail.children = (widget,)


_CELLS: OrderedDict[str, CellRuns] = OrderedDict()


def cell_runs(shell: Any, parent: dict[str, Any] | None) -> CellRuns | None:
    """The group of the cell being run, by its request's message id (None outside a kernel: no cell to group)."""
    if parent is None or not parent.get("msg_id"):
        return None
    key = parent["msg_id"]
    group = _CELLS.get(key)
    if group is None:
        group = _CELLS[key] = CellRuns(shell, parent)
        while len(_CELLS) > MAX_CELLS:
            _CELLS.popitem(last=False)
    return group
