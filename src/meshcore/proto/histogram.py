"""Fixed-bucket histograms kept as plain numbers: counted where the event happens, read (as a
snapshot) when metrics are scraped. The shape is Prometheus's: cumulative buckets by upper
bound (`le`), a count and a sum (docs/observability.md).
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence

import attrs

__all__ = ["Histogram", "HistogramSnapshot"]


@attrs.frozen
class HistogramSnapshot:
    """A histogram at one moment: `buckets` are (upper bound, observations <= it), ascending,
    the last bound +inf (so its count is `count`)."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float


class Histogram:
    """Observations counted into buckets with the given upper bounds, plus their count and sum.

    `bounds` must be finite and strictly ascending; an observation above the last one counts
    only in the implicit +inf bucket. `observe` is a bisect and two additions.
    """

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        if not bounds:
            raise ValueError("a histogram needs at least one bucket bound")
        if any(not math.isfinite(b) for b in bounds):
            raise ValueError(f"bucket bounds must be finite (+inf is implicit), got {bounds}")
        if any(b >= c for b, c in itertools.pairwise(bounds)):
            raise ValueError(f"bucket bounds must be strictly ascending, got {bounds}")
        self._bounds = tuple(bounds)
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation of `value`."""
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def snapshot(self) -> HistogramSnapshot:
        """Cumulative bucket counts, the count and the sum, now."""
        running = 0
        buckets = []
        for bound, n in zip((*self._bounds, math.inf), self._counts, strict=True):
            running += n
            buckets.append((bound, running))
        return HistogramSnapshot(tuple(buckets), running, self._sum)
