"""The plaintext inside a sealed transport frame (docs/crypto-spec.md §3.6) and its canonical codec.

Layout: `inner_type u8 | pad_len u8 | body | pad_len zero bytes`; the body's layout depends
on the type (docs/wire-control.md). Padding hides exact sizes from the relay; the decoder
checks it is all zeros and that every length is exact.
"""

from __future__ import annotations

import enum
import struct
from typing import ClassVar, Final

import attrs

from meshcore.errors import DecodeError, MessageTooLarge
from meshcore.proto.codec import U8, U16, U32, U64, Bytes, Candidates, Layout, Reason, Rest
from meshcore.proto.constants import (
    MAX_INNER_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_REKEY_FRAGMENTS,
    PATH_CHALLENGE_BYTES,
    REKEY_FRAGMENT_BYTES,
)
from meshcore.proto.endpoint import Endpoint

__all__ = [
    "INNER_DATA_HEADER_BYTES",
    "Ack",
    "Close",
    "Data",
    "Endpoints",
    "InnerMessage",
    "InnerType",
    "Keepalive",
    "PathChallenge",
    "PathResponse",
    "RekeyFragment",
    "decode_inner_untrusted",
    "encode_data",
    "encode_inner",
]


class InnerType(enum.IntEnum):
    """The first plaintext byte of a transport frame (encrypted: the relay cannot see it)."""

    DATA = 1
    KEEPALIVE = 2
    ACK = 3
    PATH_CHALLENGE = 4
    PATH_RESPONSE = 5
    ENDPOINTS = 6
    REKEY_FRAGMENT = 7
    CLOSE = 8


_PATH_DATA: Final = Bytes(PATH_CHALLENGE_BYTES, secret=True)
_ENDPOINTS: Final = Candidates()
_REASON: Final = Reason()
_MESSAGE: Final = Rest(MAX_MESSAGE_BYTES)
_CHUNK: Final = Rest(REKEY_FRAGMENT_BYTES)


@attrs.frozen
class Data:
    """An application message with its sequence number and a piggybacked cumulative ack
    (`ack` = the next sequence number the sender expects to receive)."""

    TYPE: ClassVar = InnerType.DATA
    seq: int = attrs.field(**U64.spec)
    ack: int = attrs.field(**U64.spec)
    payload: bytes = attrs.field(**_MESSAGE.spec)


@attrs.frozen
class Keepalive:
    """Nothing but proof of life (heartbeats, passive keepalives)."""

    TYPE: ClassVar = InnerType.KEEPALIVE


@attrs.frozen
class Ack:
    """A cumulative ack on its own: the next sequence number the sender expects."""

    TYPE: ClassVar = InnerType.ACK
    ack: int = attrs.field(**U64.spec)


@attrs.frozen
class PathChallenge:
    """Validate a new path: the answer is a PathResponse with the same data on that path."""

    TYPE: ClassVar = InnerType.PATH_CHALLENGE
    data: bytes = attrs.field(**_PATH_DATA.spec)


@attrs.frozen
class PathResponse:
    """The answer to a PathChallenge, echoing its data."""

    TYPE: ClassVar = InnerType.PATH_RESPONSE
    data: bytes = attrs.field(**_PATH_DATA.spec)


@attrs.frozen
class Endpoints:
    """The sender's direct-connection candidates, hidden from the relay."""

    TYPE: ClassVar = InnerType.ENDPOINTS
    endpoints: tuple[Endpoint, ...] = attrs.field(**_ENDPOINTS.spec)


def _check_fragment(inst: RekeyFragment, _attr: object, count: int) -> None:
    if not 1 <= count <= MAX_REKEY_FRAGMENTS:
        raise ValueError(f"count={count} is outside 1..{MAX_REKEY_FRAGMENTS}")
    if inst.index >= count:
        raise ValueError(f"index={inst.index} is not below count={count}")


@attrs.frozen
class RekeyFragment:
    """One piece of a rekey handshake message travelling inside the current session (§3.8)."""

    TYPE: ClassVar = InnerType.REKEY_FRAGMENT
    handshake_id: int = attrs.field(**U32.spec)
    index: int = attrs.field(**U8.spec)
    count: int = attrs.field(**U8.spec_with(_check_fragment))
    chunk: bytes = attrs.field(**_CHUNK.spec)


@attrs.frozen
class Close:
    """The session ends; `code` is application-defined (u16), `reason` is for humans."""

    TYPE: ClassVar = InnerType.CLOSE
    code: int = attrs.field(**U16.spec)
    reason: str = attrs.field(**_REASON.spec)


InnerMessage = (
    Data | Keepalive | Ack | PathChallenge | PathResponse | Endpoints | RekeyFragment | Close
)
"""Any plaintext of a transport frame."""

_CLASSES: Final[tuple[type[InnerMessage], ...]] = (
    Data, Keepalive, Ack, PathChallenge, PathResponse, Endpoints, RekeyFragment, Close,
)  # fmt: skip
_LAYOUTS: Final[dict[type, tuple[InnerType, Layout]]] = {
    cls: (cls.TYPE, Layout(cls, noun="frame")) for cls in _CLASSES
}
_BY_TYPE: Final[dict[int, Layout]] = {cls.TYPE: _LAYOUTS[cls][1] for cls in _CLASSES}

_DATA_HEADER: Final = struct.Struct(">BBQQ")  # type=1 u8 | pad_len u8 | seq u64 | ack u64
INNER_DATA_HEADER_BYTES: Final = _DATA_HEADER.size
"""Plaintext bytes a Data message adds in front of its payload (before padding)."""
_DATA: Final = int(InnerType.DATA)
_ZEROS: Final = tuple(bytes(n) for n in range(256))
_new: Final = object.__new__
_set: Final = object.__setattr__


def _pad_len(unpadded: int, pad_to: int) -> int:
    """Zero bytes to append so the plaintext is a multiple of pad_to, without passing
    MAX_INNER_BYTES (the last multiple may not fit: then pad only up to the limit)."""
    if not 1 <= pad_to <= 256:
        raise ValueError(f"pad_to={pad_to} is outside 1..256 (pad_len is one byte)")
    pad = -unpadded % pad_to
    return min(pad, MAX_INNER_BYTES - unpadded)


def encode_inner(msg: InnerMessage, pad_to: int = 16) -> bytes:
    """Return the plaintext for `msg`, zero-padded to a multiple of `pad_to` (1: no padding).

    Raises ValueError if pad_to is outside 1..256 and TypeError for a non-inner message.
    """
    if type(msg) is Data:
        return encode_data(msg.seq, msg.ack, msg.payload, pad_to)
    try:
        msg_type, layout = _LAYOUTS[type(msg)]
    except KeyError:
        raise TypeError(f"not an inner message: {type(msg).__name__}") from None
    raw = layout.encode(msg)
    pad = _pad_len(2 + len(raw), pad_to)
    return b"".join((bytes((msg_type, pad)), raw, _ZEROS[pad]))


def encode_data(
    seq: int, ack: int, payload: bytes | bytearray | memoryview, pad_to: int = 16
) -> bytes:
    """Encode `Data(seq, ack, payload)` without building the object; copies payload once.

    Raises ValueError for a payload over MAX_MESSAGE_BYTES, seq/ack outside u64 or a bad pad_to.
    """
    size = len(payload)
    if size > MAX_MESSAGE_BYTES:
        raise ValueError(f"payload is {size} bytes, at most {MAX_MESSAGE_BYTES}")
    unpadded = INNER_DATA_HEADER_BYTES + size
    pad = _pad_len(unpadded, pad_to)
    try:
        head = _DATA_HEADER.pack(_DATA, pad, seq, ack)
    except struct.error:
        raise ValueError(f"seq={seq} or ack={ack} is outside u64") from None
    return b"".join((head, payload, _ZEROS[pad]))


def decode_inner_untrusted(data: bytes | bytearray | memoryview) -> InnerMessage:
    """Decode a frame's plaintext (already authenticated, but still checked as untrusted).

    Returns a message or raises DecodeError -- never anything else: unknown type, non-zero
    padding, a pad_len longer than the plaintext, truncated or trailing body bytes, oversize.
    Reads only inside `data`.
    """
    mv = memoryview(data)
    if mv.format != "B" or mv.ndim != 1 or not mv.c_contiguous:
        mv = memoryview(mv.tobytes())  # an unusual view: read a flat copy of its bytes
    size = len(mv)
    if size > MAX_INNER_BYTES:
        raise MessageTooLarge(f"plaintext of {size} bytes, at most {MAX_INNER_BYTES}")
    if size < 2:
        raise DecodeError(f"truncated frame plaintext: {size} bytes, the header alone is 2")
    pad = mv[1]
    end = size - pad
    if end < 2:
        raise DecodeError(f"pad_len {pad} is longer than the {size - 2}-byte remainder")
    if pad and mv[end:] != _ZEROS[pad]:
        raise DecodeError("padding is not all zero bytes")
    msg_type = mv[0]
    if msg_type == _DATA and end >= INNER_DATA_HEADER_BYTES:
        # The session's hot path: one struct read, one slice (the payload's only copy).
        if end - INNER_DATA_HEADER_BYTES > MAX_MESSAGE_BYTES:
            raise MessageTooLarge(
                f"Data payload of {end - INNER_DATA_HEADER_BYTES} bytes, "
                f"at most {MAX_MESSAGE_BYTES}"
            )
        _, _, seq, ack = _DATA_HEADER.unpack_from(mv)
        if type(data) is bytes:
            payload = data[INNER_DATA_HEADER_BYTES:end]
        else:
            payload = bytes(mv[INNER_DATA_HEADER_BYTES:end])
        msg: Data = _new(Data)  # fields checked above: skip the validators
        _set(msg, "seq", seq)
        _set(msg, "ack", ack)
        _set(msg, "payload", payload)
        return msg
    try:
        layout = _BY_TYPE[msg_type]
    except KeyError:
        raise DecodeError(f"unknown inner frame type {msg_type}") from None
    decoded: InnerMessage = layout.decode(mv[2:end])
    return decoded
