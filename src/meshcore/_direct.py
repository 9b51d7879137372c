"""Direct connections: sealed frames over TCP with a length prefix, the shared-port listener
that hands each accepted connection to its session, and the dialer that keeps re-dialing a
refused candidate (docs/direct.md).

Framing (docs/direct.md): every frame is `u32 length (big-endian) | sealed transport frame`.
No WebSocket on the direct path: under TCP simultaneous open both sides called connect(), so
there is no natural client and server; the frames are already authenticated and encrypted,
so WebSocket's masking and framing would only cost CPU.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import logging
import random
import socket as _stdlib_socket
import struct
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Final, Protocol

import trio

from meshcore._transport import Transport, open_tcp_socket_from
from meshcore.errors import ConnectFailed, DecodeError, TransportClosed
from meshcore.proto.constants import DIRECT_ROUTE_TIMEOUT_S, MAX_CANDIDATES, MAX_FRAME_BYTES
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.framing import MIN_FRAME_BYTES, peek_receiver_index
from meshcore.proto.identity import PeerId

__all__ = [
    "MAX_UNROUTED",
    "DirectListener",
    "FramedTransport",
    "SessionRoutes",
    "dial",
    "is_overlay_address",
    "local_candidates",
    "overlay_interface",
]

log = logging.getLogger("meshcore.direct")

_LENGTH: Final = struct.Struct(">I")
_READ_BYTES: Final = 256 * 1024
_LINGER_ABORT: Final = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close sends RST
MAX_UNROUTED: Final = 64
"""Accepted connections that have not sent their first frame yet; more are closed at once."""


class FramedTransport(Transport):
    """A Transport over one TCP stream: frames prefixed with a u32 length.

    `send_many` writes a batch of frames with one system call; `receive_batch` returns every
    complete frame one read brought. A length outside the frame limits closes the
    connection (the peer broke the protocol). Cancelling a send mid-write cuts the connection,
    since a half-written frame would corrupt the stream.
    """

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self._buffer = bytearray()
        self._send_lock = trio.Lock()
        self._close_reason: str | None = None
        self._local: Endpoint | None = None
        self._remote: Endpoint | None = None
        self._close_hooks: list[Callable[[str], None]] = []
        try:
            self._local = Endpoint.from_sockaddr(stream.socket.getsockname())
            self._remote = Endpoint.from_sockaddr(stream.socket.getpeername())
        except (OSError, ValueError):
            pass

    @property
    def local_address(self) -> Endpoint | None:
        return self._local

    @property
    def remote_address(self) -> Endpoint | None:
        return self._remote

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    async def send(self, data: bytes) -> None:
        await self.send_many((data,))

    async def send_many(self, messages: Sequence[bytes]) -> None:
        """Send every frame of `messages`, in order, in one write."""
        if self._close_reason is not None:
            raise TransportClosed(self._close_reason)
        pack = _LENGTH.pack
        parts: list[bytes] = []
        for frame in messages:
            parts.append(pack(len(frame)))
            parts.append(frame)
        data = b"".join(parts)
        try:
            self._send_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._send_lock.acquire()
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._note_closed(f"direct connection lost: {_describe(exc)}")
            raise TransportClosed(self._close_reason or "closed") from None
        except BaseException:
            if self._close_reason is None:
                self._note_closed("a send was interrupted mid-frame; connection cut")
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(self.stream)
            raise
        finally:
            self._send_lock.release()

    async def receive(self) -> bytes:
        while True:
            frame = self._take_one()
            if frame is not None:
                return frame
            await self._read()

    async def receive_batch(self) -> list[bytes]:
        """Every complete frame buffered, reading once if there is none; cancel-safe."""
        while True:
            frames = self._take_all()
            if frames:
                return frames
            await self._read()

    async def aclose(self, reason: str = "closed") -> None:
        self._note_closed(reason)
        self._run_close_hooks()
        await trio.aclose_forcefully(self.stream)

    def on_close(self, hook: Callable[[str], None]) -> None:
        """Call `hook(reason)` when this transport is closed or aborted here (whoever reads
        the connection in another thread then lets go of it)."""
        self._close_hooks.append(hook)

    def _run_close_hooks(self) -> None:
        hooks, self._close_hooks = self._close_hooks, []
        for hook in hooks:
            hook(self._close_reason or "closed")

    def take_buffered(self) -> bytes:
        """The bytes read but not yet taken as frames (for whoever reads the connection
        from now on, such as the data path's thread)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data

    def abort(self, reason: str = "aborted") -> None:
        """Cut the connection at once with a TCP reset (tests and forced fallbacks)."""
        self._note_closed(reason)
        self._run_close_hooks()
        try:
            self.stream.socket.setsockopt(
                _stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_LINGER, _LINGER_ABORT
            )
        except OSError:
            pass
        self.stream.socket.close()

    # ----------------------------------------------------------------- internals
    async def _read(self) -> None:
        if self._close_reason is not None:
            raise TransportClosed(self._close_reason)
        try:
            data = await self.stream.receive_some(_READ_BYTES)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._note_closed(f"direct connection lost: {_describe(exc)}")
            raise TransportClosed(self._close_reason or "closed") from None
        if not data:
            self._note_closed("direct connection closed by the peer")
            raise TransportClosed(self._close_reason or "closed")
        self._buffer += data

    def _take_one(self) -> bytes | None:
        buf = self._buffer
        if len(buf) < 4:
            return None
        (size,) = _LENGTH.unpack_from(buf)
        self._check(size)
        if len(buf) < 4 + size:
            return None
        frame = bytes(buf[4 : 4 + size])
        del buf[: 4 + size]
        return frame

    def _take_all(self) -> list[bytes]:
        buf = self._buffer
        end = len(buf)
        off = 0
        frames: list[bytes] = []
        unpack = _LENGTH.unpack_from
        while end - off >= 4:
            (size,) = unpack(buf, off)
            self._check(size)
            if end - off - 4 < size:
                break
            frames.append(bytes(buf[off + 4 : off + 4 + size]))
            off += 4 + size
        if off:
            del buf[:off]
        return frames

    def _check(self, size: int) -> None:
        if not MIN_FRAME_BYTES <= size <= MAX_FRAME_BYTES:
            reason = (
                f"protocol error on the direct connection: frame length {size} is outside "
                f"{MIN_FRAME_BYTES}..{MAX_FRAME_BYTES}"
            )
            self._note_closed(reason)
            self.stream.socket.close()
            raise TransportClosed(reason)

    def _note_closed(self, reason: str) -> None:
        if self._close_reason is None:
            self._close_reason = reason


def _describe(exc: BaseException) -> str:
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    return str(cause) or type(cause).__name__


# --- routing accepted connections to sessions -------------------------------------------------


class DirectRoute(Protocol):
    """What a session offers the listener: is a receiver index its own, and take a connection."""

    @property
    def peer_id(self) -> PeerId:
        """The peer at the other end of the session."""
        ...

    def owns_index(self, receiver_index: int) -> bool: ...

    def incoming_direct(self, transport: FramedTransport, first_frame: bytes) -> bool:
        """Take the connection (True) or refuse it (False: the caller closes it)."""
        ...

    def incoming_circuit(self, circuit: Transport, first_frame: bytes) -> bool:
        """Take a relay circuit the peer re-opened (True) or refuse it (False)."""
        ...


class SessionRoutes:
    """The live sessions of one relay connection, found by a receiver index of theirs.

    A connection (direct, or a circuit the peer re-opened) starts with a sealed frame whose
    header names the receiver index its sender chose for us: that picks the session, before
    anything is decrypted; the session then authenticates the frame.
    """

    def __init__(self) -> None:
        self._routes: list[DirectRoute] = []

    def add(self, route: DirectRoute) -> None:
        self._routes.append(route)

    def remove(self, route: DirectRoute) -> None:
        if route in self._routes:
            self._routes.remove(route)

    def find(self, first_frame: bytes) -> DirectRoute | None:
        """The session `first_frame` is for, or None (not a transport frame, unknown index)."""
        try:
            index = peek_receiver_index(first_frame)
        except DecodeError:
            return None
        for route in self._routes:
            if route.owns_index(index):
                return route
        return None

    def serves_peer(self, peer_id: PeerId) -> bool:
        """Is there a live session with `peer_id` (its circuit may need a new pairing)?"""
        return any(route.peer_id == peer_id for route in self._routes)

    def __len__(self) -> int:
        return len(self._routes)


class DirectListener:
    """Accepts direct connections on the shared port and hands each to its session."""

    def __init__(self, listener: trio.SocketListener, routes: SessionRoutes) -> None:
        self.listener = listener
        self.routes = routes
        self.port: int = listener.socket.getsockname()[1]
        self.accepted = 0
        self.refused = 0
        self.unrouted = 0
        """Connections waiting for their first frame (at most MAX_UNROUTED)."""

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept until cancelled; each connection is routed in its own task."""
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    stream = await self.listener.accept()
                except (trio.ClosedResourceError, trio.BrokenResourceError):
                    return
                except OSError as exc:  # e.g. EMFILE: wait a little, keep listening
                    log.warning("direct listener: accept failed: %s", exc.strerror or exc)
                    await trio.sleep(0.1)
                    continue
                if self.unrouted >= MAX_UNROUTED:
                    self.refused += 1  # someone opens connections and sends nothing
                    await trio.aclose_forcefully(stream)
                    continue
                self.unrouted += 1
                nursery.start_soon(self._route, stream)

    async def _route(self, stream: trio.SocketStream) -> None:
        transport = FramedTransport(stream)
        handed_over = False
        try:
            first: bytes | None = None
            with trio.move_on_after(DIRECT_ROUTE_TIMEOUT_S):
                try:
                    first = await transport.receive()
                except TransportClosed:
                    return
            if first is None:
                log.debug("direct connection from %s sent nothing", transport.remote_address)
                return
            route = self.routes.find(first)
            if route is not None and route.incoming_direct(transport, first):
                handed_over = True
                self.accepted += 1
            else:
                self.refused += 1
                log.debug("direct connection from %s: no session for it", transport.remote_address)
        finally:
            self.unrouted -= 1
            if not handed_over:
                await transport.aclose("no session for this connection")

    async def aclose(self) -> None:
        await self.listener.aclose()


# --- dialing -----------------------------------------------------------------------------------


async def dial(
    local_port: int, remote: Endpoint, *, redial_s: float, errors: dict[Endpoint, str]
) -> FramedTransport:
    """Connect to `remote` from `local_port`, re-dialing about every `redial_s` until it works.

    A refusal is expected while the far NAT has no mapping for our SYN yet (docs/direct.md), so
    no failure is final: the caller's cancel scope (the race deadline) ends the attempts. The
    latest failure is kept in `errors[remote]` for the caller's message.

    The pause is jittered by ±50 %: a simultaneous open needs the two SYNs to cross in
    flight, and two fixed-period re-dialers keep their phase offset, so they meet at once or
    never; jittered ones meet within a few attempts (measured in docs/lab.md).
    """
    while True:
        try:
            stream = await open_tcp_socket_from(local_port, remote)
        except ConnectFailed as exc:
            errors[remote] = _short(exc)
            await trio.sleep(redial_s * (0.5 + random.random()))
            continue
        errors.pop(remote, None)
        return FramedTransport(stream)


def _short(exc: ConnectFailed) -> str:
    if exc.errno is not None:
        names = {
            _errno.ECONNREFUSED: "refused",
            _errno.ETIMEDOUT: "timed out",
            _errno.EHOSTUNREACH: "host unreachable",
            _errno.ENETUNREACH: "network unreachable",
            _errno.EADDRNOTAVAIL: "already connected",
            _errno.EADDRINUSE: "already connected",
        }
        if exc.errno in names:
            return names[exc.errno]
        return _errno.errorcode.get(exc.errno, str(exc.errno)).lower()
    return exc.reason


def local_candidates(relay_local: Endpoint | None, port: int) -> list[Endpoint]:
    """Our candidates on the shared `port`: the address our relay connection leaves from
    first (the interface that routes), then the IPv4 address of every other interface.

    Loopback is offered only when the relay itself is reached over loopback, link-local
    addresses never, and the addresses of overlay interfaces (our own tunnel devices, see
    `overlay_interface`) never. The relay adds what it observes (our NAT's public mapping).
    """
    hosts: list[str] = []
    relay_ip = relay_local.ip if relay_local is not None else None
    if relay_ip is not None and not relay_ip.is_unspecified and not is_overlay_address(relay_ip):
        hosts.append(relay_ip.compressed)
    loopback_ok = relay_local is not None and relay_local.ip.is_loopback
    for name, host, _mask in _interface_addresses():
        ip = Endpoint(host, port).ip
        if ip.is_link_local or ip.is_unspecified or (ip.is_loopback and not loopback_ok):
            continue
        if name in _OVERLAY_INTERFACES:
            continue
        if host not in hosts:
            hosts.append(host)
    return [Endpoint(host, port) for host in hosts[:MAX_CANDIDATES]]


_OVERLAY_INTERFACES: set[str] = set()


@contextmanager
def overlay_interface(name: str) -> Iterator[None]:
    """Declare `name` (a tunnel device of this process) an overlay while the block runs.

    A direct path must never run through the tunnel it carries: the addresses of an
    overlay interface are not announced as candidates, and a peer's candidate inside an
    overlay's network is not dialled.
    """
    _OVERLAY_INTERFACES.add(name)
    try:
        yield
    finally:
        _OVERLAY_INTERFACES.discard(name)


def is_overlay_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether `ip` lies in the network of one of this process's overlay interfaces."""
    if not _OVERLAY_INTERFACES or ip.version != 4:
        return False
    for name, host, mask in _interface_addresses():
        if name in _OVERLAY_INTERFACES and ip in ipaddress.IPv4Network(f"{host}/{mask}", False):
            return True
    return False


_SIOCGIFADDR: Final = 0x8915  # Linux: the primary IPv4 address of an interface
_SIOCGIFNETMASK: Final = 0x891B  # Linux: its netmask


def _interface_addresses() -> list[tuple[str, str, str]]:
    """(name, IPv4 address, netmask) of each interface (Linux); [] where unreadable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux
        return []
    out: list[tuple[str, str, str]] = []
    try:
        with _stdlib_socket.socket(_stdlib_socket.AF_INET, _stdlib_socket.SOCK_DGRAM) as sock:
            for _index, name in _stdlib_socket.if_nameindex():
                request = struct.pack("256s", name.encode()[:15])
                try:
                    answer = fcntl.ioctl(sock.fileno(), _SIOCGIFADDR, request)
                    mask = fcntl.ioctl(sock.fileno(), _SIOCGIFNETMASK, request)
                except OSError:
                    continue  # no IPv4 address, or down
                host = _stdlib_socket.inet_ntoa(answer[20:24])
                out.append((name, host, _stdlib_socket.inet_ntoa(mask[20:24])))
    except OSError:
        return out
    return out
