"""The WebSocket opening handshake. The server's half: a valid upgrade is answered with the
RFC's accept token, anything else is refused with an HTTP status, and no bytes raise. The
client's half: our request passes our server, and an answer that is no upgrade (a status,
a header, the accept token, an extension or a subprotocol we did not offer) is refused."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto.wsupgrade import (
    MAX_REQUEST_BYTES,
    Accepted,
    Refusal,
    Refused,
    Upgrade,
    check_response,
    client_request,
    parse_upgrade,
    request_end,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 §1.3's example
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # and its answer


def request(*extra: bytes, drop: bytes = b"", first: bytes = b"GET / HTTP/1.1") -> bytes:
    headers = [
        b"Host: relay.test:7443",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + KEY,
        b"Sec-WebSocket-Version: 13",
        *extra,
    ]
    kept = [h for h in headers if not drop or not h.lower().startswith(drop.lower())]
    return b"\r\n".join([first, *kept]) + b"\r\n\r\n"


def test_a_valid_upgrade_gets_the_rfc_accept_token() -> None:
    answer = parse_upgrade(request(), ())
    assert isinstance(answer, Upgrade) and answer.subprotocol is None
    assert answer.response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: " + ACCEPT + b"\r\n" in answer.response
    assert (
        answer.response.endswith(b"\r\n\r\n") and b"Sec-WebSocket-Protocol" not in answer.response
    )


def test_the_first_offered_subprotocol_we_speak_is_agreed() -> None:
    offer = b"Sec-WebSocket-Protocol: chat, meshcore-credit.1 , other"
    answer = parse_upgrade(request(offer), ("meshcore-credit.1",))
    assert isinstance(answer, Upgrade) and answer.subprotocol == "meshcore-credit.1"
    assert b"\r\nSec-WebSocket-Protocol: meshcore-credit.1\r\n" in answer.response
    none = parse_upgrade(request(b"Sec-WebSocket-Protocol: chat"), ("meshcore-credit.1",))
    assert isinstance(none, Upgrade) and none.subprotocol is None


def test_header_names_and_tokens_are_case_insensitive_and_lists_combine() -> None:
    head = request(first=b"GET /relay HTTP/1.1").replace(
        b"Upgrade: websocket", b"uPgRaDe: WebSocket"
    )
    head = head.replace(b"Connection: Upgrade", b"Connection: keep-alive\r\nconnection: upgrade")
    assert isinstance(parse_upgrade(head, ()), Upgrade)


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (request(first=b"POST / HTTP/1.1"), 405),
        (request(first=b"GET / HTTP/1.0"), 400),
        (request(first=b"GET  HTTP/1.1"), 400),
        (request(drop=b"Host"), 400),
        (request(drop=b"Upgrade"), 400),
        (request(drop=b"Connection"), 400),
        (request(drop=b"Sec-WebSocket-Key"), 400),
        (request(drop=b"Sec-WebSocket-Version"), 426),
        (request().replace(b"Version: 13", b"Version: 8"), 426),
        (request().replace(KEY, b"c2hvcnQ="), 400),  # 5 bytes
        (request().replace(KEY, b"not base64!!"), 400),
        (request(b"Bad Header Line"), 400),
        (request(b"X-Folded: a\r\n  continued"), 400),
        (request(b"X-Big: " + b"a" * MAX_REQUEST_BYTES), 431),
        (b"GET / HTTP/1.1\r\n", 400),
        (b"\r\n\r\n", 400),
    ],
)
def test_anything_else_is_refused_with_an_http_status(head: bytes, status: int) -> None:
    answer = parse_upgrade(head, ())
    assert isinstance(answer, Refusal) and answer.reason
    assert answer.response.startswith(f"HTTP/1.1 {status} ".encode())
    assert answer.response.endswith(b"\r\n\r\n") and b"Connection: close" in answer.response


def test_the_head_ends_after_its_blank_line() -> None:
    assert request_end(b"GET / HTTP/1.1\r\nHost: x\r\n") == -1
    assert request_end(b"GET / HTTP/1.1\r\n\r\n\x82\x00") == 18


@given(st.binary(max_size=600), st.lists(st.sampled_from(["a", "meshcore-credit.1"])))
def test_any_bytes_give_an_answer_and_never_raise(head: bytes, ours: list[str]) -> None:
    answer = parse_upgrade(head, ours)
    assert isinstance(answer, Upgrade | Refusal)
    assert answer.response.startswith(b"HTTP/1.1 ")


@given(st.binary(min_size=16, max_size=16))
def test_every_key_gets_its_accept_token(raw: bytes) -> None:
    key = base64.b64encode(raw)
    answer = parse_upgrade(request().replace(KEY, key), ())
    token = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
    assert isinstance(answer, Upgrade) and b"Sec-WebSocket-Accept: " + token in answer.response


# --- the client's half ----------------------------------------------------------------------


def answer_to(request_head: bytes, subprotocols: tuple[str, ...] = ()) -> bytes:
    upgrade = parse_upgrade(request_head, subprotocols)
    assert isinstance(upgrade, Upgrade)
    return upgrade.response


def test_our_request_is_accepted_by_our_server_and_its_answer_by_us() -> None:
    offered = ("meshcore-credit-udp.1", "meshcore-credit.1")
    head = client_request("relay.test:7443", "/x?y=1", KEY, offered)
    assert head.startswith(b"GET /x?y=1 HTTP/1.1\r\nHost: relay.test:7443\r\n")
    answer = answer_to(head, ("meshcore-credit.1",))
    assert check_response(answer, KEY, offered) == Accepted("meshcore-credit.1")
    assert check_response(answer_to(client_request("h", "/", KEY, ())), KEY, ()) == Accepted(None)


def test_the_rfc_example_answer_is_accepted() -> None:
    answer = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + ACCEPT + b"\r\n\r\n"
    )
    assert check_response(answer, KEY, ()) == Accepted(None)


GOOD = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: " + ACCEPT + b"\r\n"
)


@pytest.mark.parametrize(
    ("answer", "status", "words"),
    [
        (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 404, "HTTP 404, not 101"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", None, "status line"),
        (b"HTTP/1.1 101\r\n", None, "not an HTTP response head"),
        (GOOD.replace(b"Upgrade: websocket", b"Upgrade: h2c") + b"\r\n", 101, "Upgrade: websocket"),
        (GOOD.replace(b"Connection: Upgrade", b"Connection: close") + b"\r\n", 101, "Connection"),
        (GOOD.replace(ACCEPT, b"AAAA" + ACCEPT[4:]) + b"\r\n", 101, "does not match our key"),
        (GOOD + b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n", 101, "extension"),
        (GOOD + b"Sec-WebSocket-Protocol: other.1\r\n\r\n", 101, "did not offer"),
        (GOOD + b"Bad Header\r\n\r\n", 101, "malformed header"),
    ],
)
def test_answers_that_are_no_upgrade_are_refused_saying_why(
    answer: bytes, status: int | None, words: str
) -> None:
    refused = check_response(answer, KEY, ("meshcore-credit.1",))
    assert isinstance(refused, Refused) and refused.status == status and words in refused.reason


@given(st.binary(max_size=300))
def test_any_answer_is_accepted_or_refused_never_raises(answer: bytes) -> None:
    assert isinstance(check_response(answer + b"\r\n\r\n", KEY, ("a",)), Accepted | Refused)
    assert isinstance(check_response(GOOD + answer + b"\r\n\r\n", KEY, ("a",)), Accepted | Refused)
