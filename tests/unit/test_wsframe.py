"""WebSocket frames: our frames and wsproto's read alike both ways, every RFC 6455 rule the
reader enforces closes with its code, and a frame's length is judged before its payload."""

from __future__ import annotations

import os
import struct

import pytest
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection
from wsproto.events import Ping as WsPing

from meshcore.errors import BadWebSocketFrame, ProtocolError
from meshcore.proto import wsframe as w

KEY = b"\x37\xfa\x21\x3d"
SIZES = (0, 1, 125, 126, 127, 65535, 65536, 70000)


def frame(
    first: int, payload: bytes, *, key: bytes | None = KEY, length: bytes | None = None
) -> bytes:
    """A raw frame with `first` as its first byte, for the frames the encoder never makes."""
    bit = 0 if key is None else 0x80
    if length is None:
        size = len(payload)
        length = (
            bytes((bit | size,)) if size < 126 else bytes((bit | 126,)) + struct.pack(">H", size)
        )
    body = payload if key is None else key + w.apply_mask(payload, key)
    return bytes((first,)) + length + body


def server() -> w.FrameReader:
    return w.FrameReader(masked=True, max_message=70000)


def client() -> w.FrameReader:
    return w.FrameReader(masked=False, max_message=70000)


@pytest.mark.parametrize("size", SIZES)
def test_messages_round_trip_masked_and_unmasked(size: int) -> None:
    payload = os.urandom(size)
    assert server().feed(w.encode_frame(w.OP_BINARY, payload, KEY)) == [payload]
    assert client().feed(w.encode_frame(w.OP_BINARY, payload)) == [payload]


@pytest.mark.parametrize("size", SIZES)
def test_wsproto_reads_our_frames_and_we_read_its(size: int) -> None:
    payload = os.urandom(size)
    ws_server = Connection(ConnectionType.SERVER)
    ws_server.receive_data(w.encode_frame(w.OP_BINARY, payload, os.urandom(4)))
    (event,) = ws_server.events()
    assert isinstance(event, BytesMessage) and event.data == payload

    ws_client = Connection(ConnectionType.CLIENT)
    assert server().feed(ws_client.send(BytesMessage(data=payload))) == [payload]
    assert client().feed(ws_server.send(BytesMessage(data=payload))) == [payload]


def test_control_frames_from_wsproto() -> None:
    ws_client = Connection(ConnectionType.CLIENT)
    reader = server()
    assert reader.feed(ws_client.send(WsPing(payload=b"hi"))) == [w.Ping(b"hi")]
    data = ws_client.send(CloseConnection(code=4000, reason="gone \u00e9"))
    assert reader.feed(data) == [w.Close(4000, "gone \u00e9")]


def test_every_byte_boundary_of_a_stream() -> None:
    messages = [os.urandom(n) for n in (3, 200, 66000, 0, 125)]
    stream = b"".join(w.encode_frame(w.OP_BINARY, m, os.urandom(4)) for m in messages)
    for cut in (1, 2, 3, 7, 100, 4096):
        reader = server()
        got: list[w.Event] = []
        for at in range(0, len(stream), cut):
            got += reader.feed(stream[at : at + cut])
        assert got == messages and reader.buffered == 0


def test_fragments_make_one_message_and_pings_may_come_between() -> None:
    parts = [
        frame(w.OP_BINARY, b"ab"),
        frame(0x80 | w.OP_PING, b"p"),
        frame(w.OP_CONTINUATION, b"cd"),
    ]
    parts.append(frame(0x80 | w.OP_CONTINUATION, b"ef"))
    assert server().feed(b"".join(parts)) == [w.Ping(b"p"), b"abcdef"]


def test_nothing_is_parsed_after_a_close() -> None:
    data = frame(0x80 | w.OP_CLOSE, b"") + frame(0x80 | w.OP_BINARY, b"late") + b"\xff\xff"
    reader = server()
    assert reader.feed(data) == [w.Close(w.CLOSE_NO_STATUS, "")]
    assert reader.feed(frame(0x80 | w.OP_BINARY, b"later")) == []


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (frame(0x80 | 0x40 | w.OP_BINARY, b"x"), 1002, "reserved bits"),
        (frame(0x80 | 0x3, b"x"), 1002, "unknown opcode"),
        (frame(0x80 | w.OP_BINARY, b"x", key=None), 1002, "unmasked frame from a client"),
        (
            frame(0x80 | w.OP_BINARY, b"x", length=bytes((0x80 | 126,)) + struct.pack(">H", 5)),
            1002,
            "minimally",
        ),
        (
            frame(0x80 | w.OP_BINARY, b"x", length=bytes((0x80 | 127,)) + struct.pack(">Q", 9)),
            1002,
            "minimally",
        ),
        (
            frame(
                0x80 | w.OP_BINARY, b"", length=bytes((0x80 | 127,)) + struct.pack(">Q", 1 << 63)
            ),
            1002,
            "top bit",
        ),
        (frame(w.OP_PING, b"x"), 1002, "fragmented control"),
        (frame(0x80 | w.OP_PING, b"x" * 126), 1002, "control frame of 126"),
        (frame(0x80 | w.OP_CONTINUATION, b"x"), 1002, "no message under way"),
        (frame(w.OP_BINARY, b"x") + frame(0x80 | w.OP_BINARY, b"y"), 1002, "before the last"),
        (frame(0x80 | w.OP_TEXT, b"hello"), 1003, "text message"),
        (frame(0x80 | w.OP_CLOSE, b"\x03"), 1002, "1-byte payload"),
        (frame(0x80 | w.OP_CLOSE, struct.pack(">H", 1005)), 1002, "close code 1005"),
        (frame(0x80 | w.OP_CLOSE, struct.pack(">H", 999)), 1002, "close code 999"),
        (frame(0x80 | w.OP_CLOSE, struct.pack(">H", 1000) + b"\xff"), 1007, "not UTF-8"),
    ],
)
def test_violations_close_with_their_code(data: bytes, code: int, words: str) -> None:
    with pytest.raises(BadWebSocketFrame, match=words) as caught:
        server().feed(data)
    assert caught.value.close_code == code
    assert isinstance(caught.value, ProtocolError)


def test_a_masked_frame_from_the_server_is_refused() -> None:
    with pytest.raises(BadWebSocketFrame, match="masked frame from a server"):
        client().feed(w.encode_frame(w.OP_BINARY, b"x", KEY))


def test_a_message_over_the_limit_is_refused_from_its_header() -> None:
    reader = w.FrameReader(masked=True, max_message=1000)
    head = w.encode_frame(w.OP_BINARY, b"x" * 1001, KEY)[:8]  # the payload never comes
    with pytest.raises(BadWebSocketFrame, match="over 1000 bytes") as caught:
        reader.feed(head)
    assert caught.value.close_code == 1009


def test_fragments_over_the_limit_are_refused() -> None:
    reader = w.FrameReader(masked=True, max_message=1000)
    assert reader.feed(frame(w.OP_BINARY, b"x" * 600)) == []
    with pytest.raises(BadWebSocketFrame) as caught:
        reader.feed(frame(0x80 | w.OP_CONTINUATION, b"x" * 401))
    assert caught.value.close_code == 1009


def test_close_payload_fits_a_control_frame_at_a_character_boundary() -> None:
    payload = w.close_payload(1000, "\u00e9" * 100)
    assert len(payload) <= w.MAX_CONTROL_PAYLOAD_BYTES
    assert payload[:2] == b"\x03\xe8" and payload[2:].decode() == "\u00e9" * 61
    assert server().feed(w.encode_frame(w.OP_CLOSE, payload, KEY)) == [w.Close(1000, "\u00e9" * 61)]


def test_what_came_before_a_violation_is_kept_for_the_caller() -> None:
    reader = server()
    data = frame(0x80 | w.OP_BINARY, b"one") + frame(0x80 | w.OP_BINARY, b"two")
    with pytest.raises(BadWebSocketFrame) as caught:
        reader.feed(data + frame(0x80 | w.OP_TEXT, b"three"))
    assert caught.value.close_code == 1003 and reader.before_error == [b"one", b"two"]
    assert reader.feed(data) == []  # unusable from then on
