"""The relay's WebSocket server: the upgrade, admission, and a `WsConnection` per peer.

`serve_transport` (trio-websocket) gives every connection a reader task, two nurseries, a
message channel and a lock per send: about 1 ms of relay CPU per registration, over half of
what a registration costs end to end (docs/relay.md, "After a restart"). The relay reads every
connection continuously in its own loop anyway (control messages must never wait behind
data), so its connections (`meshcore._wsconn.WsConnection`) read and parse in `receive()`
itself and write at once: one task fewer, no hand-offs.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import trio

from meshcore._nursery import open_hidden_nursery
from meshcore._wsconn import READ_BYTES, WsConnection, peer_endpoint
from meshcore.errors import ConfigError, TransportClosed
from meshcore.proto.constants import (
    MAX_CONTROL_BYTES,
    TRANSPORT_ACCEPT_RETRY_S,
    TRANSPORT_CLOSE_TIMEOUT_S,
    TRANSPORT_HANDSHAKE_TIMEOUT_S,
)
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.wsupgrade import MAX_REQUEST_BYTES, Refusal, parse_upgrade, request_end

__all__ = ["AdmissionGate", "serve_relay_connections"]

logger = logging.getLogger("meshcore.transport")

_ACCEPT_CAPACITY_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS))
"""accept(2) errors that say the system is out of something for now (trio's own list)."""


class AdmissionGate:
    """Bounds the connections a server has accepted that are still settling in (upgrading,
    then registering with its handler). At the bound the accept loop waits, and new
    connections wait in the kernel's listen backlog, costing nothing, until one settles: a
    herd is taken at the pace the server works, not refused, and none of it times out in
    the server's own queue (docs/relay.md, "After a restart")."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"an admission gate needs a limit of at least 1, got {limit}")
        self.limit = limit
        self.settling = 0
        """Connections accepted and not yet settled, and the one an accept waits for."""
        self._room = trio.Event()

    async def enter(self) -> None:
        """Wait until fewer than `limit` are settling, then count one more. Cancelled while
        waiting, nothing is counted."""
        while self.settling >= self.limit:
            if self._room.is_set():
                self._room = trio.Event()
            await self._room.wait()
        self.settling += 1

    def leave(self) -> None:
        """One that `enter` counted settled (or ended)."""
        self.settling -= 1
        if self.settling < self.limit:
            self._room.set()


async def _upgrade(
    stream: trio.SocketStream, subprotocols: Sequence[str]
) -> tuple[bytes, str | None] | None:
    """Answer the HTTP upgrade (`meshcore.proto.wsupgrade`): (the bytes that came after the
    request, agreed subprotocol), or None if the request was refused (and answered so) or
    the peer left."""
    buffer = b""
    while (end := request_end(buffer)) < 0:
        if len(buffer) > MAX_REQUEST_BYTES:
            end = len(buffer)
            break
        data = await stream.receive_some(READ_BYTES)
        if not data:
            return None
        buffer += data
    answer = parse_upgrade(buffer[:end], subprotocols)
    await stream.send_all(answer.response)
    if isinstance(answer, Refusal):
        logger.debug("%s: upgrade refused: %s", peer_endpoint(stream.socket), answer.reason)
        return None
    return buffer[end:], answer.subprotocol


async def serve_relay_connections(
    handler: Callable[[WsConnection], Awaitable[None]],
    host: str,
    port: int,
    *,
    max_message: int = MAX_CONTROL_BYTES,
    handshake_timeout: float = TRANSPORT_HANDSHAKE_TIMEOUT_S,
    close_timeout: float = TRANSPORT_CLOSE_TIMEOUT_S,
    subprotocols: Sequence[str] = (),
    stop_accepting: trio.Event | None = None,
    gate: AdmissionGate | None = None,
    accept_queue: int = 0,
    task_status: trio.TaskStatus[list[Endpoint]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept WebSocket connections on `host:port` and run `handler(connection)` for each, as
    `serve_transport` does (same arguments, same errors, same cancellation), with
    `WsConnection`s. Once `stop_accepting` is set the listeners close (new connections
    are refused by the OS, costing nothing) while the connections in hand go on. With
    `gate`, a connection is served only when the gate has room (it counts until the handler
    calls its `settled()`, or it ends); until then up to `accept_queue` accepted connections
    wait in order, and the rest in the listen backlog. Raises ConfigError if it cannot
    listen."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host or None)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another address "
            "or port, or stop whatever is using it"
        ) from None
    endpoints = [Endpoint.from_sockaddr(listener.socket.getsockname()) for listener in listeners]

    async def serve_one(stream: trio.SocketStream) -> None:
        remote = peer_endpoint(stream.socket)
        what = f"WebSocket client {remote}"
        connection = None  # the gate (if any) counted this one already
        try:
            upgraded = None
            with trio.move_on_after(handshake_timeout):
                upgraded = await _upgrade(stream, subprotocols)
            if upgraded is None:
                return
            pending, chosen = upgraded
            connection = WsConnection(
                stream, pending, client=False, subprotocol=chosen, max_message=max_message,
                close_timeout=close_timeout, remote=remote, gate=gate,
            )  # fmt: skip
            try:
                await handler(connection)
            except trio.Cancelled:
                await connection.close_with(1001, "cancelled")
                raise
            except TransportClosed as exc:
                logger.debug("%s: %s", what, exc)
            except Exception:
                logger.exception("%s: the connection handler failed; closed that connection", what)
                await connection.close_with(1011, "closed after a local error")
            else:
                await connection.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            if connection is not None:
                connection.settled()
            elif gate is not None:
                gate.leave()
            stream.socket.close()  # idempotent, and no checkpoint: cheap for thousands at once

    accepting: list[trio.CancelScope] = []  # one per task (a scope is entered once); all
    # cancelled when told to stop accepting
    # Accepted connections wait here, in order, for the gate (their upgrade not yet read):
    # a herd past the gate is held at the cost of a socket each, up to `accept_queue`, and
    # beyond that in the kernel's listen backlog, instead of having its SYNs dropped and
    # retried by the kernel seconds later.
    queued, to_serve = trio.open_memory_channel[trio.SocketStream](accept_queue)

    async def accept(listener: trio.SocketListener, accepting: trio.CancelScope) -> None:
        # trio.serve_listeners would do, but it ends every handler with aclose_forcefully,
        # a cancellation per connection: a relay closing 10,000 connections spent seconds
        # on those alone. `serve_one` closes its socket itself.
        with accepting:
            async with listener:
                while True:
                    try:
                        stream = await listener.accept()
                    except OSError as exc:
                        if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                            raise
                        logger.error(
                            "cannot accept connections (%s); retrying in %g s",
                            os.strerror(exc.errno), TRANSPORT_ACCEPT_RETRY_S,
                        )  # fmt: skip
                        await trio.sleep(TRANSPORT_ACCEPT_RETRY_S)
                        continue
                    if gate is None:
                        nursery.start_soon(serve_one, stream)
                    else:
                        try:
                            await queued.send(stream)
                        except BaseException:  # stopped while the queue was full
                            stream.socket.close()
                            raise

    async def admit(gate: AdmissionGate, accepting: trio.CancelScope) -> None:
        """Serve the queued connections, each once the gate has room; on stop, close the
        ones still queued (their peers retry, as when refused by the OS)."""
        try:
            with accepting:
                async for stream in to_serve:
                    await gate.enter()
                    nursery.start_soon(serve_one, stream)
        finally:
            while True:
                try:
                    to_serve.receive_nowait().socket.close()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break

    try:
        async with open_hidden_nursery() as nursery:
            for listener in listeners:
                accepting.append(trio.CancelScope())
                nursery.start_soon(accept, listener, accepting[-1])
            if gate is not None:
                accepting.append(trio.CancelScope())
                nursery.start_soon(admit, gate, accepting[-1])
            logger.info("serving WebSocket transports on %s", ", ".join(map(str, endpoints)))
            task_status.started(endpoints)
            if stop_accepting is not None:
                await stop_accepting.wait()
                for scope in accepting:
                    scope.cancel()
            await trio.sleep_forever()
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(listener)
    raise AssertionError("unreachable")  # pragma: no cover
