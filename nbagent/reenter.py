"""Waiting for an awaitable from sync code that is called inside a running event loop (a Jupyter kernel)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["wait_in_running_loop"]

T = TypeVar("T")


class _DrainSafeReady(collections.deque):  # type: ignore[type-arg]
    """The loop's ready queue, safe to drain from a nested run while the loop's own ``_run_once`` iterates it.

    asyncio's ``_run_once`` counts the ready handles, then pops that many. The first time nest-asyncio2
    re-enters a loop, that count was taken by the unpatched method, and the nested run may already have run
    (and popped) some of them: the outer pop would raise ``IndexError: pop from an empty deque`` and stop the
    loop (in a kernel: kill it). Once emptied that way, a pop gives a cancelled handle, which the loop skips.
    """

    __slots__ = ("_skip",)

    def __init__(self, items: Any, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(items)
        self._skip = asyncio.Handle(_nothing, (), loop)
        self._skip.cancel()

    def popleft(self) -> Any:
        return super().popleft() if self else self._skip


def _nothing() -> None:
    pass


def wait_in_running_loop(loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T], *, what: str,
                         instead: str) -> T:
    """Re-enter ``loop`` (running) with ``nest-asyncio2`` until ``awaitable`` is done: the other tasks on the
    loop keep running while the caller waits. Without nest-asyncio2, a ``RuntimeError`` says what to install
    and what to use ``instead``."""
    try:
        import nest_asyncio2
    except ImportError:
        if asyncio.iscoroutine(awaitable):
            awaitable.close()
        raise RuntimeError(f"{what} inside a running event loop (such as a Jupyter kernel) needs nest-asyncio2 "
                           f"(pip install 'nbagent[notebook]'); or use {instead}") from None
    ready = getattr(loop, "_ready", None)
    if type(ready) is collections.deque:
        loop._ready = _DrainSafeReady(ready, loop)  # type: ignore[attr-defined]
    nest_asyncio2.apply(loop)
    future: Any = awaitable
    return loop.run_until_complete(future)  # type: ignore[no-any-return]
