"""A peer's WebSocket to a relay (`dial_websocket`): the TCP connection, our upgrade request
and the check of the answer (`meshcore.proto.wsupgrade`), then a `WsConnection` in the
client's role.

It replaces trio-websocket on the relay path, where every relayed frame is one message: no
reader task and no channel between the socket and the reader, and masking in C
(docs/transport.md, "Our own frames"). The arguments, errors and cancellation are
`open_transport`'s.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from meshcore._transport import connect_tcp, parse_ws_url
from meshcore._wsconn import READ_BYTES, WsConnection, peer_endpoint
from meshcore.errors import ConnectFailed
from meshcore.proto.constants import (
    MAX_CONTROL_BYTES,
    TRANSPORT_CLOSE_TIMEOUT_S,
    TRANSPORT_CONNECT_TIMEOUT_S,
)
from meshcore.proto.wsupgrade import (
    MAX_REQUEST_BYTES,
    Refused,
    check_response,
    client_request,
    request_end,
)

__all__ = ["dial_websocket"]

_GOING_AWAY = 1001
_INTERNAL_ERROR = 1011


@asynccontextmanager
async def dial_websocket(
    url: str,
    *,
    local_port: int | None = None,
    connect_timeout: float = TRANSPORT_CONNECT_TIMEOUT_S,
    max_message: int = MAX_CONTROL_BYTES,
    close_timeout: float = TRANSPORT_CLOSE_TIMEOUT_S,
    subprotocols: Sequence[str] = (),
) -> AsyncIterator[WsConnection]:
    """Connect to a `ws://host:port/path` URL and yield the connection; close it on exit.

    As `open_transport`: `local_port` binds the TCP socket to that port (shared with the
    direct listener), `connect_timeout` covers the TCP connect and the upgrade, and of
    `subprotocols` the server agrees to one or none (`WsConnection.subprotocol`). Leaving the
    block closes normally (code 1000), or with 1011 if the block raised; cancelled inside
    it, the connection sends a close frame (1001) and is cut at once. Raises ConfigError
    for a malformed URL and ConnectFailed naming the URL when the connection is refused,
    unreachable, too slow, or the upgrade is refused.
    """
    host, port, resource = parse_ws_url(url)
    deadline = trio.current_time() + connect_timeout
    stream: trio.SocketStream | None = None
    with trio.move_on_at(deadline):
        stream = await connect_tcp(url, host, port, local_port)
    if stream is None:
        raise ConnectFailed(f"{url}: no TCP connection within {connect_timeout} s")
    try:
        host_header = f"[{host}]" if ":" in host else host
        if port != 80:
            host_header += f":{port}"
        pending: bytes | None = None
        subprotocol: str | None = None
        with trio.move_on_at(deadline):
            pending, subprotocol = await _upgrade(stream, url, host_header, resource, subprotocols)
        if pending is None:
            raise ConnectFailed(f"{url}: the WebSocket upgrade did not finish in time")
        connection = WsConnection(
            stream, pending, client=True, subprotocol=subprotocol, max_message=max_message,
            close_timeout=close_timeout, remote=peer_endpoint(stream.socket),
        )  # fmt: skip
        try:
            yield connection
        except trio.Cancelled:
            await connection.close_with(_GOING_AWAY, "cancelled")
            raise
        except BaseException:
            await connection.close_with(_INTERNAL_ERROR, "closed after a local error")
            raise
        await connection.aclose()
    finally:
        stream.socket.close()  # idempotent; the connection closed it on every normal path


async def _upgrade(
    stream: trio.SocketStream, url: str, host: str, resource: str, offered: Sequence[str]
) -> tuple[bytes, str | None]:
    """Send the upgrade request and check the answer: (the bytes that came behind it, the
    agreed subprotocol). Raises ConnectFailed if refused or closed."""
    key = base64.b64encode(os.urandom(16))
    try:
        await stream.send_all(client_request(host, resource, key, offered))
        buffer = b""
        while (end := request_end(buffer)) < 0 and len(buffer) <= MAX_REQUEST_BYTES:
            data = await stream.receive_some(READ_BYTES)
            if not data:
                raise ConnectFailed(f"{url}: the connection closed during the WebSocket upgrade")
            buffer += data
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        raise ConnectFailed(f"{url}: the connection closed during the WebSocket upgrade") from None
    answer = check_response(buffer[:end] if end >= 0 else buffer, key, offered)
    if isinstance(answer, Refused):
        if answer.status is not None and answer.status != 101:
            raise ConnectFailed(
                f"{url}: the server refused the WebSocket upgrade with HTTP "
                f"{answer.status}; check the URL path"
            )
        raise ConnectFailed(f"{url}: the WebSocket upgrade failed: {answer.reason}")
    return buffer[end:], answer.subprotocol
