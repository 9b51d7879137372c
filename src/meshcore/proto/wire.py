"""Relay control messages (peer <-> relay) and their canonical binary codec.

Every message is `version u8 | type u8 | fields...` with fixed-length fields or explicit length
prefixes and hard size limits; docs/wire-control.md has the byte layouts. Each field's codec
lives in its attrs metadata, so a class's layout is exactly its field list, in order.
"""

from __future__ import annotations

import abc
import enum
import struct
from collections.abc import Callable
from typing import Any, ClassVar, Final

import attrs

from meshcore.errors import DecodeError, MessageTooLarge, UnsupportedVersion
from meshcore.proto.constants import (
    MAX_CANDIDATES,
    MAX_CONTROL_BYTES,
    MAX_FRAME_BYTES,
    MAX_REASON_BYTES,
    MLKEM768_CT_BYTES,
    MLKEM768_PK_BYTES,
    PEER_ID_BYTES,
    PROTOCOL_VERSION,
    RELAY_AUTH_MAC_BYTES,
    RELAY_NONCE_BYTES,
    X25519_KEY_BYTES,
)
from meshcore.proto.endpoint import Endpoint, decode_endpoint_untrusted

__all__ = [
    "RELAYED_HEADER_BYTES",
    "Accept",
    "Auth",
    "Challenge",
    "CircuitClose",
    "CircuitOpen",
    "Close",
    "Connect",
    "ControlMessage",
    "ControlType",
    "Error",
    "ErrorCode",
    "Hello",
    "Invite",
    "Paired",
    "Ping",
    "Pong",
    "Registered",
    "Reject",
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


# --- field codecs ---------------------------------------------------------------------------
# A field's kind validates values at construction (so an invalid message cannot be encoded),
# appends its encoding, and decodes from a memoryview at an offset without reading past it.

_WIRE: Final = "meshcore.wire"


def _brief_bytes(value: bytes) -> str:
    """Short repr for long byte fields: a length and a prefix, never a whole key or payload."""
    if len(value) <= 8:
        return f"bytes[{len(value)}]({value.hex()})"
    return f"bytes[{len(value)}]({value[:8].hex()}...)"


def _length_only(value: bytes | str) -> str:
    return f"<{len(value)} bytes>" if isinstance(value, bytes) else repr(value)


class _Kind(abc.ABC):
    """Base of the field codecs; subclasses set `size_hint` and implement the three methods."""

    repr: bool | Callable[[Any], str] = True

    @abc.abstractmethod
    def check(self, _inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        """Validate a field value at construction (raise ValueError/TypeError)."""

    @abc.abstractmethod
    def put(self, value: Any, out: list[bytes]) -> None:
        """Append the value's canonical encoding to `out`."""

    @abc.abstractmethod
    def get(self, mv: memoryview, off: int) -> tuple[Any, int]:
        """Decode a value at `off`; return it and the next offset (DecodeError if bad)."""

    @property
    def meta(self) -> dict[str, _Kind]:
        return {_WIRE: self}

    @property
    def spec(self) -> dict[str, Any]:
        """Keyword arguments for `attrs.field`: this kind's validator, codec and repr."""
        return {"validator": self.check, "metadata": self.meta, "repr": self.repr}


def _need(mv: memoryview, off: int, size: int, what: str) -> int:
    """Return off + size, or raise DecodeError if that runs past the end of `mv`."""
    end = off + size
    if end > len(mv):
        raise DecodeError(f"truncated: {what} needs {size} bytes, {max(len(mv) - off, 0)} left")
    return end


class _UInt(_Kind):
    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.max = (1 << bits) - 1
        self.struct = struct.Struct({8: ">B", 16: ">H", 32: ">I", 64: ">Q"}[bits])

    def check(self, _inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{attribute.name} must be an int, not {type(value).__name__}")
        if not 0 <= value <= self.max:
            raise ValueError(f"{attribute.name}={value} is outside u{self.bits} (0..{self.max})")

    def put(self, value: Any, out: list[bytes]) -> None:
        out.append(self.struct.pack(value))

    def get(self, mv: memoryview, off: int) -> tuple[Any, int]:
        end = _need(mv, off, self.struct.size, f"u{self.bits}")
        return self.struct.unpack_from(mv, off)[0], end


class _Enum(_Kind):
    def __init__(self, enum_cls: type[enum.IntEnum], bits: int) -> None:
        self.enum_cls = enum_cls
        self.int = _UInt(bits)

    def check(self, _inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, self.enum_cls):
            raise TypeError(
                f"{attribute.name} must be a member of {self.enum_cls.__name__}, "
                f"not {type(value).__name__}"
            )

    def put(self, value: Any, out: list[bytes]) -> None:
        self.int.put(value, out)

    def get(self, mv: memoryview, off: int) -> tuple[Any, int]:
        raw, end = self.int.get(mv, off)
        try:
            return self.enum_cls(raw), end
        except ValueError:
            raise DecodeError(f"unknown {self.enum_cls.__name__} {raw}") from None


class _Bytes(_Kind):
    def __init__(self, size: int, *, secret: bool = False) -> None:
        self.size = size
        self.repr = _length_only if secret else _brief_bytes

    def check(self, _inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, bytes):
            raise TypeError(f"{attribute.name} must be bytes, not {type(value).__name__}")
        if len(value) != self.size:
            raise ValueError(f"{attribute.name} must be {self.size} bytes, got {len(value)}")

    def put(self, value: Any, out: list[bytes]) -> None:
        out.append(value)

    def get(self, mv: memoryview, off: int) -> tuple[Any, int]:
        end = _need(mv, off, self.size, f"a {self.size}-byte field")
        return bytes(mv[off:end]), end


class _EndpointKind(_Kind):
    def check(self, _inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, Endpoint):
            raise TypeError(f"{attribute.name} must be an Endpoint, not {type(value).__name__}")

    def put(self, value: Any, out: list[bytes]) -> None:
        out.append(value.encode())

    def get(self, mv: memoryview, off: int) -> tuple[Any, int]:
        return decode_endpoint_untrusted(mv, off)


class _Candidates(_Kind):
    """count u8 (<= MAX_CANDIDATES) | endpoint * count."""

    def check(self, _inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, tuple):
            raise TypeError(f"{attribute.name} must be a tuple, not {type(value).__name__}")
        if len(value) > MAX_CANDIDATES:
            raise ValueError(
                f"{attribute.name} has {len(value)} endpoints, at most {MAX_CANDIDATES} allowed"
            )
        for item in value:
            if not isinstance(item, Endpoint):
                raise TypeError(f"{attribute.name} holds a {type(item).__name__}, not Endpoint")

    def put(self, value: Any, out: list[bytes]) -> None:
        out.append(bytes((len(value),)))
        out.extend(ep.encode() for ep in value)

    def get(self, mv: memoryview, off: int) -> tuple[Any, int]:
        _need(mv, off, 1, "the endpoint count")
        count = mv[off]
        if count > MAX_CANDIDATES:
            raise DecodeError(f"{count} endpoints, at most {MAX_CANDIDATES} allowed")
        off += 1
        items = []
        for _ in range(count):
            ep, off = decode_endpoint_untrusted(mv, off)
            items.append(ep)
        return tuple(items), off


class _Reason(_Kind):
    """len u16 (<= MAX_REASON_BYTES) | UTF-8 text; printable characters only (log-safe)."""

    def check(self, _inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, str):
            raise TypeError(f"{attribute.name} must be a str, not {type(value).__name__}")
        if not value.isprintable():
            raise ValueError(f"{attribute.name} has non-printable characters; use clip_reason()")
        size = len(value.encode("utf-8"))
        if size > MAX_REASON_BYTES:
            raise ValueError(
                f"{attribute.name} is {size} bytes of UTF-8, at most {MAX_REASON_BYTES}; "
                "use clip_reason()"
            )

    def put(self, value: Any, out: list[bytes]) -> None:
        raw = value.encode("utf-8")
        out.append(_U16.pack(len(raw)))
        out.append(raw)

    def get(self, mv: memoryview, off: int) -> tuple[Any, int]:
        off = _need(mv, off, 2, "the reason length")
        (size,) = _U16.unpack_from(mv, off - 2)
        if size > MAX_REASON_BYTES:
            raise DecodeError(f"reason of {size} bytes, at most {MAX_REASON_BYTES} allowed")
        end = _need(mv, off, size, "the reason")
        try:
            text = str(mv[off:end], "utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(f"reason is not valid UTF-8 ({exc.reason})") from None
        if not text.isprintable():
            raise DecodeError("reason has non-printable characters")
        return text, end


class _Payload(_Kind):
    """len u32 (<= limit) | opaque bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.repr = _length_only

    def check(self, _inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, bytes):
            raise TypeError(f"{attribute.name} must be bytes, not {type(value).__name__}")
        if len(value) > self.limit:
            raise ValueError(f"{attribute.name} is {len(value)} bytes, at most {self.limit}")

    def put(self, value: Any, out: list[bytes]) -> None:
        out.append(_U32.pack(len(value)))
        out.append(value)

    def get(self, mv: memoryview, off: int) -> tuple[Any, int]:
        off = _need(mv, off, 4, "the payload length")
        (size,) = _U32.unpack_from(mv, off - 4)
        if size > self.limit:
            raise MessageTooLarge(f"payload of {size} bytes, at most {self.limit} allowed")
        end = _need(mv, off, size, "the payload")
        return bytes(mv[off:end]), end


_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")

_U32_KIND: Final = _UInt(32)
_U64_KIND: Final = _UInt(64)
_X25519: Final = _Bytes(X25519_KEY_BYTES)
_KEM_PK: Final = _Bytes(MLKEM768_PK_BYTES)
_KEM_CT: Final = _Bytes(MLKEM768_CT_BYTES)
_PEER_ID: Final = _Bytes(PEER_ID_BYTES)
_NONCE: Final = _Bytes(RELAY_NONCE_BYTES)
_MAC: Final = _Bytes(RELAY_AUTH_MAC_BYTES, secret=True)
_ENDPOINT: Final = _EndpointKind()
_CANDIDATES: Final = _Candidates()
_CODE: Final = _Enum(ErrorCode, 16)
_ROLE: Final = _Enum(Role, 8)
_REASON: Final = _Reason()
_FRAME: Final = _Payload(MAX_FRAME_BYTES)


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
    request_id: int = attrs.field(**_U32_KIND.spec)
    target: bytes = attrs.field(**_PEER_ID.spec)


@attrs.frozen
class Invite:
    """relay -> B: `initiator` wants to pair; its keys, observed address and candidates."""

    TYPE: ClassVar = ControlType.INVITE
    request_id: int = attrs.field(**_U32_KIND.spec)
    initiator: bytes = attrs.field(**_PEER_ID.spec)
    x25519_public: bytes = attrs.field(**_X25519.spec)
    kem_public: bytes = attrs.field(**_KEM_PK.spec)
    observed: Endpoint = attrs.field(**_ENDPOINT.spec)
    candidates: tuple[Endpoint, ...] = attrs.field(**_CANDIDATES.spec)


@attrs.frozen
class Accept:
    """B -> relay: yes to the Invite with this request id."""

    TYPE: ClassVar = ControlType.ACCEPT
    request_id: int = attrs.field(**_U32_KIND.spec)


@attrs.frozen
class Reject:
    """B -> relay (no to an Invite) and relay -> A (the Connect failed), with a reason."""

    TYPE: ClassVar = ControlType.REJECT
    request_id: int = attrs.field(**_U32_KIND.spec)
    code: ErrorCode = attrs.field(**_CODE.spec)
    reason: str = attrs.field(**_REASON.spec)


@attrs.frozen
class Paired:
    """relay -> both: the pairing stands; the other peer's keys and addresses, and a circuit."""

    TYPE: ClassVar = ControlType.PAIRED
    request_id: int = attrs.field(**_U32_KIND.spec)
    circuit_id: int = attrs.field(**_U64_KIND.spec)
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
    circuit_id: int = attrs.field(**_U64_KIND.spec)
    peer_id: bytes = attrs.field(**_PEER_ID.spec)


@attrs.frozen
class CircuitClose:
    """Either direction: the circuit is closed, with a reason."""

    TYPE: ClassVar = ControlType.CIRCUIT_CLOSE
    circuit_id: int = attrs.field(**_U64_KIND.spec)
    code: ErrorCode = attrs.field(**_CODE.spec)
    reason: str = attrs.field(**_REASON.spec)


@attrs.frozen
class Relayed:
    """Either direction: an opaque payload on a circuit (the relay's hot path)."""

    TYPE: ClassVar = ControlType.RELAYED
    circuit_id: int = attrs.field(**_U64_KIND.spec)
    payload: bytes = attrs.field(**_FRAME.spec)


@attrs.frozen
class Ping:
    """Either direction: are you there? The answer is a Pong with the same nonce."""

    TYPE: ClassVar = ControlType.PING
    nonce: int = attrs.field(**_U64_KIND.spec)


@attrs.frozen
class Pong:
    """Either direction: the answer to a Ping."""

    TYPE: ClassVar = ControlType.PONG
    nonce: int = attrs.field(**_U64_KIND.spec)


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
)
"""Any relay control message."""

_CLASSES: Final[tuple[type[ControlMessage], ...]] = (
    Hello, Challenge, Auth, Registered, Connect, Invite, Accept, Reject, Paired,
    CircuitOpen, CircuitClose, Relayed, Ping, Pong, Error, Close,
)  # fmt: skip
_LAYOUTS: Final[dict[type, tuple[ControlType, tuple[_Kind, ...]]]] = {
    cls: (cls.TYPE, tuple(f.metadata[_WIRE] for f in attrs.fields(cls))) for cls in _CLASSES
}
_BY_TYPE: Final[dict[int, tuple[type[ControlMessage], tuple[_Kind, ...]]]] = {
    cls.TYPE: (cls, _LAYOUTS[cls][1]) for cls in _CLASSES
}

_HEADER: Final = struct.Struct(">BB")
_RELAYED_HEADER: Final = struct.Struct(">BBQI")
RELAYED_HEADER_BYTES: Final = _RELAYED_HEADER.size
_RELAYED: Final = int(ControlType.RELAYED)
"""Bytes a Relayed message adds in front of its payload (version, type, circuit id, length)."""


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
        msg_type, kinds = _LAYOUTS[type(msg)]
    except KeyError:
        raise TypeError(f"not a control message: {type(msg).__name__}") from None
    out = [_HEADER.pack(PROTOCOL_VERSION, msg_type)]
    for kind, value in zip(kinds, attrs.astuple(msg, recurse=False), strict=True):
        kind.put(value, out)
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
        cls, kinds = _BY_TYPE[msg_type]
    except KeyError:
        raise DecodeError(f"unknown control message type {msg_type}") from None
    off = 2
    values = []
    try:
        for kind in kinds:
            value, off = kind.get(mv, off)
            values.append(value)
        if off != size:
            raise DecodeError(f"{size - off} trailing bytes after the last field")
        return cls(*values)
    except MessageTooLarge as exc:
        raise MessageTooLarge(f"bad {cls.__name__} message: {exc}") from None
    except (DecodeError, ValueError, TypeError, struct.error) as exc:
        # ValueError/TypeError: a field validator refused a decoded value (defence in depth;
        # the field decoders check the same rules first).
        raise DecodeError(f"bad {cls.__name__} message: {exc}") from None


_new: Final = object.__new__
_set: Final = object.__setattr__


def _trusted_relayed(circuit_id: int, payload: bytes) -> Relayed:
    """Build a Relayed from fields the decoder has already checked, skipping the validators
    (it halves the construction cost on the relay's hot path)."""
    msg: Relayed = _new(Relayed)
    _set(msg, "circuit_id", circuit_id)
    _set(msg, "payload", payload)
    return msg
