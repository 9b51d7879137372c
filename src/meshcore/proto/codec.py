"""The one field codec of meshcore/1's binary messages: field kinds, layouts, one decode loop.

A message is an attrs class whose fields name their kind (`attrs.field(**U32.spec)`). The
kind validates a value at construction (ValueError or TypeError: the caller's mistake),
appends its encoding, and decodes it from untrusted bytes (DecodeError only: the sender's
mistake). A `Layout` is a class's fields in wire order, with any constant bytes (a type byte,
a version) in between; its `decode` is the one total decode loop every module uses.
Hot paths (relayed frames, Data, transport frames) keep their own `struct` fast paths.
"""

from __future__ import annotations

import abc
import enum
import operator
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final, Literal

import attrs

from meshcore.errors import DecodeError, MessageTooLarge
from meshcore.proto.constants import MAX_CANDIDATES, MAX_REASON_BYTES
from meshcore.proto.endpoint import Endpoint, decode_endpoint_untrusted

__all__ = [
    "U8",
    "U16",
    "U16LE",
    "U32",
    "U32LE",
    "U64",
    "Address",
    "Bytes",
    "Candidates",
    "Const",
    "Enumerated",
    "Kind",
    "Layout",
    "Payload",
    "Reason",
    "Rest",
    "UInt",
]

_META: Final = "meshcore.codec"
_U16: Final = struct.Struct(">H")
_U32: Final = struct.Struct(">I")
Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _brief_bytes(value: bytes) -> str:
    """Short repr for long byte fields: a length and a prefix, never a whole key or payload."""
    if len(value) <= 8:
        return f"bytes[{len(value)}]({value.hex()})"
    return f"bytes[{len(value)}]({value[:8].hex()}...)"


def _length_only(value: bytes | str) -> str:
    return f"<{len(value)} bytes>" if isinstance(value, bytes) else repr(value)


def _need(mv: memoryview, off: int, size: int, what: str) -> int:
    """Return off + size, or raise DecodeError if that runs past the end of `mv`."""
    end = off + size
    if end > len(mv):
        raise DecodeError(f"truncated: {what} needs {size} bytes, {max(len(mv) - off, 0)} left")
    return end


class Kind(abc.ABC):
    """How one field is validated, encoded and decoded.

    `size` is the encoded size if it is fixed (None otherwise); a kind with `to_end` takes
    every byte up to the fixed-size fields that follow it (at most one per layout).
    """

    size: int | None = None
    to_end: bool = False
    repr: bool | Callable[[Any], str] = True

    @abc.abstractmethod
    def check(self, _inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        """Validate a field value at construction (raise ValueError or TypeError)."""

    @abc.abstractmethod
    def put(self, value: Any, out: list[bytes]) -> None:
        """Append the value's canonical encoding to `out`."""

    @abc.abstractmethod
    def get(self, mv: memoryview, off: int) -> tuple[Any, int]:
        """Decode a value at `off`; return it and the next offset (DecodeError if bad)."""

    @property
    def meta(self) -> dict[str, Kind]:
        """attrs metadata that names this kind (how a `Layout` finds a field's codec)."""
        return {_META: self}

    @property
    def spec(self) -> dict[str, Any]:
        """Keyword arguments for `attrs.field`: this kind's validator, codec and repr."""
        return {"validator": self.check, "metadata": self.meta, "repr": self.repr}

    def spec_with(self, *checks: Validator) -> dict[str, Any]:
        """`spec` with more validators, run after this kind's own check."""
        return {**self.spec, "validator": [self.check, *checks]}


class UInt(Kind):
    """An unsigned integer of 8, 16, 32 or 64 bits, big-endian unless `order` says otherwise."""

    def __init__(self, bits: int, order: Literal["big", "little"] = "big") -> None:
        self.bits = bits
        self.max = (1 << bits) - 1
        code = {8: "B", 16: "H", 32: "I", 64: "Q"}[bits]
        self.struct = struct.Struct((">" if order == "big" else "<") + code)
        self.size = self.struct.size

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


U8: Final = UInt(8)
U16: Final = UInt(16)
U32: Final = UInt(32)
U64: Final = UInt(64)
U16LE: Final = UInt(16, "little")
U32LE: Final = UInt(32, "little")


class Enumerated(Kind):
    """A member of an IntEnum, sent as an unsigned integer; unknown values do not decode."""

    def __init__(self, enum_cls: type[enum.IntEnum], bits: int) -> None:
        self.enum_cls = enum_cls
        self.int = UInt(bits)
        self.size = self.int.size

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


class Bytes(Kind):
    """Exactly `size` opaque bytes (keys, ciphertexts, MACs); `secret` hides even a prefix."""

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
        size = self.size
        assert size is not None
        end = _need(mv, off, size, f"a {size}-byte field")
        return bytes(mv[off:end]), end


class Address(Kind):
    """One `Endpoint` (docs/wire-control.md: family u8 | address | port u16)."""

    def check(self, _inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, Endpoint):
            raise TypeError(f"{attribute.name} must be an Endpoint, not {type(value).__name__}")

    def put(self, value: Any, out: list[bytes]) -> None:
        out.append(value.encode())

    def get(self, mv: memoryview, off: int) -> tuple[Any, int]:
        return decode_endpoint_untrusted(mv, off)


class Candidates(Kind):
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


class Reason(Kind):
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


class Payload(Kind):
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


class Rest(Kind):
    """Opaque bytes filling the message up to its fixed-size tail: `minimum`..`limit` bytes,
    no length prefix (the message's own length fixes it)."""

    to_end = True

    def __init__(self, limit: int, *, minimum: int = 0) -> None:
        self.limit = limit
        self.minimum = minimum
        self.repr = _length_only

    def check(self, _inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not isinstance(value, bytes):
            raise TypeError(f"{attribute.name} must be bytes, not {type(value).__name__}")
        if len(value) > self.limit:
            raise ValueError(f"{attribute.name} is {len(value)} bytes, at most {self.limit}")
        if len(value) < self.minimum:
            raise ValueError(f"{attribute.name} is {len(value)} bytes, at least {self.minimum}")

    def put(self, value: Any, out: list[bytes]) -> None:
        out.append(value)

    def get(self, mv: memoryview, off: int) -> tuple[Any, int]:
        end = len(mv)
        if end - off > self.limit:
            raise MessageTooLarge(f"{end - off} bytes, at most {self.limit} allowed")
        if end - off < self.minimum:
            raise DecodeError(f"truncated: {end - off} bytes, at least {self.minimum} needed")
        return bytes(mv[off:end]), end


class Const(Kind):
    """Constant bytes in a layout that are no field of the class (a type byte, a version)."""

    def __init__(self, what: str, kind: UInt, value: int) -> None:
        self.what = what
        self.kind = kind
        self.value = int(value)
        self.size = kind.size
        self._encoded = kind.struct.pack(self.value)

    def check(self, _inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        raise TypeError("a Const is not a field")  # never an attrs validator

    def put(self, value: Any, out: list[bytes]) -> None:
        out.append(self._encoded)

    def get(self, mv: memoryview, off: int) -> tuple[Any, int]:
        raw, end = self.kind.get(mv, off)
        if raw != self.value:
            raise DecodeError(f"expected {self.what} {self.value}, got {raw}")
        return raw, end


class Layout:
    """The wire form of one message class: its fields (and constants) in wire order.

    By default the order is the class's field order; `steps` names the fields in another
    order, with `Const`s between them. `decode` is total: a message or DecodeError.
    """

    def __init__(
        self, cls: type, steps: Sequence[str | Const] | None = None, *, noun: str = "message"
    ) -> None:
        fields = attrs.fields(cls)
        order = [f.name for f in fields]
        plan = list(order) if steps is None else list(steps)
        names = [step for step in plan if isinstance(step, str)]
        if sorted(names) != sorted(order):
            raise TypeError(f"the layout of {cls.__name__} must name each field once: {names}")
        by_name: dict[str, Kind] = {f.name: f.metadata[_META] for f in fields}
        kinds = [step if isinstance(step, Const) else by_name[step] for step in plan]
        self.cls = cls
        self.name = f"{cls.__name__} {noun}"
        self._field_count = len(order)
        self._encode_steps = [
            (kind, None if isinstance(step, Const) else operator.attrgetter(step))
            for step, kind in zip(plan, kinds, strict=True)
        ]
        # Decoding: (position in the constructor's arguments or -1, kind, bytes after a
        # field that runs to the end, else None).
        self._decode_steps = tuple(
            (
                -1 if isinstance(step, Const) else order.index(step),
                kind,
                _tail_size(cls.__name__, step, kinds[pos + 1 :]) if kind.to_end else None,
            )
            for pos, (step, kind) in enumerate(zip(plan, kinds, strict=True))
        )
        if sum(kind.to_end for kind in kinds) > 1:
            raise TypeError(f"{cls.__name__}: at most one field may run to the end")
        self._offsets: dict[str, int] = {}
        offset = 0
        for step, kind in zip(plan, kinds, strict=True):
            if isinstance(step, str):
                self._offsets[step] = offset
            if kind.size is None:
                break  # the fields after a variable-size one have no fixed offset
            offset += kind.size
        sizes = [kind.size for kind in kinds]
        self.size: int | None = None if None in sizes else sum(s for s in sizes if s is not None)
        """The encoded size if every field has a fixed size, else None."""

    @property
    def fixed_size(self) -> int:
        """The encoded size of a layout whose fields all have a fixed size (else TypeError)."""
        if self.size is None:
            raise TypeError(f"{self.name} has no fixed size")
        return self.size

    def offset_of(self, name: str) -> int:
        """Where field `name` starts in an encoding (only fields after fixed-size ones)."""
        return self._offsets[name]

    def put(self, msg: Any, out: list[bytes]) -> None:
        """Append the encoding of `msg` (an instance of the layout's class) to `out`."""
        for kind, getter in self._encode_steps:
            kind.put(None if getter is None else getter(msg), out)

    def encode(self, msg: Any) -> bytes:
        """The canonical encoding of `msg`."""
        out: list[bytes] = []
        self.put(msg, out)
        return b"".join(out)

    def decode(self, mv: memoryview, off: int = 0) -> Any:
        """Decode the bytes of `mv` from `off` to its end as one message of the class.

        Raises DecodeError (MessageTooLarge past a size limit), naming the message, for
        truncated or trailing bytes and any field that does not decode -- nothing else.
        """
        values: list[Any] = [None] * self._field_count
        end = len(mv)
        try:
            for index, kind, tail in self._decode_steps:
                if tail is None:
                    value, off = kind.get(mv, off)
                else:
                    value, off = kind.get(mv[: max(off, end - tail)], off)
                if index >= 0:
                    values[index] = value
            if off != end:
                raise DecodeError(f"{end - off} trailing bytes after the last field")
            return self.cls(*values)
        except MessageTooLarge as exc:
            raise MessageTooLarge(f"bad {self.name}: {exc}") from None
        except (DecodeError, ValueError, TypeError, struct.error) as exc:
            # ValueError/TypeError: a field validator refused a decoded value (defence in
            # depth; the field decoders check the same rules first).
            raise DecodeError(f"bad {self.name}: {exc}") from None


def _tail_size(cls_name: str, step: str | Const, after: list[Kind]) -> int:
    """The bytes the fields after `step` (which runs to the end) take: all fixed-size."""
    sizes = [kind.size for kind in after]
    if any(size is None for size in sizes):
        raise TypeError(f"{cls_name}: only fixed-size fields may follow {step}")
    return sum(size for size in sizes if size is not None)
