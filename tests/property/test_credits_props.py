"""The credit ledger under random lanes, frames, drains and closes: the credit held and
queued never passes the relay's bound nor a lane's window, a sender that follows its grants
is never refused, every byte that arrives is credited back once its receiver reads it (but
less than one batch), and no lane waits while the budget could serve it."""

from __future__ import annotations

from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshcore.proto.credits import CreditGrant, CreditLedger, LaneKey

FRAME = 1000
TOTAL = 12 * FRAME
WINDOW = 5 * FRAME


def new_ledger(total: int = TOTAL, window: int = WINDOW, initial: int = 2 * FRAME) -> CreditLedger:
    return CreditLedger(
        max_buffer_bytes=total, window_bytes=window, initial_bytes=initial, min_grant_bytes=FRAME
    )


class CreditModel(RuleBasedStateMachine):
    """Senders that spend only what they were granted, receivers that read at random."""

    def __init__(self) -> None:
        super().__init__()
        self.book = new_ledger()
        self.credit: dict[LaneKey, int] = {}  # what each sender was told it may send
        self.queue: dict[LaneKey, deque[int]] = {}  # frames at the relay, oldest first
        self.next_circuit = 1

    def apply(self, grants: list[CreditGrant]) -> None:
        for grant in grants:
            key = next(k for k in self.credit if k[0] == grant.circuit_id)
            assert grant.sender == key[1] + 1000
            assert grant.credit > 0
            self.credit[key] += grant.credit

    @rule()
    def open_lane(self) -> None:
        key = (self.next_circuit, self.next_circuit % 3)
        self.next_circuit += 1
        self.credit[key] = 0
        self.queue[key] = deque()
        self.apply(self.book.open(key, key[1] + 1000))

    @precondition(lambda self: any(c >= 1 for c in self.credit.values()))
    @rule(data=st.data())
    def send(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(k for k, c in self.credit.items() if c >= 1)))
        size = data.draw(st.integers(1, min(FRAME, self.credit[key])))
        assert self.book.arrived(key, size) is True
        self.credit[key] -= size
        self.queue[key].append(size)

    @precondition(lambda self: any(self.queue.values()))
    @rule(data=st.data())
    def drain(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(k for k, q in self.queue.items() if q)))
        self.apply(self.book.drained(key, self.queue[key].popleft()))

    @precondition(lambda self: bool(self.credit))
    @rule(data=st.data())
    def close_lane(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.credit)))
        del self.credit[key]
        del self.queue[key]
        self.apply(self.book.close(key))

    @rule()
    def overdraw_is_refused(self) -> None:
        for key, credit in self.credit.items():
            assert self.book.arrived(key, credit + 1) is False

    @invariant()
    def within_the_bounds(self) -> None:
        held = sum(self.credit.values()) + sum(sum(q) for q in self.queue.values())
        assert held == self.book.held <= TOTAL
        for key, credit in self.credit.items():
            assert credit + sum(self.queue[key]) <= WINDOW
            state = self.book.lane(key)
            assert state is not None and state[0] == credit

    def teardown(self) -> None:
        # Receivers read everything: each lane gets back at least one frame of credit, unless
        # other lanes hold the budget (an idle sender keeps what it was given).
        for key in list(self.queue):
            while self.queue[key]:
                self.apply(self.book.drained(key, self.queue[key].popleft()))
        for credit in self.credit.values():
            assert credit >= FRAME or TOTAL - self.book.held < FRAME


TestCreditModel = CreditModel.TestCase
TestCreditModel.settings = settings(max_examples=150, stateful_step_count=50)


@given(st.lists(st.integers(1, FRAME), min_size=1, max_size=200), st.integers(1, 4))
def test_a_lone_sender_gets_every_byte_back_and_is_never_refused(
    frames: list[int], read_every: int
) -> None:
    book = new_ledger()
    credit = sum(g.credit for g in book.open((1, 2), 3))
    queued: deque[int] = deque()
    sent = 0
    for size in frames:
        while credit < size:  # wait for the receiver to read
            credit += sum(g.credit for g in book.drained((1, 2), queued.popleft()))
        assert book.arrived((1, 2), size)
        credit -= size
        sent += size
        queued.append(size)
        if len(queued) >= read_every:
            credit += sum(g.credit for g in book.drained((1, 2), queued.popleft()))
    while queued:
        credit += sum(g.credit for g in book.drained((1, 2), queued.popleft()))
    state = book.lane((1, 2))
    assert state is not None
    credit_held, queued, limit = state
    # All back but less than one batch (a quarter of the limit), and never less than a frame:
    assert queued == 0 and credit == credit_held
    assert credit >= FRAME and limit - credit < max(limit // 4, 1)
    assert book.held == credit <= WINDOW


@given(st.integers(FRAME, 100 * FRAME), st.integers(FRAME, 20 * FRAME), st.integers(1, 40))
def test_the_fair_window_is_within_the_caps(total: int, window: int, lanes: int) -> None:
    window = min(window, total)
    book = new_ledger(total, window)
    for lane in range(lanes):
        book.open((lane, 0), 1)
    fair = book.fair_window()
    assert FRAME <= fair <= window
    assert fair == FRAME or fair * lanes <= total
    assert book.held <= total
