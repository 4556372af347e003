"""What reading a stream needs beyond parsing: a rescheduled deadline, and the text delivered across retries."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from .types import TextRestart
from .wire import StreamAccumulator

__all__ = ["Deadline", "Delivery"]

HAS_TIMEOUT_CM = sys.version_info >= (3, 11)


class Deadline:
    """A deadline for the block it wraps (like ``asyncio.timeout_at``: the task is cancelled and the block
    raises ``TimeoutError``), which a stream moves at every chunk.

    Moving it later costs one attribute store: the timer is not re-armed per chunk (a cancelled handle and a
    new heap entry each time) but, when it fires, re-arms itself at the deadline then in force. Moving it
    earlier re-arms it at once.
    """

    __slots__ = ("_when", "_armed", "_handle", "_loop", "_task", "_cancelling", "_fired")

    def __init__(self, when: float) -> None:
        self._when = when
        self._armed = when
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False
        self._cancelling = 0

    async def __aenter__(self) -> Deadline:
        loop = self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - a coroutine outside a task
            raise RuntimeError("Deadline needs a task")
        self._task = task
        if HAS_TIMEOUT_CM:
            self._cancelling = task.cancelling()
        self._armed, self._fired = self._when, False
        self._handle = loop.call_at(self._when, self._on_timer)
        return self

    def reschedule(self, when: float) -> None:
        self._when = when
        if when < self._armed and self._handle is not None:  # earlier than the timer: re-arm it now
            self._handle.cancel()
            self._armed = when
            self._handle = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        if self._when > self._armed:  # moved later since the timer was armed: wait on until then
            self._armed = self._when
            self._handle = self._loop.call_at(self._when, self._on_timer)
            return
        self._handle = None
        self._fired = True
        self._task.cancel()

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> bool | None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fired and et is asyncio.CancelledError:
            # ours, unless someone else cancelled the task too (then their cancel goes on)
            if not HAS_TIMEOUT_CM or self._task.uncancel() <= self._cancelling:
                raise TimeoutError from exc
        elif self._fired and HAS_TIMEOUT_CM:
            self._task.uncancel()  # the block ended (or failed) before the cancel reached it
        return None


class Delivery:
    """The text one streamed request has delivered (to ``on_text`` and as events), across its attempts.

    A retried attempt first *replays*: while its text repeats what was delivered, nothing is delivered;
    past that, only the new text is; if it departs from it, one :class:`TextRestart` with the attempt's
    whole text so far replaces what was delivered.
    """

    __slots__ = ("acc", "prev", "pos", "replaying", "callback_error")

    def __init__(self) -> None:
        self.acc: StreamAccumulator | None = None
        self.prev = ""  # the text delivered before the current attempt
        self.pos = 0  # how much of the current attempt's text has been compared with ``prev``
        self.replaying = False
        self.callback_error: BaseException | None = None

    def delivered(self) -> str:
        """All text delivered so far."""
        if self.replaying or self.acc is None:
            return self.prev
        return "".join(self.acc.chunks)

    def start(self) -> StreamAccumulator:
        """A fresh accumulator for the next attempt, which replays when text was delivered before."""
        self.prev = self.delivered()
        self.replaying = bool(self.prev)
        self.pos = 0
        self.acc = StreamAccumulator()
        return self.acc

    def beyond(self, delta: str) -> str:
        """What of ``delta`` (the attempt's next text) to deliver: ``""``, its new tail, or a TextRestart."""
        prev, start = self.prev, self.pos
        end = self.pos = start + len(delta)
        if end <= len(prev):
            if prev[start:end] == delta:
                return ""
        elif prev[start:] == delta[: len(prev) - start]:
            self.replaying = False
            return delta[len(prev) - start:]
        self.replaying = False
        assert self.acc is not None
        return TextRestart("".join(self.acc.chunks))

    def behind(self) -> bool:
        """Whether the attempt's text stopped short of what was delivered before (then it replaces it)."""
        if self.pos < len(self.prev):
            self.replaying = False
            return True
        return False
