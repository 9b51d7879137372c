"""The reconnect window: what a shutting-down relay announces, what a peer reads from it, and
the waits it gives (spread bounded by the window, a lone peer back as fast as before)."""

from __future__ import annotations

from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto.constants import (
    RELAY_RECONNECT_JITTER,
    RELAY_RECONNECT_MAX_S,
    RELAY_RECONNECT_MIN_S,
    RELAY_RECONNECT_WINDOW_MAX_S,
    RELAY_RESTART_RATE_PER_S,
)
from meshcore.proto.reconnect import (
    ReconnectPolicy,
    announced_window,
    reconnect_window,
    shutdown_reason,
)

FIRST_WAIT_MAX_S = RELAY_RECONNECT_MIN_S * (1 + RELAY_RECONNECT_JITTER)
"""The longest first wait without a window: 0.75 s."""


def policy(random: Random, max_window_s: float = RELAY_RECONNECT_WINDOW_MAX_S) -> ReconnectPolicy:
    return ReconnectPolicy(
        RELAY_RECONNECT_MIN_S,
        RELAY_RECONNECT_MAX_S,
        RELAY_RECONNECT_JITTER,
        max_window_s=max_window_s,
        random=random.random,
    )


def test_the_window_is_the_peers_over_the_rate() -> None:
    assert reconnect_window(10_000, 500.0) == 20.0
    assert reconnect_window(1, 500.0) == 0.002
    assert reconnect_window(0, 500.0) == 0.0


def test_the_shutdown_reason_says_what_happens_and_announces_the_window() -> None:
    assert shutdown_reason(20.0) == "the relay is shutting down; reconnect within 20 s"
    assert shutdown_reason(0.0021) == "the relay is shutting down; reconnect within 0.003 s"
    assert shutdown_reason(0.0) == "the relay is shutting down; reconnect later"  # as before


@given(st.floats(min_value=0.0, max_value=999_999.0))
def test_a_peer_reads_back_at_least_the_window_the_relay_announced(window: float) -> None:
    read = announced_window(shutdown_reason(window))
    if window > 0:
        assert read is not None and window <= read <= window + 0.001 + 1e-9
    else:
        assert read is None and shutdown_reason(window).endswith("reconnect later")


@pytest.mark.parametrize(
    "reason",
    [
        "",
        "the relay is shutting down; reconnect later",
        "reconnect within 5 s; or not",  # not at the end
        "reconnect within -5 s",
        "reconnect within 1e9 s",
        "reconnect within 1234567 s",  # more digits than a relay writes
        "reconnect within 5 seconds",
    ],
)
def test_anything_but_the_exact_form_announces_nothing(reason: str) -> None:
    assert announced_window(reason) is None


@given(st.text(max_size=300))
def test_any_reason_text_is_read_without_raising(reason: str) -> None:
    window = announced_window(reason)
    assert window is None or 0 <= window < 1_000_000


@given(
    peers=st.integers(min_value=0, max_value=1_000_000),
    rate=st.floats(min_value=1.0, max_value=100_000.0),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_the_first_wait_after_an_announced_shutdown_is_bounded_by_backoff_and_window(
    peers: int, rate: float, seed: int
) -> None:
    window = announced_window(shutdown_reason(reconnect_window(peers, rate)))
    wait = policy(Random(seed)).after_loss(window)
    spread = min(window or 0.0, RELAY_RECONNECT_WINDOW_MAX_S)
    assert wait >= RELAY_RECONNECT_MIN_S * (1 - RELAY_RECONNECT_JITTER)
    assert wait <= FIRST_WAIT_MAX_S + spread


@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_a_lone_peer_is_back_as_fast_as_without_a_window(seed: int) -> None:
    window = announced_window(shutdown_reason(reconnect_window(1, RELAY_RESTART_RATE_PER_S)))
    assert window is not None and window <= 0.002
    assert policy(Random(seed)).after_loss(window) <= FIRST_WAIT_MAX_S + 0.002


def test_a_herd_spreads_over_the_window_instead_of_half_a_second() -> None:
    window = reconnect_window(10_000, RELAY_RESTART_RATE_PER_S)  # 10 s
    rng = Random(1)
    waits = sorted(policy(rng).after_loss(window) for _ in range(10_000))
    assert waits[-1] - waits[0] > 0.9 * window
    # about as many in each second of the window: no second gets more than twice its share
    per_second = [0] * (int(window) + 2)
    for wait in waits:
        per_second[int(wait)] += 1
    assert max(per_second) < 2 * 10_000 / window
    without = sorted(policy(rng).after_loss(None) for _ in range(10_000))
    assert without[-1] - without[0] <= 2 * RELAY_RECONNECT_MIN_S * RELAY_RECONNECT_JITTER


def test_a_window_past_the_cap_is_cut_to_it_and_zero_ignores_windows() -> None:
    class Top(Random):
        def random(self) -> float:
            return 0.999999

    assert policy(Top(), max_window_s=10.0).after_loss(1e6) < FIRST_WAIT_MAX_S + 10.0
    assert policy(Top(), max_window_s=0.0).after_loss(1e6) < FIRST_WAIT_MAX_S


def test_failures_back_off_without_the_window_and_a_registration_resets() -> None:
    class Half(Random):
        def random(self) -> float:
            return 0.5

    p = policy(Half())
    assert p.after_loss(8.0) == RELAY_RECONNECT_MIN_S + 4.0
    assert [p.after_failure() for _ in range(3)] == [1.0, 2.0, 4.0]
    p.reset()
    assert p.after_failure() == RELAY_RECONNECT_MIN_S


def test_a_negative_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="max_window_s"):
        policy(Random(1), max_window_s=-1.0)
