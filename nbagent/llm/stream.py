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
    """``asyncio.timeout`` with ``reschedule`` on 3.11+; a watchdog task on 3.10."""

    def __init__(self, when: float) -> None:
        self._when = when
        self._cm: Any = None

    async def __aenter__(self) -> Deadline:
        if HAS_TIMEOUT_CM:
            self._cm = asyncio.timeout_at(self._when)
            await self._cm.__aenter__()
        else:  # pragma: no cover - Python 3.10
            self._task = asyncio.current_task()
            self._fired = False
            self._handle = asyncio.get_running_loop().call_at(self._when, self._fire)
        return self

    def _fire(self) -> None:  # pragma: no cover - Python 3.10
        self._fired = True
        assert self._task is not None
        self._task.cancel()

    def reschedule(self, when: float) -> None:
        if self._cm is not None:
            self._cm.reschedule(when)
        else:  # pragma: no cover - Python 3.10
            self._handle.cancel()
            self._handle = asyncio.get_running_loop().call_at(when, self._fire)

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> bool | None:
        if self._cm is not None:
            return await self._cm.__aexit__(et, exc, tb)  # type: ignore[no-any-return]
        self._handle.cancel()  # pragma: no cover - Python 3.10
        if self._fired and et is asyncio.CancelledError:  # pragma: no cover
            raise TimeoutError
        return None  # pragma: no cover


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
