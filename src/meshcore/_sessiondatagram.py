"""A session's unreliable datagrams (docs/datagram.md): `send_datagram` seals a payload under
the session's keys and sends it by UDP straight to the peer while the session is on a direct
path whose UDP twin answers probes, or through the relay's UDP port while it is on a relay
circuit whose relay forwards datagrams; nothing is queued, acknowledged or retransmitted. The
reliable messages keep their exactly-once guarantee; a datagram arrives at most once.

Which address, and whether UDP works at all, is `proto.datagram.DatagramPath`'s decision;
this class does its I/O through the `DatagramPort`, follows the session's active path and
runs its probes from the session's timer task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import trio

from meshcore import _trace
from meshcore._circuit import CircuitTransport
from meshcore._datagramport import DatagramPort
from meshcore._direct import FramedTransport
from meshcore._link import Link, LinkTraffic
from meshcore.errors import KeyExpired, ProtocolError
from meshcore.proto.datagram import (
    Address,
    DatagramPath,
    DatagramSettings,
    DatagramState,
    max_payload,
)
from meshcore.proto.framing import DATAGRAM_DATA, DATAGRAM_PROBE, DATAGRAM_REPLY
from meshcore.proto.relayudp import relay_datagram_prefix

if TYPE_CHECKING:
    from meshcore.proto.identity import PeerId
    from meshcore.proto.paths import SessionPaths
    from meshcore.proto.session import SessionCore

__all__ = ["DatagramStats", "SessionDatagrams"]

log = logging.getLogger("meshcore.session")


@attrs.define
class DatagramStats:
    """Counters of one session's datagrams."""

    sent: int = 0
    received: int = 0
    dropped: int = 0
    """Datagrams that failed authentication, were replays, or arrived with no receiver."""
    path_ups: int = 0
    """Times the datagram path became usable."""


class SessionDatagrams:
    """The datagram calls of `meshcore._session.Session` (a base class of it)."""

    if TYPE_CHECKING:  # set by Session.__init__
        _lock: threading.RLock
        _core: SessionCore
        _paths: SessionPaths
        _clock: trio.abc.Clock
        _wake_timer: trio.Event
        _timer_at: float
        _peer_id: PeerId
        _traffic: LinkTraffic

    def _init_datagrams(self) -> None:
        self._dport: DatagramPort | None = None
        self._dpath = DatagramPath()
        self._dlink: object = None
        self._dto: Address | None = None
        """Where datagrams go now (a cache of `_dpath.usable`, refreshed on every change)."""
        self._dprefix = b""
        """What goes in front of each (a relay's token), with `_dto`."""
        self._dwaits_route = False
        """On a relay circuit whose UDP route has not come (yet): look again on changes."""
        self._dlimit = 0
        self._duntil = float("-inf")
        self._dreceiver: Callable[[bytes], None] | None = None
        self.datagram_stats = DatagramStats()

    # ----------------------------------------------------------------- public
    def use_datagram_port(
        self, port: DatagramPort, settings: DatagramSettings | None = None
    ) -> None:
        """Send and receive datagrams through `port` from now on (set up once, on trio,
        before the traffic starts); the session probes its direct peer's address there
        whenever it is on a direct path (or the relay's UDP address, on a relay circuit
        whose relay forwards datagrams), timed by `settings`."""
        self._dport = port
        port.add(self)
        with self._lock:
            if settings is not None:
                self._dpath = DatagramPath(settings)
            self._dlink = None
            self._follow_path(self._clock.current_time())

    def release_datagram_port(self) -> None:
        """Stop using the port (the session ended, or the port is closing)."""
        port, self._dport = self._dport, None
        if port is not None:
            port.discard(self)
        with self._lock:
            self._dpath.stop()
            self._dto, self._dlimit = None, 0

    def attach_datagram_receiver(self, deliver: Callable[[bytes], None] | None) -> None:
        """Hand each datagram's payload to `deliver` as it arrives (in whichever thread read
        it, in order, outside the session's lock: a device write there does not hold up the
        thread sealing the session's frames; it must not block); None drops them again."""
        self._dreceiver = deliver

    @property
    def datagram_limit(self) -> int:
        """The largest payload `send_datagram` sends now; 0 while there is no datagram path
        (not direct, or UDP does not get through). Thread-safe."""
        return self._dlimit

    @property
    def datagram_state(self) -> str:
        """ "off" (not direct), "probing" or "up"."""
        with self._lock:
            return self._dpath.state(self._clock.current_time()).value

    def send_datagram(self, payload: bytes) -> bool:
        """Seal `payload` and send it by UDP now, if the datagram path is up and it fits
        `datagram_limit`; False if not (send it the reliable way instead). Never blocks,
        never queues; a datagram may be lost. Thread-safe."""
        if len(payload) > self._dlimit:
            return False
        with self._lock:
            to, port, now = self._dto, self._dport, self._clock.current_time()
            prefix = self._dprefix
            if to is None or port is None or now > self._duntil:
                return False
            if self._core.close_reason is not None:
                return False
            try:
                sealed = self._core.keys.seal_datagram(payload, now)
            except KeyExpired:
                return False
        if _trace.ENABLED:
            _trace.mark("dgram.sealed", sealed, parent=_trace.key(payload))
        if not port.sendto(prefix + sealed if prefix else sealed, to):
            return False
        if _trace.ENABLED:
            _trace.mark("dgram.sent", sealed)
        traffic = self._traffic  # counted with the path it belongs to: direct, or the relay's
        sent = traffic.relay_sent if prefix else traffic.direct_sent
        sent[0] += 1
        sent[1] += len(sealed)
        self.datagram_stats.sent += 1
        return True

    # ----------------------------------------------------------------- from the port
    def datagram_indices(self) -> tuple[int, ...]:
        """The receiver indices this session takes datagrams under now."""
        with self._lock:
            return self._core.keys.receiver_indices(self._clock.current_time())

    def datagram_received(self, data: bytes, source: Address) -> None:
        """One sealed datagram from `source` (the port's reader, any thread)."""
        reply: bytes | None = None
        prefix = b""
        deliver: Callable[[bytes], None] | None = None
        with self._lock:
            now = self._clock.current_time()
            try:
                kind, plaintext = self._core.keys.open_datagram(data, now)
            except (ProtocolError, KeyExpired):
                self.datagram_stats.dropped += 1
                return
            if kind == DATAGRAM_DATA:
                deliver = self._dreceiver
                if deliver is None:
                    self.datagram_stats.dropped += 1
                    return
                self.datagram_stats.received += 1
                traffic = self._traffic
                relayed = self._dprefix and source == self._dpath.candidate
                received = traffic.relay_received if relayed else traffic.direct_received
                received[0] += 1
                received[1] += len(data)
            elif kind == DATAGRAM_PROBE:
                try:
                    reply = self._core.keys.seal_datagram(plaintext, now, DATAGRAM_REPLY)
                except KeyExpired:
                    return
                if source == self._dpath.candidate:  # through the relay: with our token
                    prefix = self._dpath.prefix
            elif kind == DATAGRAM_REPLY:
                was_up = self._dto is not None
                try:
                    answered = self._dpath.replied(plaintext, source, now)
                except ProtocolError:
                    return
                if answered:
                    self._refresh(now)
                    if not was_up and self._dto is not None:
                        self.datagram_stats.path_ups += 1
                        log.info(
                            "session %s: datagram path up to %s:%d (RTT %.2f ms)",
                            self._peer_id,
                            source[0],
                            source[1],
                            (self._dpath.rtt_s or 0.0) * 1e3,
                        )
        if deliver is not None:  # outside the lock: the device write is not the session's
            if _trace.ENABLED:
                _trace.mark_frame("dgram.opened", plaintext, parent=_trace.key(data))
            deliver(plaintext)
            return
        port = self._dport
        if reply is not None and port is not None:
            port.sendto(prefix + reply if prefix else reply, source)

    # ----------------------------------------------------------------- for Session
    def _follow_path(self, now: float) -> None:
        """Probe the direct peer's address while the session is direct, the relay's UDP
        address while it is on a circuit with a UDP route, stop otherwise (under the lock,
        on trio, after the paths changed)."""
        link = self._paths.active_link
        if (link is self._dlink and not self._dwaits_route) or self._dport is None:
            return
        self._dlink = link
        self._dwaits_route = False
        candidate: Address | None = None
        prefix = b""
        transport = link.transport if isinstance(link, Link) else None
        if isinstance(transport, FramedTransport):
            remote = transport.remote_address
            if remote is not None:
                candidate = self._dport.address_for(remote.host, remote.port)
        elif isinstance(transport, CircuitTransport):
            route = transport.udp_route
            self._dwaits_route = route is None and transport.close_reason is None
            if route is not None:
                candidate = self._dport.address_for(route.host, route.port)
                prefix = relay_datagram_prefix(route.token)
        if candidate is None:
            if self._dpath.state(now) is not DatagramState.OFF:
                log.debug("session %s: datagram path off (no UDP route)", self._peer_id)
            self._dpath.stop()
        else:
            self._dpath.start(candidate, now, prefix)
            self._wake_timer.set()
        self._refresh(now)

    def _refresh(self, now: float) -> None:
        to = self._dpath.usable(now)
        self._dto, self._duntil = to, self._dpath.usable_until
        self._dprefix = self._dpath.prefix
        self._dlimit = max_payload(to, len(self._dprefix)) if to is not None else 0

    def _datagram_timer(self) -> float | None:
        return self._dpath.timer

    def _datagram_tick(self, now: float) -> None:
        """Send a due probe; notice a path that stopped answering (timer task, on trio)."""
        with self._lock:
            was_up = self._dto is not None
            probe = self._dpath.due_probe(now)
            self._refresh(now)
            if was_up and self._dto is None:
                log.info(
                    "session %s: datagram path stopped answering; datagrams go the reliable "
                    "way until it answers again",
                    self._peer_id,
                )
            sealed = None
            if probe is not None:
                try:
                    sealed = self._core.keys.seal_datagram(probe.payload, now, DATAGRAM_PROBE)
                except KeyExpired:
                    sealed = None
        port = self._dport
        if sealed is not None and port is not None and probe is not None:
            port.sendto(probe.prefix + sealed if probe.prefix else sealed, probe.address)
