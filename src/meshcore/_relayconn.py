"""The relay's side of its peers' WebSocket connections: wsproto on the socket, no reader task.

`serve_transport` (trio-websocket) gives every connection a reader task, two nurseries, a
message channel and a lock per send: about 1 ms of relay CPU per registration, over half of
what a registration costs end to end (docs/relay.md, "After a restart"). The relay reads every
connection continuously in its own loop anyway (control messages must never wait behind
data), so here `receive()` itself reads the socket and parses the frames, and `send()` writes
the frame at once: one task fewer, no hand-offs. Same protocol, same limits (a message over
`max_message` closes with 1009, a text message with 1003), same close semantics as
`WebSocketTransport`.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket as _stdlib_socket
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Ping,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from meshcore._nursery import open_hidden_nursery
from meshcore._transport import Transport
from meshcore.errors import ConfigError, TransportClosed
from meshcore.proto.constants import (
    MAX_CONTROL_BYTES,
    TRANSPORT_ACCEPT_RETRY_S,
    TRANSPORT_CANCELLED_CLOSE_S,
    TRANSPORT_CLOSE_TIMEOUT_S,
    TRANSPORT_HANDSHAKE_TIMEOUT_S,
)
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.wsupgrade import MAX_REQUEST_BYTES, Refusal, parse_upgrade, request_end

__all__ = ["AdmissionGate", "RelayConnection", "serve_relay_connections"]

logger = logging.getLogger("meshcore.transport")

_READ_BYTES = 65536
_REASON_MAX_BYTES = 123  # RFC 6455 §5.5: a close frame's payload is at most 125 bytes
_TEXT_REFUSED = "protocol error: text message received; meshcore sends only binary messages"
_LOST = "connection lost: TCP closed without a WebSocket close"
_CUT = "closed: cut off without waiting for the close handshake"
_DISCARD_BYTES = 1 << 20  # a cut connection's unread input dropped before the close, at most
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


class RelayConnection(Transport):
    """One peer's WebSocket at the relay, after the upgrade; binary messages only.

    Made by `serve_relay_connections`, which owns the socket. `receive()` must be called by
    one task at a time (the relay's read loop); `send` may be called from any task.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        ws: Connection,
        pending: bytes,
        *,
        subprotocol: str | None,
        max_message: int,
        close_timeout: float,
        remote: Endpoint | None,
        gate: AdmissionGate | None = None,
    ) -> None:
        self._stream = stream
        self._gate = gate  # left once, by `settled`
        self._ws = ws
        self._pending = pending  # frames that came right behind the upgrade request
        self._messages: deque[bytes] = deque()
        self._partial: list[bytes] = []
        self._partial_size = 0
        self._subprotocol = subprotocol
        self._max_message = max_message
        self._close_timeout = close_timeout
        self._remote = remote
        self._local: Endpoint | None = None
        self._send_lock = trio.Lock()
        self._close_reason: str | None = None
        self._remote_closed = trio.Event()  # their close frame (or EOF) arrived
        self._receiving = False
        self._reader_done = trio.lowlevel.ParkingLot()  # woken when a receive returns
        self._unsent = b""  # the part of a final write the socket did not take at once
        self._cut = False

    @property
    def local_address(self) -> Endpoint | None:
        if self._local is None:
            self._local = _endpoint(self._stream.socket, local=True)
        return self._local

    @property
    def remote_address(self) -> Endpoint | None:
        return self._remote

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    @property
    def subprotocol(self) -> str | None:
        """The WebSocket subprotocol agreed in the upgrade, if any."""
        return self._subprotocol

    @property
    def max_message(self) -> int:
        """The largest message this side sends or accepts, in bytes."""
        return self._max_message

    def settled(self) -> None:
        """This connection no longer counts against the server's admission (its handler
        registered it, or it ended); idempotent."""
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.leave()

    async def send(self, data: bytes) -> None:
        """Send `data` as one binary message. Raises TransportClosed once closed, ValueError
        past `max_message`. Cancelled while writing, the connection is cut (a half-written
        frame would corrupt the stream)."""
        if len(data) > self._max_message:
            raise ValueError(
                f"message of {len(data)} bytes is over this transport's {self._max_message}-byte "
                "limit; split it or raise max_message on both sides"
            )
        await self._write(lambda ws: ws.send(BytesMessage(data=bytes(data))))

    async def send_many(self, messages: Sequence[bytes]) -> None:
        """Send `messages` in order, written at once."""
        for data in messages:
            if len(data) > self._max_message:
                raise ValueError(f"message of {len(data)} bytes is over {self._max_message}")
        await self._write(
            lambda ws: b"".join(ws.send(BytesMessage(data=bytes(m))) for m in messages)
        )

    async def receive(self) -> bytes:
        """The next message; TransportClosed once closed. Cancel-safe."""
        while not self._messages:
            await self._read_more()
        return self._messages.popleft()

    async def receive_batch(self) -> list[bytes]:
        """Every message already in hand, at least one."""
        while not self._messages:
            await self._read_more()
        batch = list(self._messages)
        self._messages.clear()
        return batch

    def send_final_nowait(self, messages: Sequence[bytes], reason: str) -> bool:
        """Write `messages` and the close frame (code 1000, `reason`) now, without waiting
        for the socket or the scheduler: True if the kernel took all of it. Otherwise (the
        socket's buffer is full, or a send is under way) the rest is kept and written first
        by `aclose`. Either way the connection is closing from here on; the peer's close
        frame is still read. For closing many connections at once (a relay shutting down):
        no task switch per connection."""
        ws = self._ws
        try:
            frames = [ws.send(BytesMessage(data=bytes(m))) for m in messages]
            frames.append(ws.send(CloseConnection(1000, _truncate(reason))))
        except LocalProtocolError:  # a close is already under way: nothing more to say
            frames = []
        self._note_closed(reason)
        data = b"".join(frames)
        if data and not self._send_lock.locked():
            data = data[_write_nowait(self._stream.socket, data) :]
        self._unsent = data
        return not data

    def cut(self) -> None:
        """End the connection now, synchronously: what arrived and was not read is
        discarded (so that the kernel ends the TCP connection with FIN after what we wrote,
        not RST), the socket is closed, and a receive blocked on it raises TransportClosed.
        Costs no task switch and no cancellation: a relay cuts thousands at once."""
        if self._cut:
            return
        self._cut = True
        self._note_closed(_CUT)
        _discard_input(self._stream.socket)
        self._remote_closed.set()
        self._stream.socket.close()  # wakes a task blocked on it with ClosedResourceError

    async def aclose(self, reason: str = "closed") -> None:
        """Close normally (code 1000, `reason` cut to 123 UTF-8 bytes), wait up to the close
        timeout for the peer's close frame, then cut the TCP connection. Called when already
        cancelled, it still sends the close frame (shielded, bounded)."""
        await self._close(1000, reason)

    # --- inside -----------------------------------------------------------------------------

    async def _write(self, frame: Callable[[Connection], bytes]) -> None:
        if self._close_reason is not None:
            raise TransportClosed(self._close_reason)
        try:  # uncontended, take the lock without a trip through the scheduler
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()  # cancelled here: nothing was written
        try:
            if self._close_reason is not None:
                raise TransportClosed(self._close_reason)
            try:
                data = frame(self._ws)
            except LocalProtocolError:  # the close handshake began meanwhile
                raise TransportClosed(self._close_reason or "closed") from None
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._note_closed(_LOST)
                raise TransportClosed(self._close_reason or "closed") from None
            except BaseException:
                self._note_closed("a send was interrupted mid-message; connection cut")
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(self._stream)
                raise
        finally:
            self._send_lock.release()

    async def _read_more(self, *, closing: bool = False) -> None:
        """Read and parse once; raise TransportClosed once closed (`closing`: we are, and
        read on for the peer's close frame)."""
        if self._close_reason is not None and not closing and not self._receiving:
            raise TransportClosed(self._close_reason)
        self._receiving = True
        try:
            data, self._pending = self._pending, b""
            ended = await self._parse(data or await self._stream.receive_some(_READ_BYTES))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            ended = _LOST
        finally:
            self._receiving = False
            self._reader_done.unpark_all()
        if ended is not None:
            self._note_closed(ended)
            self._remote_closed.set()
        if self._close_reason is not None and not self._messages:  # else they go first
            raise TransportClosed(self._close_reason)

    async def _parse(self, data: bytes) -> str | None:
        """Take the messages in `data`; the reason the connection ended with it, if it did."""
        if not data:
            return _LOST
        ws = self._ws
        try:
            ws.receive_data(data)
            for event in ws.events():
                kind = type(event)
                if kind is BytesMessage:
                    assert isinstance(event, BytesMessage)
                    if not self._take(event):
                        return await self._fail(
                            1009, f"message too big: over {self._max_message} bytes"
                        )
                elif kind is Ping:
                    assert isinstance(event, Ping)
                    if not await self._reply(ws.send(event.response())):
                        return _LOST
                elif kind is CloseConnection:
                    assert isinstance(event, CloseConnection)
                    if ws.state is ConnectionState.REMOTE_CLOSING:  # theirs first: answer
                        await self._reply(ws.send(event.response()))
                    return _describe(event.code, event.reason)
                elif kind is TextMessage:
                    logger.info("%s: %s", self._remote, _TEXT_REFUSED)
                    return await self._fail(1003, _TEXT_REFUSED)
        except RemoteProtocolError as exc:
            return await self._fail(1002, f"protocol error: {exc}")
        except LocalProtocolError:  # bytes after the close handshake ended: nothing to take
            return self._close_reason or "closed"
        return None

    def _take(self, event: BytesMessage) -> bool:
        """Add a message (or a part of one); False if it grows past `max_message`."""
        chunk = event.data
        self._partial_size += len(chunk)
        if self._partial_size > self._max_message:
            return False
        if event.message_finished and not self._partial:
            self._messages.append(bytes(chunk))
        else:
            self._partial.append(bytes(chunk))
            if event.message_finished:
                self._messages.append(b"".join(self._partial))
                self._partial.clear()
        if event.message_finished:
            self._partial_size = 0
        return True

    async def _fail(self, code: int, reason: str) -> str:
        """The peer broke the WebSocket protocol or a limit: close with `code`; returns
        `reason`, the connection's end."""
        self._note_closed(reason)
        try:
            await self._reply(self._ws.send(CloseConnection(code, _truncate(reason))))
        except LocalProtocolError:
            pass
        return reason

    async def _reply(self, data: bytes) -> bool:
        """Write a control frame from the reading side (a pong, a close answer); False if
        the connection is gone."""
        async with self._send_lock:
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        return True

    async def _close(self, code: int, reason: str) -> None:
        self._note_closed(reason)
        timeout = self._close_timeout
        cancelled = trio.current_effective_deadline() == -math.inf
        if cancelled:
            timeout = min(timeout, TRANSPORT_CANCELLED_CLOSE_S)
        if self._cut:
            return
        try:
            with trio.CancelScope(shield=cancelled), trio.move_on_after(timeout):
                if not self._remote_closed.is_set():
                    data, self._unsent = self._unsent, b""  # a final write's rest goes first
                    try:
                        data += self._ws.send(CloseConnection(code, _truncate(reason)))
                    except LocalProtocolError:  # a close is already under way
                        pass
                    if data:
                        async with self._send_lock:
                            await self._stream.send_all(data)
                    await self._await_their_close()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._remote_closed.set()
            self._cut = True
            self._stream.socket.close()  # no checkpoint: nothing here waits or is cancelled

    async def _await_their_close(self) -> None:
        """Until the peer's close frame (or EOF): read for it unless a receive does."""
        while not self._remote_closed.is_set():
            if self._receiving:  # the reader will see it (or return and leave it to us)
                await self._reader_done.park()
                continue
            try:
                await self._read_more(closing=True)
            except TransportClosed:
                return
            self._messages.clear()  # closing: what still arrives is dropped

    def _note_closed(self, reason: str) -> None:
        if self._close_reason is None:
            self._close_reason = reason


def _write_nowait(sock: trio.socket.SocketType, data: bytes) -> int:
    """Write what the (non-blocking) socket takes of `data` at once; how many bytes."""
    try:
        return os.write(sock.fileno(), data)
    except OSError:  # full (EAGAIN), broken, or no such writes here: `aclose` sends it
        return 0


def _discard_input(sock: trio.socket.SocketType) -> None:
    """Read and drop what the (non-blocking) socket holds, up to `_DISCARD_BYTES`."""
    fd, left = sock.fileno(), _DISCARD_BYTES
    try:
        while left > 0 and (data := os.read(fd, min(left, _READ_BYTES))):
            left -= len(data)
    except OSError:  # nothing more to read (EAGAIN), or already broken
        pass


def _describe(code: int, reason: str | None) -> str:
    """A close as the user should read it: the remote's own words when it gave any."""
    if code == 1000:
        return reason or "closed by the remote side"
    try:
        name = CloseReason(code).name
    except ValueError:
        name = "UNKNOWN"
    return f"{reason or 'closed'} (WebSocket code {code} {name})"


def _truncate(reason: str) -> str:
    return reason.encode()[:_REASON_MAX_BYTES].decode("utf-8", "ignore")


def _endpoint(sock: trio.socket.SocketType, *, local: bool) -> Endpoint | None:
    if sock.family not in (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6):
        return None
    try:
        return Endpoint.from_sockaddr(sock.getsockname() if local else sock.getpeername())
    except OSError:  # already disconnected
        return None


async def _upgrade(
    stream: trio.SocketStream, subprotocols: Sequence[str]
) -> tuple[Connection, bytes, str | None] | None:
    """Answer the HTTP upgrade (`meshcore.proto.wsupgrade`): (connection, the bytes that
    came after the request, agreed subprotocol), or None if the request was refused (and
    answered so) or the peer left."""
    buffer = b""
    while (end := request_end(buffer)) < 0:
        if len(buffer) > MAX_REQUEST_BYTES:
            end = len(buffer)
            break
        data = await stream.receive_some(_READ_BYTES)
        if not data:
            return None
        buffer += data
    answer = parse_upgrade(buffer[:end], subprotocols)
    await stream.send_all(answer.response)
    if isinstance(answer, Refusal):
        logger.debug(
            "%s: upgrade refused: %s", _endpoint(stream.socket, local=False), answer.reason
        )
        return None
    return Connection(ConnectionType.SERVER), buffer[end:], answer.subprotocol


async def serve_relay_connections(
    handler: Callable[[RelayConnection], Awaitable[None]],
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
    `RelayConnection`s. Once `stop_accepting` is set the listeners close (new connections
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
        remote = _endpoint(stream.socket, local=False)
        what = f"WebSocket client {remote}"
        connection = None  # the gate (if any) counted this one already
        try:
            upgraded = None
            with trio.move_on_after(handshake_timeout):
                upgraded = await _upgrade(stream, subprotocols)
            if upgraded is None:
                return
            ws, pending, chosen = upgraded
            connection = RelayConnection(
                stream, ws, pending, subprotocol=chosen, max_message=max_message,
                close_timeout=close_timeout, remote=remote, gate=gate,
            )  # fmt: skip
            try:
                await handler(connection)
            except trio.Cancelled:
                await connection._close(1001, "cancelled")
                raise
            except TransportClosed as exc:
                logger.debug("%s: %s", what, exc)
            except Exception:
                logger.exception("%s: the connection handler failed; closed that connection", what)
                await connection._close(1011, "closed after a local error")
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
