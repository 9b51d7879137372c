"""The WebSocket opening handshake (RFC 6455 §4), sans-IO. The server's half: the peer's HTTP
upgrade request in, the 101 answer (or the refusal) out. The client's half: the request to
send, then the server's answer checked (`client_request`, `check_response`).

The relay answers one upgrade per registration; h11's general HTTP machinery cost it ~10 %
of a registration's CPU (docs/relay.md, "After a restart"), for a request whose every field
the RFC fixes. `parse_upgrade` is total over untrusted bytes: an `Upgrade` or a `Refusal`,
never an exception.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from typing import Final

import attrs

__all__ = [
    "MAX_REQUEST_BYTES",
    "Accepted",
    "Refusal",
    "Refused",
    "Upgrade",
    "check_response",
    "client_request",
    "parse_upgrade",
    "request_end",
]

MAX_REQUEST_BYTES: Final = 8192
"""The longest upgrade request head taken; a longer one is refused (431)."""
_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
_TOKEN: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2
_FIELD_VALUE: Final = re.compile(rb"[\t\x20-\x7e\x80-\xff]*")


@attrs.frozen
class Upgrade:
    """An upgrade request to accept: the 101 to send and the subprotocol it agrees to."""

    response: bytes
    subprotocol: str | None


@attrs.frozen
class Refusal:
    """A request refused: the HTTP answer to send (then close), and why, for the log."""

    response: bytes
    reason: str


def request_end(buffer: bytes | bytearray) -> int:
    """Where the request head ends in `buffer` (the index after its blank line), or -1."""
    end = buffer.find(b"\r\n\r\n")
    return -1 if end < 0 else end + 4


def parse_upgrade(head: bytes, subprotocols: Sequence[str]) -> Upgrade | Refusal:
    """Check one request head (up to and including its blank line) as a WebSocket upgrade;
    of the subprotocols it offers, the first one in `subprotocols` is agreed."""
    if len(head) > MAX_REQUEST_BYTES:
        return _refuse(431, "Request Header Fields Too Large", "upgrade request too long")
    lines = head.split(b"\r\n")
    if len(lines) < 3 or lines[-2:] != [b"", b""]:
        return _refuse(400, "Bad Request", "not a complete HTTP request head")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not parts[1]:
        return _refuse(400, "Bad Request", "not an HTTP/1.1 request line")
    if parts[0] != b"GET":
        return _refuse(405, "Method Not Allowed", "a WebSocket upgrade is a GET")
    headers = _headers(lines[1:-2])
    if headers is None:
        return _refuse(400, "Bad Request", "malformed header line")
    if b"host" not in headers:
        return _refuse(400, "Bad Request", "no Host header")
    if b"websocket" not in _tokens(headers.get(b"upgrade", b"")):
        return _refuse(400, "Bad Request", "no Upgrade: websocket")
    if b"upgrade" not in _tokens(headers.get(b"connection", b"")):
        return _refuse(400, "Bad Request", "no Connection: upgrade")
    if headers.get(b"sec-websocket-version") != b"13":
        return _refuse(
            426, "Upgrade Required", "WebSocket version is not 13", b"Sec-WebSocket-Version: 13\r\n"
        )
    key = headers.get(b"sec-websocket-key", b"")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            return _refuse(400, "Bad Request", "Sec-WebSocket-Key is not 16 bytes")
    except (binascii.Error, ValueError):
        return _refuse(400, "Bad Request", "Sec-WebSocket-Key is not base64")
    offered = _protocol_list(headers.get(b"sec-websocket-protocol", b""))
    chosen = next((p for p in offered if p in subprotocols), None)
    accept = _accept(key)
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n"
    )
    if chosen is not None:
        response += b"Sec-WebSocket-Protocol: " + chosen.encode() + b"\r\n"
    return Upgrade(response + b"\r\n", chosen)


@attrs.frozen
class Accepted:
    """The server accepted our upgrade, agreeing to `subprotocol` (None: to none)."""

    subprotocol: str | None


@attrs.frozen
class Refused:
    """The server's answer was no upgrade: its HTTP `status` (None if the answer was not
    HTTP at all) and why, in words for an error message."""

    status: int | None
    reason: str


def client_request(host: str, resource: str, key: bytes, subprotocols: Sequence[str]) -> bytes:
    """The upgrade request for `resource` at `host` (the Host header's value, with the port
    if it is not 80), with `key` (base64 of 16 random bytes), offering `subprotocols`."""
    request = (
        (
            f"GET {resource} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        ).encode()
        + b"Sec-WebSocket-Key: "
        + key
        + b"\r\n"
    )
    if subprotocols:
        request += f"Sec-WebSocket-Protocol: {', '.join(subprotocols)}\r\n".encode()
    return request + b"\r\n"


def check_response(head: bytes, key: bytes, offered: Sequence[str]) -> Accepted | Refused:
    """Check the server's answer head (up to and including its blank line) to our request
    with `key`, which offered `offered`. Total over untrusted bytes."""
    lines = head.split(b"\r\n")
    if len(head) > MAX_REQUEST_BYTES or len(lines) < 3 or lines[-2:] != [b"", b""]:
        return Refused(None, "the answer is not an HTTP response head")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or parts[0] != b"HTTP/1.1" or not parts[1].isdigit() or len(parts[1]) != 3:
        return Refused(None, "the answer is not an HTTP/1.1 status line")
    status = int(parts[1])
    if status != 101:
        return Refused(status, f"the server answered HTTP {status}, not 101")
    headers = _headers(lines[1:-2])
    if headers is None:
        return Refused(status, "the answer has a malformed header line")
    if b"websocket" not in _tokens(headers.get(b"upgrade", b"")):
        return Refused(status, "the answer has no Upgrade: websocket")
    if b"upgrade" not in _tokens(headers.get(b"connection", b"")):
        return Refused(status, "the answer has no Connection: upgrade")
    if headers.get(b"sec-websocket-accept") != _accept(key):
        return Refused(status, "the answer's Sec-WebSocket-Accept does not match our key")
    if b"sec-websocket-extensions" in headers:
        return Refused(status, "the server agreed to an extension we did not offer")
    chosen = headers.get(b"sec-websocket-protocol")
    if chosen is None:
        return Accepted(None)
    name = chosen.decode("latin-1")
    if name not in offered:
        return Refused(status, f"the server agreed to subprotocol {name!r}, which we did not offer")
    return Accepted(name)


def _accept(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept value for `key` (§4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def _headers(lines: list[bytes]) -> dict[bytes, bytes] | None:
    """Header lines as {lower-case name: value}, repeated fields joined; None if malformed."""
    headers: dict[bytes, bytes] = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            return None
        field = name.lower()
        value = value.strip(b" \t")
        headers[field] = headers[field] + b", " + value if field in headers else value
    return headers


def _tokens(value: bytes) -> list[bytes]:
    return [token.strip(b" \t").lower() for token in value.split(b",")]


def _protocol_list(value: bytes) -> list[str]:
    return [t.decode() for t in (x.strip(b" \t") for x in value.split(b",")) if _TOKEN.fullmatch(t)]


def _refuse(status: int, phrase: str, reason: str, extra: bytes = b"") -> Refusal:
    response = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Length: 0\r\nConnection: close\r\n".encode()
        + extra
        + b"\r\n"
    )
    return Refusal(response, reason)
