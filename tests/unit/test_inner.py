"""Frame plaintexts: layouts, padding, field validation and every way decoding must fail."""

from __future__ import annotations

import struct

import pytest

from meshcore.errors import DecodeError, MessageTooLarge
from meshcore.proto import inner
from meshcore.proto.constants import (
    MAX_INNER_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_REKEY_FRAGMENTS,
    REKEY_FRAGMENT_BYTES,
)
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.inner import (
    Ack,
    Close,
    Data,
    Endpoints,
    Eof,
    InnerType,
    Keepalive,
    PathChallenge,
    PathResponse,
    RekeyFragment,
    decode_inner_untrusted,
    encode_data,
    encode_inner,
)

SAMPLES: list[inner.InnerMessage] = [
    Data(1, 2, b"hello"),
    Keepalive(),
    Ack(2**64 - 1),
    PathChallenge(bytes(range(16))),
    PathResponse(bytes(range(16, 32))),
    Endpoints((Endpoint("192.0.2.1", 7000), Endpoint("2001:db8::1", 7001))),
    RekeyFragment(0xDEADBEEF, 1, 3, b"chunk"),
    Close(1000, "bye ✓"),
    Eof(7, 3),
]
IDS = [type(m).__name__ for m in SAMPLES]


def test_public_api_is_pinned() -> None:
    assert sorted(inner.__all__) == sorted(
        [
            "CLOSE_APPLICATION",
            "CLOSE_FINISHED",
            "INNER_DATA_HEADER_BYTES",
            "Ack",
            "Close",
            "Data",
            "Endpoints",
            "Eof",
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
    )


def test_samples_cover_every_inner_type_once() -> None:
    assert sorted(type(m).TYPE for m in SAMPLES) == sorted(InnerType)


# --- layouts and padding ---------------------------------------------------------------------


def test_keepalive_is_type_pad_len_and_zeros() -> None:
    assert encode_inner(Keepalive()) == b"\x02\x0e" + bytes(14)


def test_data_layout_is_header_payload_padding() -> None:
    raw = encode_inner(Data(1, 2, b"abc"), pad_to=1)
    assert raw == b"\x01\x00" + struct.pack(">QQ", 1, 2) + b"abc"
    assert inner.INNER_DATA_HEADER_BYTES == 18


def test_rekey_fragment_layout() -> None:
    raw = encode_inner(RekeyFragment(7, 0, 2, b"xy"), pad_to=1)
    assert raw == b"\x07\x00" + struct.pack(">IBB", 7, 0, 2) + b"xy"


def test_eof_layout_is_seq_and_ack_like_a_data_header() -> None:
    assert encode_inner(Eof(5, 2), pad_to=1) == b"\x09\x00" + (5).to_bytes(8, "big") + (
        2
    ).to_bytes(8, "big")
    assert inner.InnerType.EOF == 9  # the number reserved for the half-close


def test_close_layout_has_length_prefixed_reason() -> None:
    assert encode_inner(Close(3, "ok"), pad_to=1) == b"\x08\x00\x00\x03\x00\x02ok"


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
@pytest.mark.parametrize("pad_to", [1, 2, 16, 100, 256])
def test_plaintext_is_a_multiple_of_pad_to_and_round_trips(
    msg: inner.InnerMessage, pad_to: int
) -> None:
    raw = encode_inner(msg, pad_to)
    assert len(raw) % pad_to == 0
    assert raw[1] < pad_to
    assert decode_inner_untrusted(raw) == msg


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
def test_pad_to_one_adds_no_padding(msg: inner.InnerMessage) -> None:
    assert encode_inner(msg, 1)[1] == 0


@pytest.mark.parametrize("pad_to", [0, -16, 257])
def test_pad_to_outside_1_to_256_is_refused(pad_to: int) -> None:
    with pytest.raises(ValueError, match="pad_to"):
        encode_inner(Keepalive(), pad_to)
    with pytest.raises(ValueError, match="pad_to"):
        encode_data(0, 0, b"", pad_to)


def test_largest_data_pads_only_up_to_max_inner_bytes() -> None:
    raw = encode_data(0, 0, bytes(MAX_MESSAGE_BYTES), pad_to=256)
    assert len(raw) == MAX_INNER_BYTES
    assert decode_inner_untrusted(raw) == Data(0, 0, bytes(MAX_MESSAGE_BYTES))


def test_encode_data_matches_encode_inner_and_takes_memoryview() -> None:
    assert encode_data(5, 6, memoryview(b"xyz")) == encode_inner(Data(5, 6, b"xyz"))


def test_encode_inner_refuses_a_non_message() -> None:
    with pytest.raises(TypeError, match="not an inner message"):
        encode_inner(b"data")  # type: ignore[arg-type]


# --- field validation ---------------------------------------------------------------------


def test_data_payload_over_max_message_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 65536"):
        Data(0, 0, bytes(MAX_MESSAGE_BYTES + 1))
    with pytest.raises(ValueError, match="at most 65536"):
        encode_data(0, 0, bytes(MAX_MESSAGE_BYTES + 1))


@pytest.mark.parametrize(("seq", "ack"), [(-1, 0), (0, 2**64)])
def test_encode_data_refuses_seq_or_ack_outside_u64(seq: int, ack: int) -> None:
    with pytest.raises(ValueError, match="outside u64"):
        encode_data(seq, ack, b"")


def test_path_challenge_data_must_be_16_bytes() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        PathChallenge(bytes(15))


@pytest.mark.parametrize(("index", "count"), [(0, 0), (3, 3), (0, MAX_REKEY_FRAGMENTS + 1)])
def test_rekey_fragment_needs_index_below_count_within_the_limit(index: int, count: int) -> None:
    with pytest.raises(ValueError):
        RekeyFragment(1, index, count, b"")


def test_rekey_fragment_chunk_over_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 1150"):
        RekeyFragment(1, 0, 1, bytes(REKEY_FRAGMENT_BYTES + 1))


def test_close_code_must_be_u16() -> None:
    with pytest.raises(ValueError, match="outside u16"):
        Close(65536, "")


def test_repr_does_not_show_path_challenge_data_or_payloads() -> None:
    assert bytes(range(16)).hex()[:8] not in repr(PathChallenge(bytes(range(16))))
    assert repr(Data(1, 2, b"secret")) == "Data(seq=1, ack=2, payload=<6 bytes>)"


# --- decoding failures ---------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"\x02"])
def test_input_shorter_than_the_header_is_refused(data: bytes) -> None:
    with pytest.raises(DecodeError, match="truncated"):
        decode_inner_untrusted(data)


@pytest.mark.parametrize("msg_type", [0, 10, 255])
def test_unknown_inner_type_is_refused(msg_type: int) -> None:
    with pytest.raises(DecodeError, match=f"unknown inner frame type {msg_type}"):
        decode_inner_untrusted(bytes([msg_type, 0]))


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
def test_non_zero_padding_is_refused(msg: inner.InnerMessage) -> None:
    raw = bytearray(encode_inner(msg, 16))
    if raw[1] == 0:
        raw = bytearray(encode_inner(msg, 32))
    raw[-1] = 1
    with pytest.raises(DecodeError, match="padding is not all zero"):
        decode_inner_untrusted(bytes(raw))


def test_pad_len_longer_than_the_plaintext_is_refused() -> None:
    with pytest.raises(DecodeError, match="pad_len 5 is longer"):
        decode_inner_untrusted(b"\x02\x05\x00\x00")


@pytest.mark.parametrize("msg", [m for m in SAMPLES if encode_inner(m, 1) != b"\x02\x00"], ids=str)
def test_every_truncated_body_is_refused(msg: inner.InnerMessage) -> None:
    raw = encode_inner(msg, 1)
    fixed = {Data: 18, RekeyFragment: 8}.get(type(msg))  # bodies that end in free-length bytes
    for size in range(2, fixed if fixed else len(raw)):
        with pytest.raises(DecodeError):
            decode_inner_untrusted(raw[:size])


@pytest.mark.parametrize(
    "msg",
    [Keepalive(), Ack(1), PathChallenge(bytes(16)), Endpoints(()), Close(0, "x"), Eof(1, 0)],
    ids=str,
)
def test_trailing_body_bytes_are_refused(msg: inner.InnerMessage) -> None:
    with pytest.raises(DecodeError, match="trailing"):
        decode_inner_untrusted(encode_inner(msg, 1) + b"\x00")


def test_plaintext_over_max_inner_bytes_is_refused() -> None:
    with pytest.raises(MessageTooLarge):
        decode_inner_untrusted(b"\x01\x00" + bytes(MAX_INNER_BYTES - 1))


def test_data_payload_over_max_message_bytes_is_refused_by_the_decoder() -> None:
    raw = b"\x01\x00" + struct.pack(">QQ", 0, 0) + bytes(MAX_MESSAGE_BYTES + 1)
    with pytest.raises(MessageTooLarge, match="Data payload of 65537 bytes"):
        decode_inner_untrusted(raw)


def test_rekey_fragment_chunk_over_limit_is_refused_by_the_decoder() -> None:
    raw = b"\x07\x00" + struct.pack(">IBB", 1, 0, 1) + bytes(REKEY_FRAGMENT_BYTES + 1)
    with pytest.raises(MessageTooLarge, match="at most 1150"):
        decode_inner_untrusted(raw)


def test_rekey_fragment_index_not_below_count_is_refused_by_the_decoder() -> None:
    raw = b"\x07\x00" + struct.pack(">IBB", 1, 2, 2)
    with pytest.raises(DecodeError, match="index=2 is not below count=2"):
        decode_inner_untrusted(raw)


def test_close_reason_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(DecodeError, match="not valid UTF-8"):
        decode_inner_untrusted(b"\x08\x00\x00\x01\x00\x01\xff")


def test_endpoint_with_wrong_ip_family_length_is_refused() -> None:
    raw = b"\x06\x00\x01" + b"\x04" + bytes(range(1, 17)) + b"\x00\x05"  # IPv4, IPv6-sized
    with pytest.raises(DecodeError, match="trailing"):
        decode_inner_untrusted(raw)
    raw = b"\x06\x00\x01" + b"\x06" + b"\x01\x02\x03\x04" + b"\x00\x05"  # IPv6 family, too short
    with pytest.raises(DecodeError, match="truncated IPv6"):
        decode_inner_untrusted(raw)


# --- memory safety ---------------------------------------------------------------------------


def _outcome(data: bytes | memoryview) -> object:
    try:
        return decode_inner_untrusted(data)
    except DecodeError as exc:
        return str(exc)


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
def test_decode_never_reads_past_a_memoryview_slice(msg: inner.InnerMessage) -> None:
    raw = encode_inner(msg, 1)
    backing = bytearray(raw + b"\xa5" * 32)
    assert decode_inner_untrusted(memoryview(backing)[: len(raw)]) == msg
    # Cut short, a view must decode exactly as a copy of the same bytes: the garbage after
    # the slice is never seen.
    for cut in range(2, len(raw)):
        assert _outcome(memoryview(backing)[:cut]) == _outcome(raw[:cut])


def test_decoded_data_payload_is_an_independent_copy() -> None:
    backing = bytearray(encode_data(1, 2, b"payload", pad_to=1))
    msg = decode_inner_untrusted(memoryview(backing))
    backing[-1] ^= 0xFF
    assert isinstance(msg, Data)
    assert type(msg.payload) is bytes
    assert msg.payload == b"payload"


@pytest.mark.parametrize("msg", SAMPLES, ids=IDS)
def test_non_contiguous_memoryview_decodes_like_its_bytes(msg: inner.InnerMessage) -> None:
    raw = encode_inner(msg)
    strided = memoryview(bytes(b for x in raw for b in (x, 0xEE)))[::2]
    assert decode_inner_untrusted(strided) == msg
