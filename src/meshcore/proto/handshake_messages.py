"""The three handshake messages (docs/crypto.md) and their codec, all integers little-endian.

`meshcore.proto.handshake` runs the machines that produce and check them and re-exports
everything here. Byte layouts::

    msg1  0 type=1 u8 | 1 version u8 | 2 reserved u16 | 4 sender_index u32
          8 e.x (32) | 40 e.kem (1184) | 1224 ct_R (1088) | 2312 {fp_I} (48)
          2360 mac1 (16) | 2376 mac2 (16)                                          = 2392
    msg2  0 type=2 u8 | 1 version u8 | 2 reserved u16 | 4 sender_index u32 | 8 receiver u32
          12 e.x (32) | 44 ct_e (1088) | 1132 ct_I (1088) | 2220 {} (16)
          2236 biscuit (160) | 2396 mac1 (16) | 2412 mac2 (16)                      = 2428
    msg3  0 type=3 u8 | 1 version u8 | 2 reserved u16 | 4 receiver u32 | 8 sender u32
          12 biscuit (160) | 172 {payload} (16 + n) | mac1 (16)                     = 204 + n

    biscuit = key_id (4) | nonce (24) | XChaCha20-Poly1305(ck | h | fp_I | t f64 |
              number u64 | responder index u32) (16-byte tag)                       = 160
"""

from __future__ import annotations

import struct
from typing import Final

import attrs

from meshcore.errors import DecodeError
from meshcore.proto.codec import U8, U16LE, U32LE, Bytes, Const, Layout, Rest
from meshcore.proto.constants import (
    AEAD_TAG_BYTES,
    MAC_BYTES,
    MAX_HANDSHAKE_BYTES,
    MLKEM768_CT_BYTES,
    MLKEM768_PK_BYTES,
    PEER_ID_BYTES,
    PROTOCOL_VERSION,
    X25519_KEY_BYTES,
)
from meshcore.proto.packet import PacketType
from meshcore.proto.symmetric import HASH_BYTES

__all__ = [
    "BISCUIT_BYTES",
    "BISCUIT_KEY_ID_BYTES",
    "BISCUIT_NONCE_BYTES",
    "BISCUIT_PLAINTEXT",
    "CONFIRM_HEADER_BYTES",
    "HANDSHAKE_CONFIRM_MIN_BYTES",
    "HANDSHAKE_INIT_BYTES",
    "HANDSHAKE_RESPONSE_BYTES",
    "INIT_MAC1_OFFSET",
    "MAX_CONFIRM_PAYLOAD_BYTES",
    "MSG_CONFIRM",
    "MSG_INIT",
    "MSG_RESPONSE",
    "RESPONSE_MAC1_OFFSET",
    "HandshakeConfirm",
    "HandshakeInit",
    "HandshakeResponse",
    "confirm_header",
    "decode_handshake_confirm_untrusted",
    "decode_handshake_init_untrusted",
    "decode_handshake_response_untrusted",
    "init_header",
    "response_header",
]

MSG_INIT: Final = PacketType.HANDSHAKE_INIT
MSG_RESPONSE: Final = PacketType.HANDSHAKE_RESPONSE
MSG_CONFIRM: Final = PacketType.HANDSHAKE_CONFIRM

BISCUIT_KEY_ID_BYTES: Final = 4
BISCUIT_NONCE_BYTES: Final = 24
BISCUIT_PLAINTEXT: Final = struct.Struct(f"<{HASH_BYTES}s{HASH_BYTES}s{PEER_ID_BYTES}sdQI")
"""What a biscuit seals: ck, h, fp_I, created at (f64), biscuit number (u64), R's index (u32)."""
BISCUIT_BYTES: Final = (
    BISCUIT_KEY_ID_BYTES + BISCUIT_NONCE_BYTES + BISCUIT_PLAINTEXT.size + AEAD_TAG_BYTES
)  # 160

_ENC_ID_BYTES: Final = PEER_ID_BYTES + AEAD_TAG_BYTES  # 48
_ZERO_MAC: Final = bytes(MAC_BYTES)

# The headers, which the machines also need alone (they are hashed into the transcript).
_INIT_HEADER: Final = struct.Struct("<BBHI")  # type, version, reserved, sender index
_HEADER23: Final = struct.Struct("<BBHII")  # type, version, reserved, two indices
CONFIRM_HEADER_BYTES: Final = _HEADER23.size
HANDSHAKE_CONFIRM_MIN_BYTES: Final = (
    CONFIRM_HEADER_BYTES + BISCUIT_BYTES + AEAD_TAG_BYTES + MAC_BYTES
)  # 204
MAX_CONFIRM_PAYLOAD_BYTES: Final = MAX_HANDSHAKE_BYTES - HANDSHAKE_CONFIRM_MIN_BYTES


def init_header(sender_index: int, *, version: int = PROTOCOL_VERSION, reserved: int = 0) -> bytes:
    """msg1's 8-byte header: type, version, reserved (u16), sender index (u32)."""
    return _INIT_HEADER.pack(MSG_INIT, version, reserved, sender_index)


def response_header(
    sender_index: int, receiver_index: int, *, version: int = PROTOCOL_VERSION, reserved: int = 0
) -> bytes:
    """msg2's 12-byte header: type, version, reserved, sender (R) and receiver (I) index."""
    return _HEADER23.pack(MSG_RESPONSE, version, reserved, sender_index, receiver_index)


def confirm_header(
    receiver_index: int, sender_index: int, *, version: int = PROTOCOL_VERSION, reserved: int = 0
) -> bytes:
    """msg3's 12-byte header: type, version, reserved, receiver (R) and sender (I) index."""
    return _HEADER23.pack(MSG_CONFIRM, version, reserved, receiver_index, sender_index)


_X25519: Final = Bytes(X25519_KEY_BYTES)
_KEM_PK: Final = Bytes(MLKEM768_PK_BYTES)
_KEM_CT: Final = Bytes(MLKEM768_CT_BYTES)
_ENC_ID: Final = Bytes(_ENC_ID_BYTES)
_TAG: Final = Bytes(AEAD_TAG_BYTES)
_BISCUIT: Final = Bytes(BISCUIT_BYTES)
_MAC: Final = Bytes(MAC_BYTES)
_PAYLOAD: Final = Rest(AEAD_TAG_BYTES + MAX_CONFIRM_PAYLOAD_BYTES, minimum=AEAD_TAG_BYTES)


@attrs.frozen
class HandshakeInit:
    """msg1, initiator to responder: ephemeral keys, encapsulation to R, encrypted identity."""

    sender_index: int = attrs.field(**U32LE.spec)
    ephemeral_x25519: bytes = attrs.field(**_X25519.spec)
    ephemeral_kem: bytes = attrs.field(**_KEM_PK.spec)
    static_ciphertext: bytes = attrs.field(**_KEM_CT.spec)
    encrypted_identity: bytes = attrs.field(**_ENC_ID.spec)
    mac1: bytes = attrs.field(**_MAC.spec)
    mac2: bytes = attrs.field(default=_ZERO_MAC, **_MAC.spec)
    reserved: int = attrs.field(default=0, **U16LE.spec)
    version: int = attrs.field(default=PROTOCOL_VERSION, **U8.spec)

    def header(self) -> bytes:
        """The 8-byte header: type, version, reserved (u16), sender index (u32 LE)."""
        return init_header(self.sender_index, version=self.version, reserved=self.reserved)

    def encode(self) -> bytes:
        """The 2392-byte wire form."""
        return _INIT.encode(self)


@attrs.frozen
class HandshakeResponse:
    """msg2, responder to initiator: ephemeral, two encapsulations, confirmation tag, biscuit."""

    sender_index: int = attrs.field(**U32LE.spec)
    receiver_index: int = attrs.field(**U32LE.spec)
    ephemeral_x25519: bytes = attrs.field(**_X25519.spec)
    ephemeral_ciphertext: bytes = attrs.field(**_KEM_CT.spec)
    static_ciphertext: bytes = attrs.field(**_KEM_CT.spec)
    confirmation: bytes = attrs.field(**_TAG.spec)
    biscuit: bytes = attrs.field(**_BISCUIT.spec)
    mac1: bytes = attrs.field(**_MAC.spec)
    mac2: bytes = attrs.field(default=_ZERO_MAC, **_MAC.spec)
    reserved: int = attrs.field(default=0, **U16LE.spec)
    version: int = attrs.field(default=PROTOCOL_VERSION, **U8.spec)

    def header(self) -> bytes:
        """The 12-byte header: type, version, reserved, sender (R) and receiver (I) index."""
        return response_header(
            self.sender_index, self.receiver_index, version=self.version, reserved=self.reserved
        )

    def encode(self) -> bytes:
        """The 2428-byte wire form."""
        return _RESPONSE.encode(self)


@attrs.frozen
class HandshakeConfirm:
    """msg3, initiator to responder: the biscuit back, and the encrypted (possibly empty) data."""

    receiver_index: int = attrs.field(**U32LE.spec)
    sender_index: int = attrs.field(**U32LE.spec)
    biscuit: bytes = attrs.field(**_BISCUIT.spec)
    encrypted_payload: bytes = attrs.field(**_PAYLOAD.spec)
    mac1: bytes = attrs.field(**_MAC.spec)
    reserved: int = attrs.field(default=0, **U16LE.spec)
    version: int = attrs.field(default=PROTOCOL_VERSION, **U8.spec)

    def header(self) -> bytes:
        """The 12-byte header: type, version, reserved, receiver (R) and sender (I) index."""
        return confirm_header(
            self.receiver_index, self.sender_index, version=self.version, reserved=self.reserved
        )

    def encode(self) -> bytes:
        """The wire form, 204 bytes plus the payload length."""
        return _CONFIRM.encode(self)


_INIT: Final = Layout(
    HandshakeInit,
    (
        Const("handshake message type", U8, MSG_INIT), "version", "reserved", "sender_index",
        "ephemeral_x25519", "ephemeral_kem", "static_ciphertext", "encrypted_identity",
        "mac1", "mac2",
    ),
)  # fmt: skip
_RESPONSE: Final = Layout(
    HandshakeResponse,
    (
        Const("handshake message type", U8, MSG_RESPONSE), "version", "reserved",
        "sender_index", "receiver_index", "ephemeral_x25519", "ephemeral_ciphertext",
        "static_ciphertext", "confirmation", "biscuit", "mac1", "mac2",
    ),
)  # fmt: skip
_CONFIRM: Final = Layout(
    HandshakeConfirm,
    (
        Const("handshake message type", U8, MSG_CONFIRM), "version", "reserved",
        "receiver_index", "sender_index", "biscuit", "encrypted_payload", "mac1",
    ),
)  # fmt: skip
HANDSHAKE_INIT_BYTES: Final = _INIT.fixed_size  # 2392
HANDSHAKE_RESPONSE_BYTES: Final = _RESPONSE.fixed_size  # 2428
INIT_MAC1_OFFSET: Final = _INIT.offset_of("mac1")
"""Where mac1 starts in msg1: it covers every byte before it."""
RESPONSE_MAC1_OFFSET: Final = _RESPONSE.offset_of("mac1")
"""Where mac1 starts in msg2 (msg3's mac1 is its last MAC_BYTES)."""


def _envelope(data: object, msg_type: int, min_len: int, max_len: int) -> memoryview:
    """Check what every handshake message starts with: length, type and version."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("a handshake message must be bytes")
    mv = memoryview(bytes(data))
    if not min_len <= len(mv) <= max_len:
        raise DecodeError(f"handshake message type {msg_type} has the wrong length {len(mv)}")
    if mv[0] != msg_type:
        raise DecodeError(f"expected handshake message type {msg_type}, got {mv[0]}")
    if mv[1] != PROTOCOL_VERSION:
        raise DecodeError(f"unsupported handshake version {mv[1]} (this is {PROTOCOL_VERSION})")
    return mv


def decode_handshake_init_untrusted(data: bytes | bytearray | memoryview) -> HandshakeInit:
    """Decode msg1; raises only DecodeError (wrong length, type or version)."""
    mv = _envelope(data, MSG_INIT, HANDSHAKE_INIT_BYTES, HANDSHAKE_INIT_BYTES)
    msg: HandshakeInit = _INIT.decode(mv)
    return msg


def decode_handshake_response_untrusted(
    data: bytes | bytearray | memoryview,
) -> HandshakeResponse:
    """Decode msg2; raises only DecodeError (wrong length, type or version)."""
    mv = _envelope(data, MSG_RESPONSE, HANDSHAKE_RESPONSE_BYTES, HANDSHAKE_RESPONSE_BYTES)
    msg: HandshakeResponse = _RESPONSE.decode(mv)
    return msg


def decode_handshake_confirm_untrusted(data: bytes | bytearray | memoryview) -> HandshakeConfirm:
    """Decode msg3; raises only DecodeError (wrong length, type or version)."""
    mv = _envelope(data, MSG_CONFIRM, HANDSHAKE_CONFIRM_MIN_BYTES, MAX_HANDSHAKE_BYTES)
    msg: HandshakeConfirm = _CONFIRM.decode(mv)
    return msg
