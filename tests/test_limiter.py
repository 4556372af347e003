"""The adaptive concurrency limit: its control law on a fake clock, and the slots in front of the pool."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable

import pytest

from nbagent.config import Endpoint, HTTPSettings
from nbagent.errors import ConfigError, LLMTimeout, RateLimited, ServerError
from nbagent.events import EventBus
from nbagent.llm.limiter import (
    AdaptiveLimit,
    ConcurrencyChanged,
    EndpointLimiter,
    FixedLimit,
    Limiters,
    is_overload,
    parse_concurrency,
)
from nbagent.metrics import MetricsRegistry


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drive(law: AdaptiveLimit, clock: Clock, demand: int, seconds: float,
          rtt: Callable[[int, float], float]) -> list[tuple[str, int, int]]:
    """Keep ``min(demand, limit)`` requests in flight for ``seconds``; each takes ``rtt(in_flight, now)``
    (times 1, 1.01 or 1.02 in turn). Returns the changes: (reason, previous limit, new limit)."""
    heap: list[tuple[float, int, float]] = []
    seq = itertools.count()
    changes: list[tuple[str, int, int]] = []
    end = clock.now + seconds

    def fill() -> None:
        while len(heap) < min(demand, law.limit):
            token = law.started(len(heap) + 1)
            n = next(seq)
            heapq.heappush(heap, (clock.now + rtt(len(heap) + 1, clock.now) * (1 + 0.01 * (n % 3)), n, token))
        if len(heap) < demand:
            law.blocked()

    fill()
    while heap and clock.now < end:
        at, _, token = heapq.heappop(heap)
        clock.now = at
        before = law.limit
        if law.finished(token, "ok", len(heap)):
            changes.append((law.reason, before, law.limit))
        fill()
    return changes


def test_slow_start_grows_a_limit_that_is_used() -> None:
    clock = Clock()
    law = AdaptiveLimit(2, clock=clock)
    changes = drive(law, clock, 1000, 12.0, lambda n, t: 1.0)
    assert law.limit >= 20 and law.slow_start
    assert {reason for reason, _, _ in changes} == {"slow_start"}


def test_a_limit_that_is_not_used_never_grows() -> None:
    clock = Clock()
    law = AdaptiveLimit(10, initial_window=10, clock=clock)
    assert drive(law, clock, 3, 30.0, lambda n, t: 1.0) == []
    assert law.limit == 10


def test_rejections_of_one_burst_cut_once_and_a_new_episode_cuts_again() -> None:
    clock = Clock()
    law = AdaptiveLimit(100, initial_window=100, clock=clock)
    tokens = [law.started(i + 1) for i in range(100)]
    clock.now = 0.01
    assert law.finished(tokens[0], "overload", 99) and law.limit == 90 and law.reason == "overload"
    for i, t in enumerate(tokens[1:50]):  # the rest of the burst: sent before the cut
        assert not law.finished(t, "overload", 98 - i)
    assert law.limit == 90
    clock.now = 0.02
    fresh = law.started(51)
    clock.now = 0.03
    assert law.finished(fresh, "overload", 50) and law.limit == 81


def test_after_an_overload_the_next_success_caps_the_limit_at_what_the_server_took() -> None:
    clock = Clock()
    law = AdaptiveLimit(512, initial_window=512, clock=clock)
    tokens = [law.started(i + 1) for i in range(512)]
    clock.now = 0.001
    for i, t in enumerate(tokens[64:]):
        law.finished(t, "overload", 511 - i)
    clock.now = 1.0
    law.finished(tokens[0], "ok", 63)  # 64 were in flight, this one included
    assert law.limit == int(64 * 0.95)  # (1 + backoff) / 2 of what the server took


def test_queueing_latency_shrinks_the_limit_to_what_the_server_serves_without_a_queue() -> None:
    clock = Clock()
    law = AdaptiveLimit(80, initial_window=80, clock=clock)
    law.slow_start = False

    def queueing(n: int, t: float) -> float:  # 64 served at once, the rest wait their turn
        return max(1.0, n / 64)

    changes = drive(law, clock, 500, 60.0, queueing)
    cuts = [(before, after) for reason, before, after in changes if reason == "latency"]
    assert cuts and all(before / after <= 2.01 for before, after in cuts)
    assert all(after >= 48 for _, after in cuts)  # Little's law: never far below what the server serves
    assert 48 <= law.limit <= 64 * 1.6
    assert law.baseline is not None and law.baseline < 1.05


def test_a_limit_that_starts_on_a_standing_queue_probes_for_the_baseline_and_comes_down() -> None:
    clock = Clock()
    law = AdaptiveLimit(64, initial_window=64, clock=clock)
    changes = drive(law, clock, 500, 40.0, lambda n, t: max(1.0, n / 8))  # 8 served at once
    reasons = [reason for reason, _, _ in changes if reason != "slow_start"]
    assert reasons[:3] == ["probe", "probe", "latency"]
    assert law.baseline is not None and law.baseline < 1.05
    assert 4 <= law.limit <= 8 * 1.6


def test_latency_within_the_tolerance_only_grows_the_limit() -> None:
    clock = Clock()
    law = AdaptiveLimit(40, initial_window=40, clock=clock)
    law.slow_start = False
    changes = drive(law, clock, 100, 30.0, lambda n, t: 1.0 if t < 10 else 1.4)
    assert changes and {reason for reason, _, _ in changes} == {"increase"}


def test_latency_never_more_than_halves_the_limit_in_one_round() -> None:
    clock = Clock()
    law = AdaptiveLimit(100, initial_window=100, clock=clock)
    law.slow_start = False
    changes = drive(law, clock, 100, 20.0, lambda n, t: 1.0 if t < 5 else 10.0)
    reason, before, after = next(c for c in changes if c[0] == "latency")
    assert after == before // 2


@pytest.mark.parametrize("busy", [0.2, 1.0])
def test_latency_from_a_saturated_client_loop_does_not_cut(busy: float) -> None:
    """The loop's thread on CPU ``busy`` of the wall time: at 100 % the late answers are the client's own."""
    clock = Clock()
    law = AdaptiveLimit(100, initial_window=100, clock=clock, loop_cpu=lambda: clock.now * busy)
    law.slow_start = False
    changes = drive(law, clock, 100, 20.0, lambda n, t: 1.0 if t < 5 else 3.0)
    assert law.busy == pytest.approx(busy)
    latency_cuts = [c for c in changes if c[0] == "latency"]
    if busy < law.busy_limit:
        assert latency_cuts and law.limit < 100
    else:
        assert not latency_cuts and law.limit >= 100
        before = law.limit
        law.finished(law.started(1), "overload", 0)  # an overload still cuts
        assert law.limit == int(before * 0.9) and law.reason == "overload"


def test_a_saturated_loop_ends_slow_start_and_holds_the_limit() -> None:
    clock = Clock()
    law = AdaptiveLimit(16, clock=clock, loop_cpu=lambda: clock.now)  # the loop's thread always on CPU
    drive(law, clock, 10_000, 30.0, lambda n, t: 1.0 if n <= 32 else n / 32)  # queueing beyond 32 in flight
    held = law.limit
    assert not law.slow_start and held < 10_000 and law.busy == pytest.approx(1.0)
    drive(law, clock, 10_000, 30.0, lambda n, t: 1.0 if n <= 32 else n / 32)
    assert law.limit <= held * 1.1  # no longer doubling while the latency says queueing


def test_limiters_give_their_laws_the_loop_threads_cpu_clock() -> None:
    limiters = Limiters(HTTPSettings(), loop_cpu=lambda: 42.0)
    law = limiters.of(Endpoint("http://x/v1", "k", "m")).law
    assert isinstance(law, AdaptiveLimit) and law._loop_cpu is not None and law._loop_cpu() == 42.0


def test_other_errors_and_cancels_do_not_move_the_limit() -> None:
    clock = Clock()
    law = AdaptiveLimit(20, initial_window=20, clock=clock)
    t = law.started(1)
    clock.now = 1.0
    assert not law.finished(t, "ignore", 0)
    assert law.limit == 20


def test_a_start_far_too_high_begins_at_the_initial_window_and_doubles_per_round_trip() -> None:
    clock = Clock()
    law = AdaptiveLimit(512, clock=clock)
    assert law.limit == 16 and law.slow_start
    changes = drive(law, clock, 1000, 3.0, lambda n, t: 1.0)  # three round trips, no push-back
    assert law.limit >= 16 * 2 ** 2 and {reason for reason, _, _ in changes} == {"slow_start"}
    assert AdaptiveLimit(8, clock=clock).limit == 8  # a start below the window is kept
    with pytest.raises(ValueError, match="initial_window"):
        AdaptiveLimit(initial_window=0)


def test_limits_are_bounded_and_checked() -> None:
    clock = Clock()
    law = AdaptiveLimit(8, max_limit=10, clock=clock)
    drive(law, clock, 1000, 20.0, lambda n, t: 1.0)
    assert law.limit == 10
    with pytest.raises(ValueError, match="tolerance"):
        AdaptiveLimit(tolerance=1.0)
    with pytest.raises(ValueError, match=">= 1"):
        FixedLimit(0)


def test_overload_classification() -> None:
    assert is_overload(RateLimited("slow down"))
    assert is_overload(ServerError("busy", status_code=503))
    assert is_overload(LLMTimeout("late", phase="request"))
    assert not is_overload(ServerError("bug", status_code=500))
    assert not is_overload(None)


def test_settings_choose_adaptive_or_fixed() -> None:
    assert parse_concurrency("adaptive") == ("adaptive", None)
    assert parse_concurrency("24") == ("fixed", 24)
    for bad in ("many", 0, "-3"):
        with pytest.raises(ConfigError, match="http.concurrency"):
            parse_concurrency(bad)
    ep = Endpoint("http://127.0.0.1:1/v1", "k", "m")
    fixed = Limiters(HTTPSettings(concurrency="24")).of(ep)
    assert isinstance(fixed.law, FixedLimit) and fixed.limit == 24
    adaptive = Limiters(HTTPSettings(concurrency_initial=7)).of(ep)
    assert isinstance(adaptive.law, AdaptiveLimit) and adaptive.limit == 7


# --- a discrete-event simulation of a server with a fixed capacity ------------------------------------


def simulate(mode: str, initial: int, *, capacity: int = 64, demand: int = 300, horizon: float = 60.0,
             latency: float = 1.0, retry_after: float = 1.0) -> tuple[AdaptiveLimit, int, int, list[int]]:
    """``demand`` workers send requests through the law's limit to a server taking ``capacity`` at once; beyond
    it the server queues (``mode="queue"``) or answers 429 at once (``"reject"``; the worker waits
    ``retry_after`` and tries again). Returns the law, successes, rejections and the limit once a second."""
    clock = Clock()
    law = AdaptiveLimit(initial, clock=clock)
    rng = random.Random(0)  # latencies vary by +-10 %
    seq = itertools.count()
    heap: list[tuple[float, int, str, float]] = []
    client_queue: deque[None] = deque()
    server_queue: deque[float] = deque()
    state = {"in_flight": 0, "active": 0, "ok": 0, "rejected": 0}
    limits: list[int] = []

    def push(at: float, kind: str, token: float = 0.0) -> None:
        heapq.heappush(heap, (at, next(seq), kind, token))

    def want() -> None:  # a worker wants to send
        if state["in_flight"] < law.limit and not client_queue:
            send()
        else:
            law.blocked()
            client_queue.append(None)

    def send() -> None:
        state["in_flight"] += 1
        token = law.started(state["in_flight"])
        if state["active"] < capacity:
            state["active"] += 1
            push(clock.now + latency * rng.uniform(0.9, 1.1), "ok", token)
        elif mode == "queue":
            server_queue.append(token)
        else:
            push(clock.now + 0.001, "reject", token)

    def done(token: float, outcome: str) -> None:
        state["in_flight"] -= 1
        law.finished(token, outcome, state["in_flight"])
        while client_queue and state["in_flight"] < law.limit:
            client_queue.popleft()
            send()

    for _ in range(demand):
        want()
    next_sample = 1.0
    while heap and clock.now < horizon:
        at, _, kind, token = heapq.heappop(heap)
        clock.now = at
        while clock.now >= next_sample:
            limits.append(law.limit)
            next_sample += 1.0
        if kind == "ok":
            state["ok"] += 1
            state["active"] -= 1
            if server_queue:
                state["active"] += 1
                push(clock.now + latency * rng.uniform(0.9, 1.1), "ok", server_queue.popleft())
            done(token, "ok")
            want()
        elif kind == "reject":
            state["rejected"] += 1
            done(token, "overload")
            push(clock.now + retry_after, "retry")
        else:
            want()
    return law, state["ok"], state["rejected"], limits


@pytest.mark.parametrize("initial", [2, 512])
def test_simulated_queueing_server_the_limit_settles_near_capacity(initial: int) -> None:
    law, ok, rejected, limits = simulate("queue", initial)
    assert rejected == 0
    assert ok >= 0.9 * 64 * 60  # the server's capacity is 64 per second; slow start doubles each round trip
    assert all(32 <= x <= 2 * 64 for x in limits[-20:]), limits


@pytest.mark.parametrize("initial", [2, 512])
def test_simulated_rejecting_server_few_rejections_and_the_limit_settles_near_capacity(initial: int) -> None:
    law, ok, rejected, limits = simulate("reject", initial)
    assert ok >= 0.75 * 64 * 60
    assert all(40 <= x <= 70 for x in limits[-20:]), limits
    assert rejected <= 0.01 * ok  # a start far too high begins at the initial window: no wave of rejections


def test_a_ceiling_the_server_keeps_turning_away_is_tried_ever_more_seldom() -> None:
    # a small, fast server: additive increase alone would try one request too many every few rounds
    law, ok, rejected, limits = simulate("reject", 2, capacity=8, demand=64, horizon=60.0, latency=0.05,
                                         retry_after=0.05)
    assert ok >= 0.95 * 8 / 0.05 * 60
    assert rejected <= 0.005 * ok  # without the remembered ceiling: 314 rejections here (3.5 %)
    assert max(limits) <= 9 and sorted(limits)[len(limits) // 2] == 8, limits  # (a probe round dips to 4)


# --- the slots ------------------------------------------------------------------------------------------


async def test_slots_wait_in_order_and_cancelled_waiters_give_their_slot_on() -> None:
    events: list[ConcurrencyChanged] = []
    bus = EventBus()
    bus.tap(lambda e: events.append(e) if isinstance(e, ConcurrencyChanged) else None)
    lim = EndpointLimiter("m@u", FixedLimit(2), bus)
    a, b = await lim.acquire(), await lim.acquire()
    order: list[str] = []

    async def waiter(name: str) -> None:
        token = await lim.acquire()
        order.append(name)
        lim.release(token)

    w1 = asyncio.ensure_future(waiter("w1"))
    w2 = asyncio.ensure_future(waiter("w2"))
    w3 = asyncio.ensure_future(waiter("w3"))
    await asyncio.sleep(0)
    assert lim.waiting == 3 and lim.in_flight == 2
    w2.cancel()
    lim.release(a)
    lim.release(b)
    await asyncio.gather(w1, w3)
    assert order == ["w1", "w3"] and lim.in_flight == 0 and lim.waiting == 0
    lim.set_limit(5)
    assert lim.limit == 5 and events[-1].reason == "set" and events[-1].previous == 2


def test_limit_changes_are_a_gauge() -> None:
    reg = MetricsRegistry()
    reg.observe(ConcurrencyChanged(endpoint="m@u", limit=40, previous=0, reason="start"))
    reg.observe(ConcurrencyChanged(endpoint="m@u", limit=30, previous=40, reason="overload"))
    assert reg.value("llm.concurrency") == 30
    assert reg.value("llm.concurrency.m@u") == 30
    assert reg.value("llm.concurrency.cuts") == 1
