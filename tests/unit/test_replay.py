"""ReplayWindow: RFC 6479 anti-replay over frame counters (docs/crypto-spec.md §3.7)."""

from __future__ import annotations

from meshcore.proto.constants import (
    REJECT_AFTER_MESSAGES,
    REPLAY_WINDOW_BITS,
    REPLAY_WINDOW_USABLE,
)
from meshcore.proto.replay import ReplayWindow


def test_first_counter_zero_is_accepted() -> None:
    window = ReplayWindow()
    assert window.accept(0)
    assert window.highest == 0


def test_duplicate_counter_is_rejected() -> None:
    window = ReplayWindow()
    assert window.accept(7)
    assert not window.accept(7)


def test_reordered_counter_inside_window_is_accepted_once() -> None:
    window = ReplayWindow()
    assert window.accept(100)
    assert window.accept(50)
    assert not window.accept(50)
    assert window.highest == 100


def test_usable_window_is_8128_counters_including_the_top() -> None:
    window = ReplayWindow()
    top = 20_000
    assert window.accept(top)
    assert window.check(top - (REPLAY_WINDOW_USABLE - 1))
    assert not window.check(top - REPLAY_WINDOW_USABLE)


def test_check_does_not_change_state() -> None:
    window = ReplayWindow()
    window.accept(10)
    for _ in range(3):
        assert window.check(11)
        assert window.check(9)
    assert window.highest == 10
    assert window.accept(11)


def test_update_records_counter() -> None:
    window = ReplayWindow()
    assert window.check(3)
    window.update(3)
    assert not window.check(3)


def test_update_with_unacceptable_counter_never_moves_window() -> None:
    window = ReplayWindow()
    window.accept(REPLAY_WINDOW_BITS * 3)
    window.update(REJECT_AFTER_MESSAGES)
    window.update(0)
    assert window.highest == REPLAY_WINDOW_BITS * 3
    assert window.check(REPLAY_WINDOW_BITS * 3 - 1)


def test_counter_at_message_limit_is_rejected() -> None:
    window = ReplayWindow()
    assert not window.check(REJECT_AFTER_MESSAGES)
    assert not window.accept(REJECT_AFTER_MESSAGES)
    assert window.accept(REJECT_AFTER_MESSAGES - 1)


def test_negative_counter_is_rejected() -> None:
    window = ReplayWindow()
    window.accept(5)
    assert not window.check(-1)
    assert not window.accept(-1)


def test_huge_jump_forgets_everything_behind_the_window() -> None:
    window = ReplayWindow()
    for counter in range(100):
        window.accept(counter)
    assert window.accept(1 << 40)
    assert not window.check(99)
    assert window.check((1 << 40) - 1)


def test_ring_slot_reused_after_one_lap_is_cleared() -> None:
    # Counter c and c + 8192 share a ring slot; the second must not look like a replay,
    # and a fresh counter one block behind the new top must be accepted.
    window = ReplayWindow()
    assert window.accept(64)
    assert window.accept(64 + REPLAY_WINDOW_BITS)
    assert window.accept(64 + REPLAY_WINDOW_BITS - 64)
    assert not window.check(64)
