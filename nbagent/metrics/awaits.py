"""Where a task's wall time went, by what it awaited: samples of its await chain, taken on its own loop.

A CPU sampling profiler sees the event loop's selector while a run waits on the network: the wait is lost
to ``select``. :class:`AwaitSampler` instead asks, every few milliseconds and from a callback on the run's
loop (so the task is suspended and its chain is stable), which coroutines the run task is suspended in:
``task.get_coro().cr_await.cr_await...`` down to the future it waits on, following awaited tasks and the
children of ``gather``. Each sample's interval is attributed to that chain; the lateness of the callback
(the loop was busy running code) is attributed to ``[loop busy]``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

__all__ = ["LOOP_BUSY", "AwaitSampler", "await_chain"]

_MAX_DEPTH = 60
LOOP_BUSY = ("[loop busy]",)


def await_chain(task: asyncio.Task[Any]) -> tuple[str, ...]:
    """The coroutines ``task`` is suspended in, outermost first (``qualname file:line``), then what the
    innermost awaits (a future's type); awaited tasks and the first unfinished child of a gather are followed."""
    out: list[str] = []
    current: Any = task
    obj: Any = task.get_coro()
    while obj is not None and len(out) < _MAX_DEPTH:
        frame = getattr(obj, "cr_frame", None) or getattr(obj, "gi_frame", None) or getattr(obj, "ag_frame", None)
        if frame is not None and frame.f_code.co_name == "__await__" and "asyncio" in frame.f_code.co_filename:
            # the pure-Python Future.__await__ (asyncio patched, e.g. by nest-asyncio2): the future itself
            obj = getattr(current, "_fut_waiter", None) or frame.f_locals.get("self", obj)
            frame = None
            if obj is None:
                break
        if frame is not None:
            code = frame.f_code
            out.append(f"{getattr(code, 'co_qualname', code.co_name)} "
                       f"{os.path.basename(code.co_filename)}:{frame.f_lineno}")
            nxt = getattr(obj, "cr_await", None) or getattr(obj, "gi_yieldfrom", None) or getattr(obj, "ag_await", None)
            obj = nxt
            continue
        if not isinstance(obj, asyncio.Future):  # a future's iterator: the task it suspends says which future
            waited = getattr(current, "_fut_waiter", None)
            obj = waited if waited is not None else obj
        if isinstance(obj, asyncio.Task):
            current, obj = obj, obj.get_coro()
            continue
        pending = [c for c in getattr(obj, "_children", None) or () if not c.done()]  # asyncio.gather's future
        if pending:
            obj = pending[0]
            continue
        out.append(f"[await {type(obj).__name__}]")
        obj = None
    return tuple(out)


class AwaitSampler:
    """Samples ``task``'s await chain every ``interval`` seconds on its loop until it ends or :meth:`stop`."""

    def __init__(self, task: asyncio.Task[Any], *, interval: float = 0.005) -> None:
        self.task = task
        self.interval = interval
        self.seconds: dict[tuple[str, ...], float] = {}
        self._handle: asyncio.TimerHandle | None = None
        self._last = 0.0

    def start(self) -> AwaitSampler:
        loop = self.task.get_loop()
        self._last = time.perf_counter()
        self._handle = loop.call_later(self.interval, self._sample)
        return self

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _sample(self) -> None:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        if self.task.done():
            self._handle = None
            return
        late = max(elapsed - self.interval, 0.0)
        if late:
            self.seconds[LOOP_BUSY] = self.seconds.get(LOOP_BUSY, 0.0) + late
        chain = await_chain(self.task)
        self.seconds[chain] = self.seconds.get(chain, 0.0) + elapsed - late
        self._handle = self.task.get_loop().call_later(self.interval, self._sample)

    def most_common(self, n: int | None = None) -> list[tuple[tuple[str, ...], float]]:
        """The chains by wall time, largest first."""
        return sorted(self.seconds.items(), key=lambda kv: -kv[1])[:n]

    def table(self, *, top: int = 12, skip: int = 0) -> str:
        """The chains that took the most wall time, as text: seconds, share, and the chain's innermost frames
        (``skip`` leading frames left out, e.g. those every chain of a run shares)."""
        total = sum(self.seconds.values())
        if not total:
            return ""
        lines = [f"awaited (wall time by what the run task was suspended in; {total:.3f} s sampled)"]
        for chain, secs in self.most_common(top):
            shown = chain[skip:] or chain
            tail = " > ".join(_name(frame) for frame in shown[-6:])
            where = next((f.split(" ", 1)[1] for f in reversed(shown) if not f.startswith("[")), "")
            lines.append(f"{secs:9.3f} s {100 * secs / total:5.1f} %  {tail}" + (f"  ({where})" if where else ""))
        return "\n".join(lines)


def _name(frame: str) -> str:
    return frame if frame.startswith("[") else frame.split(" ", 1)[0]
