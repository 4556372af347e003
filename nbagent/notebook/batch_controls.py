"""Live controls of a running batch in a notebook: Pause/Resume, its concurrency and its runs' limits.

``nbagent.map`` shows them under its progress line when it runs in a notebook (``controls=False`` hides them);
:func:`show_controls` shows them for any :class:`~nbagent.control.BatchControl`, e.g. a bench started as a
task with ``control=``. The widgets hold no logic: each change calls the control (``pause``, ``resume``,
``set_concurrency``, ``set_limits``), and a change made from code (``batch.pause()``) is drawn back here.
JupyterLab delivers widget events on a kernel subshell's thread: each change is handed to the batch's loop.

Widget events reach the kernel only between cells: the controls work for a batch running in the background
(``batch = nbagent.map(...)`` returns at once), not while a cell awaits it.
"""

from __future__ import annotations

import asyncio
import html
import math
from typing import Any

import ipywidgets as widgets

from ..control import BatchControl, call_in_loop
from .kernel import running_loop

__all__ = ["BatchControls", "show_controls"]

#: The limits offered as fields (``max_steps`` and ``max_cost`` of the batch agent's ``UsageLimits``).
LIMIT_FIELDS: tuple[tuple[str, str, type], ...] = (("max_steps", "max steps", int), ("max_cost", "max cost $", float))


def parse_limit(text: str, kind: type) -> int | float | None:
    """A limit typed in a field: empty (or "none") is no limit; else a finite number ``>= 0`` of ``kind``."""
    text = text.strip()
    if text.lower() in ("", "none"):
        return None
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{text!r} is not {'a whole number' if kind is int else 'a number'}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} must be a finite number >= 0")
    return value  # type: ignore[no-any-return]


class BatchControls(widgets.HBox):
    """Pause/Resume, concurrency and limit fields for one :class:`~nbagent.control.BatchControl`."""

    def __init__(self, control: BatchControl, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.control = control
        self.loop = loop or running_loop()  # the batch's loop, where every change to the control is made
        self.finished = False
        self.pause = widgets.ToggleButton(value=control.paused, description="Pause", icon="pause",
                                          tooltip="Start no new model call (the calls in flight finish)",
                                          layout=widgets.Layout(width="110px"))
        self.concurrency = widgets.BoundedIntText(value=control.concurrency, min=1, max=100_000,
                                                  description="concurrency", continuous_update=False,
                                                  tooltip="Runs in flight at most",
                                                  layout=widgets.Layout(width="170px"))
        self.limits: dict[str, widgets.Text] = {}
        for name, label, _kind in LIMIT_FIELDS:
            field = widgets.Text(value=self._limit_text(name), description=label, placeholder="no limit",
                                 continuous_update=False, layout=widgets.Layout(width="170px"))
            field.observe(lambda change, name=name: self._on_limit(name, change["new"]), names="value")
            self.limits[name] = field
        self.status = widgets.HTML()
        self.pause.add_class("nbagent-batch-pause")
        self.concurrency.add_class("nbagent-batch-concurrency")
        for name, field in self.limits.items():
            field.add_class(f"nbagent-batch-{name.replace('_', '-')}")
        self.pause.observe(self._on_pause, names="value")
        self.concurrency.observe(self._on_concurrency, names="value")
        self._stop_listening = control.on_change(self.sync)
        super().__init__([self.pause, self.concurrency, *self.limits.values(), self.status],
                         layout=widgets.Layout(align_items="center", flex_flow="row wrap"))
        self.add_class("nbagent-batch-controls")
        self.sync()

    # -- from the frontend ------------------------------------------------------------------------------------

    def _on_pause(self, change: dict[str, Any]) -> None:
        call_in_loop(self.loop, self._set_paused, bool(change["new"]))

    def _set_paused(self, paused: bool) -> None:
        if paused != self.control.paused:
            self.control.pause() if paused else self.control.resume()

    def _on_concurrency(self, change: dict[str, Any]) -> None:
        call_in_loop(self.loop, self._set_concurrency, int(change["new"]))

    def _set_concurrency(self, n: int) -> None:
        if n != self.control.concurrency:
            self.control.set_concurrency(n)

    def _on_limit(self, name: str, text: str) -> None:
        call_in_loop(self.loop, self._set_limit, name, text)

    def _set_limit(self, name: str, text: str) -> None:
        kind = next(k for n, _, k in LIMIT_FIELDS if n == name)
        try:
            value = parse_limit(text, kind)
            if value != self._limit(name):
                self.control.set_limits(**{name: value})
        except (ValueError, TypeError, RuntimeError) as exc:
            self._say(f"{name}: {exc}", error=True)
            return
        self.sync()

    # -- to the frontend --------------------------------------------------------------------------------------

    def _limit(self, name: str) -> Any:
        agent = self.control.agent
        return getattr(agent.limits, name, None) if agent is not None else None

    def _limit_text(self, name: str) -> str:
        value = self._limit(name)
        return "" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    def sync(self) -> None:
        """Draw the control's current state (called after every change, whether made here or from code)."""
        c = self.control
        self.pause.value = c.paused
        self.pause.description, self.pause.icon = ("Resume", "play") if c.paused else ("Pause", "pause")
        self.pause.button_style = "warning" if c.paused else ""
        self.concurrency.value = c.concurrency
        for name, field in self.limits.items():
            field.value = self._limit_text(name)
        self._say("finished" if self.finished else
                  "paused: no new model call; the calls in flight finish" if c.paused else "running")

    def finish(self) -> None:
        """The batch ended: the controls say so, then go grey (in that order: a frontend that shows them grey has
        the final state too)."""
        self.finished = True
        self._stop_listening()
        self.sync()
        for w in (self.pause, self.concurrency, *self.limits.values()):
            w.disabled = True

    def _say(self, text: str, *, error: bool = False) -> None:
        color = "#c62828" if error else "#666"
        self.status.value = f'<span style="font-size:12px;color:{color}">{html.escape(text)}</span>'

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        if isinstance(bundle, dict):  # where no widget can be drawn (nbconvert, GitHub): one plain line
            bundle["text/plain"] = "nbagent batch controls (live in a running notebook)"
        return bundle


def show_controls(control: BatchControl, task: asyncio.Future[Any] | None = None) -> BatchControls:
    """Show the controls of ``control`` in the current cell; they go grey when ``task`` (the batch) ends."""
    from IPython.display import display

    box = BatchControls(control)
    if task is not None:
        task.add_done_callback(lambda _: box.finish())
    display(box)
    return box
