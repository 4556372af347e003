"""The simulated server's capacity: at most N chat requests at once; beyond that, queue or reject."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = ["CapacityGate"]


class CapacityGate:
    """Places for chat requests (used on the server's loop only; its counters may be read from any thread).

    ``capacity()`` is read on every admission and release, so a capacity changed at runtime applies at once.
    """

    def __init__(self, capacity: Callable[[], int | None]) -> None:
        self._capacity = capacity
        self.active = 0
        self.max_active = 0
        self.rejected = 0
        self.queued = 0
        self._waiting: deque[asyncio.Future[None]] = deque()

    async def admit(self, mode: str) -> bool:
        """Take a place: at once, after waiting in line (``mode="queue"``), or not at all (``"reject"``)."""
        capacity = self._capacity()
        if capacity is None or (self.active < capacity and not self._waiting):
            self._enter()
            return True
        if mode == "reject":
            self.rejected += 1
            return False
        self.queued += 1
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(fut)
        try:
            await fut  # leave() counts us in before waking us
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.leave()
            else:
                try:
                    self._waiting.remove(fut)
                except ValueError:
                    pass
            raise
        return True

    def leave(self) -> None:
        """Give a place back; the first in line gets it."""
        self.active -= 1
        capacity = self._capacity()
        while self._waiting and (capacity is None or self.active < capacity):
            fut = self._waiting.popleft()
            if not fut.done():
                self._enter()
                fut.set_result(None)

    def _enter(self) -> None:
        self.active += 1
        if self.active > self.max_active:
            self.max_active = self.active

    def reset(self) -> None:
        """Clear the counters (what is active or waiting stays)."""
        self.rejected = self.queued = 0
        self.max_active = self.active

    def stats(self, capacity: int | None, mode: str) -> dict[str, Any]:
        return {"limit": capacity, "mode": mode, "active": self.active, "max_active": self.max_active,
                "waiting": len(self._waiting), "queued": self.queued, "rejected": self.rejected}
