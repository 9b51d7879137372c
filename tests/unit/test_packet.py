"""Peer-to-peer packet types: one enum, and the owners' type bytes agree with it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto import framing, handshake, resume
from meshcore.proto.packet import PacketType, packet_type_of


def test_the_owning_modules_use_the_same_type_bytes() -> None:
    assert handshake.MSG_INIT == PacketType.HANDSHAKE_INIT
    assert handshake.MSG_RESPONSE == PacketType.HANDSHAKE_RESPONSE
    assert handshake.MSG_CONFIRM == PacketType.HANDSHAKE_CONFIRM
    assert framing.FRAME_TYPE == PacketType.FRAME
    assert resume.RESUME_TYPE == PacketType.RESUME
    assert resume.RESUME_ACK_TYPE == PacketType.RESUME_ACK


def test_empty_and_unknown_packets_have_no_type() -> None:
    assert packet_type_of(b"") is None
    assert packet_type_of(b"\x00rest") is None
    assert packet_type_of(b"\x07") is None
    assert packet_type_of(b"\x04" + bytes(15)) is PacketType.FRAME


@given(st.binary(max_size=64))
def test_every_byte_string_has_a_known_type_or_none(data: bytes) -> None:
    kind = packet_type_of(data)
    assert kind is None or data[0] == int(kind)
