"""Batched I/O on a trio-websocket connection (`WebSocketTransport.send_many` and
`receive_batch`): several binary messages framed by the connection's own wsproto state and
written with one `send_all`, and every message already read taken at once.

trio-websocket has no batch API: its `send_message` takes a lock and makes one write per
message, and on the relay path each write is a trip through the kernel's network stack and a
wakeup of the other side; messages of a batch together cost one (docs/transport.md). This
module is the one place that reaches into trio-websocket's connection (its wsproto
connection, its stream and the lock its own writes take), exactly as its `_send` does; the
transport tests cover it against the pinned version.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection
from wsproto.events import BytesMessage
from wsproto.utilities import LocalProtocolError

__all__ = ["take_ready", "write_messages"]


async def write_messages(ws: WebSocketConnection, messages: Sequence[bytes]) -> None:
    """Frame `messages` as binary WebSocket messages, in order, and write them at once.

    Raises `ConnectionClosed` once the connection is closed or closing (as
    `WebSocketConnection.send_message` does). Cancelled while it waits for the connection's
    write lock, nothing was written; cancelled while writing, the stream is left part
    written (the caller cuts the connection).
    """
    if ws._close_reason:
        raise ConnectionClosed(ws._close_reason)
    proto = ws._wsproto
    try:
        data = b"".join([proto.send(BytesMessage(data=message)) for message in messages])
    except LocalProtocolError:  # the closing handshake began meanwhile
        raise ConnectionClosed(ws._close_reason) from None
    async with ws._stream_lock:
        try:
            await ws._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await ws._abort_web_socket()
            raise ConnectionClosed(ws._close_reason) from None


def take_ready(ws: WebSocketConnection, limit: int) -> list[bytes | str]:
    """Up to `limit` messages the connection's reader has already queued (never waits)."""
    channel = ws._recv_channel
    ready: list[bytes | str] = []
    while len(ready) < limit:
        try:
            ready.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
            break
    return ready
