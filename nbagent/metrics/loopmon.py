"""Event-loop lag monitor: how late the loop wakes up, and what blocked it.

::

    monitor = LoopMonitor(threshold=0.1, registry=registry, bus=bus)
    monitor.start()          # on the loop to watch (creates a task and a watchdog thread)
    ...
    monitor.lag.p99          # seconds
    monitor.blocks[-1].where # "cell.py:12 in fetch: time.sleep(2)"
    monitor.stop()

A task sleeps ``interval`` seconds again and again and records how much later than asked it woke up (the
*lag*) into the histogram ``loop.lag``. A watchdog thread looks at the task's last heartbeat; when the loop
has not come back for ``threshold`` seconds, the thread takes a sample of the loop thread's stack (with
:func:`sys._current_frames`), which names the code that holds the loop. When the loop comes back, the block
is recorded (counter ``loop.blocks``, histogram ``loop.block``) and published as a :class:`LoopBlocked`
event. Nothing here imports a UI package.
"""

from __future__ import annotations

import asyncio
import os
import sys
import sysconfig
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from ..events import Event, EventBus, _frozen
from .histogram import Histogram
from .registry import MetricsRegistry

__all__ = ["LoopBlocked", "LoopMonitor", "describe_stack"]


#: Frames from these directories are library code: the "where" of a block names the innermost frame outside.
_LIBRARY_DIRS = tuple(
    {os.path.normcase(p) + os.sep for p in (sysconfig.get_path("stdlib"), sysconfig.get_path("purelib"),
                                             sysconfig.get_path("platlib")) if p}
)
_OWN_FILE = os.path.normcase(os.path.abspath(__file__))
#: nbagent's notebook layer (widgets, views, magics): a block inside it is nbagent drawing, not the user's code.
_DISPLAY_DIR = os.path.normcase(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                             "notebook")) + os.sep
_PACKAGE_DIR = os.path.dirname(_DISPLAY_DIR.rstrip(os.sep)) + os.sep


@dataclass(**_frozen)  # type: ignore[call-overload]
class LoopBlocked(Event):
    """The event loop woke up ``seconds`` late (more than ``threshold``).

    ``where`` names the innermost frame of user code seen on the loop thread while it was stuck (empty when
    no sample was taken in time); ``stack`` is that sample, formatted.
    """

    kind: ClassVar[str] = "loop_blocked"
    seconds: float = 0.0
    threshold: float = 0.0
    where: str = ""
    stack: str = ""


def _is_library(filename: str) -> bool:
    path = os.path.normcase(os.path.abspath(filename))
    return path == _OWN_FILE or path.startswith(_LIBRARY_DIRS) or filename.startswith("<frozen")


def _in(filename: str, directory: str) -> bool:
    return os.path.normcase(os.path.abspath(filename)).startswith(directory)


def _frame_words(f: traceback.FrameSummary, *, with_line: bool = True) -> str:
    line = (f.line or "").strip() if with_line else ""
    return f"{os.path.basename(f.filename)}:{f.lineno} in {f.name}" + (f": {line}" if line else "")


def describe_stack(frame: object | None, limit: int = 12) -> tuple[str, str]:
    """``(where, stack)`` for a frame: the innermost non-library frame and the last ``limit`` frames.

    When that frame is in nbagent's own notebook layer (a view being drawn), ``where`` says so —
    ``nbagent display (widgets.py:80 in __init__), called from cell.py:3 in <module>`` — naming the code
    outside nbagent that called into it, if any, rather than the line of a button.
    """
    if frame is None:
        return "", ""
    summary = traceback.extract_stack(frame)  # type: ignore[arg-type]
    if not summary:
        return "", ""
    stack = "".join(traceback.format_list(summary[-limit:]))
    chosen = next((f for f in reversed(summary) if not _is_library(f.filename)), summary[-1])
    if not _in(chosen.filename, _DISPLAY_DIR):
        return _frame_words(chosen), stack
    caller = next((f for f in reversed(summary) if not _is_library(f.filename) and not _in(f.filename, _PACKAGE_DIR)),
                  None)
    where = f"nbagent display ({_frame_words(chosen, with_line=False)})"
    return where + (f", called from {_frame_words(caller)}" if caller is not None else ""), stack


class LoopMonitor:
    """Measures the lag of one event loop and samples the stack when the loop is blocked.

    ``interval``: seconds between wake-ups of the measuring task. ``threshold``: a wake-up this late (in
    seconds) is a block. Lags go to ``registry.histogram("loop.lag")`` (a private registry when none is given);
    blocks are kept in :attr:`blocks` (the last ``max_blocks``) and emitted on ``bus`` as :class:`LoopBlocked`.
    """

    def __init__(
        self,
        *,
        interval: float = 0.01,
        threshold: float = 0.1,
        registry: MetricsRegistry | None = None,
        bus: EventBus | None = None,
        max_blocks: int = 50,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        if interval <= 0 or threshold <= 0:
            raise ValueError("interval and threshold must be > 0")
        self.interval = interval
        self.threshold = threshold
        self.registry = registry if registry is not None else MetricsRegistry()
        self.bus = bus
        self.blocks: deque[LoopBlocked] = deque(maxlen=max_blocks)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._loop_thread_id: int | None = None
        self._beat = 0.0
        self._sample: tuple[float, str, str] | None = None  # (heartbeat it belongs to, where, stack)

    # --- public -----------------------------------------------------------------------------------

    @property
    def lag(self) -> Histogram:
        """Histogram of wake-up lags in seconds (``loop.lag``)."""
        return self.registry.histogram("loop.lag")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start watching the running loop (call it on the loop's thread). Starting twice is a no-op."""
        if self.running:
            return
        loop = asyncio.get_running_loop()
        self._loop_thread_id = threading.get_ident()
        self._beat = self._clock()
        self._sample = None
        self._stopped = threading.Event()
        self._task = loop.create_task(self._measure(), name="nbagent:loop-monitor")
        self._thread = threading.Thread(target=self._watch, args=(self._stopped,), name="nbagent-loop-watchdog",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop measuring (the watchdog thread ends within a fraction of ``threshold``)."""
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._thread = None

    def snapshot(self) -> dict[str, object]:
        """Lag percentiles (seconds), the number of blocks and the last block's ``where``."""
        s = self.lag.summary()
        last = self.blocks[-1] if self.blocks else None
        return {"lag_p50": s["p50"], "lag_p99": s["p99"], "lag_max": s["max"], "samples": s["count"],
                "blocks": int(self.registry.value("loop.blocks")), "last_block": last.where if last else None,
                "last_block_seconds": last.seconds if last else None}

    # --- measuring --------------------------------------------------------------------------------

    async def _measure(self) -> None:
        clock, interval = self._clock, self.interval
        lag_hist = self.lag
        while True:
            before = clock()
            await asyncio.sleep(interval)
            now = clock()
            previous_beat, self._beat = self._beat, now
            lag = max(now - before - interval, 0.0)
            lag_hist.record(lag)
            if lag >= self.threshold:
                self._report(lag, previous_beat)

    def _report(self, lag: float, previous_beat: float) -> None:
        sample, self._sample = self._sample, None
        where, stack = (sample[1], sample[2]) if sample is not None and sample[0] == previous_beat else ("", "")
        self.registry.counter("loop.blocks").inc()
        self.registry.histogram("loop.block").record(lag)
        ev = LoopBlocked(seconds=lag, threshold=self.threshold, where=where, stack=stack)
        self.blocks.append(ev)
        if self.bus is not None:
            self.bus.emit(ev)

    def _watch(self, stopped: threading.Event) -> None:
        """Watchdog thread: sample the loop thread's stack once per stall longer than ``threshold``."""
        poll = min(self.threshold / 4, 0.05)
        while not stopped.wait(poll):
            beat = self._beat
            if self._clock() - beat - self.interval < self.threshold:
                continue
            sample = self._sample
            if sample is not None and sample[0] == beat:
                continue  # this stall is already sampled
            frame = sys._current_frames().get(self._loop_thread_id or -1)
            where, stack = describe_stack(frame)
            del frame
            if self._beat == beat:  # still the same stall
                self._sample = (beat, where, stack)
