"""One side of a relay's WebSocket connection after the upgrade (`WsConnection`): our own
frames (`meshcore.proto.wsframe`) on a trio socket, no reader task.

The relay's side (`serve_relay_connections`) and the peer's (`dial_websocket`) are the same
class: `receive()` itself reads the socket and parses the frames, and `send()` writes the
frames at once: no reader task, no message channel, no hand-off per message. Frames a client
sends are masked (RFC 6455 §5.3) with C code, not Python. Same protocol, same limits (a
message over `max_message` closes with 1009, a text message with 1003), same close semantics
as `WebSocketTransport`.
"""

from __future__ import annotations

import logging
import math
import os
import socket as _stdlib_socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Final, Protocol

import trio
from wsproto.frame_protocol import CloseReason

from meshcore._transport import Transport
from meshcore.errors import BadWebSocketFrame, TransportClosed
from meshcore.proto.constants import TRANSPORT_CANCELLED_CLOSE_S
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.wsframe import (
    CLOSE_NO_STATUS,
    OP_BINARY,
    OP_CLOSE,
    OP_PONG,
    Close,
    FrameReader,
    Ping,
    close_payload,
    encode_frame,
)

__all__ = ["READ_BYTES", "WsConnection", "peer_endpoint"]

logger = logging.getLogger("meshcore.transport")

READ_BYTES: Final = 262144
"""The most one read of a WebSocket's socket takes."""
_LOST = "connection lost: TCP closed without a WebSocket close"
_CUT = "closed: cut off without waiting for the close handshake"
_DISCARD_BYTES = 1 << 20  # a cut connection's unread input dropped before the close, at most


class Settling(Protocol):
    """What counts a connection until it settles (`meshcore._relayconn.AdmissionGate`)."""

    def leave(self) -> None: ...


class WsConnection(Transport):
    """One side of a WebSocket after the upgrade, binary messages only: the relay's (`client`
    False, made by `serve_relay_connections`) or a peer's (`client` True, `dial_websocket`).

    The connection owns the socket. `receive()` must be called by one task at a time; `send`
    may be called from any task.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        pending: bytes,
        *,
        client: bool,
        subprotocol: str | None,
        max_message: int,
        close_timeout: float,
        remote: Endpoint | None,
        gate: Settling | None = None,
    ) -> None:
        self._stream = stream
        self._gate = gate  # left once, by `settled`
        self._client = client
        self._reader = FrameReader(masked=not client, max_message=max_message)
        self._pending = pending  # frames that came right behind the upgrade
        self._messages: deque[bytes] = deque()
        self._subprotocol = subprotocol
        self._max_message = max_message
        self._close_timeout = close_timeout
        self._remote = remote
        self._local: Endpoint | None = None
        self._send_lock = trio.Lock()
        self._close_reason: str | None = None
        self._close_sent = False
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
        await self._write(lambda: self._frames((data,)))

    async def send_many(self, messages: Sequence[bytes]) -> None:
        """Send `messages` in order, written at once."""
        for data in messages:
            if len(data) > self._max_message:
                raise ValueError(f"message of {len(data)} bytes is over {self._max_message}")
        await self._write(lambda: self._frames(messages))

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
        close = self._close_frame(1000, reason)
        data = b"" if close is None else self._frames(messages) + close
        self._note_closed(reason)
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
        await self.close_with(1000, reason)

    async def close_with(self, code: int, reason: str) -> None:
        """Close with `code` (1001 going away, 1011 a local error, ...) as `aclose` does."""
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
                    data += self._close_frame(code, reason) or b""
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

    # --- inside -----------------------------------------------------------------------------

    def _frames(self, messages: Sequence[bytes]) -> bytes:
        """`messages` as binary frames, masked with fresh keys if we are the client."""
        if not self._client:
            return b"".join([encode_frame(OP_BINARY, m) for m in messages])
        keys = os.urandom(4 * len(messages))
        return b"".join(
            [encode_frame(OP_BINARY, m, keys[4 * i : 4 * i + 4]) for i, m in enumerate(messages)]
        )

    def _control(self, opcode: int, payload: bytes) -> bytes:
        return encode_frame(opcode, payload, os.urandom(4) if self._client else None)

    def _close_frame(self, code: int, reason: str) -> bytes | None:
        """Our close frame, once; None if it was made already."""
        if self._close_sent:
            return None
        self._close_sent = True
        payload = b"" if code == CLOSE_NO_STATUS else close_payload(code, reason)
        return self._control(OP_CLOSE, payload)

    async def _write(self, frames: Callable[[], bytes]) -> None:
        if self._close_reason is not None:
            raise TransportClosed(self._close_reason)
        try:  # uncontended, take the lock without a trip through the scheduler
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()  # cancelled here: nothing was written
        try:
            if self._close_reason is not None or self._close_sent:
                raise TransportClosed(self._close_reason or "closed")
            data = frames()
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
            ended = await self._parse(data or await self._stream.receive_some(READ_BYTES))
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
        reader = self._reader
        try:
            events = reader.feed(data)
        except BadWebSocketFrame as exc:
            self._messages.extend(e for e in reader.before_error if type(e) is bytes)
            code = exc.close_code
            reason = str(exc) if code in (1003, 1009) else f"protocol error: {exc}"
            logger.info("%s: %s", self._remote, reason)
            return await self._fail(code, reason)
        messages = self._messages
        for event in events:
            if type(event) is bytes:
                messages.append(event)
            elif type(event) is Ping:
                if not await self._reply(self._control(OP_PONG, event.payload)):
                    return _LOST
            elif type(event) is Close:
                answer = self._close_frame(event.code, event.reason)  # theirs first: answer
                if answer is not None:
                    await self._reply(answer)
                return _describe(event.code, event.reason)
        return None

    async def _fail(self, code: int, reason: str) -> str:
        """The peer broke the WebSocket protocol or a limit: close with `code`; returns
        `reason`, the connection's end."""
        self._note_closed(reason)
        frame = self._close_frame(code, reason)
        if frame is not None:
            await self._reply(frame)
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
        while left > 0 and (data := os.read(fd, min(left, READ_BYTES))):
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


def peer_endpoint(sock: trio.socket.SocketType) -> Endpoint | None:
    """The address `sock` is connected to, None if it is not an IP socket or is gone."""
    return _endpoint(sock, local=False)


def _endpoint(sock: trio.socket.SocketType, *, local: bool) -> Endpoint | None:
    if sock.family not in (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6):
        return None
    try:
        return Endpoint.from_sockaddr(sock.getsockname() if local else sock.getpeername())
    except OSError:  # already disconnected
        return None
