"""The relay's UDP port (docs/datagram.md, "Through the relay"): sealed datagrams of circuits
whose two peers agreed to UDP are forwarded between them by UDP, never opened.

The decisions are `proto.relayudp`'s; this module binds the socket (the WebSocket listener's
port number), reads it in a thread of its own (`IoThread`: a packet never waits for trio's
scheduler, and the relay's second core does the forwarding; the thread has the "latency"
role, nice -5 where the relay may raise priorities, as the peers' device threads do) and
sends what the table says. The relay's trio code reaches the table only through
`RelayUdp`'s hooks, under its lock.
"""

from __future__ import annotations

import errno
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

from meshcore import _trace
from meshcore._datagramport import bind_udp
from meshcore._iothread import open_io_thread
from meshcore.proto.circuitwatch import Members
from meshcore.proto.constants import RELAY_CREDIT_UDP_SUBPROTOCOL, RELAY_UDP_SUBPROTOCOL
from meshcore.proto.limits import RelayLimits
from meshcore.proto.readpace import ReadPace
from meshcore.proto.relayrecords import Output
from meshcore.proto.relayudp import (
    RelayUdpCircuits,
    RelayUdpCounters,
    RelayUdpSettings,
    RelayUdpTable,
)

__all__ = ["UDP_SUBPROTOCOLS", "RelayUdp", "open_relay_udp"]

log = logging.getLogger("meshcore.relay")

UDP_SUBPROTOCOLS: Final = frozenset((RELAY_UDP_SUBPROTOCOL, RELAY_CREDIT_UDP_SUBPROTOCOL))
"""The WebSocket subprotocols of a connection that agreed to UDP."""
_READ_BATCH: Final = 256
_READ_BYTES: Final = 65536
_SOCKET_BUFFER_BYTES: Final = 1 << 22


def udp_settings(limits: RelayLimits) -> RelayUdpSettings:
    """The UDP bounds `limits` sets."""
    return RelayUdpSettings(
        max_packet_bytes=limits.udp_max_packet_bytes,
        packets_per_s=limits.udp_circuit_packets_per_s,
        bytes_per_s=limits.udp_circuit_bytes_per_s,
    )


class RelayUdp:
    """The relay's UDP forwarding: the table, the hooks the relay calls as connections and
    circuits come and go, and the socket once `open_relay_udp` bound it (before that, or
    if it could not, no circuit gets a token and everything goes by WebSocket)."""

    def __init__(self, limits: RelayLimits, members: Members) -> None:
        self._lock = threading.Lock()
        self._table = RelayUdpTable(udp_settings(limits))
        self._circuits = RelayUdpCircuits(self._table, members)
        self._sock: socket.socket | None = None
        self._pace = ReadPace(_READ_BATCH)
        self.send_errors = 0
        """Forwarded datagrams the socket refused (buffer full, unreachable)."""

    # ----------------------------------------------------------------- hooks (trio)
    @property
    def port(self) -> int | None:
        """The UDP port, None while there is none."""
        return self._circuits.port

    def connection_opened(self, conn_id: int, subprotocol: str | None) -> None:
        with self._lock:
            self._circuits.connection_opened(conn_id, udp=subprotocol in UDP_SUBPROTOCOLS)

    def connection_closed(self, conn_id: int) -> None:
        with self._lock:
            self._circuits.connection_closed(conn_id)

    def watch(self, outputs: list[Output]) -> list[Output]:
        """`outputs` with the CircuitUdp messages new circuits get (`RelayUdpCircuits`)."""
        if self._circuits.port is None:
            return outputs
        with self._lock:
            return self._circuits.watch(outputs)

    def counters(self) -> RelayUdpCounters:
        """A copy of the totals (the thread keeps counting)."""
        with self._lock:
            c = self._table.counters
            return RelayUdpCounters(c.received, c.forwarded, c.forwarded_bytes, c.dropped.copy())

    def circuits(self) -> int:
        """Circuits with UDP tokens now."""
        return len(self._table)

    # ----------------------------------------------------------------- the thread
    def read_ready(self) -> None:
        """Read what the socket holds (a batch; one packet after a quiet spell, see
        `proto.readpace`) and forward it (in the I/O thread)."""
        sock, table, lock = self._sock, self._table, self._lock
        if sock is None:
            return
        now_of, traced = time.monotonic, _trace.ENABLED
        for _ in range(self._pace.reads(now_of())):
            try:
                data, source = sock.recvfrom(_READ_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error of an earlier send: read on
            read_ns = _trace.now_ns() if traced else 0
            with lock:
                forward = table.received(data, (source[0], source[1]), now_of())
            if forward is None:
                continue
            try:
                sock.sendto(forward.data, forward.address)
                if traced:  # keyed by the sealed datagram, as the peers' marks
                    _trace.mark("relay.read", forward.data, at=read_ns)
                    _trace.mark("relay.sent", forward.data)
            except OSError as exc:
                self.send_errors += 1
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS) and self.send_errors == 1:
                    log.info("relay UDP to %s refused: %s", forward.address[0], exc.strerror)

    def _bound(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            self._circuits.port = sock.getsockname()[1]

    def _unbound(self) -> None:
        with self._lock:
            self._circuits.stop()
            self._sock = None


@asynccontextmanager
async def open_relay_udp(udp: RelayUdp, host: str, port: int) -> AsyncIterator[int | None]:
    """Bind UDP `host:port` (the relay's WebSocket port number) and forward in a thread for
    the duration of the block; yields the port, or None (with a warning) if it cannot be
    bound: the relay then runs without UDP. Leaving the block (or cancellation) stops the
    thread and closes the socket."""
    try:
        sock = bind_udp(host, port, buffer_bytes=_SOCKET_BUFFER_BYTES)
    except OSError as exc:
        log.warning(
            "relay UDP port %s:%d cannot be bound (%s): datagrams go by WebSocket; free the "
            "port, or run with --no-udp to silence this",
            host,
            port,
            exc.strerror or exc,
        )
        yield None
        return
    try:
        async with open_io_thread("meshcore-relay-udp", role="latency") as io:
            udp._bound(sock)
            io.register(sock.fileno(), udp.read_ready)
            try:
                log.info("relay UDP forwarding on port %d", port)
                yield sock.getsockname()[1]
            finally:
                io.unregister(sock.fileno())
                udp._unbound()
    finally:
        sock.close()
