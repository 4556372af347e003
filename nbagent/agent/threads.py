"""Where sync tools run: daemon threads of one runtime, bounded, so that a stuck tool cannot starve others.

``asyncio.to_thread`` uses the loop's default executor: a sync tool that never returns (``time.sleep(10**6)``)
keeps one of its few threads forever, and after a handful of such calls every sync tool — and everything else
using the default executor — waits; ``asyncio.run()`` then waits for the stuck threads at exit. Here each call
runs in a daemon thread of its own (the interpreter does not wait for it), at most ``size`` at a time; a call
whose caller gave up (timeout or cancel) while its thread runs on is counted as stuck and frees its slot, and
once ``max_stuck`` threads are stuck new calls fail at once with a clear error instead of piling up.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any

from ..errors import ToolError

__all__ = ["ToolThreads"]


class ToolThreads:
    """Runs sync tools (see the module docstring). ``stats()`` says how many run and how many are stuck."""

    def __init__(self, size: int = 16, max_stuck: int = 64) -> None:
        self.size = size
        self.max_stuck = max_stuck
        self.running = 0
        self.stuck = 0
        self.calls = 0
        self._lock = threading.Lock()
        self._slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    def stats(self) -> dict[str, int]:
        return {"size": self.size, "running": self.running, "stuck": self.stuck, "calls": self.calls}

    async def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` in a daemon thread; cancelling the await abandons (and counts) the thread."""
        if self.stuck >= self.max_stuck:
            raise ToolError(f"{self.stuck} sync tool calls are stuck in their threads (a tool that never "
                            f"returns?); refusing new sync tool calls until they end")
        loop = asyncio.get_running_loop()
        slots = self._slots.get(loop)
        if slots is None:
            slots = self._slots[loop] = asyncio.Semaphore(self.size)
        async with slots:
            fut: asyncio.Future[Any] = loop.create_future()
            state = {"abandoned": False}
            ctx = contextvars.copy_context()

            def settle(ok: bool, value: Any) -> None:
                if fut.done():
                    return
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)

            def work() -> None:
                try:
                    result, ok = ctx.run(fn, *args, **kwargs), True
                except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                    result, ok = exc, False
                with self._lock:
                    self.running -= 1
                    if state["abandoned"]:
                        self.stuck -= 1
                if not loop.is_closed():
                    try:
                        loop.call_soon_threadsafe(settle, ok, result)
                    except RuntimeError:  # the loop closed meanwhile
                        pass

            with self._lock:
                self.running += 1
                self.calls += 1
            threading.Thread(target=work, name=f"nbagent-tool:{getattr(fn, '__name__', 'tool')}",
                             daemon=True).start()
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                with self._lock:
                    if not fut.done() and self.running:
                        state["abandoned"] = True
                        self.stuck += 1
                raise
