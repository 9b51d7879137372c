"""The server's half of the WebSocket opening handshake (RFC 6455 §4.2), sans-IO: the peer's
HTTP upgrade request in, the 101 answer (or the refusal) out.

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

__all__ = ["MAX_REQUEST_BYTES", "Refusal", "Upgrade", "parse_upgrade", "request_end"]

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
    headers: dict[bytes, bytes] = {}
    for line in lines[1:-2]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            return _refuse(400, "Bad Request", "malformed header line")
        field = name.lower()
        value = value.strip(b" \t")
        headers[field] = headers[field] + b", " + value if field in headers else value
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
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n"
    )
    if chosen is not None:
        response += b"Sec-WebSocket-Protocol: " + chosen.encode() + b"\r\n"
    return Upgrade(response + b"\r\n", chosen)


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
