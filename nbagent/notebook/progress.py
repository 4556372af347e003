"""The progress line of ``nbagent.map`` and ``run_bench`` in a notebook: HTML updated in place, no widget.

Under the line, a ``map`` batch shows one line per run (status, elapsed, steps, tokens, cost and a spark of
its timeline on the batch's shared time axis), read from the runtime's records: running runs and failures
first, then the most recent; at most :data:`MAX_LINES` lines, the rest counted.

A tqdm widget started by a background task sends its updates with the header of the cell that started it;
a headless executor (nbclient, ``nbagent execute``) records only the messages of the cell it is executing, so
a saved notebook kept the bar as first drawn ("0% 0/20"). This line is a display (HTML and text) updated by
its display id; when the batch ends, its final state is sent again under the request being executed: by
``await batch`` in the awaiting cell, else at the start of the next cell. nbclient then replaces the line in
the cell that started the batch, so the saved notebook shows the final count.
"""

from __future__ import annotations

import html
import time
from typing import Any

from IPython.display import DisplayHandle, display

from .kernel import current_parent, kernel_shell, update_display

__all__ = ["MAX_LINES", "NotebookProgress", "deliver_pending"]

#: Run lines under a batch's progress line at most (running and failed runs first); the rest are counted.
MAX_LINES = 30

_PENDING = "_nbagent_progress"  # lines that ended but were not sent under a later request: kept on the shell


class NotebookProgress:
    """``update(n)`` and ``close()``, as a tqdm bar; shown at once in the current cell."""

    def __init__(self, total: int, desc: str, shell: Any, *, unit: str = "run", min_interval: float = 0.2) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.shell = shell
        self.n = 0
        self.min_interval = min_interval
        self.started = self._last = time.monotonic()
        self.ended: float | None = None
        self.delivered = False
        self.parent = current_parent(shell)
        self.records: Any = None  # the runtime's RecordIndex, set by the batch that reports here
        self.names: list[str] = []  # the batch's runs, in the order they started
        self.handle: DisplayHandle | None = display(self.bundle(), raw=True, display_id=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.min_interval or self.n >= self.total:
            self._last = now
            self._send(self.parent)

    def run_started(self, name: str) -> None:
        """Run ``name`` of the batch started: it gets a line (drawn with the next update)."""
        self.names.append(name)

    def close(self) -> None:
        """The final state, under the starting cell's header; then again under a later request (see the module)."""
        if self.ended is not None:
            return
        self.ended = time.monotonic()
        self._send(self.parent)
        pending = getattr(self.shell, _PENDING, None)
        if pending is None:
            pending = []
            setattr(self.shell, _PENDING, pending)
            events = getattr(self.shell, "events", None)
            if events is not None:
                events.register("pre_run_cell", _deliver_before_cell)
        pending.append(self)

    def deliver(self) -> None:
        """Send the final state under the request being executed now (once)."""
        if self.ended is None or self.delivered:
            return
        self.delivered = True
        self._send(current_parent(self.shell))

    def _send(self, parent: dict[str, Any] | None) -> None:
        update_display(self.handle, self.bundle(), shell=self.shell, parent=parent)

    # --- rendering ----------------------------------------------------------------------------------

    def text(self) -> str:
        seconds = (self.ended if self.ended is not None else time.monotonic()) - self.started
        rate = f", {self.n / seconds:.1f} {self.unit}s/s" if seconds > 0 and self.n else ""
        state = "done" if self.ended is not None and self.n >= self.total else (
            "stopped" if self.ended is not None else "running")
        return f"{self.desc}: {self.n}/{self.total} {self.unit}s, {seconds:.1f} s{rate} ({state})"

    def bundle(self) -> dict[str, str]:
        share = self.n / self.total if self.total else 1.0
        color = "#2e7d32" if self.ended is not None and self.n >= self.total else (
            "#ef6c00" if self.ended is not None else "#1f77b4")
        page = (f'<div class="nbagent-progress" data-done="{self.n}" data-total="{self.total}" '
                f'style="font-size:12px;font-family:monospace;margin:2px 0">'
                f'<span style="display:inline-block;width:200px;height:10px;border:1px solid #bbb;'
                f'vertical-align:middle;margin-right:6px"><span style="display:block;height:100%;'
                f'width:{100 * min(share, 1.0):.1f}%;background:{color}"></span></span>'
                f"{html.escape(self.text())}</div>")
        return {"text/plain": self.text(), "text/html": page + self.lines_html()}

    def lines_html(self) -> str:
        """A line per run of the batch (see the module docs); empty until runs are known."""
        if self.records is None or not self.names:
            return ""
        from .compact import run_lines_html

        by_name = {r.name: r for r in self.records.all()}
        found = [by_name[n] for n in self.names if n in by_name]
        return run_lines_html(found, limit=MAX_LINES)


def deliver_pending(shell: Any) -> int:
    """Send every ended line of ``shell`` not yet sent under a later request, under the current one."""
    pending: list[NotebookProgress] = getattr(shell, _PENDING, None) or []
    done = [p for p in pending if p.ended is not None]
    for p in done:
        p.deliver()
        pending.remove(p)
    return len(done)


def _deliver_before_cell(info: Any = None) -> None:
    from IPython import get_ipython

    shell = get_ipython()
    if shell is not None:
        deliver_pending(shell)


def progress(total: int, desc: str, *, unit: str = "run") -> NotebookProgress | None:
    """A progress line in the current cell when running in a kernel, else None."""
    shell = kernel_shell()
    if shell is None:
        return None
    return NotebookProgress(total, desc, shell, unit=unit)
