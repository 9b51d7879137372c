"""The relay's credit ledger: first grants, credit back as queues drain, the fair window and
the one bound on every lane together."""

from __future__ import annotations

import pytest

from meshcore.proto.credits import CreditGrant, CreditLedger

K = 1024
FRAME = 64 * K


def ledger(
    total: int = 16 * FRAME, window: int = 8 * FRAME, initial: int = 2 * FRAME
) -> CreditLedger:
    return CreditLedger(
        max_buffer_bytes=total, window_bytes=window, initial_bytes=initial, min_grant_bytes=FRAME
    )


def test_a_new_lane_gets_its_initial_credit() -> None:
    book = ledger()
    assert book.open((1, 10), sender=20) == [CreditGrant(20, 1, 2 * FRAME)]
    assert book.lane((1, 10)) == (2 * FRAME, 0, 2 * FRAME)
    assert book.held == 2 * FRAME


def test_opening_a_lane_twice_changes_nothing() -> None:
    book = ledger()
    book.open((1, 10), 20)
    assert book.open((1, 10), 20) == []
    assert book.held == 2 * FRAME


def test_uncredited_lanes_are_not_the_ledgers_business() -> None:
    assert ledger().arrived((9, 9), 100) is None
    assert ledger().drained((9, 9), 100) == []


def test_a_frame_over_the_credit_is_refused_and_counted() -> None:
    book = ledger()
    book.open((1, 10), 20)
    assert book.arrived((1, 10), 2 * FRAME + 1) is False
    assert book.overdrawn == 1
    assert book.lane((1, 10)) == (2 * FRAME, 0, 2 * FRAME)


def test_arrived_bytes_are_queued_and_credit_comes_back_when_drained() -> None:
    book = ledger()
    book.open((1, 10), 20)
    assert book.arrived((1, 10), FRAME) is True
    assert book.lane((1, 10)) == (FRAME, FRAME, 2 * FRAME)
    assert book.queued == FRAME
    # the drained bytes come back, and the lane grows by them
    assert book.drained((1, 10), FRAME) == [CreditGrant(20, 1, 2 * FRAME)]
    assert book.lane((1, 10)) == (3 * FRAME, 0, 3 * FRAME)


def test_a_busy_lane_grows_up_to_its_window() -> None:
    book = ledger()
    book.open((1, 10), 20)
    for _ in range(20):
        credit, _, _ = book.lane((1, 10)) or (0, 0, 0)
        while credit >= FRAME:
            assert book.arrived((1, 10), FRAME)
            credit -= FRAME
        book.drained((1, 10), FRAME)
    credit, queued, limit = book.lane((1, 10)) or (0, 0, 0)
    assert limit == 8 * FRAME
    assert credit + queued <= 8 * FRAME


def test_small_drains_are_handed_back_in_batches() -> None:
    book = ledger(initial=8 * FRAME)
    book.open((1, 10), 20)
    book.arrived((1, 10), 4 * FRAME)
    assert book.drained((1, 10), 1000) == []  # under a quarter of the limit: kept
    grants = book.drained((1, 10), 4 * FRAME - 1000)  # the queue is empty: all of it
    assert sum(g.credit for g in grants) == 4 * FRAME


def test_the_fair_window_shrinks_with_the_number_of_lanes() -> None:
    book = ledger(total=16 * FRAME, window=8 * FRAME)
    assert book.fair_window() == 8 * FRAME
    for lane in range(4):
        book.open((lane, 10), 20)
    assert book.fair_window() == 4 * FRAME
    for lane in range(4, 64):
        book.open((lane, 10), 20)
    assert book.fair_window() == FRAME  # never below one frame


def test_a_lane_waits_when_the_budget_is_spent_and_is_served_first_when_it_frees() -> None:
    book = ledger(total=4 * FRAME, window=4 * FRAME, initial=2 * FRAME)
    book.open((1, 10), 20)
    book.open((2, 10), 21)
    assert book.open((3, 10), 22) == []  # nothing left
    assert book.held == 4 * FRAME
    book.arrived((1, 10), FRAME)
    grants = book.drained((1, 10), FRAME)
    assert grants[0] == CreditGrant(22, 3, FRAME)  # the waiting lane first
    assert book.held <= 4 * FRAME


def test_closing_a_lane_returns_its_credit_and_queue_to_the_budget() -> None:
    book = ledger(total=4 * FRAME, window=4 * FRAME, initial=2 * FRAME)
    book.open((1, 10), 20)
    book.open((2, 10), 21)
    book.open((3, 10), 22)
    book.arrived((1, 10), FRAME)
    assert book.close((1, 10)) == [CreditGrant(22, 3, FRAME + FRAME)]
    assert (1, 10) not in book
    assert book.held == 4 * FRAME


def test_lanes_of_a_connection_are_those_it_sends_or_receives_on() -> None:
    book = ledger()
    book.open((1, 10), 20)
    book.open((1, 20), 10)
    book.open((2, 30), 40)
    assert sorted(book.lanes_of(10)) == [(1, 10), (1, 20)]


def test_inconsistent_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="min_grant_bytes <= window_bytes"):
        CreditLedger(
            max_buffer_bytes=FRAME, window_bytes=2 * FRAME, initial_bytes=1, min_grant_bytes=FRAME
        )
