"""Approve or deny a tool call from the run widget: the ``ask`` callback of policies in a notebook.

A :class:`~nbagent.policy.Policy` whose rule says ``ask`` awaits its ``ask`` callback. In a notebook that
callback is the registry's :class:`Approvals`: it shows the pending call (tool and arguments) in the run's
widget with Approve / Deny / "Always for this run" buttons, and waits for a click on a future of the kernel's
loop, so other runs and the kernel go on meanwhile. The policy's ``ask_timeout`` turns no answer into a deny;
a cancelled run (Stop) withdraws its question. A run's questions are shown one at a time, oldest first; an
"always" answer also approves the run's other waiting calls of the same tool.

The kernel reads button clicks between cells: a cell that blocks on its run (``--wait``) cannot be answered
before the policy's timeout, so ask-policies belong with background runs.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..control import call_in_loop

if TYPE_CHECKING:
    from .entry import RunEntry
    from .session import RunRegistry

__all__ = ["Approvals", "Pending", "format_arguments"]

ANSWERS = ("allow", "deny", "always")
NO_WIDGET = "no run widget to ask in (show widgets, or give the policy an ask callback)"


def format_arguments(args: dict[str, Any], limit: int = 2000) -> str:
    """The arguments of a call as indented JSON, cut to ``limit`` characters."""
    text = json.dumps(args, indent=2, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(eq=False)
class Pending:
    """One call waiting for an answer."""

    tool: str
    args: dict[str, Any]
    future: asyncio.Future[str] = field(repr=False)


class Approvals:
    """The pending approvals of a notebook's runs; ``await approvals(tool, args, run_id)`` asks in the run widget.

    Returns ``True`` (Approve), ``"always"`` (Always for this run) or ``False`` (Deny), as
    :data:`~nbagent.policy.AskCallback` expects; a run with no widget gets a deny that says why.
    """

    def __init__(self, registry: RunRegistry) -> None:
        self.registry = registry
        self._queues: dict[str, deque[Pending]] = {}
        self.asked = 0

    def pending(self, run_id: str) -> list[Pending]:
        """The calls of ``run_id`` waiting for an answer, the one shown first."""
        return list(self._queues.get(run_id, ()))

    async def __call__(self, tool: str, args: dict[str, Any], run_id: str | None) -> bool | str:
        if run_id is None or self._widget_of(run_id)[1] is None:
            return NO_WIDGET
        self.asked += 1
        item = Pending(tool, args, asyncio.get_running_loop().create_future())
        queue = self._queues.setdefault(run_id, deque())
        queue.append(item)
        self._show(run_id)  # the first question, or the one shown with a new count
        try:
            answer = await item.future
        finally:
            self._withdraw(run_id, item)
        return True if answer == "allow" else "always" if answer == "always" else False

    def answer(self, run_id: str, answer: str) -> None:
        """Answer the call of ``run_id`` shown now (what the buttons do): allow, deny or always."""
        if answer not in ANSWERS:
            raise ValueError(f"answer must be one of {ANSWERS}, not {answer!r}")
        queue = self._queues.get(run_id)
        if not queue:
            return
        head = queue[0]
        targets = [p for p in queue if p.tool == head.tool] if answer == "always" else [head]
        for item in targets:
            _resolve(item.future, answer)

    # --- the widget ---------------------------------------------------------------------------------

    def _widget_of(self, run_id: str) -> tuple[RunEntry | None, Any]:
        """The run's entry and its live widget (None when the run is not shown live)."""
        entry = self.registry.entry_for_run(run_id)
        return entry, getattr(entry.view, "widget", None) if entry is not None else None

    def _show(self, run_id: str) -> None:
        entry, widget = self._widget_of(run_id)
        queue = self._queues.get(run_id)
        if entry is None or widget is None or not queue:
            return
        head = queue[0]
        on_answer: Callable[[str], None] = lambda answer: self.answer(run_id, answer)  # noqa: E731
        widget.show_approval(head.tool, format_arguments(head.args), on_answer, waiting=len(queue) - 1)
        entry.state.set_pending(f"{head.tool}" + (f" (+{len(queue) - 1} more)" if len(queue) > 1 else ""))

    def _withdraw(self, run_id: str, item: Pending) -> None:
        queue = self._queues.get(run_id)
        if queue is None:
            return
        try:
            queue.remove(item)
        except ValueError:
            pass
        if not queue:
            del self._queues[run_id]
            entry, widget = self._widget_of(run_id)
            if widget is not None:
                widget.hide_approval()
            if entry is not None:
                entry.state.set_pending("")
        else:
            self._show(run_id)  # the next question, or the same one with a new count


def _resolve(future: asyncio.Future[str], answer: str) -> None:
    """Set the answer on the future's own loop (a click may arrive on another thread)."""

    def set_answer() -> None:
        if not future.done():
            future.set_result(answer)

    call_in_loop(future.get_loop(), set_answer)
