"""Relay control messages (peer <-> relay) and their canonical binary codec.

Every message is `version u8 | type u8 | fields...` with fixed-length fields or explicit length
prefixes and hard size limits; docs/wire-control.md has the byte layouts. Each field names its
kind from `meshcore.proto.codec`, so a class's layout is exactly its field list, in order.
"""

from __future__ import annotations

import enum
import struct
from typing import ClassVar, Final

import attrs

from meshcore.errors import DecodeError, MessageTooLarge, UnsupportedVersion
from meshcore.proto.codec import (
    U16,
    U32,
    U64,
    Address,
    Bytes,
    Candidates,
    Enumerated,
    Layout,
    Payload,
    Reason,
)
from meshcore.proto.constants import (
    MAX_CONTROL_BYTES,
    MAX_FRAME_BYTES,
    MAX_REASON_BYTES,
    MLKEM768_CT_BYTES,
    MLKEM768_PK_BYTES,
    PEER_ID_BYTES,
    PROTOCOL_VERSION,
    RELAY_AUTH_MAC_BYTES,
    RELAY_NONCE_BYTES,
    RELAY_UDP_TOKEN_BYTES,
    X25519_KEY_BYTES,
)
from meshcore.proto.endpoint import Endpoint

__all__ = [
    "RELAYED_HEADER_BYTES",
    "Accept",
    "Auth",
    "Challenge",
    "CircuitClose",
    "CircuitCredit",
    "CircuitOpen",
    "CircuitUdp",
    "CircuitWindow",
    "Close",
    "Connect",
    "ControlMessage",
    "ControlType",
    "Error",
    "ErrorCode",
    "Hello",
    "Invite",
    "ObserveAddress",
    "ObservedAddress",
    "Paired",
    "Ping",
    "Pong",
    "Registered",
    "Reject",
    "RelayChallenge",
    "RelayIdentity",
    "RelayProof",
    "Relayed",
    "Role",
    "clip_reason",
    "decode_control_untrusted",
    "encode_control",
    "encode_relayed",
]


class ControlType(enum.IntEnum):
    """The type byte of a control message (second byte, after the version)."""

    HELLO = 1
    CHALLENGE = 2
    AUTH = 3
    REGISTERED = 4
    CONNECT = 5
    INVITE = 6
    ACCEPT = 7
    REJECT = 8
    PAIRED = 9
    CIRCUIT_OPEN = 10
    CIRCUIT_CLOSE = 11
    RELAYED = 12
    PING = 13
    PONG = 14
    ERROR = 15
    CLOSE = 16
    RELAY_IDENTITY = 20
    RELAY_CHALLENGE = 21
    RELAY_PROOF = 22
    OBSERVE_ADDRESS = 24
    OBSERVED_ADDRESS = 25
    CIRCUIT_CREDIT = 26
    CIRCUIT_WINDOW = 27
    CIRCUIT_UDP = 28


class ErrorCode(enum.IntEnum):
    """Why a request was refused or a connection or circuit closed (u16 on the wire)."""

    NONE = 0
    """No error: a normal close."""
    BAD_MESSAGE = 1
    """The other side sent bytes that do not decode or break the protocol."""
    UNSUPPORTED_VERSION = 2
    """The other side speaks a protocol version this build does not."""
    AUTH_FAILED = 3
    """The peer's answer to the relay's challenge was wrong."""
    TIMEOUT = 4
    """A deadline passed (HELLO/AUTH, a pairing, an idle connection)."""
    RATE_LIMITED = 5
    """Too many requests from this address or peer; retry later."""
    PEER_UNKNOWN = 6
    """No peer with that id has ever registered here."""
    PEER_OFFLINE = 7
    """The peer is known but not connected now."""
    REJECTED = 8
    """The target peer refused the pairing (its policy)."""
    NOT_ALLOWED = 9
    """The request is not allowed in this state or for this peer."""
    CAPACITY = 10
    """The relay is full (peers or circuits)."""
    SHUTDOWN = 11
    """The relay is shutting down."""
    REPLACED = 12
    """A newer connection registered the same peer id."""
    CIRCUIT_UNKNOWN = 13
    """No such circuit (never opened, or already closed)."""
    QUEUE_OVERFLOW = 14
    """A forwarding queue was full: the reader is too slow."""
    TOO_LARGE = 15
    """A message or payload exceeded its size limit."""
    INTERNAL = 16
    """A bug on the sending side."""


class Role(enum.IntEnum):
    """A peer's side of a pairing: who asked (INITIATOR) and who accepted (RESPONDER)."""

    INITIATOR = 1
    RESPONDER = 2


# --- field kinds (meshcore.proto.codec) ------------------------------------------------------

_X25519: Final = Bytes(X25519_KEY_BYTES)
_KEM_PK: Final = Bytes(MLKEM768_PK_BYTES)
_KEM_CT: Final = Bytes(MLKEM768_CT_BYTES)
_PEER_ID: Final = Bytes(PEER_ID_BYTES)
_NONCE: Final = Bytes(RELAY_NONCE_BYTES)
_MAC: Final = Bytes(RELAY_AUTH_MAC_BYTES, secret=True)
_ENDPOINT: Final = Address()
_CANDIDATES: Final = Candidates()
_CODE: Final = Enumerated(ErrorCode, 16)
_ROLE: Final = Enumerated(Role, 8)
_REASON: Final = Reason()
_FRAME: Final = Payload(MAX_FRAME_BYTES)
_UDP_TOKEN: Final = Bytes(RELAY_UDP_TOKEN_BYTES, secret=True)


# --- messages ---------------------------------------------------------------------------------
# Each field is `attrs.field(**KIND.spec)`: the kind gives its validator, its codec (metadata)
# and its repr. (A call of attrs.field itself, not a helper, so that mypy's attrs plugin sees it.)


@attrs.frozen
class Hello:
    """peer -> relay: first message; the peer's public keys and its direct-connection candidates."""

    TYPE: ClassVar = ControlType.HELLO
    x25519_public: bytes = attrs.field(**_X25519.spec)
    kem_public: bytes = attrs.field(**_KEM_PK.spec)
    candidates: tuple[Endpoint, ...] = attrs.field(**_CANDIDATES.spec)


@attrs.frozen
class Challenge:
    """relay -> peer: prove you hold the keys of Hello (a KEM encapsulation to them + nonce)."""

    TYPE: ClassVar = ControlType.CHALLENGE
    nonce: bytes = attrs.field(**_NONCE.spec)
    ephemeral_x25519: bytes = attrs.field(**_X25519.spec)
    kem_ciphertext: bytes = attrs.field(**_KEM_CT.spec)


@attrs.frozen
class Auth:
    """peer -> relay: the MAC answering the Challenge."""

    TYPE: ClassVar = ControlType.AUTH
    mac: bytes = attrs.field(**_MAC.spec)


@attrs.frozen
class Registered:
    """relay -> peer: authenticated; your peer id and the address the relay sees you at."""

    TYPE: ClassVar = ControlType.REGISTERED
    peer_id: bytes = attrs.field(**_PEER_ID.spec)
    observed: Endpoint = attrs.field(**_ENDPOINT.spec)


@attrs.frozen
class Connect:
    """A -> relay: please pair me with `target` (a peer id)."""

    TYPE: ClassVar = ControlType.CONNECT
    request_id: int = attrs.field(**U32.spec)
    target: bytes = attrs.field(**_PEER_ID.spec)


@attrs.frozen
class Invite:
    """relay -> B: `initiator` wants to pair; its keys, observed address and candidates."""

    TYPE: ClassVar = ControlType.INVITE
    request_id: int = attrs.field(**U32.spec)
    initiator: bytes = attrs.field(**_PEER_ID.spec)
    x25519_public: bytes = attrs.field(**_X25519.spec)
    kem_public: bytes = attrs.field(**_KEM_PK.spec)
    observed: Endpoint = attrs.field(**_ENDPOINT.spec)
    candidates: tuple[Endpoint, ...] = attrs.field(**_CANDIDATES.spec)


@attrs.frozen
class Accept:
    """B -> relay: yes to the Invite with this request id."""

    TYPE: ClassVar = ControlType.ACCEPT
    request_id: int = attrs.field(**U32.spec)


@attrs.frozen
class Reject:
    """B -> relay (no to an Invite) and relay -> A (the Connect failed), with a reason."""

    TYPE: ClassVar = ControlType.REJECT
    request_id: int = attrs.field(**U32.spec)
    code: ErrorCode = attrs.field(**_CODE.spec)
    reason: str = attrs.field(**_REASON.spec)


@attrs.frozen
class Paired:
    """relay -> both: the pairing stands; the other peer's keys and addresses, and a circuit."""

    TYPE: ClassVar = ControlType.PAIRED
    request_id: int = attrs.field(**U32.spec)
    circuit_id: int = attrs.field(**U64.spec)
    role: Role = attrs.field(**_ROLE.spec)
    peer_id: bytes = attrs.field(**_PEER_ID.spec)
    x25519_public: bytes = attrs.field(**_X25519.spec)
    kem_public: bytes = attrs.field(**_KEM_PK.spec)
    observed: Endpoint = attrs.field(**_ENDPOINT.spec)
    candidates: tuple[Endpoint, ...] = attrs.field(**_CANDIDATES.spec)


@attrs.frozen
class CircuitOpen:
    """peer -> relay: open a circuit to an already-paired peer (circuit_id 0: relay assigns);
    relay -> peer: the circuit is open."""

    TYPE: ClassVar = ControlType.CIRCUIT_OPEN
    circuit_id: int = attrs.field(**U64.spec)
    peer_id: bytes = attrs.field(**_PEER_ID.spec)


@attrs.frozen
class CircuitClose:
    """Either direction: the circuit is closed, with a reason."""

    TYPE: ClassVar = ControlType.CIRCUIT_CLOSE
    circuit_id: int = attrs.field(**U64.spec)
    code: ErrorCode = attrs.field(**_CODE.spec)
    reason: str = attrs.field(**_REASON.spec)


@attrs.frozen
class Relayed:
    """Either direction: an opaque payload on a circuit (the relay's hot path)."""

    TYPE: ClassVar = ControlType.RELAYED
    circuit_id: int = attrs.field(**U64.spec)
    payload: bytes = attrs.field(**_FRAME.spec)


@attrs.frozen
class Ping:
    """Either direction: are you there? The answer is a Pong with the same nonce."""

    TYPE: ClassVar = ControlType.PING
    nonce: int = attrs.field(**U64.spec)


@attrs.frozen
class Pong:
    """Either direction: the answer to a Ping."""

    TYPE: ClassVar = ControlType.PONG
    nonce: int = attrs.field(**U64.spec)


@attrs.frozen
class Error:
    """Either direction: a fatal error; the sender closes the connection after it."""

    TYPE: ClassVar = ControlType.ERROR
    code: ErrorCode = attrs.field(**_CODE.spec)
    reason: str = attrs.field(**_REASON.spec)


@attrs.frozen
class Close:
    """Either direction: a graceful close (e.g. the relay is shutting down)."""

    TYPE: ClassVar = ControlType.CLOSE
    code: ErrorCode = attrs.field(**_CODE.spec)
    reason: str = attrs.field(**_REASON.spec)


@attrs.frozen
class RelayIdentity:
    """relay -> peer, the first message on every connection: the relay's static public keys,
    whose fingerprint is its relay id (a peer that knows the id checks it, then challenges)."""

    TYPE: ClassVar = ControlType.RELAY_IDENTITY
    x25519_public: bytes = attrs.field(**_X25519.spec)
    kem_public: bytes = attrs.field(**_KEM_PK.spec)


@attrs.frozen
class RelayChallenge:
    """peer -> relay, before Hello: prove you hold the keys of RelayIdentity (an encapsulation
    to them + a nonce), the relay's Challenge the other way round."""

    TYPE: ClassVar = ControlType.RELAY_CHALLENGE
    nonce: bytes = attrs.field(**_NONCE.spec)
    ephemeral_x25519: bytes = attrs.field(**_X25519.spec)
    kem_ciphertext: bytes = attrs.field(**_KEM_CT.spec)


@attrs.frozen
class RelayProof:
    """relay -> peer: the MAC answering the RelayChallenge."""

    TYPE: ClassVar = ControlType.RELAY_PROOF
    mac: bytes = attrs.field(**_MAC.spec)


@attrs.frozen
class ObserveAddress:
    """peer -> relay, in any state (before Hello too): which address do you see me at?
    The answer is an ObservedAddress with the same nonce (`meshcore-peer netcheck`)."""

    TYPE: ClassVar = ControlType.OBSERVE_ADDRESS
    nonce: int = attrs.field(**U64.spec)


@attrs.frozen
class ObservedAddress:
    """relay -> peer: the address (IP and port, after any NAT) this connection comes from."""

    TYPE: ClassVar = ControlType.OBSERVED_ADDRESS
    nonce: int = attrs.field(**U64.spec)
    observed: Endpoint = attrs.field(**_ENDPOINT.spec)


@attrs.frozen
class CircuitCredit:
    """relay -> peer, on a credited connection (docs/relay.md): you may send `credit` more
    payload bytes on this circuit; the relay grants it as the circuit's queue drains."""

    TYPE: ClassVar = ControlType.CIRCUIT_CREDIT
    circuit_id: int = attrs.field(**U64.spec)
    credit: int = attrs.field(**U32.spec)


@attrs.frozen
class CircuitWindow:
    """relay -> peer, on a credited connection, first when a circuit opens: the circuit is
    credited, and `window` is the most credit it may hold at once (the path's window cap)."""

    TYPE: ClassVar = ControlType.CIRCUIT_WINDOW
    circuit_id: int = attrs.field(**U64.spec)
    window: int = attrs.field(**U32.spec)


@attrs.frozen
class CircuitUdp:
    """relay -> peer, on a connection that agreed to UDP, when a circuit opens whose two
    peers both did: sealed datagrams of the circuit may go by UDP to the relay's `port`
    (at the address this connection reached), each prefixed by `token` (docs/datagram.md)."""

    TYPE: ClassVar = ControlType.CIRCUIT_UDP
    circuit_id: int = attrs.field(**U64.spec)
    token: bytes = attrs.field(**_UDP_TOKEN.spec)
    port: int = attrs.field(**U16.spec)


ControlMessage = (
    Hello
    | Challenge
    | Auth
    | Registered
    | Connect
    | Invite
    | Accept
    | Reject
    | Paired
    | CircuitOpen
    | CircuitClose
    | Relayed
    | Ping
    | Pong
    | Error
    | Close
    | RelayIdentity
    | RelayChallenge
    | RelayProof
    | ObserveAddress
    | ObservedAddress
    | CircuitCredit
    | CircuitWindow
    | CircuitUdp
)
"""Any relay control message."""

_CLASSES: Final[tuple[type[ControlMessage], ...]] = (
    Hello, Challenge, Auth, Registered, Connect, Invite, Accept, Reject, Paired,
    CircuitOpen, CircuitClose, Relayed, Ping, Pong, Error, Close, ObserveAddress,
    ObservedAddress, RelayIdentity, RelayChallenge, RelayProof, CircuitCredit, CircuitWindow,
    CircuitUdp,
)  # fmt: skip
_LAYOUTS: Final[dict[type, tuple[ControlType, Layout]]] = {
    cls: (cls.TYPE, Layout(cls)) for cls in _CLASSES
}
_BY_TYPE: Final[dict[int, Layout]] = {cls.TYPE: _LAYOUTS[cls][1] for cls in _CLASSES}

_HEADER: Final = struct.Struct(">BB")  # version u8 | type u8
# The relay's hot path, Relayed: version u8 | type=12 u8 | circuit_id u64 | length u32 | payload
_RELAYED_HEADER: Final = struct.Struct(">BBQI")
RELAYED_HEADER_BYTES: Final = _RELAYED_HEADER.size
"""Bytes a Relayed message adds in front of its payload (version, type, circuit id, length)."""
_RELAYED: Final = int(ControlType.RELAYED)


def clip_reason(text: str) -> str:
    """Make any text a valid reason: non-printable characters become spaces, and the UTF-8 form
    is cut (at a character boundary) to MAX_REASON_BYTES."""
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    raw = text.encode("utf-8", "replace")[:MAX_REASON_BYTES]
    return raw.decode("utf-8", "ignore")


def encode_control(msg: ControlMessage) -> bytes:
    """Return the canonical encoding of a control message (at most MAX_CONTROL_BYTES)."""
    if type(msg) is Relayed:
        return encode_relayed(msg.circuit_id, msg.payload)
    try:
        msg_type, layout = _LAYOUTS[type(msg)]
    except KeyError:
        raise TypeError(f"not a control message: {type(msg).__name__}") from None
    out = [_HEADER.pack(PROTOCOL_VERSION, msg_type)]
    layout.put(msg, out)
    return b"".join(out)


def encode_relayed(circuit_id: int, payload: bytes | bytearray | memoryview) -> bytes:
    """Encode `Relayed(circuit_id, payload)` without building the object; copies payload once.

    Raises ValueError if circuit_id is not a u64 or the payload exceeds MAX_FRAME_BYTES.
    """
    size = len(payload)
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"relayed payload is {size} bytes, at most {MAX_FRAME_BYTES}")
    if not 0 <= circuit_id <= 0xFFFF_FFFF_FFFF_FFFF:
        raise ValueError(f"circuit_id={circuit_id} is outside u64")
    head = _RELAYED_HEADER.pack(PROTOCOL_VERSION, ControlType.RELAYED, circuit_id, size)
    return b"".join((head, payload))


def decode_control_untrusted(data: bytes | bytearray | memoryview) -> ControlMessage:
    """Decode one control message from untrusted bytes.

    Returns a message or raises DecodeError (UnsupportedVersion for another protocol
    version, MessageTooLarge past a size limit) -- never anything else. Reads only inside
    `data`, and allocates at most the size of `data`.
    """
    mv = memoryview(data)
    if mv.format != "B" or mv.ndim != 1 or not mv.c_contiguous:
        mv = memoryview(mv.tobytes())  # an unusual view: read a flat copy of its bytes
    size = len(mv)
    if size >= RELAYED_HEADER_BYTES and mv[1] == _RELAYED and mv[0] == PROTOCOL_VERSION:
        # The relay's hot path: one struct read, one slice (the payload's only copy). Anything
        # malformed falls through to the general path, which explains what is wrong.
        _, _, circuit_id, length = _RELAYED_HEADER.unpack_from(mv)
        if length == size - RELAYED_HEADER_BYTES and length <= MAX_FRAME_BYTES:
            if type(data) is bytes:
                return _trusted_relayed(circuit_id, data[RELAYED_HEADER_BYTES:])
            return _trusted_relayed(circuit_id, bytes(mv[RELAYED_HEADER_BYTES:]))
    if size < 2:
        raise DecodeError(f"truncated control message: {size} bytes, the header alone is 2")
    if mv[0] != PROTOCOL_VERSION:
        raise UnsupportedVersion(mv[0])
    if size > MAX_CONTROL_BYTES:
        raise MessageTooLarge(
            f"control message of {size} bytes, at most {MAX_CONTROL_BYTES} allowed"
        )
    msg_type = mv[1]
    try:
        layout = _BY_TYPE[msg_type]
    except KeyError:
        raise DecodeError(f"unknown control message type {msg_type}") from None
    msg: ControlMessage = layout.decode(mv, 2)
    return msg


_new: Final = object.__new__
_set: Final = object.__setattr__


def _trusted_relayed(circuit_id: int, payload: bytes) -> Relayed:
    """Build a Relayed from fields the decoder has already checked, skipping the validators
    (it halves the construction cost on the relay's hot path)."""
    msg: Relayed = _new(Relayed)
    _set(msg, "circuit_id", circuit_id)
    _set(msg, "payload", payload)
    return msg
