"""Peer-to-peer packets: one enum of type bytes, and one total decoder dispatching on it."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.errors import DecodeError
from meshcore.proto import framing, handshake, packet, resume
from meshcore.proto.framing import FrameHeader, SendKey
from meshcore.proto.handshake import (
    HANDSHAKE_CONFIRM_MIN_BYTES,
    HANDSHAKE_INIT_BYTES,
    HANDSHAKE_RESPONSE_BYTES,
    HandshakeConfirm,
    HandshakeInit,
    HandshakeResponse,
)
from meshcore.proto.packet import PacketType, SealedFrame, decode_packet_untrusted, packet_type_of
from meshcore.proto.resume import RESUME_ACK_BYTES, RESUME_BYTES, Resume, ResumeAck
from meshcore.testing.strategies import (
    frame_headers,
    handshake_messages,
    payloads,
    resume_acks,
    resumes,
)

SIZES = {
    PacketType.HANDSHAKE_INIT: HANDSHAKE_INIT_BYTES,
    PacketType.HANDSHAKE_RESPONSE: HANDSHAKE_RESPONSE_BYTES,
    PacketType.HANDSHAKE_CONFIRM: HANDSHAKE_CONFIRM_MIN_BYTES,
    PacketType.FRAME: framing.MIN_FRAME_BYTES,
    PacketType.RESUME: RESUME_BYTES,
    PacketType.RESUME_ACK: RESUME_ACK_BYTES,
    PacketType.DATAGRAM: framing.MIN_FRAME_BYTES,
    PacketType.RELAY_DATAGRAM: 17 + framing.MIN_FRAME_BYTES,
}


def test_the_owning_modules_use_the_same_type_bytes() -> None:
    assert handshake.MSG_INIT is PacketType.HANDSHAKE_INIT
    assert handshake.MSG_RESPONSE is PacketType.HANDSHAKE_RESPONSE
    assert handshake.MSG_CONFIRM is PacketType.HANDSHAKE_CONFIRM
    assert framing.FRAME_TYPE is PacketType.FRAME
    assert resume.RESUME_TYPE is PacketType.RESUME
    assert resume.RESUME_ACK_TYPE is PacketType.RESUME_ACK
    assert framing.DATAGRAM_TYPE is PacketType.DATAGRAM


def test_empty_and_unknown_packets_have_no_type() -> None:
    assert packet_type_of(b"") is None
    assert packet_type_of(b"\x00rest") is None
    assert packet_type_of(b"\x09") is None
    assert packet_type_of(b"\x07") is PacketType.DATAGRAM
    assert packet_type_of(b"\x04" + bytes(15)) is PacketType.FRAME


@given(st.binary(max_size=64))
def test_every_byte_string_has_a_known_type_or_none(data: bytes) -> None:
    kind = packet_type_of(data)
    assert kind is None or data[0] == int(kind)


# --- decode_packet_untrusted --------------------------------------------------------------


@given(handshake_messages())
def test_handshake_messages_decode_to_themselves(
    msg: HandshakeInit | HandshakeResponse | HandshakeConfirm,
) -> None:
    assert decode_packet_untrusted(msg.encode()) == msg


@given(st.one_of(resumes(), resume_acks()))
def test_resumes_and_their_acks_decode_to_themselves(msg: Resume | ResumeAck) -> None:
    assert decode_packet_untrusted(bytearray(msg.encode())) == msg


@given(frame_headers(), st.binary(min_size=16, max_size=200))
def test_a_frame_decodes_to_its_header_and_the_frame_itself(
    header: FrameHeader, body: bytes
) -> None:
    data = header.encode() + body
    decoded = decode_packet_untrusted(memoryview(data))
    assert decoded == SealedFrame(header, data)


@given(payloads(256))
def test_a_sealed_frame_keeps_its_bytes_for_the_receive_key(plaintext: bytes) -> None:
    data = SendKey(os.urandom(32), 9, 0.0).seal(plaintext, 0.0)
    decoded = decode_packet_untrusted(data)
    assert isinstance(decoded, SealedFrame)
    assert decoded.frame is data  # bytes in, the same bytes out: no copy
    assert (decoded.header.receiver_index, decoded.header.counter) == (9, 0)
    assert repr(decoded).endswith(f"frame=<{len(data)} bytes>)")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "empty packet"),
        (b"\x00" + bytes(100), "unknown packet type 0"),
        (b"\x09" + bytes(100), "unknown packet type 9"),
        (b"\x08" + bytes(20), "relay datagram of 21 bytes is too short"),
        (b"\x07" + bytes(20), "datagram of 21 bytes"),
        (b"\x07\x03" + bytes(40), "not a version-1 datagram"),
        (b"\xff", "unknown packet type 255"),
        (b"\x01\x01" + bytes(10), "wrong length"),
        (b"\x04" + bytes(20), "transport frame of 21 bytes"),
        (b"\x05" + bytes(87), "expected version 1, got 0"),
        (b"\x06\x01", "must be 76 bytes"),
    ],
)
def test_bad_packets_raise_decode_error_naming_the_problem(data: bytes, match: str) -> None:
    with pytest.raises(DecodeError, match=match):
        decode_packet_untrusted(data)


@st.composite
def near_packets(draw: st.DrawFn) -> bytes:
    """A known type byte and a length at or near that type's size, otherwise random."""
    kind = draw(st.sampled_from(PacketType))
    size = SIZES[kind] + draw(st.integers(-2, 2))
    body = draw(st.binary(min_size=max(size - 1, 0), max_size=max(size - 1, 0)))
    return bytes((kind,)) + draw(st.sampled_from([b"\x01", b"\x00", b""])) + body[1:]


@given(st.one_of(st.binary(max_size=300), near_packets()))
def test_every_byte_string_decodes_or_raises_decode_error(data: bytes) -> None:
    try:
        decoded = decode_packet_untrusted(data)
    except DecodeError:
        return
    if isinstance(decoded, SealedFrame):
        assert decoded.frame == data
    else:
        assert decoded.encode() == data  # what decodes is canonical


def test_public_api_is_pinned() -> None:
    assert sorted(packet.__all__) == [
        "PacketType",
        "SealedFrame",
        "decode_packet_untrusted",
        "packet_type_of",
    ]
