"""The field codec: kinds validate, encode and decode; a layout's decode is total."""

from __future__ import annotations

import enum

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.errors import DecodeError, MessageTooLarge
from meshcore.proto import codec
from meshcore.proto.codec import (
    U8,
    U16LE,
    U32,
    U64,
    Address,
    Bytes,
    Candidates,
    Const,
    Enumerated,
    Layout,
    Payload,
    Reason,
    Rest,
)
from meshcore.proto.endpoint import Endpoint


class Colour(enum.IntEnum):
    RED = 1
    BLUE = 2


@attrs.frozen
class Everything:
    number: int = attrs.field(**U32.spec)
    big: int = attrs.field(**U64.spec)
    colour: Colour = attrs.field(**Enumerated(Colour, 8).spec)
    key: bytes = attrs.field(**Bytes(4).spec)
    where: Endpoint = attrs.field(**Address().spec)
    candidates: tuple[Endpoint, ...] = attrs.field(**Candidates().spec)
    reason: str = attrs.field(**Reason().spec)
    payload: bytes = attrs.field(**Payload(8).spec)


@attrs.frozen
class Framed:
    """A constant type byte, a little-endian field out of class order, a rest and a tail."""

    index: int = attrs.field(**U16LE.spec)
    body: bytes = attrs.field(**Rest(6, minimum=1).spec)
    mac: bytes = attrs.field(**Bytes(2, secret=True).spec)
    flags: int = attrs.field(default=0, **U8.spec)


EVERYTHING = Layout(Everything)
FRAMED = Layout(Framed, (Const("type", U8, 9), "flags", "index", "body", "mac"))
SAMPLE = Everything(
    7, 2**64 - 1, Colour.BLUE, b"abcd", Endpoint("192.0.2.1", 80),
    (Endpoint("fd00::1", 1),), "fine", b"xy",
)  # fmt: skip


def test_a_layout_round_trips_every_kind() -> None:
    data = EVERYTHING.encode(SAMPLE)
    assert EVERYTHING.decode(memoryview(data)) == SAMPLE


def test_a_layout_decodes_from_an_offset() -> None:
    data = b"\xff\xff" + EVERYTHING.encode(SAMPLE)
    assert EVERYTHING.decode(memoryview(data), 2) == SAMPLE


def test_steps_put_constants_and_fields_in_wire_order() -> None:
    msg = Framed(index=0x0102, body=b"xyz", mac=b"mm", flags=5)
    assert FRAMED.encode(msg) == b"\x09\x05\x02\x01xyzmm"
    assert FRAMED.decode(memoryview(FRAMED.encode(msg))) == msg


def test_a_wrong_constant_is_named() -> None:
    with pytest.raises(DecodeError, match="bad Framed message: expected type 9, got 8"):
        FRAMED.decode(memoryview(b"\x08\x00\x00\x00xmm"))


def test_a_rest_field_leaves_the_fixed_tail_to_the_fields_after_it() -> None:
    assert FRAMED.decode(memoryview(b"\x09\x00\x01\x00abcdefmm")).body == b"abcdef"


def test_a_rest_field_has_a_minimum_and_a_limit() -> None:
    with pytest.raises(DecodeError, match="at least 1"):
        FRAMED.decode(memoryview(b"\x09\x00\x01\x00mm"))
    with pytest.raises(MessageTooLarge, match="7 bytes, at most 6"):
        FRAMED.decode(memoryview(b"\x09\x00\x01\x00abcdefgmm"))


def test_truncated_and_trailing_bytes_are_refused() -> None:
    data = EVERYTHING.encode(SAMPLE)
    with pytest.raises(DecodeError, match="bad Everything message: truncated"):
        EVERYTHING.decode(memoryview(data[:-1]))
    with pytest.raises(DecodeError, match="1 trailing bytes"):
        EVERYTHING.decode(memoryview(data + b"\x00"))


def test_a_payload_over_its_limit_is_too_large() -> None:
    data = EVERYTHING.encode(SAMPLE)
    over = data[:-6] + b"\x00\x00\x00\x09" + bytes(9)
    with pytest.raises(MessageTooLarge, match="payload of 9 bytes, at most 8"):
        EVERYTHING.decode(memoryview(over))


def test_size_and_offsets_follow_the_fixed_fields() -> None:
    assert EVERYTHING.size is None
    with pytest.raises(TypeError, match="no fixed size"):
        _ = EVERYTHING.fixed_size
    assert EVERYTHING.offset_of("key") == 4 + 8 + 1
    assert FRAMED.size is None
    assert FRAMED.offset_of("body") == 4
    fixed = Layout(Framed, (Const("type", U8, 9), "flags", "index", "mac", "body"))
    assert fixed.offset_of("mac") == 4

    @attrs.frozen
    class Pair:
        a: int = attrs.field(**U8.spec)
        b: bytes = attrs.field(**Bytes(2).spec)

    pair = Layout(Pair, (Const("type", U16LE, 1), "b", "a"))
    assert (pair.size, pair.fixed_size, pair.offset_of("a")) == (5, 5, 4)
    assert pair.encode(Pair(3, b"xy")) == b"\x01\x00xy\x03"


def test_validators_come_from_the_kinds() -> None:
    with pytest.raises(ValueError, match="outside u32"):
        attrs.evolve(SAMPLE, number=2**32)
    with pytest.raises(TypeError, match="must be an int"):
        attrs.evolve(SAMPLE, number=True)
    with pytest.raises(TypeError, match="member of Colour"):
        attrs.evolve(SAMPLE, colour=1)
    with pytest.raises(ValueError, match="must be 4 bytes, got 3"):
        attrs.evolve(SAMPLE, key=b"abc")
    with pytest.raises(ValueError, match="non-printable"):
        attrs.evolve(SAMPLE, reason="a\nb")
    with pytest.raises(ValueError, match="at most 8"):
        attrs.evolve(SAMPLE, payload=bytes(9))
    with pytest.raises(ValueError, match="at least 1"):
        Framed(index=1, body=b"", mac=b"mm")


def test_extra_validators_run_after_the_kind() -> None:
    def even(_inst: object, _attr: object, value: int) -> None:
        if value % 2:
            raise ValueError("odd")

    @attrs.frozen
    class Even:
        n: int = attrs.field(**U8.spec_with(even))

    assert Layout(Even).encode(Even(4)) == b"\x04"
    with pytest.raises(ValueError, match="odd"):
        Even(3)
    with pytest.raises(ValueError, match="outside u8"):
        Even(256)
    with pytest.raises(DecodeError, match="odd"):
        Layout(Even).decode(memoryview(b"\x03"))


def test_reprs_shorten_bytes_and_hide_secrets() -> None:
    text = repr(Framed(index=1, body=b"secret", mac=b"\xaa\xbb"))
    assert "secret" not in text and "aabb" not in text
    assert "body=<6 bytes>" in text and "mac=<2 bytes>" in text
    assert "bytes[4](61626364)" in repr(SAMPLE)


def test_a_layout_must_name_every_field_once() -> None:
    with pytest.raises(TypeError, match="each field once"):
        Layout(Framed, (Const("type", U8, 9), "index", "body", "mac"))
    with pytest.raises(TypeError, match="each field once"):
        Layout(Framed, ("flags", "index", "index", "body", "mac"))


def test_only_fixed_size_fields_may_follow_a_rest_field() -> None:
    @attrs.frozen
    class Bad:
        body: bytes = attrs.field(**Rest(4).spec)
        reason: str = attrs.field(**Reason().spec)

    with pytest.raises(TypeError, match="only fixed-size fields may follow body"):
        Layout(Bad)


@given(st.binary(max_size=80))
def test_every_byte_string_decodes_or_raises_decode_error(data: bytes) -> None:
    for layout in (EVERYTHING, FRAMED):
        try:
            msg = layout.decode(memoryview(data))
        except DecodeError:
            continue
        assert layout.encode(msg) == data  # what decodes is canonical


@given(st.integers(0, 0xFFFF), st.binary(min_size=1, max_size=6), st.binary(min_size=2, max_size=2))
def test_framed_messages_round_trip(index: int, body: bytes, mac: bytes) -> None:
    msg = Framed(index=index, body=body, mac=mac)
    assert FRAMED.decode(memoryview(FRAMED.encode(msg))) == msg


def test_public_api_is_pinned() -> None:
    assert sorted(codec.__all__) == [
        "Address", "Bytes", "Candidates", "Const", "Enumerated", "Kind", "Layout", "Payload",
        "Reason", "Rest", "U16", "U16LE", "U32", "U32LE", "U64", "U8", "UInt",
    ]  # fmt: skip
