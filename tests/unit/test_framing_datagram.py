"""Sealed datagrams (docs/datagram.md): the frame's layout with type 7 and a kind, the same
key and counter sequence as frames, and a replay window of their own."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.errors import (
    AuthenticationError,
    DecodeError,
    ProtocolError,
    ReplayError,
    UnknownReceiverIndex,
)
from meshcore.proto.constants import OLD_KEY_RECEIVE_S, REPLAY_WINDOW_BITS
from meshcore.proto.framing import (
    DATAGRAM_DATA,
    DATAGRAM_PROBE,
    DATAGRAM_REPLY,
    DATAGRAM_TYPE,
    KeyRing,
    ReceiveKey,
    SendKey,
    decode_datagram_header_untrusted,
    peek_datagram_index,
)

KEY = bytes(range(32))
INDEX = 0x22222222


def pair() -> tuple[SendKey, ReceiveKey]:
    return SendKey(KEY, INDEX, 0.0), ReceiveKey(KEY, INDEX, 0.0)


@pytest.mark.parametrize("kind", [DATAGRAM_DATA, DATAGRAM_PROBE, DATAGRAM_REPLY])
def test_datagram_round_trip_keeps_its_kind(kind: int) -> None:
    send, receive = pair()
    sealed = send.seal_datagram(b"frame bytes", 0.0, kind)
    assert sealed[0] == DATAGRAM_TYPE and sealed[1] == kind
    assert len(sealed) == 16 + len(b"frame bytes") + 16
    assert receive.open_datagram(sealed, 0.0) == (kind, b"frame bytes")
    header = decode_datagram_header_untrusted(sealed)
    assert (header.receiver_index, header.counter, header.flags) == (INDEX, 0, kind)
    assert peek_datagram_index(sealed) == INDEX


def test_frames_and_datagrams_share_one_counter_so_no_nonce_repeats() -> None:
    send, receive = pair()
    frame = send.seal(b"a", 0.0)
    datagram = send.seal_datagram(b"b", 0.0)
    assert decode_datagram_header_untrusted(datagram).counter == 1
    assert send.counter == 2
    assert receive.open(frame, 0.0) == b"a"
    assert receive.open_datagram(datagram, 0.0) == (DATAGRAM_DATA, b"b")


def test_a_frame_is_not_a_datagram_and_a_datagram_is_not_a_frame() -> None:
    send, receive = pair()
    frame = send.seal(b"a", 0.0)
    datagram = send.seal_datagram(b"b", 0.0)
    with pytest.raises(DecodeError):
        receive.open_datagram(frame, 0.0)
    with pytest.raises(DecodeError):
        receive.open(datagram, 0.0)
    # the type byte is associated data: rewriting it breaks the tag, nothing is accepted
    relabelled = bytes([4, 0]) + datagram[2:]
    with pytest.raises(AuthenticationError):
        receive.open(relabelled, 0.0)
    rekind = datagram[:1] + bytes([DATAGRAM_REPLY]) + datagram[2:]
    with pytest.raises(AuthenticationError):
        receive.open_datagram(rekind, 0.0)
    assert receive.open_datagram(datagram, 0.0) == (DATAGRAM_DATA, b"b")


def test_datagram_replays_are_refused_by_their_own_window() -> None:
    send, receive = pair()
    datagram = send.seal_datagram(b"x", 0.0)
    assert receive.open_datagram(datagram, 0.0)[1] == b"x"
    with pytest.raises(ReplayError, match="datagram counter 0"):
        receive.open_datagram(datagram, 0.0)


def test_many_datagrams_do_not_push_a_late_frame_out_of_the_frame_window() -> None:
    """A frame still in a TCP queue while thousands of datagrams overtake it by UDP."""
    send, receive = pair()
    late = send.seal(b"reliable", 0.0)
    for _ in range(REPLAY_WINDOW_BITS * 2):
        receive.open_datagram(send.seal_datagram(b"", 0.0), 0.0)
    assert receive.open(late, 0.0) == b"reliable"


def test_reordered_datagrams_are_each_accepted_once() -> None:
    send, receive = pair()
    sealed = [send.seal_datagram(bytes([i]), 0.0) for i in range(5)]
    for i in (3, 0, 4, 1, 2):
        assert receive.open_datagram(sealed[i], 0.0) == (DATAGRAM_DATA, bytes([i]))


def test_unknown_kind_is_refused_on_both_sides() -> None:
    send, _ = pair()
    with pytest.raises(ValueError, match="datagram kind"):
        send.seal_datagram(b"", 0.0, 3)
    with pytest.raises(DecodeError, match="not a version-1 datagram"):
        decode_datagram_header_untrusted(bytes([7, 3]) + bytes(30))


def test_keyring_opens_datagrams_under_the_current_and_the_previous_key() -> None:
    a, b = KeyRing(), KeyRing()
    a.install(SendKey(KEY, 2001, 0.0), ReceiveKey(bytes(32), 1001, 0.0), 0.0)
    b.install(SendKey(bytes(32), 1001, 0.0), ReceiveKey(KEY, 2001, 0.0), 0.0)
    in_flight = a.seal_datagram(b"old", 0.0, DATAGRAM_PROBE)
    key2 = bytes([9]) * 32
    a.install(SendKey(key2, 2002, 10.0), ReceiveKey(bytes(32), 1002, 10.0), 10.0)
    b.install(SendKey(bytes(32), 1002, 10.0), ReceiveKey(key2, 2002, 10.0), 10.0)
    assert b.open_datagram(a.seal_datagram(b"new", 10.0), 10.0) == (DATAGRAM_DATA, b"new")
    assert b.open_datagram(in_flight, 10.0) == (DATAGRAM_PROBE, b"old")
    late = a.seal_datagram(b"x", 10.0)
    stranger = SendKey(KEY, 424242, 0.0).seal_datagram(b"", 0.0)
    with pytest.raises(UnknownReceiverIndex):
        b.open_datagram(stranger, 10.0 + OLD_KEY_RECEIVE_S)
    assert b.open_datagram(late, 10.0 + OLD_KEY_RECEIVE_S)[1] == b"x"


@given(st.binary(max_size=200))
def test_every_byte_string_opens_or_raises_protocol_error(data: bytes) -> None:
    _, receive = pair()
    try:
        receive.open_datagram(data, 0.0)
    except ProtocolError:
        return
    raise AssertionError("random bytes authenticated")  # pragma: no cover


@given(st.binary(max_size=1500), st.sampled_from([DATAGRAM_DATA, DATAGRAM_PROBE, DATAGRAM_REPLY]))
def test_any_payload_round_trips(payload: bytes, kind: int) -> None:
    send, receive = pair()
    assert receive.open_datagram(send.seal_datagram(payload, 0.0, kind), 0.0) == (kind, payload)
