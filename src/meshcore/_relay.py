"""The relay server: drives the sans-IO `Matchmaker` over WebSocket connections (trio).

Per connection, one task reads, decodes and feeds the matchmaker, and one task drains a
bounded send queue. A slow reader never makes the relay buffer without bound: relayed frames
beyond a circuit's, a connection's or the relay's queue bound are dropped (or the circuit is
closed with QUEUE_OVERFLOW), and a peer that lets control messages pile up is disconnected.
Connections that agreed to credits (a WebSocket subprotocol) send relayed frames only within
the credit `meshcore.proto.relayflow` grants, so their frames are never dropped and all of
them together stay under `max_buffer_bytes`. No protocol decision is made here; docs/relay.md
has the rules. What it counts itself (queue
drops by reason, the challenge's CPU time) is plain numbers, read by the metrics at scrape time.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Mapping
from functools import partial
from typing import Final

import attrs
import trio

from meshcore._nursery import open_hidden_nursery
from meshcore._relayconn import AdmissionGate, serve_relay_connections
from meshcore._relayudp import RelayUdp, open_relay_udp
from meshcore._wsconn import WsConnection
from meshcore.errors import TransportClosed
from meshcore.proto.constants import (
    RELAY_ACCEPT_QUEUE_CONNECTIONS,
    RELAY_CLOSE_FLUSH_S,
    RELAY_CREDIT_SUBPROTOCOL,
    RELAY_CREDIT_UDP_SUBPROTOCOL,
    RELAY_DEFAULT_PORT,
    RELAY_SHUTDOWN_GRACE_S,
    RELAY_UDP_SUBPROTOCOL,
)
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.histogram import Histogram, HistogramSnapshot
from meshcore.proto.identity import Identity, PeerId, PublicBundle
from meshcore.proto.limits import RelayLimits
from meshcore.proto.matchmaker import (
    CircuitStats,
    CloseConnection,
    ConnState,
    Forward,
    LogEvent,
    Matchmaker,
    MatchmakerCounters,
    Output,
    Send,
)
from meshcore.proto.relayauth import PendingAuth, make_challenge
from meshcore.proto.relayflow import CreditGrant, RelayFlow
from meshcore.proto.relayudp import RelayUdpCounters
from meshcore.proto.wire import RELAYED_HEADER_BYTES, Challenge, CircuitCredit, encode_control

__all__ = ["RelayConfig", "RelayCounters", "RelayServer", "RelayStats", "serve_relay"]

log = logging.getLogger("meshcore.relay")

_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_CONTROL: Final = 0
"""Circuit id of queue entries that are control messages (0 is never a circuit id)."""
_WRITE_BATCH_BYTES: Final = 256 * 1024
"""A connection's writer takes queued messages until this many bytes for one write."""
_SHUTDOWN_BATCH: Final = 1024
"""Shutdown outputs executed between two checkpoints (the readers take the peers' answers
in between)."""
CHALLENGE_CPU_BUCKETS_S: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
)  # fmt: skip
"""Histogram bounds of the CPU time one KEM challenge takes (~0.2 ms here; docs/relay.md)."""


def _check_port(_inst: object, _attr: object, port: int) -> None:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port must be 0..65535 (0 picks a free port), got {port}")


@attrs.frozen
class RelayConfig:
    """What `serve_relay` needs: where to listen, the relay's identity, the limits, and how
    long to wait on close."""

    host: str = "127.0.0.1"
    port: int = attrs.field(default=RELAY_DEFAULT_PORT, validator=_check_port)
    identity: Identity | None = None
    """The relay's static identity, whose peer id is the relay id peers verify; None makes a
    new one for this run (fine for tests and embedded relays that hand out their id)."""
    limits: RelayLimits = attrs.field(factory=RelayLimits)
    shutdown_grace_s: float = RELAY_SHUTDOWN_GRACE_S
    """On shutdown, how long peers get to take their Close before they are cut off."""
    close_flush_s: float = RELAY_CLOSE_FLUSH_S
    """How long a connection being closed may take to flush its last messages."""
    udp: bool = True
    """Forward the sealed datagrams of circuits by UDP on the listener's port number
    (docs/datagram.md); if that port cannot be bound the relay runs without."""


@attrs.frozen
class RelayStats:
    """Counters of a running relay (table sizes and queue state)."""

    connections: int
    pending: int
    peers: int
    circuits: int
    invites: int
    tracked_addresses: int
    queued_bytes: int
    dropped_frames: int
    udp_circuits: int = 0
    """Circuits with UDP tokens (both peers take their datagrams by UDP)."""


@attrs.frozen
class RelayCounters:
    """Totals since the relay started, each only growing (docs/observability.md)."""

    matchmaker: MatchmakerCounters
    """Registrations, pairings, refusals and closes by reason, bytes and frames forwarded."""
    dropped: Mapping[str, int]
    """Relayed frames dropped by the relay's queues, by reason: "circuit_queue",
    "connection_queue", "relay_queue" (its bound was reached), "connection_closed" (the
    receiver was gone or closing) or "no_credit" (a credited sender overdrew its credit)."""
    challenge_cpu_s: HistogramSnapshot
    """CPU seconds each KEM challenge (made for a Hello) took."""
    udp: RelayUdpCounters = attrs.field(factory=RelayUdpCounters)
    """The UDP port's packets: received, forwarded, dropped by reason."""


class _Link:
    """The send side of one connection: a FIFO of encoded messages and its accounting."""

    __slots__ = (
        "close_reason",
        "closing",
        "conn_id",
        "control",
        "credits",
        "final",
        "lot",
        "per_circuit",
        "queue",
        "queued_bytes",
        "settled",
        "transport",
        "write_scope",
    )

    def __init__(self, conn_id: int, transport: WsConnection) -> None:
        self.conn_id = conn_id
        self.transport = transport
        self.queue: deque[tuple[bytes | None, int]] = deque()
        self.lot = trio.lowlevel.ParkingLot()
        self.per_circuit: dict[int, list[int]] = {}  # circuit id -> [frames, bytes] queued
        self.queued_bytes = 0
        self.control = 0
        self.credits: dict[int, int] = {}  # circuit id -> credit to grant, ahead of the queue
        self.closing = False
        self.close_reason = ""
        self.settled = False  # registered: no longer counted by the admission gate
        self.final = False
        """Shutting down, its last messages and close frame were written at once: the
        writer only waits to end (the peer's close, or the cut)."""
        self.write_scope = trio.CancelScope()

    def end_writer(self) -> None:
        """Have the writer end once it has written what is queued."""
        self.queue.append((None, _CONTROL))
        self.lot.unpark()


class _Relay:
    """Executes the matchmaker's outputs on real connections."""

    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.challenge_cpu = Histogram(CHALLENGE_CPU_BUCKETS_S)
        self.mm = Matchmaker(
            config.limits, identity=config.identity, challenger=self._timed_challenge
        )
        self.flow = RelayFlow(config.limits, self.mm.circuit_members)
        self.udp = RelayUdp(config.limits, self.mm.circuit_members)
        self.links: dict[int, _Link] = {}
        self._conn_ids = itertools.count(1)
        self._timer_scope = trio.CancelScope()
        self.queued_bytes = 0
        self.dropped: Counter[str] = Counter()
        """Relayed frames dropped, by reason (see `RelayCounters.dropped`)."""
        self._shutting_down = False
        self._all_closed = trio.Event()
        self.gate = AdmissionGate(config.limits.max_pending_connections)
        """Connections accepted and not yet registered, at most `max_pending_connections`:
        past it a herd waits in the accept queue and the listen backlog, not refused."""
        self.stop_accepting = trio.Event()
        """Set on shutdown: the listeners close, so that peers coming back early are refused
        by the OS instead of costing the relay an upgrade each (docs/relay.md)."""

    def _timed_challenge(self, bundle: PublicBundle) -> tuple[Challenge, PendingAuth]:
        start = time.thread_time()
        try:
            return make_challenge(bundle)
        finally:
            self.challenge_cpu.observe(time.thread_time() - start)

    # --- connections ------------------------------------------------------------------------

    async def serve_connection(self, transport: WsConnection) -> None:
        """The handler of one WebSocket connection; returns when it is closed."""
        conn_id = next(self._conn_ids)
        link = _Link(conn_id, transport)
        self.links[conn_id] = link
        reason = "closed"
        try:
            addr = transport.remote_address
            if addr is None:  # not an IP connection: nothing to rate-limit or report
                return
            agreed = transport.subprotocol
            credited = agreed in (RELAY_CREDIT_SUBPROTOCOL, RELAY_CREDIT_UDP_SUBPROTOCOL)
            self.flow.connection_opened(conn_id, credited=credited)
            self.udp.connection_opened(conn_id, agreed)
            self.run(self.mm.connection_opened(conn_id, addr, trio.current_time()))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, link)
                reason = await self._read_loop(link)
                if link.final:
                    link.end_writer()  # its aclose waits for the peer's close, or the cut
                elif not link.closing:
                    nursery.cancel_scope.cancel()  # the peer left: nothing more to send
        finally:
            del self.links[conn_id]
            self._release(link)
            self.run(self.mm.connection_closed(conn_id, reason, trio.current_time()))
            for grant in self.flow.connection_closed(conn_id):
                self._grant(grant)
            self.udp.connection_closed(conn_id)
            if self._shutting_down and not self.links:
                self._all_closed.set()

    async def _read_loop(self, link: _Link) -> str:
        transport, mm, conn_id = link.transport, self.mm, link.conn_id
        try:
            while not link.closing:
                for data in await transport.receive_batch():
                    self.run(mm.receive_data(conn_id, data, trio.current_time()))
                    if link.closing:
                        break
                if not link.settled and mm.state_of(conn_id) is ConnState.REGISTERED:
                    link.settled = True
                    transport.settled()  # the gate takes the next connection in
        except TransportClosed as exc:
            return exc.reason
        return link.close_reason

    async def _write_loop(self, link: _Link) -> None:
        """Write what is queued for `link`, a batch at a time (one write to the socket for
        everything queued, up to `_WRITE_BATCH_BYTES`): credit first, then the FIFO."""
        transport = link.transport
        try:
            with link.write_scope:
                ending = False
                while not ending:
                    while not link.queue and not link.credits:
                        await link.lot.park()
                    batch: list[bytes] = []
                    if link.credits:  # credit overtakes queued frames: it unblocks a sender
                        credits, link.credits = link.credits, {}
                        batch = [encode_control(CircuitCredit(*item)) for item in credits.items()]
                    size, queue = 0, link.queue
                    while queue and size < _WRITE_BATCH_BYTES:
                        data, circuit_id = queue.popleft()
                        if data is None:
                            ending = True
                            break
                        self._dequeued(link, data, circuit_id)
                        batch.append(data)
                        size += len(data)
                    if batch:
                        await transport.send_many(batch)
        except TransportClosed:
            return
        # after a final write this only waits for the peer's close, bounded by the cut
        await transport.aclose(link.close_reason or "closed")

    # --- outputs ----------------------------------------------------------------------------

    def run(self, outputs: list[Output]) -> None:
        """Execute the matchmaker's outputs (and what flow control adds to them), in order."""
        for out in self.flow.watch(self.udp.watch(outputs)):
            kind = type(out)
            if kind is Forward:
                assert isinstance(out, Forward)
                self._forward(out)
            elif kind is Send:
                assert isinstance(out, Send)
                self._send_control(out.conn_id, encode_control(out.message))
            elif kind is CloseConnection:
                assert isinstance(out, CloseConnection)
                self._close(out.conn_id, out.reason)
            elif kind is CreditGrant:
                assert isinstance(out, CreditGrant)
                self._grant(out)
            else:
                assert isinstance(out, LogEvent)
                _log_event(out)
        deadline = self.mm.get_timer()
        if deadline is not None and deadline < self._timer_scope.deadline:
            self._timer_scope.deadline = deadline

    def _send_control(self, conn_id: int, data: bytes) -> None:
        link = self.links.get(conn_id)
        if link is None or link.closing:
            return
        if link.control >= self.limits.control_queue_messages:
            reason = "too many control messages queued: the peer is not reading"
            log.warning("closed conn=%d reason=%s", conn_id, json.dumps(reason))
            self._abort(link, reason)
            return
        link.control += 1
        link.queue.append((data, _CONTROL))
        if not self._shutting_down:  # shutting down, `_close` follows and writes it at once
            link.lot.unpark()

    def _forward(self, out: Forward) -> None:
        link = self.links.get(out.conn_id)
        if link is None or link.closing:
            self.dropped["connection_closed"] += 1
            return
        limits, size, cid = self.limits, len(out.data), out.circuit_id
        queued = link.per_circuit.get(cid)
        full = ""
        credit = self.flow.arrived(out.conn_id, cid, size - RELAYED_HEADER_BYTES)
        if credit is not None:  # a credited lane: the credit is its bound
            if not credit:
                full = "no_credit"
        elif queued is not None and (
            queued[0] >= limits.circuit_queue_frames
            or queued[1] + size > limits.circuit_queue_bytes
        ):
            full = "circuit_queue"
        elif link.queued_bytes and link.queued_bytes + size > limits.connection_queue_bytes:
            full = "connection_queue"
        elif self.queued_bytes + size > limits.total_queue_bytes:
            full = "relay_queue"
        if full:
            self.dropped[full] += 1
            if limits.overflow == "close" and credit is None:
                self.run(self.mm.circuit_overflow(cid, trio.current_time()))
            return
        if queued is None:
            link.per_circuit[cid] = [1, size]
        else:
            queued[0] += 1
            queued[1] += size
        link.queued_bytes += size
        self.queued_bytes += size
        link.queue.append((out.data, cid))
        link.lot.unpark()

    def _dequeued(self, link: _Link, data: bytes, circuit_id: int) -> None:
        if circuit_id == _CONTROL:
            link.control -= 1
            return
        size = len(data)
        queued = link.per_circuit[circuit_id]
        queued[0] -= 1
        queued[1] -= size
        if not queued[0]:
            del link.per_circuit[circuit_id]
        link.queued_bytes -= size
        self.queued_bytes -= size
        for grant in self.flow.drained(link.conn_id, circuit_id, size - RELAYED_HEADER_BYTES):
            self._grant(grant)

    def _grant(self, grant: CreditGrant) -> None:
        """Hand `grant` to its sender: ahead of its queued frames, unless control messages
        wait there (a Paired must reach the peer before the credit of its circuit)."""
        link = self.links.get(grant.sender)
        if link is None or link.closing:
            return
        if link.control:
            self._send_control(
                grant.sender, encode_control(CircuitCredit(grant.circuit_id, grant.credit))
            )
            return
        credits = link.credits
        credits[grant.circuit_id] = credits.get(grant.circuit_id, 0) + grant.credit
        link.lot.unpark()

    def _release(self, link: _Link) -> None:
        """Give back the queue accounting of everything still queued on `link`."""
        self.queued_bytes -= link.queued_bytes
        link.queued_bytes = 0
        link.per_circuit.clear()
        link.queue.clear()

    def _close(self, conn_id: int, reason: str) -> None:
        """Flush the control messages queued for `conn_id` (briefly), then close it."""
        link = self.links.get(conn_id)
        if link is None or link.closing:
            return
        link.closing = True
        link.close_reason = reason
        control = [item for item in link.queue if item[1] == _CONTROL]
        self._release(link)  # relayed frames for a closing connection are dropped
        if self._shutting_down:
            # Thousands close at once: write each one's last messages and close frame right
            # here, no task switch per connection; what a full socket did not take, its
            # writer sends (docs/relay.md, "Shutdown").
            link.control = 0
            last = [data for data, _ in control if data is not None]
            if link.transport.send_final_nowait(last, reason):
                link.final = True
                return
        else:
            link.queue.extend(control)
        link.queue.append((None, _CONTROL))
        link.write_scope.deadline = trio.current_time() + self.config.close_flush_s
        link.lot.unpark()

    def _abort(self, link: _Link, reason: str) -> None:
        """Close `link` at once, without flushing, and tell the matchmaker."""
        link.closing = True
        link.close_reason = reason
        self._release(link)
        link.write_scope.cancel()
        now = trio.current_time()
        self.run(self.mm.connection_closed(link.conn_id, reason, now, cause="stuck"))

    # --- timers and shutdown ----------------------------------------------------------------

    async def run_timers(self) -> None:
        """Call the matchmaker's `handle_timer` whenever its next deadline passes."""
        while True:
            deadline = self.mm.get_timer()
            self._timer_scope = trio.CancelScope(
                deadline=math.inf if deadline is None else deadline
            )
            with self._timer_scope:
                await trio.sleep_forever()
            self.run(self.mm.handle_timer(trio.current_time()))

    async def shutdown(self) -> None:
        """Tell every peer (Close SHUTDOWN, circuits closed), written to the connections in
        batches, wait up to the grace period for them to close, then cut the rest off.

        The cut closes the sockets, which ends their tasks without cancelling them (a
        cancellation costs trio far more per task than a closed socket), so that thousands
        of connections end in well under a second."""
        self._shutting_down = True
        self.stop_accepting.set()
        start = trio.current_time()
        outputs = self.mm.shutdown(start)
        for first in range(0, len(outputs), _SHUTDOWN_BATCH):
            self.run(outputs[first : first + _SHUTDOWN_BATCH])
            await trio.lowlevel.checkpoint()
        written = trio.current_time() - start
        if not self.links:
            self._all_closed.set()
        with trio.move_on_after(self.config.shutdown_grace_s):
            await self._all_closed.wait()
        left = len(self.links)
        for link in list(self.links.values()):
            link.transport.cut()
            link.end_writer()
        with trio.move_on_after(self.config.shutdown_grace_s):
            await self._all_closed.wait()  # the cut connections' tasks end on their own
        took = trio.current_time() - start
        log.info(
            "relay stopped in %.2f s (Close written in %.2f s, %d connections cut off)",
            took, written, left,
            extra={"shutdown_s": round(took, 3), "written_s": round(written, 3), "cut_off": left},
        )  # fmt: skip

    def stats(self) -> RelayStats:
        s = self.mm.stats()
        return RelayStats(
            connections=len(self.links),
            pending=s.pending,
            peers=s.peers,
            circuits=s.circuits,
            invites=s.invites,
            tracked_addresses=s.tracked_addresses,
            queued_bytes=self.queued_bytes,
            dropped_frames=self.dropped.total(),
            udp_circuits=self.udp.circuits(),
        )

    def counters(self) -> RelayCounters:
        return RelayCounters(
            matchmaker=self.mm.counters(),
            dropped=dict(self.dropped),
            challenge_cpu_s=self.challenge_cpu.snapshot(),
            udp=self.udp.counters(),
        )


def _subprotocols(limits: RelayLimits, udp: bool) -> tuple[str, ...]:
    """What the relay agrees to in the WebSocket upgrade (the client's first choice of
    these): credits unless they are off, UDP unless it is off."""
    credit = limits.flow_control == "credit"
    if not udp:
        return (RELAY_CREDIT_SUBPROTOCOL,) if credit else ()
    if credit:
        return (RELAY_CREDIT_UDP_SUBPROTOCOL, RELAY_CREDIT_SUBPROTOCOL)
    return (RELAY_UDP_SUBPROTOCOL,)


def _format_value(value: str | int | float) -> str:
    if isinstance(value, str) and (not value or any(c in value for c in ' "=')):
        return json.dumps(value)
    return str(value)


def _log_event(event: LogEvent) -> None:
    """One line per event: `name key=value ...`; with JSON logging the fields are keys too."""
    level = _LEVELS[event.level]
    if not log.isEnabledFor(level):
        return
    text = " ".join(f"{key}={_format_value(value)}" for key, value in event.fields.items())
    log.log(level, "%s %s", event.name, text, extra={"event": event.name, **event.fields})


class RelayServer:
    """A running relay, as handed out by `serve_relay`: where it listens and its counters."""

    def __init__(self, relay: _Relay, endpoints: list[Endpoint]) -> None:
        self._relay = relay
        self.endpoints = endpoints

    @property
    def port(self) -> int:
        """The TCP port the relay listens on."""
        return self.endpoints[0].port

    @property
    def url(self) -> str:
        """A ws:// URL peers can use to reach the relay (its first listening address)."""
        ep = self.endpoints[0]
        host = ep.host
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        return f"ws://{f'[{host}]' if ':' in host else host}:{ep.port}/"

    @property
    def relay_id(self) -> PeerId:
        """The relay id (the fingerprint of its identity): what peers pin to verify it."""
        return self._relay.mm.relay_id

    @property
    def udp_port(self) -> int | None:
        """The UDP port datagrams are forwarded on, None without (off, or not bound)."""
        return self._relay.udp.port

    def stats(self) -> RelayStats:
        """Table sizes and queue state right now."""
        return self._relay.stats()

    def circuit_stats(self) -> list[CircuitStats]:
        """Every open circuit with its byte and frame counters each way."""
        return self._relay.mm.circuit_stats()

    def counters(self) -> RelayCounters:
        """Totals since the start: what the matchmaker counted, queue drops by reason and
        the challenge CPU histogram (a snapshot; the metrics read it at each scrape)."""
        return self._relay.counters()


async def serve_relay(
    config: RelayConfig,
    *,
    task_status: trio.TaskStatus[RelayServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run a relay until cancelled: `server = await nursery.start(serve_relay, config)`.

    Returns (to `nursery.start`) a `RelayServer` once listening. On cancellation it shuts
    down gracefully: every peer is sent Close(SHUTDOWN), every circuit is closed, and the
    connections get `config.shutdown_grace_s` to finish before they are cut. Raises
    ConfigError if it cannot listen on `config.host:config.port`.
    """
    relay = _Relay(config)
    # The server runs shielded, so that cancelling serve_relay first runs the graceful
    # shutdown below (which needs the connections' tasks) and only then stops them.
    server_scope = trio.CancelScope(shield=True)

    async def run_server(task_status: trio.TaskStatus[list[Endpoint]]) -> None:
        with server_scope:
            async with open_hidden_nursery() as nursery:
                endpoints = await nursery.start(
                    partial(
                        serve_relay_connections,
                        relay.serve_connection,
                        config.host,
                        config.port,
                        max_message=config.limits.max_message_bytes,
                        subprotocols=_subprotocols(config.limits, config.udp),
                        stop_accepting=relay.stop_accepting,
                        gate=relay.gate,
                        accept_queue=RELAY_ACCEPT_QUEUE_CONNECTIONS,
                    )
                )
                nursery.start_soon(relay.run_timers)
                if not config.udp:
                    task_status.started(endpoints)
                    await trio.sleep_forever()
                async with open_relay_udp(relay.udp, config.host, endpoints[0].port):
                    task_status.started(endpoints)
                    await trio.sleep_forever()

    async with open_hidden_nursery() as nursery:
        endpoints: list[Endpoint] = await nursery.start(run_server)
        server = RelayServer(relay, endpoints)
        relay_id = server.relay_id.to_text()
        log.info("relay id %s", relay_id, extra={"relay_id": relay_id})
        log.info("relay listening on %s", " ".join(f"ws://{ep}/" for ep in endpoints))
        task_status.started(server)
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await relay.shutdown()
            server_scope.cancel()
