"""Peer-to-peer packet types: the first byte of every packet two peers exchange (over a relay
circuit or a direct connection), so that drivers dispatch on one enum instead of literals.

Relay control messages are a separate namespace: they travel only on the control connection
and start with `version: u8, type: u8` (`meshcore.proto.wire`).
"""

from __future__ import annotations

import enum

__all__ = ["PacketType", "packet_type_of"]


class PacketType(enum.IntEnum):
    """The first byte of a peer-to-peer packet, and the module that owns its layout."""

    HANDSHAKE_INIT = 1
    """Handshake msg1, `HandshakeInit` (`handshake.py`)."""
    HANDSHAKE_RESPONSE = 2
    """Handshake msg2, `HandshakeResponse` (`handshake.py`)."""
    HANDSHAKE_CONFIRM = 3
    """Handshake msg3, `HandshakeConfirm` (`handshake.py`)."""
    FRAME = 4
    """A sealed transport frame: 16-byte header + AEAD ciphertext (`framing.py`)."""
    RESUME = 5
    """`Resume` (`resume.py`)."""
    RESUME_ACK = 6
    """`ResumeAck` (`resume.py`)."""


_BY_BYTE: dict[int, PacketType] = {int(t): t for t in PacketType}


def packet_type_of(data: bytes | bytearray | memoryview) -> PacketType | None:
    """The type of packet `data` claims to be by its first byte, or None (empty or unknown).

    Only a dispatch hint: the owning module's `decode_*_untrusted` still checks the rest.
    """
    if not data:
        return None
    return _BY_BYTE.get(data[0])
