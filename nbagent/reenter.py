"""Waiting for an awaitable from sync code that is called inside a running event loop (a Jupyter kernel)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["wait_in_running_loop"]

T = TypeVar("T")


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
    nest_asyncio2.apply(loop)
    future: Any = awaitable
    return loop.run_until_complete(future)  # type: ignore[no-any-return]
