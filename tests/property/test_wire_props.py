"""Properties of the control codec: canonical round trips for every message type, and a
decoder that is total over arbitrary and near-valid bytes."""

from __future__ import annotations

import random
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.errors import DecodeError
from meshcore.proto import wire
from meshcore.proto.constants import MAX_CONTROL_BYTES, PROTOCOL_VERSION
from meshcore.testing import _wire_strategies as ws

PER_TYPE: dict[str, st.SearchStrategy[wire.ControlMessage]] = {
    "Hello": ws.hellos(),
    "Challenge": ws.challenges(),
    "Auth": ws.auths(),
    "Registered": ws.registereds(),
    "Connect": ws.connects(),
    "Invite": ws.invites(),
    "Accept": ws.accepts(),
    "Reject": ws.rejects(),
    "Paired": ws.paireds(),
    "CircuitOpen": ws.circuit_opens(),
    "CircuitClose": ws.circuit_closes(),
    "Relayed": ws.relayeds(),
    "Ping": ws.pings(),
    "Pong": ws.pongs(),
    "Error": ws.error_messages(),
    "Close": ws.close_messages(),
    "RelayIdentity": ws.relay_identities(),
    "RelayChallenge": ws.relay_challenges(),
    "RelayProof": ws.relay_proofs(),
    "ObserveAddress": ws.observe_addresses(),
    "ObservedAddress": ws.observed_addresses(),
    "CircuitCredit": ws.circuit_credits(),
    "CircuitWindow": ws.circuit_windows(),
    "CircuitUdp": ws.circuit_udps(),
}


def _decode_or_none(data: bytes | bytearray | memoryview) -> wire.ControlMessage | None:
    """Decode; None on DecodeError. Any other exception propagates and fails the test."""
    try:
        return wire.decode_control_untrusted(data)
    except DecodeError:
        return None


def test_there_is_a_strategy_for_every_message_class() -> None:
    assert sorted(PER_TYPE) == sorted(t.__name__ for t in get_args(wire.ControlMessage))


@pytest.mark.parametrize("name", sorted(PER_TYPE))
@settings(max_examples=40)
@given(data=st.data())
def test_round_trip_is_identity_and_canonical(name: str, data: st.DataObject) -> None:
    msg = data.draw(PER_TYPE[name])
    raw = wire.encode_control(msg)
    decoded = wire.decode_control_untrusted(raw)
    assert type(decoded) is type(msg)
    assert decoded == msg
    assert wire.encode_control(decoded) == raw
    assert len(raw) <= MAX_CONTROL_BYTES


@given(ws.control_messages(), st.binary(min_size=1, max_size=64))
def test_decoding_a_slice_never_sees_the_bytes_after_it(
    msg: wire.ControlMessage, after: bytes
) -> None:
    raw = wire.encode_control(msg)
    backing = memoryview(raw + after)
    assert wire.decode_control_untrusted(backing[: len(raw)]) == msg
    assert _decode_or_none(backing[: len(raw) - 1]) is None


@given(st.binary(max_size=2_000))
def test_arbitrary_bytes_raise_only_decode_error_whatever_the_buffer_type(data: bytes) -> None:
    expected = _decode_or_none(data)
    strided = memoryview(bytes(b for x in data for b in (x, 0xEE)))[::2]
    for form in (bytearray(data), memoryview(data), strided):
        assert _decode_or_none(form) == expected


# Hypothesis draws small byte strings even with a large max_size, so large inputs are made
# from a drawn size and a seeded generator.
LARGE_BYTES = st.builds(
    lambda size, seed: random.Random(seed).randbytes(size),
    st.integers(60_000, 70_000),
    st.integers(0, 2**64),
)


@settings(max_examples=10)
@given(st.one_of(st.binary(max_size=70_000), LARGE_BYTES))
def test_inputs_up_to_70_kb_raise_only_decode_error(data: bytes) -> None:
    _decode_or_none(data)
    for msg_type in (wire.ControlType.RELAYED, wire.ControlType.HELLO, wire.ControlType.PAIRED):
        _decode_or_none(bytes([PROTOCOL_VERSION, msg_type]) + data)


@given(st.sampled_from(wire.ControlType), st.binary(max_size=3_000))
def test_bytes_after_a_valid_header_raise_only_decode_error(
    msg_type: wire.ControlType, body: bytes
) -> None:
    decoded = _decode_or_none(bytes([PROTOCOL_VERSION, msg_type]) + body)
    if decoded is not None:
        assert wire.encode_control(decoded) == bytes([PROTOCOL_VERSION, msg_type]) + body


@given(ws.mutated_encodings(ws.control_messages(), wire.encode_control))
def test_mutated_encodings_decode_canonically_or_raise_decode_error(data: bytes) -> None:
    decoded = _decode_or_none(data)
    if decoded is not None:
        # Whatever the decoder accepts is the one canonical encoding of what it returns.
        assert wire.encode_control(decoded) == data
