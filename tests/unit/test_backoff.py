"""The one backoff: doubling from the base to the cap, jitter within its bounds, reset."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto.backoff import Backoff, backoff_delay


def test_backoff_doubles_from_the_base_up_to_the_cap_without_jitter() -> None:
    backoff = Backoff(0.5, 4.0, 0.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.failures == 6


def test_reset_starts_again_from_the_base() -> None:
    backoff = Backoff(1.0, 30.0, 0.0)
    backoff.next_delay()
    backoff.next_delay()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == 1.0


def test_jitter_is_applied_around_the_base() -> None:
    assert backoff_delay(1, base_s=10.0, max_s=10.0, jitter=0.5, random=lambda: 0.0) == 5.0
    assert backoff_delay(1, base_s=10.0, max_s=10.0, jitter=0.5, random=lambda: 0.5) == 10.0


@given(
    failures=st.integers(min_value=-5, max_value=10_000),
    base=st.floats(min_value=1e-3, max_value=100.0),
    factor=st.floats(min_value=1.0, max_value=1000.0),
    jitter=st.floats(min_value=0.0, max_value=0.99),
    r=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_every_delay_lies_within_the_jittered_bounds(
    failures: int, base: float, factor: float, jitter: float, r: float
) -> None:
    cap = base * factor
    delay = backoff_delay(failures, base_s=base, max_s=cap, jitter=jitter, random=lambda: r)
    assert base * (1 - jitter) * (1 - 1e-9) <= delay <= cap * (1 + jitter) * (1 + 1e-9)


@pytest.mark.parametrize(
    ("base", "cap", "jitter"), [(0, 1, 0), (2, 1, 0), (1, 2, 1.0), (1, 2, -0.1)]
)
def test_nonsense_settings_are_refused(base: float, cap: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(base, cap, jitter)
