"""The control law of an adaptive concurrency limit (pure: no I/O, no awaits; the clock is injected).

:class:`AdaptiveLimit` reads two signals:

* **overload** (HTTP 429, 503, 529, a timeout): the limit is cut at once by ``backoff``; at the next success it
  is set from the requests in flight then (what the server really took, since rejections come back fast):
  ``(1 + backoff) / 2`` × that, or × the limit before the episode if lower. An overload counts once per
  *episode*: only a request sent after the last cut can cut again, so a burst of rejections of requests
  already in flight cuts once, and the next cut can come one round trip later (no fixed cooldown).
* **latency**: each *round* (the successes of at least one baseline latency, at least ``min_samples`` of
  them; judged at the first success after it) has a median latency; the baseline is the lowest round median
  of the last ``window`` rounds. When a round's median exceeds ``tolerance`` × the baseline, requests are
  queueing at the server: the limit goes to the in-flight count that Little's law says keeps the latency
  within the tolerance (``peak × tolerance × baseline / median``, at most halving). This sees queueing
  before any error.

A round is judged on the requests sent since the limit last moved (none back yet: no decision), so every
change waits for its own effect: one step per round trip, never a fixed cooldown.

When the limit is the bottleneck (a request waited for a slot, or all slots were used) and no signal came, it
grows: until the first signal by ``growth - 1`` per success (slow start: ×``growth`` per round trip, doubling
by default), then by ``max(1, limit / 50)`` per round. A limit that is not used never grows. The limit at the
last overload is remembered: growing to it again waits one binding round, then 2, 4… up to 64 while the
server keeps turning that level away (a new level starts over), so a steady server is probed ever more
seldom instead of once every few rounds.

Like TCP's initial window, the limit starts at ``initial`` but never above ``initial_window`` (16): a start
far above what the server takes would send one wave of requests it turns away (with 512 against a server
taking 64: 448 rejections, 8 % of a ten-second run). Slow start doubles it each round trip from there, so
reaching 64 takes two round trips.

Latency is measured by the client, so it includes the client's own delay: a process whose event loop is
saturated (hundreds of runs in flight, or a server sharing its CPUs) reads its answers late, and that
lateness is not a queue at the server. Given ``loop_cpu`` (the CPU time of the loop's thread), a round in
which that thread was on CPU for at least ``busy_limit`` of the wall time (80 %: tool and store threads
take the GIL too) does not cut for latency: fewer requests in flight would not make the server faster,
only the client slower: the limit holds (and slow start ends). Overloads still cut.

A limit that starts high on a queueing server would take the queue for the baseline, so every ``probe_every``
rounds (and after the first round when it started above 32, which only a larger ``initial_window`` allows)
one round runs at an eighth of the limit (``probe``): its latency joins the baseline, then the limit goes back
and the latency rule does the rest.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

__all__ = ["AdaptiveLimit", "FixedLimit"]

FIRST_PROBE_ABOVE = 32
MAX_CEILING_WAIT = 64  # rounds: a server that keeps turning the same level away is asked again this seldom


class FixedLimit:
    """A limit that never moves (``[http] concurrency = N``); the same interface as :class:`AdaptiveLimit`."""

    adaptive = False

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError(f"a concurrency limit must be >= 1, got {limit}")
        self.limit = int(limit)
        self.reason = "set"
        self.rtt: float | None = None
        self.baseline: float | None = None
        self.busy: float | None = None
        self._clock = clock

    def started(self, in_flight: int) -> float:
        return self._clock()

    def blocked(self) -> None:
        pass

    def finished(self, start: float, outcome: str, in_flight: int) -> bool:
        return False

    def set(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a concurrency limit must be >= 1, got {limit}")
        self.limit = int(limit)


class AdaptiveLimit:
    """The control law of an adaptive limit (no I/O, no awaits; ``clock`` is injectable for tests).

    Call :meth:`started` when a request takes a slot (it returns the start time to hand back), :meth:`blocked`
    when a request has to wait for one, and :meth:`finished` with the outcome (``"ok"``, ``"overload"`` or
    ``"ignore"``) and the requests still in flight; it returns True when :attr:`limit` changed (then
    :attr:`reason` says why).
    """

    adaptive = True

    def __init__(
        self,
        initial: int = 32,
        *,
        min_limit: int = 1,
        max_limit: int = 1000,
        tolerance: float = 1.5,
        backoff: float = 0.9,
        growth: float = 2.0,
        initial_window: int = 16,
        window: int = 100,
        min_samples: int = 3,
        probe_every: int = 100,
        clock: Callable[[], float] = time.monotonic,
        loop_cpu: Callable[[], float] | None = None,
        busy_limit: float = 0.8,
    ) -> None:
        if not 1 <= min_limit <= max_limit:
            raise ValueError(f"need 1 <= min_limit <= max_limit, got {min_limit} and {max_limit}")
        if not tolerance > 1.0:
            raise ValueError(f"tolerance must be > 1, got {tolerance}")
        if not 0.0 < backoff < 1.0:
            raise ValueError(f"backoff must be within (0, 1), got {backoff}")
        if not growth > 1.0:
            raise ValueError(f"growth must be > 1, got {growth}")
        self.min_limit, self.max_limit = min_limit, max_limit
        self.tolerance, self.backoff, self.growth = tolerance, backoff, growth
        self.min_samples = max(1, min_samples)
        self._clock = clock
        if initial_window < 1:
            raise ValueError(f"initial_window must be >= 1, got {initial_window}")
        self.initial_window = initial_window
        self._value = float(min(max(initial, min_limit), max_limit, max(initial_window, min_limit)))
        self._start = self._value
        self.limit = int(self._value)
        self.reason = "start"
        self.slow_start = True
        self.rtt: float | None = None  # the last round's median latency
        self.baseline: float | None = None
        self._medians: deque[float] = deque(maxlen=max(1, window))
        self._last_cut = -math.inf  # requests sent before this cannot cut again
        self._recheck = False  # an overload was seen: cap the limit at the next success
        self._before_cut = self._value
        self._round_start: float | None = None
        self._samples: list[tuple[float, float]] = []  # (start, latency) of the round's successes
        self._changed_at = -math.inf  # when the limit last moved
        self._last_sample = -math.inf
        self._peak = 0
        self._blocked = False
        self._overloads = 0
        self._judged = 0  # rounds judged since the last probe
        self._probe_saved: float | None = None  # the limit to go back to after a probe
        self._ceiling: float | None = None  # the limit at the last overload
        self._wait = 1  # binding rounds before the limit tries the ceiling again
        self._patience = 0
        self.probe_every = max(2, probe_every)
        self._loop_cpu = loop_cpu
        self.busy_limit = busy_limit
        self.busy: float | None = None  # the share of the last round's wall time the loop's thread was on CPU
        # (wall time, CPU time of the loop's thread, that thread): a round read on another thread is not judged
        self._cpu_mark = (clock(), loop_cpu(), threading.get_ident()) if loop_cpu is not None else None

    # --- inputs ------------------------------------------------------------------------------------

    def started(self, in_flight: int) -> float:
        now = self._clock()
        if self._round_start is None:
            self._round_start = now
        if in_flight > self._peak:
            self._peak = in_flight
        return now

    def blocked(self) -> None:
        self._blocked = True

    def finished(self, start: float, outcome: str, in_flight: int) -> bool:
        now = self._clock()
        if outcome == "overload":
            self._overloads += 1
            if self._probe_saved is not None:  # the probe ends here: cut from where it started
                self._value, self._probe_saved = self._probe_saved, None
            if start >= self._last_cut:  # a fresh episode: requests sent after the last cut are rejected too
                if not self._recheck:
                    self._recheck, self._before_cut = True, self._value
                    self._note_ceiling(self._value)
                return self._cut(self._value * self.backoff, "overload", now)
            return False
        if outcome != "ok":
            return False
        changed = False
        if self._recheck:  # rejections come back fast: the requests still in flight are what the server took
            self._recheck = False
            self._last_cut = now
            changed = self._set(min(in_flight + 1, self._before_cut) * (1 + self.backoff) / 2, "overload")
        if self.slow_start and self._probe_saved is None and (self._blocked or self._peak >= self.limit):
            # slow start: every success while the limit is the bottleneck adds growth - 1 (x growth per round trip)
            changed = self._set(self._value + self.growth - 1.0, "slow_start", mark=False) or changed
        rs = self._round_start if self._round_start is not None else start
        if (len(self._samples) >= min(self.min_samples, self.limit) and now > self._last_sample
                and (self.baseline is None or now - rs >= self.baseline)):  # the round is over: judge it
            changed = self._end_round(now, in_flight) or changed
        self._samples.append((start, now - start))
        self._last_sample = now
        return changed

    # --- the law -----------------------------------------------------------------------------------

    def _set(self, value: float, reason: str, *, mark: bool = True) -> bool:
        self._value = min(max(value, float(self.min_limit)), float(self.max_limit))
        new = int(self._value)
        if new == self.limit:
            return False
        self.limit, self.reason = new, reason
        if mark:  # slow start does not mark: its rounds are judged on every sample since the last cut
            self._changed_at = self._clock()
        return True

    @property
    def probe_limit(self) -> float:
        """The limit during a probe: an eighth of the limit, at least ``min_limit`` and 4."""
        return min(self._probe_saved or self._value, max(float(self.min_limit), 4.0, self._value / 8))

    def _cut(self, value: float, reason: str, now: float) -> bool:
        self.slow_start = False
        self._last_cut = now
        return self._set(min(value, self._value), reason)

    def _end_round(self, now: float, in_flight: int) -> bool:
        samples, changed_at = self._samples, self._changed_at
        self._medians.append(_median([rtt for _, rtt in samples]))
        self.baseline = min(self._medians)
        if self._cpu_mark is not None and self._loop_cpu is not None:
            wall0, cpu0, thread0 = self._cpu_mark
            cpu, thread = self._loop_cpu(), threading.get_ident()
            self._cpu_mark = (now, cpu, thread)
            self.busy = (cpu - cpu0) / (now - wall0) if now > wall0 and thread == thread0 else None
        # only requests sent under the current limit say what it does: judge them, or nothing yet
        fresh = [rtt for start, rtt in samples if start >= changed_at]
        binding = self._blocked or self._peak >= self.limit
        peak, overloads = self._peak, self._overloads
        self._samples, self._round_start, self._blocked = [], now, False
        self._peak, self._overloads = in_flight, 0
        if overloads or not fresh:  # the overload rule acted in this round, or the last change is not seen yet
            return False
        median = self.rtt = _median(fresh)
        self._judged += 1
        if self._probe_saved is not None:  # a probe round: few in flight, so no queue of ours at the server
            self._medians.append(median)
            self.baseline = min(self._medians)
            saved, self._probe_saved, self._judged = self._probe_saved, None, 1
            return self._set(saved, "probe")
        # a start above FIRST_PROBE_ABOVE (only with a larger initial_window) may sit on a queue from the start
        first = self._judged == 1 and self.slow_start and self._start > FIRST_PROBE_ABOVE
        if (first or self._judged > self.probe_every) and peak > self.probe_limit:  # something to drain
            # the baseline may hold a queue that was there from the start: measure it with few in flight
            self._probe_saved = self._value
            return self._set(self.probe_limit, "probe")
        if median > self.tolerance * self.baseline:  # queueing: go to what the server serves without a queue
            if self.busy is not None and self.busy >= self.busy_limit:
                # the client's own loop is saturated: the delay is (at least partly) ours. Hold: more in
                # flight would not be served sooner either, so slow start ends here too
                self.slow_start = False
                return False
            target = max(peak * self.tolerance * self.baseline / median, self._value * 0.5)
            return self._cut(target, "latency", now)
        if not binding or self.slow_start:  # slow start grows on each success (see finished)
            return False
        step = max(1.0, self._value / 50)
        if self._ceiling is not None and int(self._value + step) >= int(self._ceiling):
            # the level the server last turned away: try it again only every `_wait` binding rounds
            self._patience += 1
            if self._patience < self._wait:
                return False
            self._patience = 0
        return self._set(self._value + step, "increase")

    def _note_ceiling(self, value: float) -> None:
        """An overload at ``value``: the same ceiling again doubles the rounds before the next try of it (up to
        :data:`MAX_CEILING_WAIT`); a new one starts over at one round."""
        c = self._ceiling
        same = c is not None and value <= c * 1.1 + 1
        self._wait = min(self._wait * 2, MAX_CEILING_WAIT) if same else 1
        self._ceiling, self._patience = value, 0

    def set(self, limit: int) -> None:
        """Move the limit to ``limit`` by hand (it keeps adapting from there)."""
        self.slow_start = False
        self._ceiling, self._wait, self._patience = None, 1, 0
        self._set(float(limit), "set")
        self.reason = "set"


def _median(values: list[float]) -> float:
    """The median of a non-empty list (``statistics.median``, without its import and its generality)."""
    s = sorted(values)
    n = len(s)
    m = n // 2
    return s[m] if n % 2 else (s[m - 1] + s[m]) / 2
