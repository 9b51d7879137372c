"""Relay control messages: byte layouts, field validation and every way decoding must fail."""

from __future__ import annotations

import struct

import attrs
import pytest

from meshcore.errors import DecodeError, MessageTooLarge, UnsupportedVersion
from meshcore.proto import wire
from meshcore.proto.constants import (
    MAX_CANDIDATES,
    MAX_CONTROL_BYTES,
    MAX_FRAME_BYTES,
    MAX_REASON_BYTES,
    MLKEM768_CT_BYTES,
    MLKEM768_PK_BYTES,
    PROTOCOL_VERSION,
)
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.wire import (
    Accept,
    Auth,
    Challenge,
    CircuitClose,
    CircuitCredit,
    CircuitOpen,
    CircuitUdp,
    CircuitWindow,
    Close,
    Connect,
    ControlType,
    Error,
    ErrorCode,
    Hello,
    Invite,
    ObserveAddress,
    ObservedAddress,
    Paired,
    Ping,
    Pong,
    Registered,
    Reject,
    RelayChallenge,
    Relayed,
    RelayIdentity,
    RelayProof,
    Role,
    clip_reason,
    decode_control_untrusted,
    encode_control,
    encode_relayed,
)

V4 = Endpoint("192.0.2.1", 7000)
V6 = Endpoint("2001:db8::1", 7001)
PEER = bytes(range(32))
X = b"\x11" * 32
KEM = b"\x22" * MLKEM768_PK_BYTES

SAMPLES: list[wire.ControlMessage] = [
    Hello(X, KEM, (V4, V6)),
    Challenge(b"\x33" * 32, X, b"\x44" * MLKEM768_CT_BYTES),
    Auth(b"\x55" * 32),
    Registered(PEER, V6),
    Connect(7, PEER),
    Invite(7, PEER, X, KEM, V4, (V6,)),
    Accept(7),
    Reject(7, ErrorCode.REJECTED, "not on my allow-list"),
    Paired(7, 2**64 - 1, Role.RESPONDER, PEER, X, KEM, V4, (V4, V6)),
    CircuitOpen(0, PEER),
    CircuitClose(9, ErrorCode.NONE, ""),
    Relayed(9, b"opaque frame"),
    Ping(1),
    Pong(2**64 - 1),
    Error(ErrorCode.AUTH_FAILED, "wrong MAC"),
    Close(ErrorCode.SHUTDOWN, "relay restarting ✓"),
    RelayIdentity(X, KEM),
    RelayChallenge(b"\x66" * 32, X, b"\x77" * MLKEM768_CT_BYTES),
    RelayProof(b"\x88" * 32),
    ObserveAddress(3),
    ObservedAddress(3, V6),
    CircuitCredit(9, 65536),
    CircuitWindow(9, 4 * 1024 * 1024),
    CircuitUdp(9, bytes(range(16)), 7443),
]
IDS = [type(m).__name__ for m in SAMPLES]


def test_public_api_is_pinned() -> None:
    assert sorted(wire.__all__) == sorted(
        [
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
            "Relayed",
            "RelayChallenge",
            "RelayIdentity",
            "RelayProof",
            "Role",
            "clip_reason",
            "decode_control_untrusted",
            "encode_control",
            "encode_relayed",
        ]
    )


def test_samples_cover_every_control_type_once() -> None:
    assert sorted(type(m).TYPE for m in SAMPLES) == sorted(ControlType)


def test_error_code_values_are_pinned() -> None:
    # Codes are on the wire: renumbering one breaks interoperability.
    assert {c.name: c.value for c in ErrorCode} == {
        "NONE": 0,
        "BAD_MESSAGE": 1,
        "UNSUPPORTED_VERSION": 2,
        "AUTH_FAILED": 3,
        "TIMEOUT": 4,
        "RATE_LIMITED": 5,
        "PEER_UNKNOWN": 6,
        "PEER_OFFLINE": 7,
        "REJECTED": 8,
        "NOT_ALLOWED": 9,
        "CAPACITY": 10,
        "SHUTDOWN": 11,
        "REPLACED": 12,
        "CIRCUIT_UNKNOWN": 13,
        "QUEUE_OVERFLOW": 14,
        "TOO_LARGE": 15,
        "INTERNAL": 16,
    }


# --- layouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
def test_every_message_starts_with_version_and_type(msg: wire.ControlMessage) -> None:
    assert encode_control(msg)[:2] == bytes([PROTOCOL_VERSION, type(msg).TYPE])


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
def test_sample_round_trips_through_bytes_bytearray_and_memoryview(
    msg: wire.ControlMessage,
) -> None:
    raw = encode_control(msg)
    for form in (raw, bytearray(raw), memoryview(raw)):
        assert decode_control_untrusted(form) == msg


def test_ping_layout() -> None:
    assert encode_control(Ping(0x0102030405060708)) == b"\x01\x0d" + bytes(range(1, 9))


def test_observe_address_layouts() -> None:
    assert encode_control(ObserveAddress(5)) == b"\x01\x18" + (5).to_bytes(8, "big")
    answer = encode_control(ObservedAddress(5, V4))
    assert answer == b"\x01\x19" + (5).to_bytes(8, "big") + b"\x04\xc0\x00\x02\x01\x1b\x58"
    assert len(encode_control(ObservedAddress(5, V6))) == 29


def test_credit_layouts() -> None:
    assert encode_control(CircuitCredit(5, 7)) == b"\x01\x1a" + struct.pack(">QI", 5, 7)
    assert encode_control(CircuitWindow(5, 7)) == b"\x01\x1b" + struct.pack(">QI", 5, 7)
    token = bytes(range(16))
    udp = b"\x01\x1c" + struct.pack(">Q", 5) + token + struct.pack(">H", 7443)
    assert encode_control(CircuitUdp(5, token, 7443)) == udp


def test_relayed_layout_is_header_length_payload() -> None:
    assert encode_control(Relayed(5, b"abc")) == b"\x01\x0c" + struct.pack(">QI", 5, 3) + b"abc"
    assert wire.RELAYED_HEADER_BYTES == 14


def test_reject_layout_has_code_and_length_prefixed_utf8_reason() -> None:
    raw = encode_control(Reject(0x01020304, ErrorCode.REJECTED, "né"))
    assert raw == b"\x01\x08" + b"\x01\x02\x03\x04" + b"\x00\x08" + b"\x00\x03" + "né".encode()


def test_hello_layout_is_keys_then_counted_candidates() -> None:
    raw = encode_control(Hello(X, KEM, (V4,)))
    assert raw == b"\x01\x01" + X + KEM + b"\x01" + V4.encode()


def test_relay_verification_layouts_and_type_numbers() -> None:
    # Types 20-22: the relay's keys, the peer's challenge to them, the relay's answer.
    assert encode_control(RelayIdentity(X, KEM)) == b"\x01\x14" + X + KEM
    nonce, ct = b"\x66" * 32, b"\x77" * MLKEM768_CT_BYTES
    assert encode_control(RelayChallenge(nonce, X, ct)) == b"\x01\x15" + nonce + X + ct
    assert encode_control(RelayProof(b"\x88" * 32)) == b"\x01\x16" + b"\x88" * 32
    assert len(encode_control(RelayIdentity(X, KEM))) == 1218


def test_relay_proof_repr_hides_the_mac() -> None:
    assert "88" * 4 not in repr(RelayProof(b"\x88" * 32))


def test_paired_layout() -> None:
    raw = encode_control(Paired(1, 2, Role.INITIATOR, PEER, X, KEM, V6, ()))
    head = b"\x01\x09" + struct.pack(">IQB", 1, 2, 1)
    assert raw == head + PEER + X + KEM + V6.encode() + b"\x00"


def test_largest_messages_fit_max_control_bytes() -> None:
    full = tuple([V6] * MAX_CANDIDATES)
    paired = Paired(1, 2, Role.INITIATOR, PEER, X, KEM, V6, full)
    relayed = Relayed(1, bytes(MAX_FRAME_BYTES))
    for msg in (paired, relayed, Invite(1, PEER, X, KEM, V6, full), Hello(X, KEM, full)):
        assert len(encode_control(msg)) <= MAX_CONTROL_BYTES


def test_encode_relayed_matches_encode_control_and_takes_memoryview() -> None:
    assert encode_relayed(3, memoryview(b"xyz")) == encode_control(Relayed(3, b"xyz"))


def test_encode_control_refuses_a_non_message() -> None:
    with pytest.raises(TypeError, match="not a control message"):
        encode_control(V4)  # type: ignore[arg-type]


# --- field validation at construction -------------------------------------------------------


def test_key_of_wrong_length_cannot_be_constructed() -> None:
    with pytest.raises(ValueError, match="kem_public must be 1184 bytes, got 1183"):
        Hello(X, KEM[:-1], ())


def test_mutable_bytes_are_refused_as_fields() -> None:
    with pytest.raises(TypeError, match="must be bytes"):
        Auth(bytearray(32))  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, 2**32])
def test_request_id_outside_u32_is_refused(value: int) -> None:
    with pytest.raises(ValueError, match="outside u32"):
        Accept(value)


def test_circuit_id_outside_u64_is_refused() -> None:
    with pytest.raises(ValueError, match="outside u64"):
        CircuitOpen(2**64, PEER)


def test_plain_int_error_code_is_refused() -> None:
    with pytest.raises(TypeError, match="must be a member of ErrorCode"):
        Error(3, "x")  # type: ignore[arg-type]


def test_more_than_max_candidates_are_refused() -> None:
    with pytest.raises(ValueError, match="at most 16"):
        Hello(X, KEM, tuple([V4] * (MAX_CANDIDATES + 1)))


def test_candidates_must_be_a_tuple_of_endpoints() -> None:
    with pytest.raises(TypeError):
        Hello(X, KEM, [V4])  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Hello(X, KEM, ("1.2.3.4:5",))  # type: ignore[arg-type]


def test_reason_over_max_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 256"):
        Close(ErrorCode.NONE, "é" * (MAX_REASON_BYTES // 2 + 1))


def test_reason_with_a_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="non-printable"):
        Close(ErrorCode.NONE, "two\nlines")


def test_relayed_payload_over_max_frame_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="at most"):
        Relayed(1, bytes(MAX_FRAME_BYTES + 1))
    with pytest.raises(ValueError, match="at most"):
        encode_relayed(1, bytes(MAX_FRAME_BYTES + 1))


def test_encode_relayed_refuses_circuit_id_outside_u64() -> None:
    with pytest.raises(ValueError, match="u64"):
        encode_relayed(-1, b"")


def test_messages_are_immutable() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        Ping(1).nonce = 2  # type: ignore[misc]


def test_repr_shows_neither_whole_keys_nor_the_mac() -> None:
    mac = bytes(range(100, 132))
    assert mac.hex() not in repr(Auth(mac))
    assert mac[:4].hex() not in repr(Auth(mac))
    assert KEM.hex() not in repr(Hello(X, KEM, ()))
    assert repr(Relayed(1, b"secret payload")) == "Relayed(circuit_id=1, payload=<14 bytes>)"


def test_clip_reason_makes_any_text_a_valid_reason() -> None:
    clipped = clip_reason("line one\nline two\x1b[31m" + "€" * 200)
    assert clipped.startswith("line one line two [31m")
    assert len(clipped.encode()) <= MAX_REASON_BYTES
    assert Close(ErrorCode.NONE, clipped).reason == clipped


def test_clip_reason_cuts_at_a_character_boundary() -> None:
    clipped = clip_reason("€" * 100)  # 3 bytes each: 256 is not a multiple
    assert clipped == "€" * (MAX_REASON_BYTES // 3)


# --- decoding failures ---------------------------------------------------------------------


def _raw(msg: wire.ControlMessage) -> bytes:
    return encode_control(msg)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unknown_version_says_which_and_what_to_do(version: int) -> None:
    data = bytes([version]) + _raw(Ping(1))[1:]
    with pytest.raises(UnsupportedVersion) as info:
        decode_control_untrusted(data)
    assert str(info.value) == (
        f"unsupported protocol version {version} (this build speaks 1); "
        "upgrade meshcore on the older side so that both speak the same version"
    )
    assert info.value.version == version


def test_unknown_version_is_reported_even_for_an_unknown_long_message() -> None:
    with pytest.raises(UnsupportedVersion):
        decode_control_untrusted(b"\x02\xff" + bytes(MAX_CONTROL_BYTES))


@pytest.mark.parametrize("msg_type", [0, 17, 19, 23, 200, 255])
def test_unknown_type_is_refused(msg_type: int) -> None:
    with pytest.raises(DecodeError, match=f"unknown control message type {msg_type}"):
        decode_control_untrusted(bytes([PROTOCOL_VERSION, msg_type]) + bytes(8))


@pytest.mark.parametrize("data", [b"", b"\x01"])
def test_input_shorter_than_the_header_is_refused(data: bytes) -> None:
    with pytest.raises(DecodeError, match="truncated"):
        decode_control_untrusted(data)


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
def test_every_truncation_is_refused(msg: wire.ControlMessage) -> None:
    raw = _raw(msg)
    for size in {*range(max(0, len(raw) - 40), len(raw)), 2, 3, len(raw) // 2}:
        with pytest.raises(DecodeError):
            decode_control_untrusted(raw[:size])


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
def test_trailing_bytes_are_refused(msg: wire.ControlMessage) -> None:
    with pytest.raises(DecodeError):
        decode_control_untrusted(_raw(msg) + b"\x00")


def test_trailing_bytes_error_says_how_many() -> None:
    with pytest.raises(DecodeError, match="3 trailing bytes"):
        decode_control_untrusted(_raw(Ping(1)) + b"abc")


def test_message_over_max_control_bytes_is_refused() -> None:
    data = b"\x01\x01" + bytes(MAX_CONTROL_BYTES - 1)
    with pytest.raises(MessageTooLarge, match="at most"):
        decode_control_untrusted(data)


def test_relayed_payload_of_exactly_max_frame_bytes_round_trips() -> None:
    msg = Relayed(1, b"\x5a" * MAX_FRAME_BYTES)
    assert decode_control_untrusted(_raw(msg)) == msg


def test_relayed_length_over_max_frame_bytes_is_refused_before_reading_it() -> None:
    data = b"\x01\x0c" + struct.pack(">QI", 1, MAX_FRAME_BYTES + 1) + bytes(MAX_FRAME_BYTES + 1)
    with pytest.raises(MessageTooLarge, match="payload of 65793 bytes"):
        decode_control_untrusted(data)


def test_relayed_length_field_larger_than_the_payload_is_refused() -> None:
    data = b"\x01\x0c" + struct.pack(">QI", 1, 10) + b"short"
    with pytest.raises(DecodeError, match="truncated"):
        decode_control_untrusted(data)


def test_relayed_length_field_smaller_than_the_payload_is_refused() -> None:
    data = b"\x01\x0c" + struct.pack(">QI", 1, 2) + b"longer"
    with pytest.raises(DecodeError, match="4 trailing bytes"):
        decode_control_untrusted(data)


def test_reason_that_is_not_utf8_is_refused() -> None:
    data = b"\x01\x10\x00\x0b" + b"\x00\x02" + b"\xc3\x28"
    with pytest.raises(DecodeError, match="not valid UTF-8"):
        decode_control_untrusted(data)


def test_reason_with_surrogate_encoded_in_utf8_is_refused() -> None:
    data = b"\x01\x0f\x00\x01" + b"\x00\x03" + b"\xed\xa0\x80"
    with pytest.raises(DecodeError, match="not valid UTF-8"):
        decode_control_untrusted(data)


def test_reason_with_control_characters_is_refused() -> None:
    data = b"\x01\x0f\x00\x01" + b"\x00\x02" + b"a\n"
    with pytest.raises(DecodeError, match="non-printable"):
        decode_control_untrusted(data)


def test_reason_length_over_max_is_refused() -> None:
    data = b"\x01\x0f\x00\x01" + struct.pack(">H", MAX_REASON_BYTES + 1) + b"a" * 257
    with pytest.raises(DecodeError, match="at most 256"):
        decode_control_untrusted(data)


def test_unknown_error_code_is_refused() -> None:
    data = b"\x01\x0f" + struct.pack(">H", 999) + b"\x00\x00"
    with pytest.raises(DecodeError, match="unknown ErrorCode 999"):
        decode_control_untrusted(data)


@pytest.mark.parametrize("role", [0, 3, 255])
def test_unknown_role_is_refused(role: int) -> None:
    raw = bytearray(_raw(Paired(1, 2, Role.INITIATOR, PEER, X, KEM, V6, ())))
    raw[2 + 4 + 8] = role
    with pytest.raises(DecodeError, match=f"unknown Role {role}"):
        decode_control_untrusted(raw)


def test_candidate_count_over_max_is_refused() -> None:
    data = b"\x01\x01" + X + KEM + bytes([MAX_CANDIDATES + 1]) + V4.encode() * 17
    with pytest.raises(DecodeError, match="17 endpoints, at most 16"):
        decode_control_untrusted(data)


def test_endpoint_with_wrong_ip_family_length_is_refused() -> None:
    # Family byte says IPv6 but only an IPv4 address follows.
    data = b"\x01\x04" + PEER + b"\x06" + b"\x01\x02\x03\x04" + b"\x00\x05"
    with pytest.raises(DecodeError, match="bad Registered message: truncated IPv6"):
        decode_control_untrusted(data)


def test_endpoint_with_unknown_family_is_refused() -> None:
    data = b"\x01\x04" + PEER + b"\x05" + b"\x01\x02\x03\x04" + b"\x00\x05"
    with pytest.raises(DecodeError, match="unknown address family 5"):
        decode_control_untrusted(data)


# --- memory safety ---------------------------------------------------------------------------


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
def test_decode_never_reads_past_a_memoryview_slice(msg: wire.ControlMessage) -> None:
    raw = _raw(msg)
    # The bytes after the slice would complete a truncated message if the decoder read them.
    backing = bytearray(raw)
    assert decode_control_untrusted(memoryview(backing)[: len(raw)]) == msg
    with pytest.raises(DecodeError):
        decode_control_untrusted(memoryview(backing)[: len(raw) - 1])


def test_decoded_relayed_payload_is_an_independent_copy() -> None:
    backing = bytearray(_raw(Relayed(1, b"payload")))
    msg = decode_control_untrusted(memoryview(backing))
    backing[-1] ^= 0xFF
    assert isinstance(msg, Relayed)
    assert type(msg.payload) is bytes
    assert msg.payload == b"payload"


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
def test_non_contiguous_memoryview_decodes_like_its_bytes(msg: wire.ControlMessage) -> None:
    raw = _raw(msg)
    strided = memoryview(bytes(b for x in raw for b in (x, 0xEE)))[::2]
    assert decode_control_untrusted(strided) == msg


def test_memoryview_of_another_item_size_is_read_as_bytes() -> None:
    raw = _raw(Ping(7)) + b"\x00\x00"  # 12 bytes: a whole number of u32 items
    view = memoryview(bytearray(raw)).cast("I")
    with pytest.raises(DecodeError, match="2 trailing bytes"):
        decode_control_untrusted(view)
