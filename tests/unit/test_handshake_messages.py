"""The handshake messages' codec: layouts of docs/crypto.md, headers the machines hash."""

from __future__ import annotations

import pytest
from hypothesis import given

from meshcore.errors import DecodeError
from meshcore.proto import handshake
from meshcore.proto import handshake_messages as module
from meshcore.proto.handshake_messages import (
    BISCUIT_BYTES,
    CONFIRM_HEADER_BYTES,
    HANDSHAKE_CONFIRM_MIN_BYTES,
    HANDSHAKE_INIT_BYTES,
    HANDSHAKE_RESPONSE_BYTES,
    INIT_MAC1_OFFSET,
    MAX_CONFIRM_PAYLOAD_BYTES,
    RESPONSE_MAC1_OFFSET,
    HandshakeConfirm,
    HandshakeInit,
    HandshakeResponse,
    decode_handshake_confirm_untrusted,
    decode_handshake_init_untrusted,
    decode_handshake_response_untrusted,
)
from meshcore.proto.packet import PacketType
from meshcore.testing._handshake_strategies import handshake_confirms, handshake_messages

TYPES = {
    HandshakeInit: PacketType.HANDSHAKE_INIT,
    HandshakeResponse: PacketType.HANDSHAKE_RESPONSE,
    HandshakeConfirm: PacketType.HANDSHAKE_CONFIRM,
}


def test_sizes_and_offsets_are_those_of_the_byte_layout() -> None:
    assert (HANDSHAKE_INIT_BYTES, HANDSHAKE_RESPONSE_BYTES) == (2392, 2428)
    assert (INIT_MAC1_OFFSET, RESPONSE_MAC1_OFFSET) == (2360, 2396)
    assert (CONFIRM_HEADER_BYTES, BISCUIT_BYTES, HANDSHAKE_CONFIRM_MIN_BYTES) == (12, 160, 204)
    assert HANDSHAKE_CONFIRM_MIN_BYTES + MAX_CONFIRM_PAYLOAD_BYTES == 4096


@given(handshake_messages())
def test_the_header_the_machines_hash_is_the_start_of_the_encoding(
    msg: HandshakeInit | HandshakeResponse | HandshakeConfirm,
) -> None:
    data = msg.encode()
    assert data.startswith(msg.header())
    assert data[0] == TYPES[type(msg)]


@given(handshake_confirms(64))
def test_msg3_ends_with_mac1_after_the_payload(msg: HandshakeConfirm) -> None:
    data = msg.encode()
    assert data[-16:] == msg.mac1
    assert data[172:-16] == msg.encrypted_payload
    assert decode_handshake_confirm_untrusted(memoryview(data)) == msg


def test_indices_are_little_endian() -> None:
    msg = decode_handshake_init_untrusted(b"\x01\x01\x02\x00\x04\x03\x02\x01" + bytes(2384))
    assert (msg.reserved, msg.sender_index) == (2, 0x01020304)


@pytest.mark.parametrize(
    "decode",
    [
        decode_handshake_init_untrusted,
        decode_handshake_response_untrusted,
        decode_handshake_confirm_untrusted,
    ],
)
def test_a_message_of_another_type_is_refused_by_its_type(decode: object) -> None:
    assert callable(decode)
    with pytest.raises(DecodeError, match="type"):
        decode(b"\x09\x01" + bytes(2426))


def test_constructing_a_message_with_a_wrong_field_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="mac1 must be 16 bytes"):
        HandshakeConfirm(1, 2, bytes(BISCUIT_BYTES), bytes(16), b"short")
    with pytest.raises(ValueError, match="encrypted_payload is 15 bytes, at least 16"):
        HandshakeConfirm(1, 2, bytes(BISCUIT_BYTES), bytes(15), bytes(16))


def test_the_handshake_module_re_exports_the_messages() -> None:
    for name in (
        "HandshakeInit", "HandshakeResponse", "HandshakeConfirm", "MSG_INIT", "MSG_RESPONSE",
        "MSG_CONFIRM", "BISCUIT_BYTES", "HANDSHAKE_INIT_BYTES", "HANDSHAKE_RESPONSE_BYTES",
        "HANDSHAKE_CONFIRM_MIN_BYTES", "MAX_CONFIRM_PAYLOAD_BYTES",
        "decode_handshake_init_untrusted", "decode_handshake_response_untrusted",
        "decode_handshake_confirm_untrusted",
    ):  # fmt: skip
        assert getattr(handshake, name) is getattr(module, name)


def test_public_api_is_pinned() -> None:
    assert sorted(module.__all__) == [
        "BISCUIT_BYTES", "BISCUIT_KEY_ID_BYTES", "BISCUIT_NONCE_BYTES", "BISCUIT_PLAINTEXT",
        "CONFIRM_HEADER_BYTES", "HANDSHAKE_CONFIRM_MIN_BYTES", "HANDSHAKE_INIT_BYTES",
        "HANDSHAKE_RESPONSE_BYTES", "HandshakeConfirm", "HandshakeInit", "HandshakeResponse",
        "INIT_MAC1_OFFSET", "MAX_CONFIRM_PAYLOAD_BYTES", "MSG_CONFIRM", "MSG_INIT",
        "MSG_RESPONSE", "RESPONSE_MAC1_OFFSET", "confirm_header",
        "decode_handshake_confirm_untrusted", "decode_handshake_init_untrusted",
        "decode_handshake_response_untrusted", "init_header", "response_header",
    ]  # fmt: skip
