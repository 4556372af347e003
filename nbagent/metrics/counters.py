"""The scalar metric types: :class:`Counter` (a running total) and :class:`Gauge` (up and down, with its peak).

Histograms are in :mod:`nbagent.metrics.histogram`; :data:`Metric` is any of the three. A
:class:`~nbagent.metrics.registry.MetricsRegistry` creates them by name.
"""

from __future__ import annotations

import math

from nbagent.metrics.histogram import Histogram

__all__ = ["Counter", "Gauge", "Metric"]


class Counter:
    """A running total. Takes ints or floats (``cost.usd`` is a float counter); monotonic by convention."""

    __slots__ = ("value",)

    def __init__(self, value: float = 0) -> None:
        self.value: float = value

    def inc(self, n: float = 1) -> None:
        """Add ``n`` (default 1)."""
        self.value += n

    def merge(self, other: Counter) -> Counter:
        """Add ``other``'s total into this counter and return ``self``."""
        self.value += other.value
        return self

    def __repr__(self) -> str:
        return f"Counter({self.value!r})"


class Gauge:
    """A value that goes up and down (``set`` / ``inc`` / ``dec``) and remembers the largest value it held.

    ``max`` is None until the gauge is first changed. Merging adds the values (in-flight counts of several
    workers add up) and keeps the larger peak: the peak of the combined value is not recoverable, so a merged
    ``max`` is the largest per-source peak (or the merged value, if larger).
    """

    __slots__ = ("_peak", "value")

    def __init__(self, value: float = 0) -> None:
        self.value: float = value
        self._peak: float = -math.inf

    def set(self, value: float) -> None:
        """Set the value."""
        self.value = value
        if value > self._peak:
            self._peak = value

    def inc(self, n: float = 1) -> None:
        """Add ``n`` (default 1)."""
        v = self.value + n
        self.value = v
        if v > self._peak:
            self._peak = v

    def dec(self, n: float = 1) -> None:
        """Subtract ``n`` (default 1)."""
        v = self.value - n
        self.value = v
        if v > self._peak:
            self._peak = v

    @property
    def max(self) -> float | None:
        """The largest value held so far, or None if the gauge never changed."""
        return self._peak if self._peak != -math.inf else None

    def merge(self, other: Gauge) -> Gauge:
        """Add ``other``'s value, keep the larger peak, and return ``self``."""
        self.value += other.value
        peak = max(self._peak, other._peak)
        if peak != -math.inf and self.value > peak:
            peak = self.value
        self._peak = peak
        return self

    def __repr__(self) -> str:
        return f"Gauge(value={self.value!r}, max={self.max!r})"


Metric = Counter | Gauge | Histogram
"""Any of the three metric types."""
