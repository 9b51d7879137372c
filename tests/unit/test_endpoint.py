"""Endpoint: canonical text and binary forms, user-input parsing, and the untrusted decoder."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given

from meshcore.errors import ConfigError, DecodeError
from meshcore.proto import endpoint as endpoint_module
from meshcore.proto.endpoint import (
    ENDPOINT_V4_BYTES,
    ENDPOINT_V6_BYTES,
    Endpoint,
    decode_endpoint_untrusted,
)
from meshcore.testing._wire_strategies import endpoints


def test_public_api_is_pinned() -> None:
    assert sorted(endpoint_module.__all__) == [
        "ENDPOINT_V4_BYTES",
        "ENDPOINT_V6_BYTES",
        "Endpoint",
        "decode_endpoint_untrusted",
    ]


# --- construction and text form ------------------------------------------------------------


def test_ipv6_host_is_stored_in_canonical_text_form() -> None:
    assert Endpoint("2001:DB8:0:0::0001", 80).host == "2001:db8::1"


def test_ipv4_mapped_ipv6_host_becomes_ipv4() -> None:
    ep = Endpoint("::ffff:192.0.2.7", 80)
    assert (ep.host, ep.family) == ("192.0.2.7", 4)


def test_equal_addresses_in_different_spellings_are_equal_endpoints() -> None:
    assert Endpoint("::0001", 5) == Endpoint("::1", 5)
    assert hash(Endpoint("::0001", 5)) == hash(Endpoint("::1", 5))


def test_str_of_ipv4_endpoint_is_host_colon_port() -> None:
    assert str(Endpoint("1.2.3.4", 5)) == "1.2.3.4:5"


def test_str_of_ipv6_endpoint_brackets_the_host() -> None:
    assert str(Endpoint("::1", 5)) == "[::1]:5"


@pytest.mark.parametrize("host", ["example.com", "1.2.3", "", "1.2.3.4.5", "::g"])
def test_host_that_is_not_an_ip_address_is_refused(host: str) -> None:
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 address"):
        Endpoint(host, 5)


def test_ipv6_scope_id_is_refused() -> None:
    with pytest.raises(ValueError, match="scope id"):
        Endpoint("fe80::1%eth0", 5)


@pytest.mark.parametrize("port", [0, -1, 65536])
def test_port_outside_1_to_65535_is_refused(port: int) -> None:
    with pytest.raises(ValueError, match=r"outside 1\.\.65535"):
        Endpoint("1.2.3.4", port)


def test_bool_port_is_refused() -> None:
    with pytest.raises(TypeError):
        Endpoint("1.2.3.4", True)


def test_non_str_host_is_refused() -> None:
    with pytest.raises(TypeError):
        Endpoint(b"1.2.3.4", 5)  # type: ignore[arg-type]


def test_endpoint_is_immutable() -> None:
    ep = Endpoint("1.2.3.4", 5)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ep.port = 6  # type: ignore[misc]


def test_from_sockaddr_drops_flowinfo_and_scope_id() -> None:
    assert Endpoint.from_sockaddr(("fe80::1%eth0", 7000, 0, 2)) == Endpoint("fe80::1", 7000)


# --- parse (user input) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1:7000", Endpoint("192.0.2.1", 7000)),
        ("[2001:db8::1]:7000", Endpoint("2001:db8::1", 7000)),
        ("  10.0.0.1:1  ", Endpoint("10.0.0.1", 1)),
    ],
)
def test_parse_accepts_ipv4_and_bracketed_ipv6(text: str, expected: Endpoint) -> None:
    assert Endpoint.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("192.0.2.1", "missing ':PORT'"),
        ("2001:db8::1:7000", "needs brackets"),
        ("[2001:db8::1]7000", r"missing '\]:PORT'"),
        ("[2001:db8::1", r"missing '\]:PORT'"),
        ("[192.0.2.1]:7000", "brackets are only for IPv6"),
        ("192.0.2.1:http", "is not a number"),
        ("192.0.2.1:", "is not a number"),
        ("192.0.2.1:70000", "outside 1..65535"),
        ("192.0.2.1:0", "outside 1..65535"),
        ("example.com:80", "not an IPv4 or IPv6 address"),
        ("[fe80::1%eth0]:80", "scope id"),
        ("1.2.3.4:٣", "is not a number"),
    ],
)
def test_parse_names_the_problem_in_a_config_error(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        Endpoint.parse(text)


@given(endpoints())
def test_parse_of_str_gives_the_same_endpoint(ep: Endpoint) -> None:
    assert Endpoint.parse(str(ep)) == ep


# --- binary form --------------------------------------------------------------------------


def test_ipv4_encoding_is_family_address_port() -> None:
    assert Endpoint("1.2.3.4", 0x1234).encode() == bytes([4, 1, 2, 3, 4, 0x12, 0x34])


def test_ipv6_encoding_is_family_address_port() -> None:
    assert Endpoint("::1", 80).encode() == bytes([6]) + bytes(15) + b"\x01" + b"\x00\x50"


@given(endpoints())
def test_decode_of_encode_is_identity_and_returns_the_next_offset(ep: Endpoint) -> None:
    raw = b"\xaa" + ep.encode() + b"\xbb"
    decoded, offset = decode_endpoint_untrusted(raw, 1)
    assert decoded == ep
    assert offset == 1 + len(ep.encode()) == 1 + ep.encoded_size
    assert raw[offset] == 0xBB


@pytest.mark.parametrize("family", [0, 5, 46, 255])
def test_decode_refuses_unknown_family(family: int) -> None:
    with pytest.raises(DecodeError, match="unknown address family"):
        decode_endpoint_untrusted(bytes([family]) + bytes(18), 0)


def test_decode_refuses_ipv6_family_with_ipv4_length() -> None:
    wrong = bytes([6]) + Endpoint("1.2.3.4", 5).encode()[1:]
    with pytest.raises(DecodeError, match="truncated IPv6 endpoint"):
        decode_endpoint_untrusted(wrong, 0)


@pytest.mark.parametrize("size", range(ENDPOINT_V6_BYTES))
def test_decode_refuses_every_truncation(size: int) -> None:
    with pytest.raises(DecodeError, match="truncated"):
        decode_endpoint_untrusted(Endpoint("2001:db8::1", 5).encode()[:size], 0)


def test_decode_refuses_offset_at_the_end() -> None:
    raw = Endpoint("1.2.3.4", 5).encode()
    with pytest.raises(DecodeError, match="truncated"):
        decode_endpoint_untrusted(raw, ENDPOINT_V4_BYTES)


def test_decode_refuses_port_zero() -> None:
    with pytest.raises(DecodeError, match="port 0"):
        decode_endpoint_untrusted(bytes([4, 1, 2, 3, 4, 0, 0]), 0)


def test_decode_refuses_ipv4_mapped_ipv6_as_non_canonical() -> None:
    mapped = bytes([6]) + bytes(10) + b"\xff\xff" + bytes([1, 2, 3, 4]) + b"\x00\x05"
    with pytest.raises(DecodeError, match="non-canonical"):
        decode_endpoint_untrusted(mapped, 0)


def test_decode_never_reads_past_a_memoryview_slice() -> None:
    raw = Endpoint("1.2.3.4", 5).encode()
    view = memoryview(raw + b"\x00")[: ENDPOINT_V4_BYTES - 1]
    with pytest.raises(DecodeError, match="truncated"):
        decode_endpoint_untrusted(view, 0)


def test_decode_reads_a_non_contiguous_memoryview_like_its_bytes() -> None:
    raw = Endpoint("2001:db8::1", 5).encode()
    strided = memoryview(bytes(b for x in raw for b in (x, 0xEE)))[::2]
    assert decode_endpoint_untrusted(strided, 0) == (Endpoint("2001:db8::1", 5), len(raw))


def test_decode_refuses_a_negative_offset() -> None:
    with pytest.raises(ValueError, match="negative"):
        decode_endpoint_untrusted(Endpoint("1.2.3.4", 5).encode(), -7)


def test_an_ipv4_peer_of_a_dual_stack_socket_is_its_ipv4_address() -> None:
    assert Endpoint.from_sockaddr(("::ffff:192.0.2.7", 9, 0, 0)) == Endpoint("192.0.2.7", 9)
    assert Endpoint.from_sockaddr(("fd00::7", 9, 0, 0)) == Endpoint("fd00::7", 9)
