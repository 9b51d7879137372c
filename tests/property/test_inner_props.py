"""Properties of the frame-plaintext codec: round trips for every type and padding, and a
decoder that is total over arbitrary and near-valid bytes."""

from __future__ import annotations

import random
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.errors import DecodeError
from meshcore.proto import inner
from meshcore.testing import _wire_strategies as ws

PER_TYPE: dict[str, st.SearchStrategy[inner.InnerMessage]] = {
    "Data": ws.data_frames(),
    "Keepalive": ws.keepalives(),
    "Ack": ws.acks(),
    "PathChallenge": ws.path_challenges(),
    "PathResponse": ws.path_responses(),
    "Endpoints": ws.endpoints_frames(),
    "RekeyFragment": ws.rekey_fragments(),
    "Close": ws.inner_closes(),
    "Eof": ws.inner_eofs(),
}
PAD_TO = st.one_of(st.sampled_from([1, 16]), st.integers(1, 256))


def _decode_or_none(data: bytes | bytearray | memoryview) -> inner.InnerMessage | None:
    """Decode; None on DecodeError. Any other exception propagates and fails the test."""
    try:
        return inner.decode_inner_untrusted(data)
    except DecodeError:
        return None


def _unpadded(data: bytes) -> bytes:
    """The plaintext with its padding removed and pad_len set to 0."""
    return data[:1] + b"\x00" + data[2 : len(data) - data[1]]


def test_there_is_a_strategy_for_every_message_class() -> None:
    assert sorted(PER_TYPE) == sorted(t.__name__ for t in get_args(inner.InnerMessage))


@pytest.mark.parametrize("name", sorted(PER_TYPE))
@settings(max_examples=50)
@given(data=st.data(), pad_to=PAD_TO)
def test_round_trip_is_identity_and_canonical(name: str, data: st.DataObject, pad_to: int) -> None:
    msg = data.draw(PER_TYPE[name])
    raw = inner.encode_inner(msg, pad_to)
    assert len(raw) % pad_to == 0
    decoded = inner.decode_inner_untrusted(raw)
    assert type(decoded) is type(msg)
    assert decoded == msg
    assert inner.encode_inner(decoded, pad_to) == raw


@given(ws.data_frames(), PAD_TO)
def test_encode_data_is_encode_inner_of_data(msg: inner.Data, pad_to: int) -> None:
    assert inner.encode_data(msg.seq, msg.ack, msg.payload, pad_to) == inner.encode_inner(
        msg, pad_to
    )


@given(ws.inner_messages(), st.binary(min_size=1, max_size=64))
def test_decoding_a_slice_never_sees_the_bytes_after_it(
    msg: inner.InnerMessage, after: bytes
) -> None:
    raw = inner.encode_inner(msg)
    backing = memoryview(raw + after)
    assert inner.decode_inner_untrusted(backing[: len(raw)]) == msg
    for cut in (len(raw) - 1, len(raw) // 2):
        view = _decode_or_none(backing[:cut])
        assert view == _decode_or_none(raw[:cut])


LARGE_BYTES = st.builds(
    lambda size, seed: random.Random(seed).randbytes(size),
    st.integers(60_000, 70_000),
    st.integers(0, 2**64),
)


@given(st.binary(max_size=2_000))
def test_arbitrary_bytes_raise_only_decode_error_whatever_the_buffer_type(data: bytes) -> None:
    expected = _decode_or_none(data)
    strided = memoryview(bytes(b for x in data for b in (x, 0xEE)))[::2]
    for form in (bytearray(data), memoryview(data), strided):
        assert _decode_or_none(form) == expected


@settings(max_examples=10)
@given(st.one_of(st.binary(max_size=70_000), LARGE_BYTES))
def test_inputs_up_to_70_kb_raise_only_decode_error(data: bytes) -> None:
    _decode_or_none(data)
    _decode_or_none(bytes([inner.InnerType.DATA, 0]) + data)


@given(st.sampled_from(inner.InnerType), st.binary(max_size=1_500))
def test_accepted_bodies_after_a_valid_header_are_canonical(
    msg_type: inner.InnerType, body: bytes
) -> None:
    data = bytes([msg_type, 0]) + body
    decoded = _decode_or_none(data)
    if decoded is not None:
        assert inner.encode_inner(decoded, pad_to=1) == data


@given(ws.mutated_encodings(ws.inner_messages(), inner.encode_inner))
def test_mutated_encodings_decode_canonically_or_raise_decode_error(data: bytes) -> None:
    decoded = _decode_or_none(data)
    if decoded is not None:
        # Padding is the sender's choice; everything else is the one canonical encoding.
        assert inner.encode_inner(decoded, pad_to=1) == _unpadded(data)
