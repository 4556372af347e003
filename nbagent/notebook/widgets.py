"""The run widget: status, elapsed time, streaming answer, one card per step, token counter and a Stop button.

Widgets hold no logic: :class:`RunWidget` draws a :class:`~nbagent.notebook.state.RunState` and calls the
``on_stop`` it was given when Stop is clicked; a tool call that a policy asks about is shown in its approval
panel, whose buttons call the ``on_answer`` they were given (see :mod:`nbagent.notebook.approvals`).
:class:`RunOutput` puts the widget in the cell that started the run, next to a static rendering that is
replaced by the run's summary when it ends.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
from IPython.display import DisplayHandle, display
from ipywidgets.widgets.widget_string import HTMLStyle

from ..record import format_cost
from .compact import CellRuns, cell_runs
from .kernel import current_parent, update_display
from .live import ScrollList
from .state import RunState, StepCard
from .static import (
    STATUS_COLORS,
    badge,
    run_summary_html,
    stop_reason,
    text_summary,
    tokens_line,
    waterfall_html,
    where_time_went,
)

__all__ = ["ApprovalPanel", "RunOutput", "RunWidget"]

_TAGS = {"llm": ("LLM", "#1565c0"), "tool": ("TOOL", "#6a1b9a"), "retry": ("RETRY", "#ef6c00"),
         "cache": ("CACHE", "#2e7d32"), "sandbox": ("SANDBOX", "#455a64"), "error": ("ERROR", "#c62828"),
         "policy": ("POLICY", "#ef6c00")}
MAX_VISIBLE_CARDS = 30
MAX_WATERFALL_ROWS = 40  # the newest rows of a live waterfall


def _tag(kind: str) -> str:
    label, color = _TAGS.get(kind, (kind.upper(), "#555"))
    return (f'<span style="font-size:10px;color:{color};border:1px solid {color};border-radius:3px;'
            f'padding:0 3px">{label}</span>')


def card_html(card: StepCard) -> str:
    lines = []
    for item in card.items:
        color = "" if item.ok else "color:#c62828;"
        pending = "" if item.done else " …"
        lines.append(
            f'<div style="{color}white-space:nowrap;overflow:hidden;text-overflow:ellipsis">'
            f"{_tag(item.kind)} <b>{html.escape(item.label)}</b>{pending} "
            f'<span style="opacity:.8">{html.escape(item.detail)}</span></div>'
        )
    return (f'<div class="nbagent-step" style="border:1px solid #ddd;border-radius:4px;padding:2px 6px;'
            f'margin:1px 0;font-size:12px"><span style="opacity:.6">step {card.step}</span>{"".join(lines)}</div>')


_SHARED: dict[str, widgets.Widget] = {}


def _shared(key: str, factory: Callable[[], widgets.Widget]) -> Any:
    """One layout or style instance shared by every run widget (fewer models for the frontend to sync)."""
    w = _SHARED.get(key)
    if w is None or w.comm is None:
        w = _SHARED[key] = factory()
    return w


class RunWidget(widgets.VBox):
    """The live view of one run: Stop, a header (status, time, tokens), the answer and the step cards.

    ``render(state)`` redraws; only the parts that changed are sent. Stop calls ``on_stop()``.
    """

    def __init__(self, name: str, on_stop: Callable[[], None] | None = None) -> None:
        layout = _shared("layout", widgets.Layout)
        style = _shared("html-style", HTMLStyle)
        self.stop = widgets.Button(description="Stop", icon="stop", button_style="danger", tooltip="Cancel this run",
                                   layout=_shared("button", lambda: widgets.Layout(width="100px")),
                                   style=_shared("button-style", widgets.ButtonStyle))
        self.stop.add_class("nbagent-stop")
        self.header = widgets.HTML(layout=layout, style=style)
        self.header.add_class("nbagent-header")
        self.answer = widgets.HTML(layout=layout, style=style)
        self.answer.add_class("nbagent-answer")
        self.steps = ScrollList(layout=layout)  # keeps the user's scroll position; follows new steps at the bottom
        self.steps.add_class("nbagent-steps")
        self.waterfall = ScrollList(layout=layout, max_height="24em")  # its newest rows in view while it grows
        self.waterfall.add_class("nbagent-live-waterfall")
        self._on_stop = on_stop
        self._name = name
        self._cards_key: tuple[Any, ...] = ()
        self.stop.on_click(self._clicked)
        self._approval: ApprovalPanel | None = None  # built when a policy first asks: most runs never do
        top = widgets.HBox([self.stop, self.header], layout=layout)
        self._parts: list[widgets.Widget] = [top, self.answer, self.steps, self.waterfall]
        super().__init__(self._parts, layout=layout)
        self.add_class("nbagent-run")
        self.render(RunState(name=name))

    @property
    def approval(self) -> ApprovalPanel:
        """The approval panel (hidden until a call is asked about), made and placed on first use."""
        if self._approval is None:
            self._approval = ApprovalPanel()
            top, *rest = self._parts
            self.children = (top, self._approval, *rest)
        return self._approval

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):
            bundle["text/plain"] = f"nbagent run {self._name} (live view)"
        return bundle

    def show_approval(self, tool: str, arguments: str, on_answer: Callable[[str], None], *, waiting: int = 0) -> None:
        """Show a pending call with Approve / Deny / Always buttons; a click calls ``on_answer(answer)``."""
        self.approval.show(tool, arguments, on_answer, waiting=waiting)

    def hide_approval(self) -> None:
        if self._approval is not None:
            self._approval.hide()

    def _clicked(self, _button: Any) -> None:
        with self.stop.hold_sync():
            self.stop.disabled = True
            self.stop.description = "Stopping"
        if self._on_stop is not None:
            self._on_stop()

    def render(self, state: RunState) -> None:
        """Redraw from ``state``; unchanged parts send nothing."""
        color = STATUS_COLORS.get(state.status, "#555")
        self.header.value = (
            f'<div style="border-left:3px solid {color};padding-left:6px">'
            f'<span class="nbagent-status" data-status="{html.escape(state.status)}">'
            f"<b>{html.escape(state.name)}</b> {badge(state.status)} {html.escape(stop_reason(state))} · "
            f"{state.elapsed():.1f} s · {state.model and html.escape(state.model) + ' · '}{len(state.cards)} steps"
            f"</span><br>{tokens_line(state)} · {format_cost(state.cost)}"
            + (f'<div class="nbagent-pending" style="color:#ef6c00;font-weight:bold">waiting for approval: '
               f"{html.escape(state.pending_approval)}</div>" if state.pending_approval and not state.done else "")
            + "".join(f'<div style="color:#ef6c00">⚠ {html.escape(w)}</div>' for w in state.warnings) + "</div>")
        text = state.text[-4000:] if state.text else ("" if state.done else "…")
        err = (f'<div style="color:#c62828">{html.escape(state.error)}</div>'
               if state.error and state.status != "ok" else "")
        self.answer.value = (f'{err}<pre style="white-space:pre-wrap;margin:2px 0;max-height:16em;overflow:auto">'
                             f"{html.escape(text)}</pre>")
        cards = state.cards[-MAX_VISIBLE_CARDS:]
        # what the cards say (cards are derived from the record: a call closed as cancelled changes its line)
        key = (len(state.cards), state.dropped_cards,
               *((c.step, *((i.label, i.detail, i.ok, i.done) for i in c.items)) for c in cards))
        if key != self._cards_key:
            self._cards_key = key
            more = len(state.cards) - len(cards) + state.dropped_cards
            older = f'<div style="opacity:.6;font-size:11px">{more} earlier steps</div>' if more else ""
            self.steps.value = f'{older}{"".join(card_html(c) for c in cards)}'
        self._render_waterfall(state)
        if state.done and self.stop.description not in ("Done", "Stopped"):
            with self.stop.hold_sync():  # one message for both traits
                self.stop.disabled = True
                self.stop.description = "Done" if state.status != "cancelled" else "Stopped"


    def _render_waterfall(self, state: RunState) -> None:
        """The waterfall, its open spans drawn to now: redrawn with every render (the registry's tick rate)."""
        svg = waterfall_html(state, max_rows=MAX_WATERFALL_ROWS, tail=not state.done)
        if not svg:
            return
        where = where_time_went(state)
        with self.waterfall.hold_sync():  # one message for both traits
            self.waterfall.head = (f'<div style="font-size:11px;opacity:.8">where the time went: '
                                   f"{html.escape(where)}</div>")
            self.waterfall.value = svg


class ApprovalPanel(widgets.VBox):
    """A pending tool call and its three buttons; hidden while nothing is asked.

    Each button answers once: all three are disabled after a click until the next question is shown.
    """

    def __init__(self) -> None:
        self.question = widgets.HTML()
        self.question.add_class("nbagent-approval-question")
        self.approve = widgets.Button(description="Approve", icon="check", button_style="success",
                                      tooltip="Run this call")
        self.deny = widgets.Button(description="Deny", icon="times", button_style="danger",
                                   tooltip="Do not run it; the model is told it was denied")
        self.always = widgets.Button(description="Always for this run", button_style="info",
                                     tooltip="Run this and every later call of this tool in this run",
                                     layout=widgets.Layout(width="auto"))
        for button, answer in ((self.approve, "allow"), (self.deny, "deny"), (self.always, "always")):
            button.add_class(f"nbagent-{'approve' if answer == 'allow' else answer}")
            button.on_click(lambda _b, a=answer: self._answered(a))
        self._on_answer: Callable[[str], None] | None = None
        super().__init__([self.question, widgets.HBox([self.approve, self.deny, self.always])],
                         layout=widgets.Layout(display="none", border="2px solid #ef6c00", padding="4px",
                                               margin="2px 0"))
        self.add_class("nbagent-approval")

    @property
    def visible(self) -> bool:
        return self.layout.display != "none"

    def show(self, tool: str, arguments: str, on_answer: Callable[[str], None], *, waiting: int = 0) -> None:
        self._on_answer = on_answer
        more = f' <span style="opacity:.7">({waiting} more waiting)</span>' if waiting else ""
        self.question.value = (f'<div class="nbagent-approval-call" data-tool="{html.escape(tool)}">'
                               f"<b>Approve this tool call?</b>{more}<br><code>{html.escape(tool)}</code>"
                               f'<pre style="margin:2px 0;max-height:12em;overflow:auto">{html.escape(arguments)}'
                               f"</pre></div>")
        for button in (self.approve, self.deny, self.always):
            button.disabled = False
        self.layout.display = "flex"

    def hide(self) -> None:
        self._on_answer = None
        self.layout.display = "none"
        self.question.value = ""

    def _answered(self, answer: str) -> None:
        for button in (self.approve, self.deny, self.always):
            button.disabled = True
        if self._on_answer is not None:
            self._on_answer(answer)


class RunOutput:
    """A run's output in the cell that started it: the live widget and a static rendering below it.

    The static part starts as one line and becomes the run's summary (HTML with the numbers) when the run
    ends, so notebooks viewed without a widget manager (nbconvert, GitHub) still show the result; a frontend
    that draws the widget hides it (see :mod:`nbagent.notebook.live`). When the cell starts more than
    :data:`~nbagent.notebook.compact.COMPACT_AFTER` runs, its runs show as one compact view instead
    (:mod:`nbagent.notebook.compact`); a run's full widget is then made when its line is opened or its
    policy asks a question.
    """

    def __init__(self, name: str, shell: Any = None, *, on_stop: Callable[[], None] | None = None,
                 live: bool = True, blocking: bool = False) -> None:
        self.shell = shell
        self.parent = current_parent(shell)
        self.live = live
        self.blocking = blocking
        self._on_stop = on_stop
        self._widget: RunWidget | None = None
        self._widget_handle: DisplayHandle | None = None
        self._static_handle: DisplayHandle | None = None
        self.name = name
        self.group: CellRuns | None = None
        self.compact = False

    @property
    def widget(self) -> RunWidget | None:
        """The run's live widget (None without live widgets); in a compact view, made and opened on first use."""
        if not self.live:
            return None
        if self._widget is None:
            self._widget = RunWidget(self.name, self._on_stop)
            if self.blocking:
                # the kernel reads button clicks only between cells: a cell that waits is stopped by an interrupt
                self._widget.stop.tooltip = "This cell waits for the run: interrupt the kernel (■) to stop it"
            if self.compact and self.group is not None:
                self.group.open(self.name)
        return self._widget

    def show(self) -> RunOutput:
        self.group = cell_runs(self.shell, self.parent)
        if self.group is not None and self.group.add(self):
            self.compact = True  # the cell's compact view shows this run
            return self
        if self.live:
            self._widget_handle = display(self.widget, display_id=True)
        bundle = {"text/plain": f"{self.name}: running", "text/html":
                  f'<div class="nbagent-summary" data-run="{html.escape(self.name)}" data-status="running" '
                  f'style="font-size:12px;opacity:.7">{html.escape(self.name)}: running…</div>'}
        self._static_handle = display(bundle, raw=True, display_id=True)
        return self

    def collapse(self) -> None:
        """Leave the cell to its compact view: what this run showed on its own is emptied."""
        self.compact = True
        for handle in (self._widget_handle, self._static_handle):
            update_display(handle, {"text/plain": ""}, shell=self.shell, parent=self.parent)
        self._widget_handle = self._static_handle = None

    def render(self, state: RunState) -> None:
        if self.compact and self.group is not None:
            self.group.render(self, state)
            if self._widget is not None and self.group.is_open(self.name):
                self._widget.render(state)
            return
        if self.widget is not None:
            self.widget.render(state)

    def publish(self, state: RunState, *, current: bool = False) -> None:
        """Replace the static part with the run's summary (with the cell's header, or the current one)."""
        if self.compact and self.group is not None:
            self.group.render(self, state)
            self.group.publish(current=current)
            return
        bundle = {"text/plain": text_summary(state), "text/html": run_summary_html(state)}
        update_display(self._static_handle, bundle, shell=self.shell, parent=None if current else self.parent)
