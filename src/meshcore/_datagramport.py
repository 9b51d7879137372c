"""The UDP socket of the sessions' datagram paths (docs/datagram.md): bound to the shared
local port number (the TCP one of the relay connection and the direct listener), so that a
NAT that keeps the port for TCP is likely to keep it for UDP as well.

Datagrams are routed to their session by receiver index before anything is decrypted; the
session authenticates them. Reading runs in the data path's `IoThread` when there is one,
else in a trio task of the port's own nursery. Sending never blocks: a datagram the socket
buffer cannot take is dropped, as a UDP tunnel drops it.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final, Protocol

import attrs
import trio

from meshcore import _trace
from meshcore._iothread import IoThread
from meshcore._nursery import open_hidden_nursery
from meshcore.errors import DecodeError
from meshcore.proto.framing import peek_datagram_index
from meshcore.proto.readpace import ReadPace

if TYPE_CHECKING:
    from meshcore.proto.datagram import Address

__all__ = [
    "DatagramPort",
    "DatagramPortStats",
    "DatagramReceiver",
    "bind_udp",
    "open_datagram_port",
]

log = logging.getLogger("meshcore.datagram")

_READ_BYTES: Final = 65536
_READ_BATCH: Final = 256
"""Datagrams read per wakeup before other descriptors get their turn."""
_SOCKET_BUFFER_BYTES: Final = 1 << 21
"""Send and receive buffers asked for (the kernel caps them at its rmem/wmem_max)."""
_IP_MTU_DISCOVER: Final = 10
_IPV6_MTU_DISCOVER: Final = 23
_PMTUDISC_DO: Final = 2
"""Linux: never fragment, refuse what exceeds the path MTU with EMSGSIZE."""


class DatagramReceiver(Protocol):
    """What a port routes datagrams to: a session (`Session.datagram_received`)."""

    def datagram_indices(self) -> tuple[int, ...]:
        """The receiver indices this session accepts datagrams under now."""
        ...

    def datagram_received(self, data: bytes, source: Address) -> None:
        """One datagram for this session, still sealed, from `source`."""
        ...


@attrs.define
class DatagramPortStats:
    """Counters of the port (all sessions)."""

    received: int = 0
    sent: int = 0
    dropped_unroutable: int = 0
    """Datagrams too short, of another type, or for no session of ours."""
    dropped_send: int = 0
    """Datagrams the socket refused (buffer full, unreachable, too large)."""


class DatagramPort:
    """One UDP socket shared by sessions; see the module docstring. Made by
    `open_datagram_port`."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.family = sock.family
        self.port: int = sock.getsockname()[1]
        self.stats = DatagramPortStats()
        self._sessions: set[DatagramReceiver] = set()
        self._routes: dict[int, DatagramReceiver] = {}
        self._lock = threading.Lock()
        self._pace = ReadPace(_READ_BATCH)

    # ----------------------------------------------------------------- sessions
    def add(self, session: DatagramReceiver) -> None:
        """Route datagrams for `session`'s receiver indices to it. Thread-safe."""
        with self._lock:
            self._sessions.add(session)
            self._routes.clear()

    def discard(self, session: DatagramReceiver) -> None:
        """Stop routing to `session`. Thread-safe."""
        with self._lock:
            self._sessions.discard(session)
            self._routes.clear()

    def _route(self, index: int) -> DatagramReceiver | None:
        session = self._routes.get(index)
        if session is not None:
            return session
        with self._lock:  # a miss: indices change with rekeys, so rebuild the table
            self._routes = {i: s for s in self._sessions for i in s.datagram_indices()}
            return self._routes.get(index)

    # ----------------------------------------------------------------- addresses
    def address_for(self, host: str, port: int) -> Address:
        """`host:port` in the form this socket sends to (IPv4 as ::ffff:a.b.c.d on a
        dual-stack socket, and back on an IPv4 one)."""
        if self.family == socket.AF_INET6:
            if ":" not in host:
                host = "::ffff:" + host
        elif host.startswith("::ffff:"):
            host = host[len("::ffff:") :]
        return (host, port)

    # ----------------------------------------------------------------- I/O
    def sendto(self, data: bytes, address: Address) -> bool:
        """Send one datagram now; False if the socket refused it (dropped). Thread-safe,
        never blocks. Raises nothing."""
        try:
            self._sock.sendto(data, address)
        except OSError as exc:
            self.stats.dropped_send += 1
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS) and self.stats.dropped_send == 1:
                log.info("datagram to %s:%d refused: %s", address[0], address[1], exc.strerror)
            return False
        self.stats.sent += 1
        return True

    def read_ready(self) -> None:
        """Read and route what the socket holds (up to a batch; one datagram after a quiet
        spell, see `proto.readpace`): in the `IoThread` or in the port's trio task."""
        sock, stats, route = self._sock, self.stats, self._routes.get
        for _ in range(self._pace.reads(time.monotonic())):
            try:
                data, source = sock.recvfrom(_READ_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # an ICMP error queued on the socket: nothing to read this time
            stats.received += 1
            if _trace.ENABLED:
                _trace.mark("dgram.read", data)
            try:
                index = peek_datagram_index(data)
            except DecodeError:
                stats.dropped_unroutable += 1
                continue
            session = route(index)
            if session is None:  # a miss: `_route` rebuilds the table
                session = self._route(index)
                route = self._routes.get
            if session is None:
                stats.dropped_unroutable += 1
                continue
            session.datagram_received(data, (source[0], source[1]))

    def close(self) -> None:
        self._sock.close()


def bind_udp(host: str, port: int, *, buffer_bytes: int = _SOCKET_BUFFER_BYTES) -> socket.socket:
    """A non-blocking UDP socket on `host:port` that never fragments (too large a datagram
    is refused with EMSGSIZE), asking for `buffer_bytes` each way. The wildcard host ("" or
    "::") is dual-stack where the host has IPv6, else IPv4. Raises OSError."""
    wildcard = host in ("", "::")
    family = socket.AF_INET6 if wildcard or ":" in host else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_DGRAM)
    except OSError as exc:
        if not wildcard or exc.errno not in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
            raise
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if sock.family == socket.AF_INET6:
            if wildcard:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _PMTUDISC_DO)
            sock.bind(("::" if wildcard else host, port))
        else:
            sock.bind(("0.0.0.0" if wildcard else host, port))
        if sock.family == socket.AF_INET or wildcard:
            sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _PMTUDISC_DO)
        for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            sock.setsockopt(socket.SOL_SOCKET, option, buffer_bytes)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@asynccontextmanager
async def open_datagram_port(
    port: int, *, io: IoThread | None = None
) -> AsyncIterator[DatagramPort]:
    """A `DatagramPort` on UDP `port` (0: a free one) for the duration of the block, read
    in `io` if given, else in a task of its own.

    Raises OSError if the port cannot be bound (another program has it). Leaving the block
    (or cancellation) stops reading and closes the socket.
    """
    sock = bind_udp("", port)
    dport = DatagramPort(sock)
    try:
        if io is not None:
            io.register(sock.fileno(), dport.read_ready)
            try:
                yield dport
            finally:
                io.unregister(sock.fileno())
        else:
            async with open_hidden_nursery() as nursery:
                nursery.start_soon(_read_forever, dport, sock)
                yield dport
                nursery.cancel_scope.cancel()
    finally:
        dport.close()


async def _read_forever(dport: DatagramPort, sock: socket.socket) -> None:
    while True:
        await trio.lowlevel.wait_readable(sock)
        dport.read_ready()
