"""Fixed-bucket histograms: Prometheus's `le` semantics, cumulative counts, bad bounds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto.histogram import Histogram

BOUNDS = (0.001, 0.01, 0.1)


def test_a_value_on_a_bound_counts_in_that_bucket() -> None:
    histogram = Histogram(BOUNDS)
    histogram.observe(0.01)
    assert histogram.snapshot().buckets == ((0.001, 0), (0.01, 1), (0.1, 1), (math.inf, 1))


def test_a_value_above_every_bound_counts_only_in_the_inf_bucket() -> None:
    histogram = Histogram(BOUNDS)
    histogram.observe(5.0)
    snap = histogram.snapshot()
    assert snap.buckets[-2:] == ((0.1, 0), (math.inf, 1))
    assert (snap.count, snap.sum) == (1, 5.0)


@pytest.mark.parametrize("bounds", [(), (0.1, 0.1), (0.2, 0.1), (0.1, math.inf)])
def test_bad_bounds_are_refused(bounds: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="bound"):
        Histogram(bounds)


@given(st.lists(st.floats(min_value=0, max_value=1, allow_nan=False), max_size=50))
def test_cumulative_counts_match_a_direct_count(values: list[float]) -> None:
    histogram = Histogram(BOUNDS)
    for value in values:
        histogram.observe(value)
    snap = histogram.snapshot()
    for bound, count in snap.buckets:
        assert count == sum(1 for v in values if v <= bound)
    assert snap.count == len(values)
    assert snap.sum == pytest.approx(math.fsum(values))
