"""Transport frames: seal and open with ChaCha20-Poly1305, counters, key lifetimes, key epochs.

docs/crypto-spec.md §3.5-3.8. Byte layout of a frame (all integers little-endian)::

     0  u8   type = 4 (transport frame)   ┐
     1  u8   flags (0)                    │ 16-byte header = AEAD associated data
     2  u16  reserved (0)                 │
     4  u32  receiver_index               │ chosen by the receiver of the frame
     8  u64  counter                      ┘ nonce = 0^32 || LE64(counter)
    16  ciphertext of the plaintext, then the 16-byte Poly1305 tag

A datagram of the session's unreliable channel (docs/datagram.md) has the same layout with
type 7 and its kind (data, probe, probe reply) in the flags byte. It is sealed under the same
key and counter sequence as the frames (so no nonce repeats), but checked against a replay
window of its own: datagrams may arrive out of order with the frames, and neither channel's
counters can push the other's out of its window. The type and flags are associated data, so
a frame cannot be passed off as a datagram or the other way round.

The AEAD is `cryptography`'s ChaCha20Poly1305 (OpenSSL): the same RFC 8439 bytes as libsodium's,
about three times faster from Python (docs/design.md §4). This module is on the per-frame hot path:
one AEAD object per key, precompiled structs, no copies beyond the one that prepends the header.
"""

from __future__ import annotations

import struct
from typing import Final

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshcore.errors import (
    AuthenticationError,
    DecodeError,
    FrameTooLarge,
    KeyExpired,
    ReplayError,
    UnknownReceiverIndex,
)
from meshcore.proto.constants import (
    AEAD_FORGERY_LIMIT,
    AEAD_TAG_BYTES,
    FRAME_HEADER_BYTES,
    MAX_FRAME_BYTES,
    OLD_KEY_RECEIVE_S,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_S,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_S,
)
from meshcore.proto.packet import PacketType
from meshcore.proto.replay import ReplayWindow

__all__ = [
    "DATAGRAM_DATA",
    "DATAGRAM_KINDS",
    "DATAGRAM_PROBE",
    "DATAGRAM_REPLY",
    "DATAGRAM_TYPE",
    "FRAME_TYPE",
    "MAX_PLAINTEXT_BYTES",
    "MIN_FRAME_BYTES",
    "FrameHeader",
    "KeyRing",
    "ReceiveKey",
    "SendKey",
    "decode_datagram_header_untrusted",
    "decode_frame_header_untrusted",
    "peek_datagram_index",
    "peek_receiver_index",
]

FRAME_TYPE: Final = PacketType.FRAME
"""First byte of every transport frame (docs/architecture.md, peer-to-peer packet types)."""

DATAGRAM_TYPE: Final = PacketType.DATAGRAM
"""First byte of every sealed datagram."""
DATAGRAM_DATA: Final = 0
"""Datagram kind (flags byte): a payload for the session's datagram receiver."""
DATAGRAM_PROBE: Final = 1
"""Datagram kind: a path probe; the receiver answers with DATAGRAM_REPLY to its source."""
DATAGRAM_REPLY: Final = 2
"""Datagram kind: the answer to a probe, echoing its payload."""
DATAGRAM_KINDS: Final = (DATAGRAM_DATA, DATAGRAM_PROBE, DATAGRAM_REPLY)

MIN_FRAME_BYTES: Final = FRAME_HEADER_BYTES + AEAD_TAG_BYTES
"""An empty plaintext seals to 32 bytes."""

MAX_PLAINTEXT_BYTES: Final = MAX_FRAME_BYTES - MIN_FRAME_BYTES
"""Largest plaintext one frame carries."""

KEY_BYTES: Final = 32
_MAX_INDEX: Final = 0xFFFFFFFF

# The first header word packs type | flags << 8 | reserved << 16; in version 1 it is exactly 4.
_HEADER: Final = struct.Struct("<IIQ")
_NONCE: Final = struct.Struct("<4xQ")
_pack_header: Final = _HEADER.pack
_unpack_header: Final = _HEADER.unpack_from
_pack_nonce: Final = _NONCE.pack
_FRAME_WORD0: Final = int(FRAME_TYPE)
_DATAGRAM_WORD0: Final = int(DATAGRAM_TYPE)
_DATAGRAM_DATA_WORD0: Final = _DATAGRAM_WORD0 | DATAGRAM_DATA << 8
_SLICE_COPY_LIMIT: Final = 4096
"""Below this size, copying slices of a bytes frame is cheaper than making a memoryview."""


@attrs.frozen
class FrameHeader:
    """The 16 header bytes of a transport frame, all of them authenticated as associated data."""

    receiver_index: int
    counter: int
    type: int = FRAME_TYPE
    flags: int = 0
    reserved: int = 0

    def encode(self) -> bytes:
        """The canonical 16 bytes."""
        word0 = self.type | self.flags << 8 | self.reserved << 16
        return _HEADER.pack(word0, self.receiver_index, self.counter)


def decode_frame_header_untrusted(frame: bytes | bytearray | memoryview) -> FrameHeader:
    """Parse and check the header of a frame from the network.

    Raises DecodeError if the frame is shorter than header plus tag, longer than
    MAX_FRAME_BYTES, or its type, flags or reserved bytes are not those of version 1.
    """
    size = len(frame)
    if size < MIN_FRAME_BYTES or size > MAX_FRAME_BYTES:
        raise DecodeError(
            f"transport frame of {size} bytes is outside {MIN_FRAME_BYTES}..{MAX_FRAME_BYTES}"
        )
    word0, receiver_index, counter = _HEADER.unpack_from(frame)
    if word0 != _FRAME_WORD0:
        raise DecodeError(
            f"not a version-1 transport frame: type/flags/reserved word is {word0:#010x}, "
            f"expected {_FRAME_WORD0:#010x}"
        )
    return FrameHeader(receiver_index=receiver_index, counter=counter)


def peek_receiver_index(frame: bytes | bytearray | memoryview) -> int:
    """The receiver index of a frame, to route it to its session before decrypting.

    Nothing is authenticated yet: use it only to pick a key. Raises DecodeError like
    `decode_frame_header_untrusted`.
    """
    size = len(frame)
    if size < MIN_FRAME_BYTES or size > MAX_FRAME_BYTES:
        raise DecodeError(
            f"transport frame of {size} bytes is outside {MIN_FRAME_BYTES}..{MAX_FRAME_BYTES}"
        )
    word0, receiver_index, _ = _unpack_header(frame)
    if word0 != _FRAME_WORD0:
        raise DecodeError(
            f"not a version-1 transport frame: type/flags/reserved word is {word0:#010x}"
        )
    return int(receiver_index)


def decode_datagram_header_untrusted(data: bytes | bytearray | memoryview) -> FrameHeader:
    """Parse and check the header of a sealed datagram from the network.

    Raises DecodeError if it is shorter than header plus tag, longer than MAX_FRAME_BYTES,
    or its type, kind or reserved bytes are not those of version 1.
    """
    size = len(data)
    if size < MIN_FRAME_BYTES or size > MAX_FRAME_BYTES:
        raise DecodeError(
            f"datagram of {size} bytes is outside {MIN_FRAME_BYTES}..{MAX_FRAME_BYTES}"
        )
    word0, receiver_index, counter = _unpack_header(data)
    kind = word0 >> 8
    if word0 & 0xFF != _DATAGRAM_WORD0 or kind not in DATAGRAM_KINDS:
        raise DecodeError(
            f"not a version-1 datagram: type/kind/reserved word is {word0:#010x}, expected "
            f"type {_DATAGRAM_WORD0} and kind 0..{len(DATAGRAM_KINDS) - 1}"
        )
    return FrameHeader(
        receiver_index=receiver_index, counter=counter, type=_DATAGRAM_WORD0, flags=kind
    )


def peek_datagram_index(data: bytes | bytearray | memoryview) -> int:
    """The receiver index of a sealed datagram, to route it to its session before
    decrypting (nothing is authenticated yet). Raises DecodeError like
    `decode_datagram_header_untrusted`."""
    size = len(data)
    if MIN_FRAME_BYTES <= size <= MAX_FRAME_BYTES:
        word0, receiver_index, _ = _unpack_header(data)
        if word0 & 0xFF == _DATAGRAM_WORD0 and word0 >> 8 in DATAGRAM_KINDS:
            return int(receiver_index)
    return decode_datagram_header_untrusted(data).receiver_index  # raises, naming why


def _check_key(key: bytes, index: int, what: str) -> None:
    if len(key) != KEY_BYTES:
        raise ValueError(f"a frame key is {KEY_BYTES} bytes, got {len(key)}")
    if not 0 <= index <= _MAX_INDEX:
        raise ValueError(f"{what} must be a u32, got {index}")


class SendKey:
    """One direction's sending key: numbers, seals and expires frames.

    The counter starts at 0 and only grows; a key is never used at or after
    REJECT_AFTER_MESSAGES frames or REJECT_AFTER_S seconds (docs/crypto-spec.md §3.5, §3.8).
    """

    __slots__ = ("_aead", "_counter", "_created_at", "_reject_at", "_rekey_at", "_remote_index")

    def __init__(self, key: bytes, remote_index: int, created_at: float) -> None:
        """`key`: 32 bytes; `remote_index`: the receiver index the peer chose for this key."""
        _check_key(key, remote_index, "remote_index")
        self._aead = ChaCha20Poly1305(key)
        self._remote_index = remote_index
        self._created_at = created_at
        self._rekey_at = created_at + REKEY_AFTER_S
        self._reject_at = created_at + REJECT_AFTER_S
        self._counter = 0

    @property
    def counter(self) -> int:
        """The counter the next sealed frame gets (= number of frames sealed so far)."""
        return self._counter

    @property
    def remote_index(self) -> int:
        return self._remote_index

    @property
    def created_at(self) -> float:
        return self._created_at

    def needs_rekey(self, now: float) -> bool:
        """Whether a new handshake is due (REKEY_AFTER_S or REKEY_AFTER_MESSAGES reached)."""
        return now >= self._rekey_at or self._counter >= REKEY_AFTER_MESSAGES

    def expired(self, now: float) -> bool:
        """Whether `seal` would refuse (REJECT_AFTER_S or REJECT_AFTER_MESSAGES reached)."""
        return now >= self._reject_at or self._counter >= REJECT_AFTER_MESSAGES

    def seal(
        self, plaintext: bytes | bytearray | memoryview, now: float, word0: int = _FRAME_WORD0
    ) -> bytes:
        """Encrypt `plaintext` into one transport frame under the next counter (`word0`, the
        header's type word, is for `seal_datagram`).

        Raises KeyExpired when the key is too old or used up (start a new handshake) and
        FrameTooLarge when the plaintext exceeds MAX_PLAINTEXT_BYTES.
        """
        counter = self._counter
        if now >= self._reject_at or counter >= REJECT_AFTER_MESSAGES:
            raise KeyExpired(
                f"send key is past its lifetime ({REJECT_AFTER_S:.0f} s or "
                f"{REJECT_AFTER_MESSAGES} frames); complete a new handshake before sending"
            )
        if len(plaintext) > MAX_PLAINTEXT_BYTES:
            raise FrameTooLarge(
                f"plaintext of {len(plaintext)} bytes exceeds the {MAX_PLAINTEXT_BYTES}-byte "
                "frame limit; split the message"
            )
        # Advance before encrypting: a counter is spent even if encryption fails.
        self._counter = counter + 1
        header = _pack_header(word0, self._remote_index, counter)
        return header + self._aead.encrypt(_pack_nonce(counter), plaintext, header)

    def seal_datagram(
        self, plaintext: bytes | bytearray | memoryview, now: float, kind: int = DATAGRAM_DATA
    ) -> bytes:
        """Encrypt `plaintext` into one sealed datagram of `kind` under the next counter
        (the same sequence as `seal`'s frames). Raises like `seal`."""
        if kind not in DATAGRAM_KINDS:
            raise ValueError(f"datagram kind must be one of {DATAGRAM_KINDS}, got {kind}")
        return self.seal(plaintext, now, _DATAGRAM_WORD0 | kind << 8)

    def __repr__(self) -> str:
        return (
            f"SendKey(remote_index={self._remote_index}, counter={self._counter}, "
            f"created_at={self._created_at})"
        )


class ReceiveKey:
    """One direction's receiving key with its replay window and forgery budget.

    A frame that fails authentication changes nothing but the failure count; the window moves
    only after a frame authenticates (docs/crypto-spec.md §3.7, pitfalls 2 and 8).
    """

    __slots__ = (
        "_aead",
        "_created_at",
        "_datagram_window",
        "_failures",
        "_local_index",
        "_reject_at",
        "_window",
    )

    def __init__(self, key: bytes, local_index: int, created_at: float) -> None:
        """`key`: 32 bytes; `local_index`: the receiver index we chose, carried in each frame."""
        _check_key(key, local_index, "local_index")
        self._aead = ChaCha20Poly1305(key)
        self._local_index = local_index
        self._created_at = created_at
        self._reject_at = created_at + REJECT_AFTER_S
        self._window = ReplayWindow()
        self._datagram_window = ReplayWindow()
        self._failures = 0

    @property
    def local_index(self) -> int:
        return self._local_index

    @property
    def created_at(self) -> float:
        return self._created_at

    @property
    def failures(self) -> int:
        """Frames that failed authentication under this key so far."""
        return self._failures

    @property
    def forgery_limit_reached(self) -> bool:
        """True once AEAD_FORGERY_LIMIT frames failed: the key is retired, re-handshake."""
        return self._failures >= AEAD_FORGERY_LIMIT

    @property
    def highest_counter(self) -> int:
        """The highest counter accepted so far, or -1."""
        return self._window.highest

    def expired(self, now: float) -> bool:
        """Whether `open` refuses every frame (too old, or forgery budget spent)."""
        return now >= self._reject_at

    def open(self, frame: bytes | bytearray | memoryview, now: float) -> bytes:
        """Authenticate and decrypt one transport frame; return its plaintext.

        Raises DecodeError for a short, oversized or garbled header, UnknownReceiverIndex when
        the frame is for another key, KeyExpired when this key is too old or its forgery budget
        is spent, AuthenticationError for a bad tag (nothing changes, so the genuine frame is
        still accepted later) and ReplayError for a duplicate or too old counter.
        """
        size = len(frame)
        if size < MIN_FRAME_BYTES or size > MAX_FRAME_BYTES:
            raise DecodeError(
                f"transport frame of {size} bytes is outside {MIN_FRAME_BYTES}..{MAX_FRAME_BYTES}"
            )
        word0, receiver_index, counter = _unpack_header(frame)
        if word0 != _FRAME_WORD0:
            raise DecodeError(
                f"not a version-1 transport frame: type/flags/reserved word is {word0:#010x}"
            )
        return self._open(frame, now, receiver_index, counter, self._window, "frame")

    def open_datagram(self, data: bytes | bytearray | memoryview, now: float) -> tuple[int, bytes]:
        """Authenticate and decrypt one sealed datagram; return its kind and plaintext.

        Raises like `open` (DecodeError for a header that is not a datagram's); a replay is
        checked against the datagrams' own window.
        """
        size = len(data)
        if size < MIN_FRAME_BYTES or size > MAX_FRAME_BYTES:
            decode_datagram_header_untrusted(data)  # raises, naming why
        word0, receiver_index, counter = _unpack_header(data)
        kind = word0 >> 8
        if word0 & 0xFF != _DATAGRAM_WORD0 or kind not in DATAGRAM_KINDS:
            decode_datagram_header_untrusted(data)  # raises, naming why
        plaintext = self._open(
            data, now, receiver_index, counter, self._datagram_window, "datagram"
        )
        return kind, plaintext

    def _open(
        self,
        frame: bytes | bytearray | memoryview,
        now: float,
        receiver_index: int,
        counter: int,
        window: ReplayWindow,
        what: str,
    ) -> bytes:
        if receiver_index != self._local_index:
            raise UnknownReceiverIndex(
                f"{what} is for receiver index {receiver_index}, this key is "
                f"{self._local_index}; route it by its receiver index",
                receiver_index=receiver_index,
            )
        if now >= self._reject_at:
            raise KeyExpired(
                f"receive key is past its lifetime or forgery budget; {what} dropped, "
                "complete a new handshake"
            )
        if len(frame) > _SLICE_COPY_LIMIT:
            frame = memoryview(frame)  # slicing large bytes would copy them; a view does not
        try:
            plaintext = self._aead.decrypt(
                _pack_nonce(counter), frame[FRAME_HEADER_BYTES:], frame[:FRAME_HEADER_BYTES]
            )
        except InvalidTag:
            self._failures += 1
            if self._failures >= AEAD_FORGERY_LIMIT:
                self._reject_at = float("-inf")
            raise AuthenticationError(
                f"{what} failed authentication (forged or corrupted); dropped"
            ) from None
        if not window.accept(counter):
            raise ReplayError(f"{what} counter {counter} was already received or is too old")
        return plaintext

    def __repr__(self) -> str:
        return (
            f"ReceiveKey(local_index={self._local_index}, "
            f"highest_counter={self._window.highest}, created_at={self._created_at})"
        )


class KeyRing:
    """The keys of one session over time: the current pair plus the previous receive key.

    After `install`, the previous receive key keeps accepting frames still in flight for
    OLD_KEY_RECEIVE_S, then it is dropped (docs/crypto-spec.md §3.8). Sending always uses the
    newest key.
    """

    __slots__ = ("_previous", "_previous_until", "_receive", "_send")

    def __init__(self) -> None:
        self._send: SendKey | None = None
        self._receive: ReceiveKey | None = None
        self._previous: ReceiveKey | None = None
        self._previous_until = float("-inf")

    def install(self, send: SendKey, receive: ReceiveKey, now: float) -> None:
        """Make `send`/`receive` current; the old receive key stays receive-only for a while."""
        if self._receive is not None:
            self._previous = self._receive
            self._previous_until = now + OLD_KEY_RECEIVE_S
        self._send = send
        self._receive = receive

    @property
    def send_key(self) -> SendKey | None:
        """The current send key, or None before the first install."""
        return self._send

    @property
    def receive_key(self) -> ReceiveKey | None:
        """The current receive key, or None before the first install."""
        return self._receive

    def receiver_indices(self, now: float) -> tuple[int, ...]:
        """Local indices under which frames are accepted now (for routing frames to sessions)."""
        self._drop_previous(now)
        indices = [key.local_index for key in (self._receive, self._previous) if key is not None]
        return tuple(indices)

    def needs_rekey(self, now: float) -> bool:
        """Whether a new handshake is due: the send key reached REKEY_AFTER_S or
        REKEY_AFTER_MESSAGES, the receive key spent its forgery budget, or no keys yet."""
        send, receive = self._send, self._receive
        if send is None or receive is None:
            return True
        return send.needs_rekey(now) or receive.forgery_limit_reached

    def expired(self, now: float) -> bool:
        """Whether the current keys can no longer be used at all (a handshake is required)."""
        send, receive = self._send, self._receive
        if send is None or receive is None:
            return True
        return send.expired(now) or receive.expired(now)

    def seal(self, plaintext: bytes | bytearray | memoryview, now: float) -> bytes:
        """Seal under the current send key. Raises KeyExpired (also before any install)."""
        send = self._send
        if send is None:
            raise KeyExpired("no session keys are installed; complete a handshake first")
        return send.seal(plaintext, now)

    def open(self, frame: bytes | bytearray | memoryview, now: float) -> bytes:
        """Open a frame under whichever live receive key its receiver index names.

        Raises what `ReceiveKey.open` raises; UnknownReceiverIndex when no live key matches.
        """
        receive = self._receive
        if receive is not None:
            try:
                return receive.open(frame, now)  # the common case: one call, one header parse
            except UnknownReceiverIndex:
                pass
        receiver_index = peek_receiver_index(frame)
        self._drop_previous(now)
        previous = self._previous
        if previous is not None and receiver_index == previous.local_index:
            return previous.open(frame, now)
        raise UnknownReceiverIndex(
            f"no live key of this session has receiver index {receiver_index}; frame dropped",
            receiver_index=receiver_index,
        )

    def seal_datagram(
        self, plaintext: bytes | bytearray | memoryview, now: float, kind: int = DATAGRAM_DATA
    ) -> bytes:
        """Seal a datagram under the current send key. Raises like `seal`."""
        send = self._send
        if send is None:
            raise KeyExpired("no session keys are installed; complete a handshake first")
        if kind == DATAGRAM_DATA:  # the data path's case: one call less
            return send.seal(plaintext, now, _DATAGRAM_DATA_WORD0)
        return send.seal_datagram(plaintext, now, kind)

    def open_datagram(self, data: bytes | bytearray | memoryview, now: float) -> tuple[int, bytes]:
        """Open a sealed datagram under whichever live receive key its receiver index names;
        return its kind and plaintext. Raises what `ReceiveKey.open_datagram` raises, and
        UnknownReceiverIndex when no live key matches."""
        receive = self._receive
        if receive is not None:
            try:
                return receive.open_datagram(data, now)  # the common case: one header parse
            except UnknownReceiverIndex:
                pass
        receiver_index = peek_datagram_index(data)
        self._drop_previous(now)
        previous = self._previous
        if previous is not None and receiver_index == previous.local_index:
            return previous.open_datagram(data, now)
        raise UnknownReceiverIndex(
            f"no live key of this session has receiver index {receiver_index}; datagram dropped",
            receiver_index=receiver_index,
        )

    def _drop_previous(self, now: float) -> None:
        if self._previous is not None and now >= self._previous_until:
            self._previous = None

    def __repr__(self) -> str:
        return f"KeyRing(send={self._send!r}, receive={self._receive!r})"
