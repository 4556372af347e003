"""Concurrency that finds its own limit: one limit per endpoint, in front of the HTTP pool.

Every attempt of a model call takes a slot from its endpoint's :class:`EndpointLimiter` and gives it back with
its outcome (a success, an overload: 429, 503, 529 or a timeout, or another error). The limit is fixed
(``[http] concurrency = N``) or moved by the control law of :mod:`nbagent.llm.limitlaw` (``"adaptive"``, the
default): AIMD on overloads, once per episode, and a latency rule that sees queueing before errors.

Changes are :class:`ConcurrencyChanged` events (growth in steps of 10 %), the ``llm.concurrency`` gauge (the
last endpoint that changed) and the ``llm.concurrency.<endpoint>`` gauges.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError, LLMTimeout
from ..events import Event, EventBus, _frozen
from ..metrics.registry import MetricsRegistry, register_handler
from .limitlaw import AdaptiveLimit, FixedLimit

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Endpoint, HTTPSettings

__all__ = ["AdaptiveLimit", "ConcurrencyChanged", "EndpointLimiter", "FixedLimit", "Limiters", "is_overload"]

#: HTTP statuses that say the server is over its capacity.
OVERLOAD_STATUS = frozenset({429, 503, 529})


@dataclass(**_frozen)  # type: ignore[call-overload]
class ConcurrencyChanged(Event):
    """The concurrency limit of an endpoint changed (``reason``: slow_start, increase, overload, latency, probe,
    set). ``rtt`` and ``baseline`` are the round's median latency and the baseline, when known."""

    kind: ClassVar[str] = "concurrency_changed"
    endpoint: str = ""
    limit: int = 0
    previous: int = 0
    reason: str = ""
    in_flight: int = 0
    rtt: float | None = None
    baseline: float | None = None


def is_overload(exc: BaseException | None) -> bool:
    """Whether ``exc`` says the server is over capacity (429, 503, 529 or a timeout)."""
    if exc is None:
        return False
    return isinstance(exc, LLMTimeout) or getattr(exc, "status_code", None) in OVERLOAD_STATUS


class EndpointLimiter:
    """The slots of one endpoint: ``token = await acquire()`` before an attempt, ``release(token, error)`` after.

    Waiters are served in order. The fast path (a free slot, nobody waiting) does not suspend.
    """

    def __init__(self, name: str, law: AdaptiveLimit | FixedLimit, bus: EventBus | None = None) -> None:
        self.name = name
        self.law = law
        self.bus = bus
        self.in_flight = 0
        self.waits = 0  # acquisitions that had to wait for a slot
        self._emitted = law.limit  # the limit last told in an event
        self._waiters: deque[asyncio.Future[float]] = deque()

    @property
    def limit(self) -> int:
        return self.law.limit

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> float:
        """Take a slot (waiting for one if the limit is reached); returns the token for :meth:`release`."""
        if self.in_flight < self.law.limit and not self._waiters:
            self.in_flight += 1
            return self.law.started(self.in_flight)
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        self.waits += 1
        self.law.blocked()
        try:
            return await fut  # the token is taken when the slot is handed over
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # the slot was handed to us: pass it on
                self.in_flight -= 1
                self._wake()
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self, token: float, error: BaseException | None = None) -> None:
        """Give a slot back with the attempt's outcome (``error`` None: a success)."""
        self.in_flight -= 1
        if error is None:
            outcome = "ok"
        elif is_overload(error):
            outcome = "overload"
        else:
            outcome = "ignore"
        previous = self.law.limit
        if self.law.finished(token, outcome, self.in_flight):
            self._changed(previous)
        self._wake()

    def set_limit(self, limit: int) -> None:
        """Set the limit by hand (an adaptive limit keeps adapting from there)."""
        previous = self.law.limit
        self.law.set(limit)
        if self.law.limit != previous:
            self._changed(previous)
        self._wake()

    def _changed(self, previous: int) -> None:
        law = self.law
        if law.reason in ("slow_start", "increase") and law.limit < self._emitted * 1.1:
            return  # growth is told in steps of 10 % (cuts, probes and settings always)
        previous, self._emitted = self._emitted, law.limit
        if self.bus is not None:
            self.bus.emit(ConcurrencyChanged(endpoint=self.name, limit=law.limit, previous=previous,
                                             reason=law.reason, in_flight=self.in_flight, rtt=law.rtt,
                                             baseline=law.baseline))

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self.in_flight < self.law.limit:
            fut = waiters.popleft()
            if fut.done():
                continue
            self.in_flight += 1
            fut.set_result(self.law.started(self.in_flight))

    def stats(self) -> dict[str, Any]:
        law = self.law
        return {"limit": law.limit, "adaptive": law.adaptive, "in_flight": self.in_flight,
                "waiting": self.waiting, "waits": self.waits, "rtt": law.rtt, "baseline": law.baseline,
                "loop_busy": law.busy}


class Limiters:
    """One :class:`EndpointLimiter` per endpoint (base URL and model), made from the ``[http]`` settings."""

    def __init__(self, http: HTTPSettings, *, bus: EventBus | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 loop_cpu: Callable[[], float] | None = time.thread_time) -> None:
        self.mode, self.fixed = parse_concurrency(getattr(http, "concurrency", "adaptive"))
        self.initial = int(getattr(http, "concurrency_initial", 32))
        self.max_limit = int(min(getattr(http, "concurrency_max", 1000), http.max_connections))
        self.tolerance = float(getattr(http, "concurrency_tolerance", 1.5))
        if self.initial < 1 or self.max_limit < 1:
            raise ConfigError("http.concurrency_initial and http.concurrency_max must be >= 1")
        if not self.tolerance > 1.0:
            raise ConfigError(f"http.concurrency_tolerance must be > 1, got {self.tolerance}")
        self.bus = bus
        self._clock = clock
        self._loop_cpu = loop_cpu  # the CPU time of the loop's thread (slots are taken and given on the loop)
        self._by_key: dict[tuple[str, str], EndpointLimiter] = {}

    def of(self, endpoint: Endpoint) -> EndpointLimiter:
        """The limiter of ``endpoint`` (made on first use, at the initial limit: the first change is an event)."""
        key = (endpoint.base_url, endpoint.model)
        lim = self._by_key.get(key)
        if lim is None:
            law: AdaptiveLimit | FixedLimit
            if self.fixed is not None:
                law = FixedLimit(self.fixed, clock=self._clock)
            else:
                law = AdaptiveLimit(min(self.initial, self.max_limit), max_limit=self.max_limit,
                                    tolerance=self.tolerance, clock=self._clock, loop_cpu=self._loop_cpu)
            lim = self._by_key[key] = EndpointLimiter(f"{endpoint.model}@{endpoint.base_url}", law, self.bus)
        return lim

    def __iter__(self) -> Any:
        return iter(self._by_key.values())

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per endpoint: limit, adaptive or not, in flight, waiting, waits, last round latency and baseline."""
        return {lim.name: lim.stats() for lim in self._by_key.values()}


def parse_concurrency(value: Any) -> tuple[str, int | None]:
    """``"adaptive"`` -> ("adaptive", None); ``32`` or ``"32"`` -> ("fixed", 32); anything else: ConfigError."""
    if isinstance(value, str) and value.strip().lower() == "adaptive":
        return "adaptive", None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f'http.concurrency must be "adaptive" or a number >= 1, got {value!r}') from None
    if n < 1 or isinstance(value, bool):
        raise ConfigError(f'http.concurrency must be "adaptive" or a number >= 1, got {value!r}')
    return "fixed", n


def _on_changed(reg: MetricsRegistry, e: Any) -> None:
    reg.gauge("llm.concurrency", unit="requests").set(e.limit)  # the endpoint that changed last
    reg.gauge(f"llm.concurrency.{e.endpoint}", unit="requests").set(e.limit)
    if e.previous and e.limit < e.previous:
        reg.counter("llm.concurrency.cuts", unit="changes").value += 1


register_handler(ConcurrencyChanged, _on_changed)
