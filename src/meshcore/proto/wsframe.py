"""WebSocket frames (RFC 6455 §5), sans-IO: messages in, frame bytes out; bytes in, messages
and control frames out.

The relay connection carries a session's sealed frames, up to 64 KiB each, one binary message
apiece. wsproto masked and unmasked them in Python (`int.from_bytes` on the whole payload):
about 140-180 µs per 58 KB message, more than 3 s of CPU per GiB on the sending peer and 2 s
at the relay (docs/transport.md, "Our own frames"). Here masking is `websockets`' C
`apply_mask` (about 2 µs for the same message), and a frame is parsed with one header read,
no generator and no per-frame event object.

`FrameReader` is total over untrusted bytes: every input yields messages or raises
`BadWebSocketFrame`, whose `close_code` is the code to close with (1002 for a protocol
violation, 1003 for a text message, 1007 for a close reason that is not UTF-8, 1009 for a
message over the limit). A frame's declared length is checked before its payload is waited
for, so a peer cannot make the reader buffer more than one largest message.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import struct
from collections.abc import Callable
from typing import Final, cast

import attrs

from meshcore.errors import BadWebSocketFrame


def _load_apply_mask() -> Callable[[bytes | bytearray | memoryview, bytes], bytes]:
    """websockets' C `apply_mask`, loaded from its extension module alone: importing the
    `websockets` package would pull in `socket` and `subprocess`, which a sans-IO core must
    not. Without it (no wheel with the extension), a pure-Python XOR."""
    spec = importlib.util.find_spec("websockets")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "speedups" + suffix)
            if os.path.exists(path):
                loader = importlib.machinery.ExtensionFileLoader("websockets.speedups", path)
                module_spec = importlib.util.spec_from_loader("websockets.speedups", loader)
                if module_spec is not None:
                    module = importlib.util.module_from_spec(module_spec)
                    loader.exec_module(module)
                    return cast(
                        Callable[[bytes | bytearray | memoryview, bytes], bytes],
                        module.apply_mask,
                    )
    return _python_mask  # pragma: no cover - every wheel the project installs has it


def _python_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    size = len(data)
    mask = (key * (size // 4 + 1))[:size]
    value = int.from_bytes(data, "big") ^ int.from_bytes(mask, "big")
    return value.to_bytes(size, "big")


_apply_mask = _load_apply_mask()

__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_NO_STATUS",
    "MAX_CONTROL_PAYLOAD_BYTES",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Close",
    "FrameReader",
    "Ping",
    "Pong",
    "apply_mask",
    "close_payload",
    "encode_frame",
]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA
_OPCODES: Final = frozenset((OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG))

MAX_CONTROL_PAYLOAD_BYTES: Final = 125
"""A control frame's payload is at most 125 bytes (RFC 6455 §5.5)."""
CLOSE_NO_STATUS: Final = 1005
"""The code reported for a close frame that carried none (never sent, §7.4.1)."""
CLOSE_ABNORMAL: Final = 1006
"""The code reported for a connection that ended without a close frame (never sent)."""
_PROTOCOL: Final = 1002
_UNACCEPTABLE: Final = 1003
_INVALID_DATA: Final = 1007
_TOO_BIG: Final = 1009
_SENDABLE_CODES: Final = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011))
"""Close codes a peer may send (§7.4.1; 1004-1006 and 1015 are reserved), besides 3000-4999."""

_FIN: Final = 0x80
_RSV: Final = 0x70
_MASK: Final = 0x80
_U16: Final = struct.Struct(">H")
_U64: Final = struct.Struct(">Q")
_HEAD16: Final = struct.Struct(">BBH")
_HEAD64: Final = struct.Struct(">BBQ")
_CLOSE_CODE: Final = struct.Struct(">H")


def apply_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """`data` XORed with the 4-byte masking `key`, repeated (§5.3): masks and unmasks."""
    return _apply_mask(data, key)


def encode_frame(opcode: int, payload: bytes | bytearray, mask: bytes | None = None) -> bytes:
    """One final frame of `opcode` carrying `payload`; masked with the 4-byte `mask` (a
    client's frames must be, a server's must not be)."""
    size = len(payload)
    first = _FIN | opcode
    bit = 0 if mask is None else _MASK
    if size < 126:
        head = bytes((first, bit | size))
    elif size < 0x10000:
        head = _HEAD16.pack(first, bit | 126, size)
    else:
        head = _HEAD64.pack(first, bit | 127, size)
    if mask is None:
        return head + payload
    return head + mask + _apply_mask(payload, mask)


def close_payload(code: int, reason: str) -> bytes:
    """A close frame's payload: `code` and `reason`, the reason cut at a character boundary
    so that the whole fits a control frame."""
    data = reason.encode()[: MAX_CONTROL_PAYLOAD_BYTES - 2]
    return _CLOSE_CODE.pack(code) + data.decode(errors="ignore").encode()


@attrs.frozen
class Ping:
    """A ping arrived: answer with a pong of the same `payload`."""

    payload: bytes


@attrs.frozen
class Pong:
    """A pong arrived (nothing to do)."""

    payload: bytes


@attrs.frozen
class Close:
    """The peer's close frame: its `code` (CLOSE_NO_STATUS if it gave none) and `reason`."""

    code: int
    reason: str


Event = bytes | Ping | Pong | Close
"""What `FrameReader.feed` yields: a whole binary message (bytes), or a control frame."""


class FrameReader:
    """Parses one direction of a WebSocket connection into whole binary messages.

    `masked`: the frames come from a client, so each must be masked (a server reads with
    True, a client with False; the other kind is a protocol error). Messages of up to
    `max_message` bytes are taken, whole or in fragments. After a close frame nothing more
    is parsed: the bytes behind it are ignored.
    """

    __slots__ = (
        "_buffer",
        "_closed",
        "_fragments",
        "_fragments_size",
        "_masked",
        "before_error",
        "max_message",
    )

    def __init__(self, *, masked: bool, max_message: int) -> None:
        self._masked = masked
        self.max_message = max_message
        self._buffer = bytearray()
        self._fragments: list[bytes] | None = None  # a message in fragments, under way
        self._fragments_size = 0
        self._closed = False
        self.before_error: list[Event] = []
        """The events that `feed`'s last call completed before the violation it raised."""

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed (the start of a frame still arriving)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray) -> list[Event]:
        """Parse `data` after what came before; the messages and control frames completed.

        Raises BadWebSocketFrame at the first violation, with the events completed before it
        in `before_error` (to be taken first); the reader is then unusable and the connection
        must close with the error's code.
        """
        if self._closed:
            return []
        buffer = self._buffer
        if buffer:
            buffer += data
            view = memoryview(buffer)
        else:
            view = memoryview(data)
        events: list[Event] = []
        try:
            used = self._parse(view, events)
        except BadWebSocketFrame:
            self._closed = True
            self.before_error = events
            raise
        finally:
            view.release()
        if buffer:
            del buffer[:used]
        elif used < len(data):
            self._buffer = bytearray(data[used:])
        return events

    def _parse(self, view: memoryview, events: list[Event]) -> int:
        """Take every complete frame in `view` into `events`; the bytes used."""
        pos = 0
        end = len(view)
        masked = self._masked
        while end - pos >= 2:
            first = view[pos]
            second = view[pos + 1]
            if first & _RSV:
                raise BadWebSocketFrame(_PROTOCOL, "reserved bits set (no extension agreed)")
            opcode = first & 0x0F
            if opcode not in _OPCODES:
                raise BadWebSocketFrame(_PROTOCOL, f"unknown opcode {opcode:#x}")
            if bool(second & _MASK) is not masked:
                raise BadWebSocketFrame(
                    _PROTOCOL,
                    "unmasked frame from a client" if masked else "masked frame from a server",
                )
            size = second & 0x7F
            head = pos + 2
            if size == 126:
                if end - head < 2:
                    break
                size = _U16.unpack_from(view, head)[0]
                head += 2
                if size < 126:
                    raise BadWebSocketFrame(_PROTOCOL, "frame length not minimally encoded")
            elif size == 127:
                if end - head < 8:
                    break
                size = _U64.unpack_from(view, head)[0]
                head += 8
                if size >> 63:
                    raise BadWebSocketFrame(_PROTOCOL, "frame length with its top bit set")
                if size < 0x10000:
                    raise BadWebSocketFrame(_PROTOCOL, "frame length not minimally encoded")
            if opcode >= OP_CLOSE:
                if not first & _FIN:
                    raise BadWebSocketFrame(_PROTOCOL, "fragmented control frame")
                if size > MAX_CONTROL_PAYLOAD_BYTES:
                    raise BadWebSocketFrame(_PROTOCOL, f"control frame of {size} bytes")
            elif size + self._fragments_size > self.max_message:
                raise BadWebSocketFrame(_TOO_BIG, f"message too big: over {self.max_message} bytes")
            payload_at = head + 4 if masked else head
            if end - payload_at < size:
                break
            stop = payload_at + size
            if masked:
                payload = _apply_mask(view[payload_at:stop], bytes(view[head:payload_at]))
            else:
                payload = bytes(view[payload_at:stop])
            pos = stop
            if opcode >= OP_CLOSE:
                events.append(self._control(opcode, payload))
                if self._closed:
                    return end
            else:
                self._data(opcode, bool(first & _FIN), payload, events)
        return pos

    def _data(self, opcode: int, fin: bool, payload: bytes, events: list[Event]) -> None:
        fragments = self._fragments
        if opcode == OP_CONTINUATION:
            if fragments is None:
                raise BadWebSocketFrame(_PROTOCOL, "continuation frame with no message under way")
        elif fragments is not None:
            raise BadWebSocketFrame(_PROTOCOL, "new message before the last one ended")
        elif opcode == OP_TEXT:
            raise BadWebSocketFrame(
                _UNACCEPTABLE,
                "protocol error: text message received; meshcore sends only binary messages",
            )
        elif fin:
            events.append(payload)
            return
        else:
            self._fragments = fragments = []
        fragments.append(payload)
        self._fragments_size += len(payload)
        if fin:
            events.append(b"".join(fragments))
            self._fragments = None
            self._fragments_size = 0

    def _control(self, opcode: int, payload: bytes) -> Event:
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        self._closed = True
        if not payload:
            return Close(CLOSE_NO_STATUS, "")
        if len(payload) == 1:
            raise BadWebSocketFrame(_PROTOCOL, "close frame with a 1-byte payload")
        code = _CLOSE_CODE.unpack_from(payload)[0]
        if code not in _SENDABLE_CODES and not 3000 <= code <= 4999:
            raise BadWebSocketFrame(_PROTOCOL, f"close code {code} is not one a peer may send")
        try:
            reason = payload[2:].decode()
        except UnicodeDecodeError:
            raise BadWebSocketFrame(_INVALID_DATA, "close reason is not UTF-8") from None
        return Close(code, reason)
