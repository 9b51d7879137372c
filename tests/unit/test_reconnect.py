"""The reconnect window: what a shutting-down relay announces, what a peer reads from it, and
the waits it gives (spread bounded by the window, a lone peer back as fast as before)."""

from __future__ import annotations

import errno
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.errors import ConnectFailed, RelayError
from meshcore.proto.constants import (
    RELAY_RECONNECT_JITTER,
    RELAY_RECONNECT_MAX_S,
    RELAY_RECONNECT_MIN_S,
    RELAY_RECONNECT_WINDOW_MAX_S,
    RELAY_RESTART_MARGIN_S,
    RELAY_RESTART_RATE_PER_S,
)
from meshcore.proto.reconnect import (
    ReconnectPolicy,
    announced_window,
    busy_reason,
    reconnect_window,
    refusal_window,
    relay_not_listening,
    shutdown_reason,
)
from meshcore.proto.wire import ErrorCode

UNREACHABLE = OSError(113, "No route to host")
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
    wait = policy(Random(seed)).after_loss(window, 0.0)
    spread = min(window or 0.0, RELAY_RECONNECT_WINDOW_MAX_S)
    assert wait >= RELAY_RECONNECT_MIN_S * (1 - RELAY_RECONNECT_JITTER)
    assert wait <= FIRST_WAIT_MAX_S + spread


@given(seed=st.integers(min_value=0, max_value=2**32 - 1))
def test_a_lone_peer_is_back_as_fast_as_without_a_window(seed: int) -> None:
    window = announced_window(shutdown_reason(reconnect_window(1, RELAY_RESTART_RATE_PER_S)))
    assert window is not None and window <= 0.002
    assert policy(Random(seed)).after_loss(window, 0.0) <= FIRST_WAIT_MAX_S + 0.002


def test_a_herd_spreads_over_the_window_instead_of_half_a_second() -> None:
    window = reconnect_window(10_000, RELAY_RESTART_RATE_PER_S)  # 8.3 s
    rng = Random(1)
    waits = sorted(policy(rng).after_loss(window, 0.0) for _ in range(10_000))
    assert waits[-1] - waits[0] > 0.9 * window
    # about as many in each second of the window: no second gets more than twice its share
    per_second = [0] * (int(window) + 2)
    for wait in waits:
        per_second[int(wait)] += 1
    assert max(per_second) < 2 * 10_000 / window
    without = sorted(policy(rng).after_loss(None, 0.0) for _ in range(10_000))
    assert without[-1] - without[0] <= 2 * RELAY_RECONNECT_MIN_S * RELAY_RECONNECT_JITTER


def test_a_window_past_the_cap_is_cut_to_it_and_zero_ignores_windows() -> None:
    class Top(Random):
        def random(self) -> float:
            return 0.999999

    assert policy(Top(), max_window_s=10.0).after_loss(1e6, 0.0) < FIRST_WAIT_MAX_S + 10.0
    assert policy(Top(), max_window_s=0.0).after_loss(1e6, 0.0) < FIRST_WAIT_MAX_S


def test_failures_back_off_without_the_window_and_a_registration_resets() -> None:
    p = policy(Half())
    assert p.after_loss(8.0, 0.0) == RELAY_RECONNECT_MIN_S + 4.0
    assert [p.after_failure(UNREACHABLE, 1.0) for _ in range(3)] == [1.0, 2.0, 4.0]
    p.reset()
    assert p.after_failure(UNREACHABLE, 2.0) == RELAY_RECONNECT_MIN_S


def test_a_negative_cap_is_refused() -> None:
    with pytest.raises(ValueError, match="max_window_s"):
        policy(Random(1), max_window_s=-1.0)


class Half(Random):
    """Every draw is 0.5: no jitter, half of every window."""

    def random(self) -> float:
        return 0.5


def busy(window_s: float, code: ErrorCode = ErrorCode.CAPACITY) -> RelayError:
    """The error a registration attempt fails with when the relay refuses it for load."""
    reason = busy_reason("too many connections are registering right now (9)", window_s)
    return RelayError(f"relay refused the registration: {reason}", code=int(code))


REFUSED = ConnectFailed("ws://relay/: cannot connect: refused", errno=errno.ECONNREFUSED)


def test_a_busy_refusal_announces_its_window_in_the_shutdown_form() -> None:
    assert busy_reason("busy", 4.0961) == "busy; reconnect within 4.097 s"
    assert busy_reason("busy", 0.0) == "busy; reconnect later"
    assert refusal_window(busy(4.096)) == 4.096
    assert refusal_window(busy(2.0, ErrorCode.RATE_LIMITED)) == 2.0
    assert refusal_window(busy(0.0)) is None  # no window named: the plain backoff
    # only refusals for load count: a relay that is full or a Close names no retry window
    assert refusal_window(busy(3.0, ErrorCode.NOT_ALLOWED)) is None
    assert refusal_window(OSError("reconnect within 3 s")) is None


def test_only_a_refused_tcp_connection_is_a_relay_not_listening() -> None:
    assert relay_not_listening(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert relay_not_listening(REFUSED)
    assert not relay_not_listening(ConnectFailed("timed out", errno=errno.ETIMEDOUT))
    assert not relay_not_listening(ConnectFailed("upgrade refused"))
    assert not relay_not_listening(UNREACHABLE)


def test_a_busy_refusal_spreads_the_next_attempt_over_its_window_instead_of_doubling() -> None:
    p = policy(Half())
    assert p.after_loss(None, 0.0) == RELAY_RECONNECT_MIN_S
    # the relay's window, from the shortest wait: 0.5 + 4 / 2, not the doubled 1 s
    assert p.after_failure(busy(4.0), 1.0) == RELAY_RECONNECT_MIN_S + 2.0
    # refused again in a row: its window was short, so twice the window (still no doubling)
    assert p.after_failure(busy(4.0), 4.0) == RELAY_RECONNECT_MIN_S + 4.0
    # another failure goes on with the backoff where it was: the loss was its first step
    assert p.after_failure(UNREACHABLE, 9.0) == 2 * RELAY_RECONNECT_MIN_S


def test_a_busy_window_is_capped_and_ignored_when_windows_are() -> None:
    assert policy(Half(), max_window_s=10.0).after_failure(busy(1e5), 0.0) == 0.5 + 5.0
    ignoring = policy(Half(), max_window_s=0.0)
    ignoring.after_loss(None, 0.0)
    assert ignoring.after_failure(busy(4.0), 1.0) == 2 * RELAY_RECONNECT_MIN_S  # doubled


def test_a_relay_not_listening_within_its_announced_window_is_retried_at_the_shortest() -> None:
    p = policy(Half())
    assert p.after_loss(10.0, 100.0) == RELAY_RECONNECT_MIN_S + 5.0
    end = 100.0 + 10.0 + RELAY_RESTART_MARGIN_S
    # within the window and the margin: the new relay is on its way, try again soon
    assert [p.after_failure(REFUSED, t) for t in (105.5, 110.0, end)] == [0.5, 0.5, 0.5]
    # past it the relay is down, not restarting: the backoff doubles from where it was
    assert p.after_failure(REFUSED, end + 0.1) == 1.0
    assert p.after_failure(REFUSED, end + 1.2) == 2.0
    # other failures within the window double as before
    q = policy(Half())
    q.after_loss(10.0, 0.0)
    assert q.after_failure(UNREACHABLE, 5.0) == 1.0


def test_without_an_announced_window_a_relay_not_listening_doubles_the_backoff() -> None:
    p = policy(Half())
    p.after_loss(None, 0.0)
    assert [p.after_failure(REFUSED, t) for t in (1.0, 2.0, 4.0)] == [1.0, 2.0, 4.0]
    q = policy(Half(), max_window_s=0.0)  # windows ignored
    q.after_loss(10.0, 0.0)
    assert q.after_failure(REFUSED, 1.0) == 1.0


def test_registering_forgets_the_window_and_the_busy_streak() -> None:
    p = policy(Half())
    p.after_loss(10.0, 0.0)
    p.after_failure(busy(4.0), 1.0)
    p.reset()
    assert p.after_failure(REFUSED, 2.0) == RELAY_RECONNECT_MIN_S  # the first failure, plain
    assert p.after_failure(busy(4.0), 3.0) == RELAY_RECONNECT_MIN_S + 2.0  # a streak of one
