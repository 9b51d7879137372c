"""The matchmaker's records: what it tells peers about a connection, and its timer heap."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto import relayrecords
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.relayrecords import ConnRecord, ConnState, TimerHeap
from meshcore.proto.wire import Invite, Paired, Role


def registered(conn_id: int) -> ConnRecord:
    record = ConnRecord(conn_id, Endpoint("192.0.2.9", 4000), 0.0, 5.0)
    record.state = ConnState.REGISTERED
    record.peer = bytes([conn_id]) * 32
    record.x25519_public = b"x" * 32
    record.kem_public = b"k" * 1184
    record.candidates = (Endpoint("10.0.0.1", 7000),)
    return record


def test_a_new_connection_awaits_hello_until_its_deadline() -> None:
    record = ConnRecord(1, Endpoint("192.0.2.9", 4000), 3.0, 8.0)
    assert (record.state, record.deadline, record.last_rx) == (ConnState.AWAITING_HELLO, 8.0, 3.0)


def test_an_invite_and_a_paired_describe_this_peer() -> None:
    record = registered(7)
    assert record.as_invite(42) == Invite(
        42, record.peer, b"x" * 32, b"k" * 1184, record.addr, record.candidates
    )
    assert record.as_paired(5, 99, Role.RESPONDER) == Paired(
        5, 99, Role.RESPONDER, record.peer, b"x" * 32, b"k" * 1184, record.addr, record.candidates
    )


class Owner:
    """Objects with one current deadline each, as the matchmaker keeps them."""

    def __init__(self) -> None:
        self.current: dict[object, int] = {}
        self.heap = TimerHeap(lambda seq, _kind, obj: self.current.get(obj) == seq)

    def schedule(self, obj: object, when: float) -> None:
        live = len(self.current) + (obj not in self.current)
        self.current[obj] = self.heap.push(when, 0, obj, live)

    def drop(self, obj: object) -> None:
        del self.current[obj]
        self.heap.bound(len(self.current))


def test_due_deadlines_come_out_in_order_and_moved_ones_only_once() -> None:
    owner = Owner()
    owner.schedule("a", 3.0)
    owner.schedule("b", 1.0)
    owner.schedule("a", 2.0)  # moved: the 3.0 entry is dead
    assert owner.heap.next_deadline() == 1.0
    assert list(owner.heap.pop_due(10.0)) == [(0, "b"), (0, "a")]
    assert owner.heap.next_deadline() is None and len(owner.heap) == 0


def test_deadlines_in_the_future_stay() -> None:
    owner = Owner()
    owner.schedule("a", 5.0)
    assert list(owner.heap.pop_due(4.9)) == []
    assert owner.heap.next_deadline() == 5.0


def test_a_deadline_killed_while_popping_is_not_yielded() -> None:
    owner = Owner()
    owner.schedule("a", 1.0)
    owner.schedule("b", 2.0)
    seen = []
    for _, obj in owner.heap.pop_due(5.0):
        seen.append(obj)
        owner.current.pop("b", None)  # handling "a" forgets "b"
    assert seen == ["a"]


@given(st.lists(st.tuples(st.integers(0, 20), st.floats(0, 100)), max_size=300))
def test_the_heap_stays_within_twice_the_live_deadlines_plus_64(
    steps: list[tuple[int, float]],
) -> None:
    owner = Owner()
    for obj, when in steps:
        if obj % 3 == 0 and obj in owner.current:
            owner.drop(obj)
        else:
            owner.schedule(obj, when)
        assert len(owner.heap) <= 2 * len(owner.current) + 64
    assert sorted(obj for _, obj in owner.heap.pop_due(101.0)) == sorted(owner.current)


def test_public_api_is_pinned() -> None:
    assert sorted(relayrecords.__all__) == [
        "CloseConnection", "ConnRecord", "ConnState", "Forward", "InviteRecord", "LogEvent",
        "MatchmakerCounters", "MatchmakerStats", "Output", "Send", "TimerHeap", "reason_label",
    ]  # fmt: skip
