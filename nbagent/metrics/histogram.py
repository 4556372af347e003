"""A log-bucketed, mergeable histogram with a fixed relative error.

The layout follows DDSketch: with relative accuracy ``a`` (default 0.01) and ``gamma = (1 + a) / (1 - a)``,
a positive value ``v`` goes to bucket ``floor(log(v) / log(gamma))``, which covers
``[gamma**i, gamma**(i + 1))``. Each bucket is read back as ``2 * gamma**(i + 1) / (1 + gamma)``, a value
within ``a`` relative error of anything in the bucket. So every quantile is within ``a`` (1 %) of the exact
order statistic, whatever the spread of the data, and two histograms with the same accuracy merge exactly
by adding bucket counts: histograms from several processes or workers combine into one without loss.

Quantiles use the same definition as ``numpy.quantile`` (method ``"linear"``): the value at rank
``q * (count - 1)``, interpolated between the two neighbouring order statistics. The interpolated estimate
stays within ``a`` of the exact quantile for non-negative data. The result is clamped into ``[min, max]``,
and ``quantile(0)`` / ``quantile(1)`` return the exact ``min`` / ``max``.

Values ``<= 0`` are counted in one *zero bucket*: they count towards ``count``, ``sum``, ``min``, ``max`` and
the ranks, but they are not resolved; a quantile that lands among them reads as ``0.0`` (then clamped into
``[min, max]``, so all-negative data reads as its maximum). Non-finite values (``nan``, ``inf``, ``-inf``)
are not recorded; they are counted in :attr:`Histogram.rejected`.

An empty histogram has ``quantile(q)``, ``mean``, ``min``, ``max`` and the ``p50/p95/p99`` properties all
equal to ``None``.

Storage is a sparse dict of bucket index to count: about 460 buckets per factor of 10**4 between the smallest
and the largest value at 1 % accuracy, and only the buckets actually hit are kept.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from itertools import accumulate
from typing import Any

__all__ = ["DEFAULT_ACCURACY", "Histogram"]

DEFAULT_ACCURACY = 0.01

_log = math.log
_floor = math.floor
_INF = math.inf


class Histogram:
    """Mergeable histogram of floats with relative accuracy ``accuracy`` on every quantile.

    >>> h = Histogram()
    >>> h.record_many([0.1, 0.2, 0.3, 0.4])
    >>> h.count, round(h.p50, 2)
    (4, 0.25)
    """

    __slots__ = (
        "_accuracy",
        "_bins",
        "_gamma",
        "_log_gamma",
        "_max",
        "_min",
        "_mult",
        "_rep",
        "_zero",
        "count",
        "rejected",
        "sum",
    )

    def __init__(self, accuracy: float = DEFAULT_ACCURACY) -> None:
        if not (0.0 < accuracy < 1.0):
            raise ValueError(f"accuracy must be in (0, 1), got {accuracy!r}")
        self._accuracy = float(accuracy)
        self._gamma = (1.0 + accuracy) / (1.0 - accuracy)
        self._log_gamma = _log(self._gamma)
        self._mult = 1.0 / self._log_gamma
        self._rep = 2.0 * self._gamma / (1.0 + self._gamma)  # bucket i reads as gamma**i * _rep
        self._bins: dict[int, int] = {}
        self._zero = 0
        self.count = 0
        """Number of values recorded (including the zero bucket)."""
        self.sum: float = 0.0
        """Sum of the values recorded."""
        self._min = _INF
        self._max = -_INF
        self.rejected = 0
        """Non-finite values that were passed in and not recorded."""

    # --- recording ------------------------------------------------------------------------------

    def record(self, value: float) -> None:
        """Add one value. Non-finite values are counted in :attr:`rejected` and otherwise ignored."""
        if value > 0.0:
            try:
                i = _floor(_log(value) * self._mult)
            except OverflowError:  # +inf
                self.rejected += 1
                return
            bins = self._bins
            bins[i] = bins.get(i, 0) + 1
        elif value <= 0.0 and value != -_INF:
            self._zero += 1
        else:  # nan or -inf
            self.rejected += 1
            return
        self.count += 1
        self.sum += value
        if value < self._min:
            self._min = value
        if value > self._max:
            self._max = value

    def record_many(self, values: Iterable[float]) -> None:
        """Add every value of ``values``."""
        record = self.record
        for v in values:
            record(v)

    # --- reading --------------------------------------------------------------------------------

    @property
    def accuracy(self) -> float:
        """The relative accuracy ``a`` this histogram was built with."""
        return self._accuracy

    @property
    def zero_count(self) -> int:
        """How many recorded values were ``<= 0``."""
        return self._zero

    @property
    def min(self) -> float | None:
        """The smallest value recorded, or None when empty."""
        return self._min if self.count else None

    @property
    def max(self) -> float | None:
        """The largest value recorded, or None when empty."""
        return self._max if self.count else None

    @property
    def mean(self) -> float | None:
        """The exact mean of the values recorded, or None when empty."""
        return self.sum / self.count if self.count else None

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (``0 <= q <= 1``) within :attr:`accuracy` relative error; None when empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """Several quantiles in one pass over the buckets (see :meth:`quantile`)."""
        for q in qs:
            if not (0.0 <= q <= 1.0):
                raise ValueError(f"quantile must be in [0, 1], got {q!r}")
        n = self.count
        if n == 0:
            return [None for _ in qs]
        bins = self._bins
        keys = sorted(bins)
        # cum[0] counts the zero bucket; cum[j + 1] counts everything up to and including bucket keys[j]
        cum = list(accumulate([self._zero, *(bins[k] for k in keys)]))
        log_gamma, rep, lo_clamp, hi_clamp = self._log_gamma, self._rep, self._min, self._max

        def at(index: int) -> float:
            j = bisect_right(cum, index)
            if j == 0:
                return 0.0
            return math.exp(keys[j - 1] * log_gamma) * rep

        out: list[float | None] = []
        for q in qs:
            if q == 0.0:
                out.append(lo_clamp)
                continue
            if q == 1.0:
                out.append(hi_clamp)
                continue
            rank = q * (n - 1)
            lo = _floor(rank)
            frac = rank - lo
            v = at(lo)
            if frac > 0.0 and lo + 1 < n:
                v += frac * (at(lo + 1) - v)
            out.append(min(max(v, lo_clamp), hi_clamp))
        return out

    @property
    def p50(self) -> float | None:
        """The median (see :meth:`quantile`)."""
        return self.quantile(0.5)

    @property
    def p95(self) -> float | None:
        """The 95th percentile (see :meth:`quantile`)."""
        return self.quantile(0.95)

    @property
    def p99(self) -> float | None:
        """The 99th percentile (see :meth:`quantile`)."""
        return self.quantile(0.99)

    def summary(self) -> dict[str, Any]:
        """``count, sum, mean, min, max, p50, p95, p99`` as a JSON-safe dict (None values when empty)."""
        p50, p95, p99 = self.quantiles((0.5, 0.95, 0.99))
        return {
            "count": self.count,
            "sum": self.sum,
            "mean": self.mean,
            "min": self.min,
            "max": self.max,
            "p50": p50,
            "p95": p95,
            "p99": p99,
        }

    def buckets(self) -> list[tuple[float, float, int]]:
        """Non-empty buckets as ``(lower, upper, count)``, ascending, for plotting.

        Positive buckets span ``[gamma**i, gamma**(i + 1))``. The zero bucket, when used, comes first as
        ``(min, 0.0, count)``.
        """
        out: list[tuple[float, float, int]] = []
        if self._zero:
            out.append((min(self._min, 0.0), 0.0, self._zero))
        lg = self._log_gamma
        for i in sorted(self._bins):
            out.append((math.exp(i * lg), math.exp((i + 1) * lg), self._bins[i]))
        return out

    # --- combining ------------------------------------------------------------------------------

    def merge(self, other: Histogram) -> Histogram:
        """Add ``other``'s values into this histogram (in place) and return ``self``.

        Both must have the same accuracy, otherwise their buckets do not line up and ``ValueError`` is raised.
        """
        if other._accuracy != self._accuracy:
            raise ValueError(f"cannot merge histograms of accuracy {self._accuracy} and {other._accuracy}")
        bins = self._bins
        for i, c in other._bins.items():
            bins[i] = bins.get(i, 0) + c
        self._zero += other._zero
        self.count += other.count
        self.sum += other.sum
        self.rejected += other.rejected
        if other._min < self._min:
            self._min = other._min
        if other._max > self._max:
            self._max = other._max
        return self

    def copy(self) -> Histogram:
        """An independent copy."""
        return Histogram(self._accuracy).merge(self)

    def __add__(self, other: Histogram) -> Histogram:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.copy().merge(other)

    def __iadd__(self, other: Histogram) -> Histogram:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.merge(other)

    # --- serialisation --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that :meth:`from_dict` turns back into an identical histogram."""
        return {
            "accuracy": self._accuracy,
            "count": self.count,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
            "zero": self._zero,
            "rejected": self.rejected,
            "bins": [[i, self._bins[i]] for i in sorted(self._bins)],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        """Rebuild a histogram from :meth:`to_dict` output (possibly after a JSON round trip)."""
        h = cls(float(data.get("accuracy", DEFAULT_ACCURACY)))
        h._bins = {int(i): int(c) for i, c in data.get("bins", ())}
        h._zero = int(data.get("zero", 0))
        h.count = int(data.get("count", 0))
        if h.count != h._zero + sum(h._bins.values()):
            raise ValueError("histogram dict is inconsistent: count differs from the bucket counts")
        h.sum = float(data.get("sum", 0.0))
        h.rejected = int(data.get("rejected", 0))
        if h.count:
            h._min = float(data["min"])
            h._max = float(data["max"])
        return h

    def __repr__(self) -> str:
        if not self.count:
            return f"Histogram(accuracy={self._accuracy}, count=0)"
        p50, p95, p99 = self.quantiles((0.5, 0.95, 0.99))
        return (
            f"Histogram(count={self.count}, mean={self.mean:.6g}, p50={p50:.6g}, p95={p95:.6g}, "
            f"p99={p99:.6g}, min={self._min:.6g}, max={self._max:.6g})"
        )
