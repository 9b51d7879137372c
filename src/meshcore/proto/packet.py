"""Peer-to-peer packet types: the first byte of every packet two peers exchange (over a relay
circuit or a direct connection), and one total decoder that dispatches on it.

Relay control messages are a separate namespace: they travel only on the control connection
and start with `version: u8, type: u8` (`meshcore.proto.wire`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs

from meshcore.errors import DecodeError

if TYPE_CHECKING:
    from meshcore.proto.framing import FrameHeader
    from meshcore.proto.handshake_messages import (
        HandshakeConfirm,
        HandshakeInit,
        HandshakeResponse,
    )
    from meshcore.proto.relayudp import RelayDatagram
    from meshcore.proto.resume import Resume, ResumeAck

__all__ = ["PacketType", "SealedFrame", "decode_packet_untrusted", "packet_type_of"]


class PacketType(enum.IntEnum):
    """The first byte of a peer-to-peer packet, and the module that owns its layout."""

    HANDSHAKE_INIT = 1
    """Handshake msg1, `HandshakeInit` (`handshake_messages.py`)."""
    HANDSHAKE_RESPONSE = 2
    """Handshake msg2, `HandshakeResponse` (`handshake_messages.py`)."""
    HANDSHAKE_CONFIRM = 3
    """Handshake msg3, `HandshakeConfirm` (`handshake_messages.py`)."""
    FRAME = 4
    """A sealed transport frame: 16-byte header + AEAD ciphertext (`framing.py`)."""
    RESUME = 5
    """`Resume` (`resume.py`)."""
    RESUME_ACK = 6
    """`ResumeAck` (`resume.py`)."""
    DATAGRAM = 7
    """A sealed datagram of the session's unreliable channel: a transport frame's layout
    with its own replay window (`framing.py`, docs/datagram.md)."""
    RELAY_DATAGRAM = 8
    """A sealed datagram sent by UDP through a relay: the circuit side's token in front of a
    `DATAGRAM`, for the relay only (`relayudp.py`); the peer gets the datagram alone."""


_BY_BYTE: Final[dict[int, PacketType]] = {int(t): t for t in PacketType}


def packet_type_of(data: bytes | bytearray | memoryview) -> PacketType | None:
    """The type of packet `data` claims to be by its first byte, or None (empty or unknown).

    Only a dispatch hint: the owning module's `decode_*_untrusted` still checks the rest.
    """
    if not data:
        return None
    return _BY_BYTE.get(data[0])


@attrs.frozen
class SealedFrame:
    """A transport frame or a datagram (`header.type`) as it arrived: its checked header and
    the whole packet, still sealed (open it with the receive key its `header.receiver_index`
    names)."""

    header: FrameHeader
    frame: bytes = attrs.field(repr=lambda frame: f"<{len(frame)} bytes>")


if TYPE_CHECKING:
    _Packet: TypeAlias = (
        HandshakeInit
        | HandshakeResponse
        | HandshakeConfirm
        | SealedFrame
        | Resume
        | ResumeAck
        | RelayDatagram
    )


def decode_packet_untrusted(data: bytes | bytearray | memoryview) -> _Packet:
    """Decode one peer-to-peer packet by its first byte: a handshake message, a `SealedFrame`
    (header checked, nothing decrypted), a `Resume`, a `ResumeAck` or a `RelayDatagram`.

    Raises DecodeError, and nothing else, for an empty packet, an unknown type byte, or what
    the owning module's decoder refuses.
    """
    if isinstance(data, memoryview) and (data.format != "B" or data.ndim != 1):
        data = data.tobytes()  # an unusual view: read a flat copy of its bytes
    if not data:
        raise DecodeError("empty packet: there is no type byte")
    decode = (_DECODERS or _load_decoders()).get(data[0])
    if decode is None:
        raise DecodeError(f"unknown packet type {data[0]} (expected 1..{len(PacketType)})")
    packet: _Packet = decode(data)
    return packet


_DECODERS: Final[dict[int, Callable[[Any], Any]]] = {}


def _load_decoders() -> dict[int, Callable[[Any], Any]]:
    # Imported on first use, not at the top: these modules take their type bytes from here.
    from meshcore.proto import framing, handshake_messages, relayudp, resume

    def sealed_frame(data: bytes | bytearray | memoryview) -> SealedFrame:
        header = framing.decode_frame_header_untrusted(data)
        return SealedFrame(header, data if type(data) is bytes else bytes(data))

    def sealed_datagram(data: bytes | bytearray | memoryview) -> SealedFrame:
        header = framing.decode_datagram_header_untrusted(data)
        return SealedFrame(header, data if type(data) is bytes else bytes(data))

    _DECODERS.update(
        {
            PacketType.HANDSHAKE_INIT: handshake_messages.decode_handshake_init_untrusted,
            PacketType.HANDSHAKE_RESPONSE: handshake_messages.decode_handshake_response_untrusted,
            PacketType.HANDSHAKE_CONFIRM: handshake_messages.decode_handshake_confirm_untrusted,
            PacketType.FRAME: sealed_frame,
            PacketType.RESUME: resume.decode_resume_untrusted,
            PacketType.RESUME_ACK: resume.decode_resume_ack_untrusted,
            PacketType.DATAGRAM: sealed_datagram,
            PacketType.RELAY_DATAGRAM: relayudp.decode_relay_datagram_untrusted,
        }
    )
    return _DECODERS
