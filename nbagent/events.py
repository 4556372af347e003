"""Typed events and the bus that fans them out.

Every part of a run publishes frozen dataclass events on an :class:`EventBus`. Consumers attach in one of
two ways:

* ``bus.tap(fn)`` — a synchronous callback run inline by ``emit``. For cheap in-process aggregation
  (the metrics registry). A tap that raises is counted in ``bus.tap_errors`` and never breaks the run.
* ``bus.subscribe(maxsize=...)`` — a bounded queue read with ``async for``. Slow readers (widgets, the
  run store) never slow the run: when the queue is full the event is dropped for that subscriber and
  counted in ``Subscription.dropped``.

The UI layers only ever subscribe; nothing flows back into a run except ``RunHandle.cancel()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "CacheEvicted",
    "CacheHit",
    "CacheMiss",
    "CacheStored",
    "CacheWarning",
    "Event",
    "EventBus",
    "LLMFirstToken",
    "LLMRequestFailed",
    "LLMRequestStarted",
    "LLMResponse",
    "LLMRetry",
    "LLMTextDelta",
    "LimitHit",
    "RunFinished",
    "RunStarted",
    "StepStarted",
    "Subscription",
    "TokenDrift",
    "ToolFinished",
    "ToolStarted",
]

log = logging.getLogger("nbagent.events")

# every event class is declared with @dataclass(**_frozen); modules with events of their own import it
_frozen = dict(frozen=True, slots=True, kw_only=True)


@dataclass(**_frozen)  # type: ignore[call-overload]
class Event:
    """Base of all events. ``ts`` is wall-clock seconds since the epoch; ``run_id`` is None outside runs."""

    kind: ClassVar[str] = "event"
    run_id: str | None = None
    ts: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the event, with its ``kind``."""
        out: dict[str, Any] = {"kind": self.kind}
        for name in self.__dataclass_fields__:
            out[name] = getattr(self, name)
        return out


# --- runs ---------------------------------------------------------------------------------------


@dataclass(**_frozen)  # type: ignore[call-overload]
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    name: str = ""
    model: str = ""
    prompt: str = ""
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.tags, tuple):  # read back from JSON as a list
            object.__setattr__(self, "tags", tuple(self.tags))


@dataclass(**_frozen)  # type: ignore[call-overload]
class StepStarted(Event):
    kind: ClassVar[str] = "step_started"
    step: int = 0


@dataclass(**_frozen)  # type: ignore[call-overload]
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    status: str = "ok"  # ok | error | cancelled | limit | stuck
    stop_reason: str = ""
    duration: float = 0.0
    steps: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    cost: float | None = 0.0  # None: a model call had no known price
    error: str | None = None


@dataclass(**_frozen)  # type: ignore[call-overload]
class LimitHit(Event):
    kind: ClassVar[str] = "limit_hit"
    limit: str = ""
    value: float = 0.0
    maximum: float = 0.0


# --- model calls --------------------------------------------------------------------------------


@dataclass(**_frozen)  # type: ignore[call-overload]
class LLMRequestStarted(Event):
    kind: ClassVar[str] = "llm_request"
    request_id: str = ""
    model: str = ""
    attempt: int = 1
    stream: bool = False
    input_tokens_local: int = 0


@dataclass(**_frozen)  # type: ignore[call-overload]
class LLMFirstToken(Event):
    kind: ClassVar[str] = "llm_first_token"
    request_id: str = ""
    ttft: float = 0.0


@dataclass(**_frozen)  # type: ignore[call-overload]
class LLMTextDelta(Event):
    kind: ClassVar[str] = "llm_text_delta"
    request_id: str = ""
    text: str = ""
    restart: bool = False  # True: ``text`` replaces all text delivered before for this request (a retried stream)


@dataclass(**_frozen)  # type: ignore[call-overload]
class LLMResponse(Event):
    kind: ClassVar[str] = "llm_response"
    request_id: str = ""
    model: str = ""
    latency: float = 0.0
    ttft: float | None = None
    attempts: int = 1
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    usage_source: str = "server"  # server | local
    finish_reason: str | None = None
    tool_calls: int = 0
    cost: float | None = 0.0  # None: the model has no known price
    cached: bool = False  # served by the response cache
    input_tokens_local: int = 0  # the local (tiktoken) count of the prompt, when counted: its drift from
    # ``input_tokens`` (the server's) is a metric; 0 when not counted or when the usage is the local count


@dataclass(**_frozen)  # type: ignore[call-overload]
class LLMRetry(Event):
    kind: ClassVar[str] = "llm_retry"
    request_id: str = ""
    attempt: int = 1  # the attempt that failed
    wait: float = 0.0  # seconds slept before the next attempt
    reason: str = ""  # e.g. "429", "503", "connection", "timeout:read"
    retry_after: float | None = None
    restarted_stream: bool = False  # the failed attempt had delivered text: the stream starts over


@dataclass(**_frozen)  # type: ignore[call-overload]
class LLMRequestFailed(Event):
    kind: ClassVar[str] = "llm_failed"
    request_id: str = ""
    attempts: int = 1
    error_type: str = ""
    message: str = ""
    latency: float = 0.0


@dataclass(**_frozen)  # type: ignore[call-overload]
class TokenDrift(Event):
    """Local (tiktoken) count vs the server's reported prompt tokens for one request.

    The client now reports the local count on :class:`LLMResponse` (``input_tokens_local``) instead of a
    separate event; this class stays for events recorded by earlier versions, and is still folded into the
    drift metrics when it comes."""

    kind: ClassVar[str] = "token_drift"
    request_id: str = ""
    local: int = 0
    server: int = 0


# --- tools --------------------------------------------------------------------------------------


@dataclass(**_frozen)  # type: ignore[call-overload]
class ToolStarted(Event):
    kind: ClassVar[str] = "tool_started"
    call_id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass(**_frozen)  # type: ignore[call-overload]
class ToolFinished(Event):
    kind: ClassVar[str] = "tool_finished"
    call_id: str = ""
    name: str = ""
    duration: float = 0.0
    ok: bool = True
    error: str | None = None
    output_chars: int = 0
    truncated: bool = False
    output_preview: str = ""


# --- cache --------------------------------------------------------------------------------------


@dataclass(**_frozen)  # type: ignore[call-overload]
class CacheHit(Event):
    kind: ClassVar[str] = "cache_hit"
    cache: str = "response"  # response | tool | policy
    tier: str = "memory"
    key: str = ""
    lookup_seconds: float = 0.0
    tokens_saved: int = 0
    latency_saved: float = 0.0


@dataclass(**_frozen)  # type: ignore[call-overload]
class CacheMiss(Event):
    kind: ClassVar[str] = "cache_miss"
    cache: str = "response"
    key: str = ""
    lookup_seconds: float = 0.0


@dataclass(**_frozen)  # type: ignore[call-overload]
class CacheStored(Event):
    kind: ClassVar[str] = "cache_stored"
    cache: str = "response"
    tier: str = "memory"
    key: str = ""


@dataclass(**_frozen)  # type: ignore[call-overload]
class CacheEvicted(Event):
    kind: ClassVar[str] = "cache_evicted"
    cache: str = "response"
    tier: str = "memory"
    key: str = ""
    reason: str = "size"  # size | ttl | clear


@dataclass(**_frozen)  # type: ignore[call-overload]
class CacheWarning(Event):
    kind: ClassVar[str] = "cache_warning"
    cache: str = "response"
    message: str = ""


# --- the bus ------------------------------------------------------------------------------------


class Subscription:
    """A bounded queue of events. Iterate with ``async for``; ``close()`` (or the bus) ends it."""

    __slots__ = ("_bus", "_queue", "_closed", "dropped", "predicate")

    def __init__(self, bus: EventBus, maxsize: int, predicate: Callable[[Event], bool] | None) -> None:
        self._bus = bus
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self._closed = False
        self.dropped = 0
        self.predicate = predicate

    def _offer(self, event: Event) -> None:
        if self.predicate is not None and not self.predicate(event):
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1

    def get_nowait(self) -> Event | None:
        """The next queued event, or None when the queue is empty."""
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            return None

    def qsize(self) -> int:
        return self._queue.qsize()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._bus._remove(self)
        try:
            self._queue.put_nowait(None)
        except asyncio.QueueFull:
            # make room for the end marker: the reader is gone or far behind
            self._queue.get_nowait()
            self.dropped += 1
            self._queue.put_nowait(None)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[Event]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item


class EventBus:
    """Fan-out of events to taps (inline, cheap) and subscriptions (bounded queues)."""

    def __init__(self) -> None:
        self._taps: list[Callable[[Event], None]] = []
        self._subs: list[Subscription] = []
        self.emitted = 0
        self.tap_errors = 0
        self.records: Any = None
        """The :class:`~nbagent.record.RecordIndex` that folds the runs on this bus (one per bus)."""
        self.run_end_gates: list[Callable[[], Awaitable[None]]] = []
        """Awaited at the end of each run on this bus, after its last event (a run store whose writer is
        behind slows runs' ends this way, never the loop)."""
        self.result_sinks: list[Callable[[Any], None]] = []
        """Called with each run's :class:`~nbagent.agent.RunResult` after its last event (the run store keeps
        messages, output and profile this way); inline on the loop, so they must be cheap."""

    def tap(self, fn: Callable[[Event], None]) -> Callable[[], None]:
        """Call ``fn(event)`` inline for every event. Returns a function that removes the tap."""
        self._taps.append(fn)

        def remove() -> None:
            if fn in self._taps:
                self._taps.remove(fn)

        return remove

    def subscribe(self, maxsize: int = 10_000, predicate: Callable[[Event], bool] | None = None) -> Subscription:
        """A new bounded subscription; must be created inside the event loop that emits."""
        sub = Subscription(self, maxsize, predicate)
        self._subs.append(sub)
        return sub

    def _remove(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    @property
    def dropped(self) -> int:
        """Events dropped across the current subscriptions."""
        return sum(s.dropped for s in self._subs)

    def emit(self, event: Event) -> None:
        self.emitted += 1
        for fn in self._taps:
            try:
                fn(event)
            except Exception:  # a broken consumer must never break a run
                self.tap_errors += 1
                log.exception("event tap %r failed", fn)
        for sub in self._subs:
            sub._offer(event)

    def close(self) -> None:
        for sub in list(self._subs):
            sub.close()


def default_bus() -> EventBus:
    """The bus of the default runtime (:func:`nbagent.runtime.runtime`): where agents given no runtime emit."""
    from .runtime import runtime

    return runtime().bus
