"""Transports: message-oriented connections (WebSocket over TCP via trio-websocket); the
shared-port TCP sockets that direct paths are dialled from live in `meshcore._sharedport`
(re-exported here).

Rule for every Transport: once it is closed, for whatever reason and by whichever side,
`send()` and `receive()` raise `TransportClosed` carrying `close_reason`. Messages that had
arrived before a *remote* close are still delivered first; after a local `aclose()`, or once
the remote broke the protocol, nothing more is delivered.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import math
import socket as _stdlib_socket
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, NoReturn, cast

import trio
from trio_websocket import (
    CloseReason,
    ConnectionClosed,
    ConnectionRejected,
    WebSocketConnection,
    wrap_client_stream,
    wrap_server_stream,
)

from meshcore._nursery import open_hidden_nursery
from meshcore._sharedport import (
    connect_from,
    open_reuseport_listener,
    open_tcp_socket_from,
)
from meshcore._wsbatch import take_ready, write_messages
from meshcore.errors import ConfigError, ConnectFailed, TransportClosed
from meshcore.proto.constants import (
    MAX_CONTROL_BYTES,
    TRANSPORT_CANCELLED_CLOSE_S,
    TRANSPORT_CLOSE_TIMEOUT_S,
    TRANSPORT_CONNECT_TIMEOUT_S,
    TRANSPORT_HANDSHAKE_TIMEOUT_S,
    TRANSPORT_RECEIVE_QUEUE_MESSAGES,
)
from meshcore.proto.endpoint import Endpoint

__all__ = [
    "Transport",
    "WebSocketTransport",
    "open_reuseport_listener",
    "open_tcp_socket_from",
    "open_transport",
    "parse_ws_url",
    "serve_transport",
    "wrap_stream_transport",
]

logger = logging.getLogger("meshcore.transport")

_WS_REASON_MAX_BYTES = 123  # RFC 6455 §5.5: control payload <= 125 bytes, 2 of them the code
_WS_NORMAL = 1000
_WS_GOING_AWAY = 1001
_WS_UNSUPPORTED_DATA = 1003
_WS_ABNORMAL = 1006
_WS_INTERNAL_ERROR = 1011
_READ_BYTES = 256 * 1024  # per TCP read (trio-websocket's default: 4 KiB), several messages
_BATCH_MESSAGES = 256
"""Most messages `receive_batch` hands over at once."""
_TEXT_REFUSED = "protocol error: text message received; meshcore sends only binary messages"


class Transport(trio.abc.AsyncResource):
    """A message-oriented, ordered, reliable connection: the carrier a Session runs over.

    `send` and `receive` move whole messages. Once the transport is closed both raise
    `TransportClosed(close_reason)` (see the module docstring for which messages are still
    delivered). `aclose(reason)` is idempotent; the first reason given, by either side, wins.
    """

    @abc.abstractmethod
    async def send(self, data: bytes) -> None:
        """Send one message; blocks while the other side is not keeping up.

        Cancelled while it waits, nothing is sent; a transport that would be left with a
        half-written message closes itself instead (WebSocket, the direct path).
        """

    @abc.abstractmethod
    async def receive(self) -> bytes:
        """Return the next message. Cancelling a receive loses nothing."""

    async def send_many(self, messages: Sequence[bytes]) -> None:
        """Send `messages` in order, as `send` would one by one (which is what this default
        does; a transport that writes a batch at once, like the direct path's, overrides it).

        Cancelled part way, the messages before the one being sent have been sent.
        """
        for message in messages:
            await self.send(message)

    async def receive_batch(self) -> list[bytes]:
        """Return the next messages, at least one: every message that is already in hand
        (this default returns one; a transport that reads several at once overrides it).

        Cancel-safe like `receive`.
        """
        return [await self.receive()]

    async def send_eof(self) -> None:
        """End our sending side after what was sent, where the carrier can (a TCP half-close);
        receiving goes on. A no-op by default (a WebSocket or a relay circuit has no such
        thing); never raises. Cancellation leaves the sending side as it was."""
        await trio.lowlevel.checkpoint()

    @abc.abstractmethod
    async def aclose(self, reason: str = "closed") -> None:
        """Close, telling the other side `reason`; never raises for an already closed transport.

        It always closes: called when already cancelled (a program shutting down), it still
        tells the other side within a short, shielded bound; cancelled while it waits for
        the other side, it closes abruptly.
        """

    @property
    @abc.abstractmethod
    def local_address(self) -> Endpoint | None:
        """Our end of the connection, when it is an IP connection."""

    @property
    @abc.abstractmethod
    def remote_address(self) -> Endpoint | None:
        """The other end as we see it (for a relay: the peer's public, NAT-mapped address)."""

    @property
    @abc.abstractmethod
    def close_reason(self) -> str | None:
        """Why the transport closed (our own reason, or the remote's words), or None if open."""

    @property
    def relay_url(self) -> str | None:
        """The URL of the relay this transport runs through (a relayed circuit), else None."""
        return None

    @property
    def max_window(self) -> int | None:
        """The most bytes a session may keep unacknowledged on this transport (a credited
        relay circuit's window), or None: the session's own caps apply."""
        return None


class WebSocketTransport(Transport):
    """A Transport over one WebSocket connection; binary messages only.

    trio-websocket's reader task reads the WebSocket continuously into a queue of
    `receive_queue` messages, so pings are answered and close frames seen while the
    application is slow to call `receive()`; when the queue is full the reader stops and TCP
    flow control pushes back on the sender. (Its default queue of one message is what makes
    a plain trio-websocket connection stop answering pings; docs/transport.md.)

    Made by `open_transport`, `serve_transport` or `wrap_stream_transport`, which own the
    reader task; do not construct it directly.
    """

    def __init__(
        self,
        ws: WebSocketConnection,
        stream: trio.abc.Stream,
        *,
        max_message: int,
        close_timeout: float,
    ) -> None:
        self._ws = ws
        self._stream = stream
        self._max_message = max_message
        self._close_timeout = close_timeout
        self._send_lock = trio.Lock()
        self._closed_here = False  # we closed: nothing more is delivered
        self._closing: trio.Event | None = None  # set once the close handshake is over
        self._close_reason: str | None = None
        self._close_code: int | None = None
        self._local_address, self._remote_address = _stream_addresses(stream)

    @property
    def local_address(self) -> Endpoint | None:
        return self._local_address

    @property
    def remote_address(self) -> Endpoint | None:
        return self._remote_address

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    @property
    def close_code(self) -> int | None:
        """The WebSocket close code (1000 normal, 1006 connection lost, ...), None if open."""
        return self._close_code

    @property
    def max_message(self) -> int:
        """The largest message this side sends or accepts, in bytes."""
        return self._max_message

    @property
    def subprotocol(self) -> str | None:
        """The WebSocket subprotocol both sides agreed on in the upgrade, if any."""
        return self._ws.subprotocol

    async def send(self, data: bytes) -> None:
        """Send `data` as one binary WebSocket message.

        Raises TransportClosed once closed, and ValueError if `data` is larger than
        `max_message` (the caller's bug; the transport stays open). Cancelling a send that is
        waiting for another one is harmless; cancelling one that is writing closes the
        transport, since a half-written message would corrupt the stream.
        """
        await self.send_many((data,))

    async def send_many(self, messages: Sequence[bytes]) -> None:
        """Send `messages` in order, framed together and written at once (`_wsbatch`); raises
        and behaves on cancellation like `send`, for the whole batch."""
        if self._close_reason is not None:
            raise TransportClosed(self._close_reason)
        batch = [m if isinstance(m, bytes) else bytes(m) for m in messages]
        for data in batch:
            if len(data) > self._max_message:
                raise ValueError(
                    f"message of {len(data)} bytes is over this transport's "
                    f"{self._max_message}-byte limit; split it or raise max_message on both sides"
                )
        try:  # uncontended, take the lock without a trip through the scheduler
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()  # cancelled here: nothing was written, no harm
        try:
            try:
                await write_messages(self._ws, batch)
            except ConnectionClosed as exc:
                self._note_closed(exc.reason)
                raise TransportClosed(self._close_reason or "closed") from None
            except BaseException:
                if self._close_reason is None:
                    self._note_closed(None, "a send was interrupted mid-message; connection cut")
                    self._closed_here = True
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(self._stream)
                raise
        finally:
            self._send_lock.release()

    async def receive_batch(self) -> list[bytes]:
        """The next message and every one already read behind it (at most
        `_BATCH_MESSAGES`); raises like `receive`. Cancel-safe."""
        batch = [await self.receive()]
        if not self._closed_here:
            for message in take_ready(self._ws, _BATCH_MESSAGES):
                if not isinstance(message, bytes):
                    await self._close(_WS_UNSUPPORTED_DATA, _TEXT_REFUSED)
                    break
                batch.append(message)
        return batch

    async def receive(self) -> bytes:
        """Return the next message; raises TransportClosed once closed (and, after a remote
        close, once the messages that arrived before it are taken). Cancel-safe."""
        if not self._closed_here:
            try:
                message = await self._ws.get_message()
            except ConnectionClosed as exc:
                self._note_closed(exc.reason)
            else:
                if isinstance(message, bytes) and not self._closed_here:
                    return message
                if isinstance(message, str):
                    await self._close(_WS_UNSUPPORTED_DATA, _TEXT_REFUSED)
        raise TransportClosed(self._close_reason or "closed")

    async def aclose(self, reason: str = "closed") -> None:
        """Close with a normal close frame carrying `reason` (truncated to 123 UTF-8 bytes).

        Waits up to `close_timeout` for the remote's close frame, then cuts the TCP
        connection. Called when already cancelled, it still sends the close frame (shielded)
        and waits at most TRANSPORT_CANCELLED_CLOSE_S; cancelled while it waits, it cuts the
        connection at once. Messages not yet received are dropped.
        """
        await self._close(_WS_NORMAL, reason)

    async def _close(self, code: int, reason: str) -> None:
        """Close with `code` and `reason`, once; a second caller waits for the first.

        A caller that is already cancelled (a program shutting down) still sends the close
        frame: shielded, waiting at most TRANSPORT_CANCELLED_CLOSE_S for the remote's.
        """
        self._note_closed(None, reason, code)
        self._closed_here = True
        timeout = self._close_timeout
        cancelled = trio.current_effective_deadline() == -math.inf
        if cancelled:
            timeout = min(timeout, TRANSPORT_CANCELLED_CLOSE_S)
        try:
            with trio.CancelScope(shield=cancelled), trio.move_on_after(timeout):
                if self._closing is not None:
                    await self._closing.wait()
                else:
                    self._closing = trio.Event()
                    await self._ws.aclose(code, _truncate_reason(reason))
        finally:
            if self._closing is not None:
                self._closing.set()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._stream)

    def _note_closed(
        self, ws_reason: CloseReason | None, text: str = "connection closed", code: int = 0
    ) -> None:
        """Record why the transport closed; the first reason recorded stays."""
        if self._close_reason is None:
            if ws_reason is not None:
                text, code = _describe(ws_reason), ws_reason.code
            elif code == _WS_UNSUPPORTED_DATA:
                logger.info("%s: %s", self._remote_address, text)
            self._close_reason, self._close_code = text, code or _WS_ABNORMAL


def _describe(close: CloseReason) -> str:
    """A close reason as the user should read it: the remote's own words when it gave any."""
    if close.code == _WS_ABNORMAL:
        return "connection lost: TCP closed without a WebSocket close"
    if close.code == _WS_NORMAL:
        return close.reason or "closed by the remote side"
    return f"{close.reason or 'closed'} (WebSocket code {close.code} {close.name})"


def _truncate_reason(reason: str) -> str:
    return reason.encode()[:_WS_REASON_MAX_BYTES].decode("utf-8", "ignore")


def _stream_addresses(stream: trio.abc.Stream) -> tuple[Endpoint | None, Endpoint | None]:
    """(local, remote) of a TCP stream, or (None, None) for other streams."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        inner = getattr(stream, "transport_stream", None)
        sock = getattr(inner, "socket", None)
    if sock is None or sock.family not in (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6):
        return None, None
    try:
        return Endpoint.from_sockaddr(sock.getsockname()), Endpoint.from_sockaddr(
            sock.getpeername()
        )
    except OSError:  # already disconnected
        return None, None


class _ReaderNursery:
    """Stands in for the nursery trio-websocket starts its reader task in, so that we learn
    when the reader ends and why (a refused upgrade raises inside it)."""

    def __init__(self, nursery: trio.Nursery, on_reader_exit: Callable[[], object]) -> None:
        self._nursery = nursery
        self._on_reader_exit = on_reader_exit
        self.rejected: ConnectionRejected | None = None

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: Any, **kw: Any) -> None:
        self._nursery.start_soon(self._run, fn, *args)

    async def _run(self, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
        try:
            await fn(*args)
        except ConnectionRejected as exc:
            self.rejected = exc
        finally:
            self._on_reader_exit()


@asynccontextmanager
async def _websocket_on_stream(
    stream: trio.abc.Stream,
    *,
    client: bool,
    host: str,
    resource: str,
    what: str,
    deadline: float,
    max_message: int,
    receive_queue: int,
    close_timeout: float,
    subprotocols: Sequence[str] = (),
) -> AsyncIterator[WebSocketTransport]:
    """Run the WebSocket upgrade on `stream` (which we then own) and yield the transport.

    `what` names the connection in error messages. Raises ConnectFailed if the upgrade fails
    or misses `deadline`.
    """
    try:
        async with open_hidden_nursery() as nursery:
            handshake = trio.CancelScope(deadline=deadline)
            reader = _ReaderNursery(nursery, handshake.cancel)
            ws: WebSocketConnection | None = None
            with handshake:
                try:
                    ws = await _upgrade(
                        cast(trio.Nursery, reader),
                        stream,
                        client,
                        host,
                        resource,
                        max_message,
                        receive_queue,
                        subprotocols,
                    )
                except ConnectionClosed:
                    ws = None
            if ws is None:
                raise _upgrade_failed(what, reader.rejected, deadline)
            transport = WebSocketTransport(
                ws, stream, max_message=max_message, close_timeout=close_timeout
            )
            try:
                yield transport
            except trio.Cancelled:
                await transport._close(_WS_GOING_AWAY, "cancelled")
                raise
            except BaseException:
                await transport._close(_WS_INTERNAL_ERROR, "closed after a local error")
                raise
            await transport.aclose()
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


async def _upgrade(
    nursery: trio.Nursery,
    stream: trio.abc.Stream,
    client: bool,
    host: str,
    resource: str,
    max_message: int,
    receive_queue: int,
    subprotocols: Sequence[str],
) -> WebSocketConnection:
    common: dict[str, Any] = {
        "message_queue_size": receive_queue,
        "max_message_size": max_message,  # over it: close code 1009 naming the limit
        "receive_buffer_size": _READ_BYTES,
    }
    if client:
        common["subprotocols"] = subprotocols or None
        return await wrap_client_stream(nursery, stream, host, resource, **common)  # type: ignore[arg-type]
    request = await wrap_server_stream(nursery, stream, **common)
    chosen = next((p for p in request.proposed_subprotocols if p in subprotocols), None)  # ours
    return await request.accept(subprotocol=chosen)


def _upgrade_failed(
    what: str, rejected: ConnectionRejected | None, deadline: float
) -> ConnectFailed:
    if rejected is not None:
        return ConnectFailed(
            f"{what}: the server refused the WebSocket upgrade with HTTP "
            f"{rejected.status_code}; check the URL path"
        )
    if trio.current_time() >= deadline:
        return ConnectFailed(f"{what}: the WebSocket upgrade did not finish in time")
    return ConnectFailed(f"{what}: the connection closed during the WebSocket upgrade")


# --- client, server, and stream wrappers ---------------------------------------------------


@asynccontextmanager
async def open_transport(
    url: str,
    *,
    local_port: int | None = None,
    connect_timeout: float = TRANSPORT_CONNECT_TIMEOUT_S,
    max_message: int = MAX_CONTROL_BYTES,
    receive_queue: int = TRANSPORT_RECEIVE_QUEUE_MESSAGES,
    close_timeout: float = TRANSPORT_CLOSE_TIMEOUT_S,
    subprotocols: Sequence[str] = (),
) -> AsyncIterator[WebSocketTransport]:
    """Connect to a `ws://host:port/path` URL and yield the transport; close it on exit.
    `subprotocols` are offered in the upgrade (`WebSocketTransport.subprotocol`: the agreed).

    With `local_port`, the TCP socket is bound to that port with SO_REUSEADDR and
    SO_REUSEPORT before connecting, so the relay connection, the direct listener and direct
    dials share one port and a NAT maps them alike. `connect_timeout` covers the TCP connect
    and the WebSocket upgrade. Leaving the block closes normally (code 1000), or with code
    1011 if the block raised.

    Cancellation: while connecting, nothing is left open; inside the block, the transport
    tries a close frame (code 1001) and cuts the TCP connection at once, and the
    `trio.Cancelled` propagates.

    Raises ConfigError for a malformed URL and ConnectFailed (a TransportClosed) naming the
    URL when the connection is refused, unreachable, too slow, or the upgrade is refused.
    """
    host, port, resource = parse_ws_url(url)
    deadline = trio.current_time() + connect_timeout
    stream: trio.SocketStream | None = None
    with trio.move_on_at(deadline):
        stream = await connect_tcp(url, host, port, local_port)
    if stream is None:
        raise ConnectFailed(f"{url}: no TCP connection within {connect_timeout} s")
    host_header = f"[{host}]" if ":" in host else host
    if port != 80:
        host_header += f":{port}"
    async with _websocket_on_stream(
        stream,
        client=True,
        host=host_header,
        resource=resource,
        what=url,
        deadline=deadline,
        max_message=max_message,
        receive_queue=receive_queue,
        close_timeout=close_timeout,
        subprotocols=subprotocols,
    ) as transport:
        yield transport


async def serve_transport(
    handler: Callable[[WebSocketTransport], Awaitable[None]],
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    max_message: int = MAX_CONTROL_BYTES,
    receive_queue: int = TRANSPORT_RECEIVE_QUEUE_MESSAGES,
    handshake_timeout: float = TRANSPORT_HANDSHAKE_TIMEOUT_S,
    close_timeout: float = TRANSPORT_CLOSE_TIMEOUT_S,
    subprotocols: Sequence[str] = (),
    task_status: trio.TaskStatus[list[Endpoint]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Accept WebSocket connections on `host:port` and run `handler(transport)` for each.

    Use as `endpoints = await nursery.start(serve_transport, handler, host, port)`:
    it returns once listening, with the bound endpoints (port 0 is replaced by the real one).
    Each connection runs in its own task; when the handler returns the connection is closed
    normally. A handler that raises only loses its own connection (closed with code 1011,
    the error logged); `TransportClosed` from a handler is the remote leaving and is not an
    error. Connections that do not finish the upgrade within `handshake_timeout` are dropped.
    With `reuse_port`, the listening socket has SO_REUSEPORT (to share its port with dials).
    Of the subprotocols a client offers, the first one in `subprotocols` is agreed.

    Runs until cancelled; cancellation closes the listeners and cancels every handler, whose
    connection then closes as in `open_transport`. Raises ConfigError if it cannot listen.
    """
    try:
        if reuse_port:
            listeners = [await open_reuseport_listener(host, port)]
        else:
            listeners = await trio.open_tcp_listeners(port, host=host or None)
    except OSError as exc:
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another address "
            "or port, or stop whatever is using it"
        ) from None
    endpoints = [Endpoint.from_sockaddr(listener.socket.getsockname()) for listener in listeners]

    async def serve_one(stream: trio.SocketStream) -> None:
        _, remote = _stream_addresses(stream)
        what = f"WebSocket client {remote}"
        try:
            async with _websocket_on_stream(
                stream,
                client=False,
                host="",
                resource="",
                what=what,
                deadline=trio.current_time() + handshake_timeout,
                max_message=max_message,
                receive_queue=receive_queue,
                close_timeout=close_timeout,
                subprotocols=subprotocols,
            ) as transport:
                await handler(transport)
        except TransportClosed as exc:
            logger.debug("%s: %s", what, exc)
        except Exception:
            logger.exception("%s: the connection handler failed; closed that connection", what)

    try:
        async with open_hidden_nursery() as nursery:
            await nursery.start(trio.serve_listeners, serve_one, listeners)
            logger.info("serving WebSocket transports on %s", ", ".join(map(str, endpoints)))
            task_status.started(endpoints)
            await trio.sleep_forever()
    finally:
        for listener in listeners:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(listener)
    raise AssertionError("unreachable")  # pragma: no cover


def wrap_stream_transport(
    stream: trio.abc.Stream,
    *,
    client: bool,
    host: str = "meshcore",
    resource: str = "/",
    handshake_timeout: float = TRANSPORT_HANDSHAKE_TIMEOUT_S,
    max_message: int = MAX_CONTROL_BYTES,
    receive_queue: int = TRANSPORT_RECEIVE_QUEUE_MESSAGES,
    close_timeout: float = TRANSPORT_CLOSE_TIMEOUT_S,
) -> contextlib.AbstractAsyncContextManager[WebSocketTransport]:
    """Put a WebSocketTransport on an already connected stream (e.g. a TCP simultaneous open).

    Exactly one side passes `client=True`; `host` and `resource` are what it sends in the
    upgrade request. The transport owns `stream` and closes it on exit. Raises ConnectFailed
    if the upgrade fails or takes longer than `handshake_timeout`. Cancellation behaves as in
    `open_transport`.
    """
    _, remote = _stream_addresses(stream)
    return _websocket_on_stream(
        stream,
        client=client,
        host=host,
        resource=resource,
        what=f"WebSocket upgrade with {remote or 'stream'}",
        deadline=trio.current_time() + handshake_timeout,
        max_message=max_message,
        receive_queue=receive_queue,
        close_timeout=close_timeout,
    )


def parse_ws_url(url: str) -> tuple[str, int, str]:
    """(host, port, resource) of a ws:// URL; raises ConfigError naming what is wrong."""
    example = "expected ws://HOST:PORT/PATH, e.g. ws://relay.example.net:7000/"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or 80
    except ValueError as exc:
        raise ConfigError(f"URL {url!r} is malformed ({exc}); {example}") from None
    if parts.scheme != "ws":
        raise ConfigError(
            f"URL {url!r}: scheme {parts.scheme!r} is not supported; {example} "
            "(meshcore encrypts end to end, so wss:// adds nothing)"
        )
    if not parts.hostname:
        raise ConfigError(f"URL {url!r} has no host; {example}")
    resource = parts.path or "/"
    if parts.query:
        resource += "?" + parts.query
    return parts.hostname, port, resource


async def connect_tcp(url: str, host: str, port: int, local_port: int | None) -> trio.SocketStream:
    """TCP-connect to host:port (from `local_port` if given); errors name `url`."""
    try:
        if local_port is None:
            return await trio.open_tcp_stream(host, port)
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
        last: OSError = OSError(f"{host} has no address")
        for *_, sockaddr in infos:
            try:
                return await connect_from(local_port, Endpoint.from_sockaddr(sockaddr))
            except OSError as exc:
                last = exc
        raise last
    except OSError as exc:
        cause = _first_os_error(exc)
        raise ConnectFailed(
            f"{url}: cannot connect: {cause.strerror or cause}; check the address, the port "
            "and that the server is running",
            errno=cause.errno,
        ) from None


def _first_os_error(exc: OSError) -> OSError:
    """trio's happy eyeballs wraps the real errors (with their errno) in its __cause__."""
    cause = exc.__cause__
    while isinstance(cause, BaseExceptionGroup):
        cause = cause.exceptions[0]
    return cause if isinstance(cause, OSError) and exc.errno is None else exc
