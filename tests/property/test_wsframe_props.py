"""Properties of the WebSocket frame reader: any messages, in any fragments, cut anywhere,
arrive whole and in order with the control frames between them; any bytes at all give
messages or `BadWebSocketFrame` (a ProtocolError), with the buffer bounded by one message."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from meshcore.errors import ProtocolError
from meshcore.proto import wsframe as w

LIMIT = 4096


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def fragments(message: bytes, cuts: list[int], masked: bool) -> bytes:
    """`message` as a first frame and continuations, split at `cuts` (an empty message, or
    no cut, is one frame)."""
    parts = split(message, cuts) or [b""]
    out = []
    for i, part in enumerate(parts):
        opcode = w.OP_BINARY if i == 0 else w.OP_CONTINUATION
        fin = 0x80 if i == len(parts) - 1 else 0
        whole = w.encode_frame(opcode, part, os.urandom(4) if masked else None)
        out.append(bytes((whole[0] & 0x7F | fin,)) + whole[1:])
    return b"".join(out)


@given(
    messages=st.lists(
        st.tuples(st.binary(max_size=LIMIT), st.lists(st.integers(0, LIMIT), max_size=3)),
        max_size=6,
    ),
    pings=st.lists(st.binary(max_size=w.MAX_CONTROL_PAYLOAD_BYTES), max_size=3),
    chunks=st.lists(st.integers(0, 10 * LIMIT), max_size=8),
    masked=st.booleans(),
)
def test_messages_round_trip_through_any_fragmentation_and_chunking(
    messages: list[tuple[bytes, list[int]]], pings: list[bytes], chunks: list[int], masked: bool
) -> None:
    key = os.urandom(4) if masked else None
    stream = b""
    expected: list[w.Event] = []
    for i, (message, cuts) in enumerate(messages):
        if i < len(pings):
            stream += w.encode_frame(w.OP_PING, pings[i], key)
            expected.append(w.Ping(pings[i]))
        stream += fragments(message, cuts, masked)
        expected.append(message)
    reader = w.FrameReader(masked=masked, max_message=LIMIT)
    got: list[w.Event] = []
    for chunk in split(stream, chunks):
        got += reader.feed(chunk)
        assert reader.buffered <= LIMIT + 14
    assert got == expected and reader.buffered == 0


@given(
    data=st.binary(max_size=600),
    chunks=st.lists(st.integers(0, 600), max_size=6),
    masked=st.booleans(),
)
def test_any_bytes_parse_or_raise_protocol_error(
    data: bytes, chunks: list[int], masked: bool
) -> None:
    reader = w.FrameReader(masked=masked, max_message=256)
    try:
        for chunk in split(data, chunks):
            for event in reader.feed(chunk):
                assert isinstance(event, (bytes, w.Ping, w.Pong, w.Close))
                if isinstance(event, bytes):
                    assert len(event) <= 256
            assert reader.buffered <= 256 + 14
    except ProtocolError:
        pass


@given(
    head=st.sampled_from([0x82, 0x02, 0x80, 0x88, 0x89, 0x8A, 0x81]),
    size=st.integers(0, 300),
    body=st.binary(max_size=300),
    masked=st.booleans(),
)
def test_near_valid_frames_parse_or_raise_protocol_error(
    head: int, size: int, body: bytes, masked: bool
) -> None:
    """Frames with a plausible header and any length and body: the same totality, closer in."""
    length = bytes(((0x80 if masked else 0) | min(size, 125),))
    reader = w.FrameReader(masked=masked, max_message=256)
    try:
        reader.feed(bytes((head,)) + length + body)
    except ProtocolError:
        pass
