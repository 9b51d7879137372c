"""The receiving half of a session core: order, reorder buffer, the peer's Eof, acks owed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto.sessionrecv import Arrival, Inbound


def test_in_order_messages_are_delivered_at_once() -> None:
    inbound = Inbound(reorder_frames=8)
    got: list[bytes | None] = []
    assert inbound.accept(0, b"a", got.append) is Arrival.DELIVERED
    assert inbound.accept(1, b"b", got.append) is Arrival.DELIVERED
    assert got == [b"a", b"b"] and inbound.next_seq == 2


def test_a_gap_is_buffered_and_filled_in_order() -> None:
    inbound = Inbound(reorder_frames=8)
    got: list[bytes | None] = []
    assert inbound.accept(2, b"c", got.append) is Arrival.EARLY
    assert inbound.accept(2, b"c", got.append) is Arrival.REPEAT
    assert inbound.accept(1, b"b", got.append) is Arrival.EARLY
    assert got == []
    assert inbound.accept(0, b"a", got.append) is Arrival.DELIVERED
    assert got == [b"a", b"b", b"c"] and not inbound.buffered
    assert inbound.accept(1, b"b", got.append) is Arrival.OLD


def test_beyond_the_reorder_buffer_is_dropped() -> None:
    inbound = Inbound(reorder_frames=4)
    assert inbound.accept(4, b"x", lambda _: None) is Arrival.BEYOND
    assert not inbound.buffered


def test_the_eof_must_follow_everything_the_peer_sent() -> None:
    inbound = Inbound(reorder_frames=8)
    inbound.accept(0, b"a", lambda _: None)
    inbound.accept(3, b"d", lambda _: None)
    assert inbound.end_at(0) is not None  # before a message it delivered
    assert inbound.end_at(2) is not None  # before a message it buffered
    assert inbound.end_at(4) is None
    assert inbound.end_at(4) is None  # the same Eof again (a retransmission)
    assert inbound.end_at(5) is not None  # a second, different one


def test_the_eof_is_delivered_in_order() -> None:
    inbound = Inbound(reorder_frames=8)
    got: list[bytes | None] = []
    assert inbound.end_at(1) is None
    assert inbound.accept(1, None, got.append) is Arrival.EARLY
    assert not inbound.eof_delivered
    inbound.accept(0, b"a", got.append)
    assert got == [b"a", None] and inbound.eof_delivered


def test_acks_owed_and_withheld() -> None:
    inbound = Inbound(reorder_frames=8)
    assert not inbound.ack_owed and inbound.ack_due_at(0.1) is None
    inbound.accept(0, b"a", lambda _: None)
    inbound.owe(5.0, 1)
    assert inbound.ack_owed and inbound.ack_due_at(0.1) == 5.1
    assert inbound.ack == 1
    inbound.held = True
    assert not inbound.ack_owed and inbound.ack_due_at(0.1) is None
    assert inbound.ack == 0  # withheld: the last ack sent
    inbound.held = False
    inbound.mark_acked()
    assert not inbound.ack_owed and inbound.ack_sent == 1
    assert (inbound.owed_frames, inbound.owed_bytes) == (0, 0)


@given(st.permutations(range(12)))
def test_any_order_within_the_buffer_delivers_each_message_once_in_order(
    order: list[int],
) -> None:
    inbound = Inbound(reorder_frames=12)
    got: list[bytes | None] = []
    for seq in order:
        assert inbound.accept(seq, bytes([seq]), got.append) is not Arrival.BEYOND
    assert got == [bytes([seq]) for seq in range(12)]
    assert inbound.next_seq == 12 and not inbound.buffered
