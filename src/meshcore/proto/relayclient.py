"""The peer's side of the relay protocol as a sans-IO state machine: registration with the
KEM challenge, pairing requests and invitations, circuits, and reconnect backoff.

The driver (`meshcore._client`) feeds `RelayClientCore` what happened on the control
connection (opened, bytes arrived, lost, time passed) and what the application asks for; the
machine answers with outputs to execute (`meshcore.proto.relayclient_outputs`). No sockets,
no clock reads; timers as in aioquic (`get_timer()` / `handle_timer(now)`), exactly as the
relay's `Matchmaker` is driven. docs/relay-client.md has the states, the rules and why.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Sequence
from random import Random, SystemRandom
from typing import Final

from meshcore.errors import (
    DecodeError,
    HandshakeError,
    MeshError,
    ProtocolError,
    RelayError,
    TransportClosed,
)
from meshcore.proto import constants as C
from meshcore.proto import wire
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.heartbeat import Heartbeat
from meshcore.proto.identity import Identity, PeerId, PublicBundle
from meshcore.proto.packet import PacketType, packet_type_of
from meshcore.proto.reconnect import ReconnectPolicy, announced_window
from meshcore.proto.relayclient_outputs import (
    CircuitClosed,
    CircuitOpened,
    CircuitOpenFailed,
    CircuitReopened,
    CloseConnection,
    Closed,
    ConnectionLost,
    InvitationAccepted,
    Invited,
    Output,
    PairingCompleted,
    PairingFailed,
    Reconnect,
    Registered,
    RegistrationFailed,
    RelayedReceived,
)
from meshcore.proto.relayclient_outputs import send_control as _send
from meshcore.proto.relayclient_records import ClientCircuit, Request, RequestKind
from meshcore.proto.relayregistration import CONNECTED_STATES as _CONNECTED
from meshcore.proto.relayregistration import REGISTERING_STATES as _REGISTERING
from meshcore.proto.relayregistration import Registration, RelayClientState

__all__ = ["NO_SESSION", "RelayClientCore", "RelayClientState"]

NO_SESSION: Final = "no session for this circuit"
"""Why a circuit the peer opened is closed when none of our sessions takes it."""
_NOBODY_ASKED: Final = "nobody waits for this circuit"


_T_PHASE: Final = 0  # the registration deadline, or the end of the reconnect wait
_T_REQUEST: Final = 1
_T_ROUTE: Final = 2
_T_HEARTBEAT: Final = 3


class RelayClientCore:
    """One peer's registration at one relay, its requests and its circuits, across reconnects.

    Every method returns the outputs to execute, in order (`send_relayed`, the hot path,
    returns the bytes to send). Bad input from the relay ends only the connection it came on
    (`CloseConnection` with the reason, then a reconnect); nothing else raises.

    `relay` names the relay in messages; with `relay_id` the relay must prove that id before
    anything of ours is sent (else it is not checked); `candidates` are announced before the
    local ones the driver passes to `connection_opened`; `timeout` bounds registration;
    reconnect waits go from `reconnect_min_s` doubling to `reconnect_max_s` (±50 %), plus a
    share of a shutting-down relay's reconnect window (up to `reconnect_window_max_s`); the
    relay is pinged after `heartbeat_s` without news and given up after `dead_after_s`;
    `random` supplies request ids and the jitter (tests pass a seeded `random.Random`).
    """

    def __init__(
        self,
        identity: Identity,
        relay: str,
        *,
        relay_id: PeerId | None = None,
        candidates: Sequence[Endpoint] = (),
        timeout: float = 10.0,
        reconnect_min_s: float = C.RELAY_RECONNECT_MIN_S,
        reconnect_max_s: float = C.RELAY_RECONNECT_MAX_S,
        reconnect_window_max_s: float = C.RELAY_RECONNECT_WINDOW_MAX_S,
        route_timeout_s: float = C.DIRECT_ROUTE_TIMEOUT_S,
        heartbeat_s: float = C.RELAY_HEARTBEAT_S,
        dead_after_s: float = C.RELAY_DEAD_AFTER_S,
        random: Random | None = None,
    ) -> None:
        self._identity = identity
        self._relay = relay
        self.relay_id = relay_id
        """The relay id the relay must prove on every connection (None: not checked)."""
        self._heartbeat = Heartbeat(heartbeat_s, dead_after_s)
        self._attempt: Registration | None = None
        self._extra = tuple(candidates)
        self._timeout = timeout
        self._route_timeout_s = route_timeout_s
        self._random = random or SystemRandom()
        backoff = (reconnect_min_s, reconnect_max_s, C.RELAY_RECONNECT_JITTER)
        self._reconnect = ReconnectPolicy(
            *backoff, max_window_s=reconnect_window_max_s, random=self._random.random
        )
        self.state = RelayClientState.CONNECTING
        """Where the relay connection is."""
        self.registrations = 0
        """Successful registrations: 1 after the first connection, +1 per reconnect."""
        self.observed: Endpoint | None = None
        """Our address as the relay saw it at the last registration."""
        self.candidates: tuple[Endpoint, ...] = ()
        """The direct-connection candidates announced at the last registration."""
        self.lost_reason: str | None = None
        """Why the last connection was lost (None while registered, and before any loss)."""
        self.close_reason: str | None = None
        """Why the machine ended for good (None until CLOSED)."""
        self.verified = False
        """The relay proved `relay_id` on the current (or the last) connection."""
        self.credited = False
        """The relay grants per-circuit credit on the current connection (docs/relay.md)."""
        self.relay_keys: PublicBundle | None = None
        """The keys the relay presented on the last connection (checked only with `relay_id`)."""
        self._phase_deadline: float | None = None
        self._requests: dict[int, Request] = {}
        self._by_rid: dict[int, Request] = {}
        self._opens: deque[Request] = deque()
        """CircuitOpen requests; the first is in flight (the relay's answers carry no id)."""
        self._circuits: dict[int, ClientCircuit] = {}
        self._paired: set[bytes] = set()
        """Peers paired on this connection: only they can be sent CircuitOpen."""
        self._timers: list[tuple[float, int, int, object]] = []
        self._timer_seq = 0

    # --- queries ----------------------------------------------------------------------------

    def circuit_peers(self) -> dict[int, PeerId]:
        """Every open circuit (including those waiting to be routed) and its peer."""
        return {cid: circuit.peer for cid, circuit in self._circuits.items()}

    @property
    def rtt_s(self) -> float | None:
        """The latest round trip to the relay (registration, then pings), None before any."""
        return self._heartbeat.rtt_s

    def is_paired(self, peer_id: PeerId) -> bool:
        """Were we paired with `peer_id` on the current connection (so CircuitOpen may work)?"""
        return peer_id.digest in self._paired

    # --- the connection ---------------------------------------------------------------------

    def connection_opened(
        self, local_candidates: Sequence[Endpoint], now: float, *, credited: bool = False
    ) -> list[Output]:
        """The driver connected to the relay; `local_candidates` are the direct-connection
        candidates on our shared port (announced after the configured ones); `credited` if
        the relay agreed to per-circuit credit in the upgrade."""
        if self.state is RelayClientState.CLOSED:
            return [CloseConnection(self.close_reason or "closed")]
        if self.state is not RelayClientState.CONNECTING:
            raise ValueError(f"connection_opened while {self.state.value} (a driver bug)")
        announced = tuple(dict.fromkeys((*self._extra, *local_candidates)))[: C.MAX_CANDIDATES]
        attempt = self._attempt = Registration(
            self._identity, self._relay, self.relay_id, announced
        )
        self.state = attempt.state
        self.verified = False
        self.credited = credited
        self._phase_deadline = now + self._timeout
        self._push_timer(self._phase_deadline, _T_PHASE, None)
        return [_send(msg) for msg in attempt.start()]

    def connection_failed(self, error: Exception, now: float) -> list[Output]:
        """The dial failed (refused, unreachable, upgrade refused): `error` says why."""
        if self.state is not RelayClientState.CONNECTING:
            return []
        return self._fail_attempt(error, now, close=None)

    def connection_lost(self, reason: str, now: float) -> list[Output]:
        """The connection ended (the relay left, the network broke). A no-op when the machine
        already closed it or knows it is gone."""
        if self.state is RelayClientState.REGISTERED:
            return self._lose(reason, now, close=False, permanent=False)
        if self.state in _CONNECTED:
            return self._fail_attempt(TransportClosed(reason), now, close=None)
        return []

    def close(self, reason: str) -> list[Output]:
        """End for good: close the connection (if any), circuits and requests."""
        if self.state is RelayClientState.CLOSED:
            return []
        out: list[Output] = [CloseConnection(reason)] if self.state in _CONNECTED else []
        out += self._end_connection(reason)
        return out + self._closed(reason)

    def receive_data(self, data: bytes, now: float) -> list[Output]:
        """Decode one message from the relay's untrusted bytes and handle it."""
        state = self.state
        if state is RelayClientState.REGISTERED:
            self._heartbeat.last_rx = now  # any message is a sign of life (inlined: hot path)
            try:
                msg = wire.decode_control_untrusted(data)
            except DecodeError as exc:
                reason = f"relay sent a malformed message: {exc}"
                return self._lose(reason, now, close=True, permanent=False)
            if type(msg) is wire.Relayed:
                return self._relayed(msg, now)
            return self._dispatch(msg, now)
        if state in _REGISTERING:
            return self._registering(data, now)
        return []  # bytes from a connection the machine already gave up

    # --- pairing ----------------------------------------------------------------------------

    def connect(self, ticket: int, peer_id: PeerId, timeout: float, now: float) -> list[Output]:
        """Ask the relay to pair us with `peer_id`: `PairingCompleted` once the peer accepted,
        else `PairingFailed` (refused, offline, timed out, or keys that are not `peer_id`'s)."""
        self._check_ticket(ticket)
        down = self._down()
        if down is not None:
            return [PairingFailed(ticket, peer_id, down)]
        return self._send_connect(Request(ticket, RequestKind.CONNECT, peer_id, timeout, 0.0), now)

    def accept(
        self, ticket: int, invitation: Invited, timeout: float, now: float, *, route: bool = False
    ) -> list[Output]:
        """Accept `invitation`: `PairingCompleted` once the relay opened the circuit.

        With `route` nobody waits: the peer has a live session with us and paired again (a
        reconnect dropped the old pairing), so the circuit is routed by its first frame
        (`CircuitReopened`, or `InvitationAccepted` if that frame starts a new session).
        """
        self._check_ticket(ticket)
        peer = invitation.initiator
        if invitation.connection != self.registrations:
            error: Exception = RelayError(
                f"pairing with {peer} failed: its invitation came on a relay connection that "
                "has since been lost; the peer must ask again"
            )
            return [PairingFailed(ticket, peer, error)]
        down = self._down()
        if down is not None:
            return [PairingFailed(ticket, peer, down)]
        rid = invitation.request_id
        if rid in self._by_rid:
            error = RelayError(f"pairing with {peer} failed: that invitation is being accepted")
            return [PairingFailed(ticket, peer, error)]
        request = Request(
            ticket, RequestKind.ACCEPT, peer, timeout, now + timeout, rid, invitation, route=route
        )
        self._add_request(request)
        self._by_rid[rid] = request
        return [_send(wire.Accept(rid))]

    def reject(
        self, invitation: Invited, reason: str, *, code: wire.ErrorCode = wire.ErrorCode.NOT_ALLOWED
    ) -> list[Output]:
        """Refuse `invitation`; the relay tells the initiator. Nothing to do if the connection
        it came on is gone (the relay dropped the invitation with it)."""
        gone = invitation.connection != self.registrations
        if gone or self.state is not RelayClientState.REGISTERED:
            return []
        return [_send(wire.Reject(invitation.request_id, code, wire.clip_reason(reason)))]

    def cancel(self, ticket: int) -> list[Output]:
        """The driver stopped waiting for `ticket`. A late answer closes the circuit it opened."""
        request = self._requests.pop(ticket, None)
        if request is None:
            return []
        if request.kind is not RequestKind.OPEN:
            del self._by_rid[request.rid]
        elif self._opens[0] is request:
            request.cancelled = True  # in flight: its answer, with no id, must not match another
        else:
            self._opens.remove(request)
        return []

    # --- circuits ---------------------------------------------------------------------------

    def open_circuit(
        self, ticket: int, peer_id: PeerId, timeout: float, now: float, *, fallback: bool = False
    ) -> list[Output]:
        """Open a new circuit to `peer_id`, with whom we are paired on this connection:
        `CircuitOpened` or `CircuitOpenFailed`. One CircuitOpen is in flight at a time, since
        the relay's answers carry no request id; the others wait their turn (and their
        deadline runs meanwhile). With `fallback`, see `reopen_circuit`."""
        self._check_ticket(ticket)
        down = self._down()
        if down is not None:
            return [CircuitOpenFailed(ticket, peer_id, down)]
        request = Request(
            ticket, RequestKind.OPEN, peer_id, timeout, now + timeout, fallback=fallback
        )
        self._add_request(request)
        self._opens.append(request)
        if len(self._opens) == 1:
            return [_send(wire.CircuitOpen(0, peer_id.digest))]
        return []

    def reopen_circuit(
        self, ticket: int, peer_id: PeerId, timeout: float, now: float
    ) -> list[Output]:
        """A new circuit to `peer_id` for a live session: `open_circuit` while paired on this
        connection, and if the relay refuses (it forgot the pairing) or does not answer, pair
        again; after a reconnect, pair again at once (pairings belong to connections). Ends in
        `CircuitOpened`, `PairingCompleted`, or one of the failures."""
        if self.state is RelayClientState.REGISTERED and peer_id.digest in self._paired:
            return self.open_circuit(ticket, peer_id, timeout, now, fallback=True)
        return self.connect(ticket, peer_id, timeout, now)

    def close_circuit(self, circuit_id: int, reason: str) -> list[Output]:
        """Release a circuit: tell the relay (which tells the peer)."""
        if self._circuits.pop(circuit_id, None) is None:
            return []
        close = wire.CircuitClose(circuit_id, wire.ErrorCode.NONE, wire.clip_reason(reason))
        return [_send(close), CircuitClosed(circuit_id, reason)]

    def send_relayed(self, circuit_id: int, payload: bytes, overdraw: bool = False) -> bytes | None:
        """The bytes that carry `payload` to the peer on `circuit_id` (to send at once), or
        None on a credited connection until the circuit has that much credit (wait for
        `CreditGranted`, then ask again).

        Raises `TransportClosed` if the circuit is not open, ValueError for a payload over
        MAX_FRAME_BYTES.
        """
        circuit = self._circuits.get(circuit_id)
        if circuit is None:
            raise TransportClosed(self.close_reason or "circuit closed")
        if self.credited and not circuit.spend(len(payload)) and not overdraw:
            return None  # (overdraw: the relay stopped granting; send as without credits)
        return wire.encode_relayed(circuit_id, payload)

    def udp_route(self, circuit_id: int) -> tuple[bytes, int] | None:
        """(token, the relay's UDP port) of a circuit the relay forwards datagrams of."""
        circuit = self._circuits.get(circuit_id)
        return None if circuit is None else circuit.udp

    def max_window(self, circuit_id: int) -> int:
        """The largest window a session may use on the circuit: what the relay lets it hold
        (CircuitWindow), else the window that fits an uncredited relay's queue."""
        circuit = self._circuits.get(circuit_id)
        if self.credited and circuit is not None and circuit.window:
            return circuit.window
        return C.RELAY_UNCREDITED_WINDOW_BYTES

    # --- timers -----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When `handle_timer` should next be called (it may find nothing due), or None."""
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> list[Output]:
        """Enforce every deadline that has passed: registration, requests, routing of circuits
        the peer opened; and end the reconnect wait."""
        out: list[Output] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, _, kind, obj = heapq.heappop(timers)
            if kind == _T_PHASE:
                if self._phase_deadline is not None and self._phase_deadline <= now:
                    out += self._phase_over(now)
            elif kind == _T_REQUEST:
                assert isinstance(obj, Request)
                live = self._requests.get(obj.ticket) is obj or (
                    bool(self._opens) and self._opens[0] is obj
                )
                if live and obj.deadline <= now:
                    out += self._timed_out(obj, now)
            elif kind == _T_HEARTBEAT:
                live = obj == self.registrations and self.state is RelayClientState.REGISTERED
                if live:
                    out += self._heartbeat_due(now)
            else:
                assert isinstance(obj, ClientCircuit)
                due = obj.route_deadline is not None and obj.route_deadline <= now
                if due and self._circuits.get(obj.circuit_id) is obj:
                    out += self.close_circuit(obj.circuit_id, NO_SESSION)
        return out

    def _heartbeat_due(self, now: float) -> list[Output]:
        beat = self._heartbeat
        if beat.is_dead(now):
            reason = f"no answer from the relay for {beat.dead_after_s:g} s"
            return self._lose(reason, now, close=True, permanent=False)
        nonce = beat.ping_due(now)
        self._push_timer(beat.next_check(), _T_HEARTBEAT, self.registrations)
        return [] if nonce is None else [_send(wire.Ping(nonce))]

    def _phase_over(self, now: float) -> list[Output]:
        self._phase_deadline = None
        if self.state is RelayClientState.LOST:
            self.state = RelayClientState.CONNECTING
            return [Reconnect()]
        assert self._attempt is not None
        error = self._attempt.timed_out(self._timeout)
        return self._fail_attempt(error, now, close=str(error))

    def _timed_out(self, request: Request, now: float) -> list[Output]:
        if request.kind is RequestKind.OPEN:
            return self._open_failed(request, request.open_timeout(), now)
        del self._requests[request.ticket]
        del self._by_rid[request.rid]
        error = RelayError(f"no answer from the relay within {request.timeout:g} s")
        return [PairingFailed(request.ticket, request.peer, error)]

    def _push_timer(self, when: float, kind: int, obj: object) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, obj))

    # --- registration -----------------------------------------------------------------------

    def _registering(self, data: bytes, now: float) -> list[Output]:
        attempt = self._attempt
        assert attempt is not None
        try:
            sends = attempt.receive_data(data, now)
        except MeshError as exc:
            self.relay_keys = attempt.relay_keys
            why = str(exc) or type(exc).__name__
            if isinstance(exc, DecodeError):
                why = f"relay sent a malformed message: {why}"
            return self._fail_attempt(exc, now, close=why)
        self.state = attempt.state
        self.verified = attempt.verified
        self.relay_keys = attempt.relay_keys
        out: list[Output] = [_send(msg) for msg in sends]
        registered = attempt.registered
        if registered is None:
            return out
        self._phase_deadline = None
        self.registrations += 1
        self.observed = registered.observed
        self.candidates = attempt.candidates
        self.lost_reason = None
        self._reconnect.reset()
        self._heartbeat.start(now, attempt.rtt_s)
        self._push_timer(self._heartbeat.next_check(), _T_HEARTBEAT, self.registrations)
        return [*out, Registered(registered.observed, self.candidates, self.registrations)]

    def _fail_attempt(self, error: Exception, now: float, *, close: str | None) -> list[Output]:
        """An attempt ended before registering: retry after the backoff, unless it was the
        first (whose error the driver raises)."""
        out: list[Output] = [CloseConnection(close)] if close is not None else []
        self._phase_deadline = None
        if self.registrations == 0:
            self.state = RelayClientState.CLOSED
            self.close_reason = str(error) or type(error).__name__
            out.append(RegistrationFailed(error, None))
            return out
        wait = self._reconnect.after_failure(error, now)
        self.state = RelayClientState.LOST
        self._phase_deadline = now + wait
        self._push_timer(self._phase_deadline, _T_PHASE, None)
        out.append(RegistrationFailed(error, wait))
        return out

    def _lose(self, reason: str, now: float, *, close: bool, permanent: bool,
              graceful: bool = False, window: float | None = None) -> list[Output]:  # fmt: skip
        """The registered connection ended: everything tied to it ends with it. `graceful`:
        the relay shut down, announcing `window` (its reconnect window) if not None."""
        out: list[Output] = [CloseConnection(reason)] if close else []
        out += self._end_connection(reason)
        if permanent:
            return out + self._closed(reason)
        wait = self._reconnect.after_loss(window, now)
        self.state = RelayClientState.LOST
        self._phase_deadline = now + wait
        self._push_timer(self._phase_deadline, _T_PHASE, None)
        out.append(ConnectionLost(reason, wait, graceful))
        return out

    def _closed(self, reason: str) -> list[Output]:
        self.state = RelayClientState.CLOSED
        self._phase_deadline = None
        self.close_reason = reason
        return [Closed(reason)]

    def _end_connection(self, reason: str) -> list[Output]:
        why = f"relay connection lost: {reason}"
        out: list[Output] = [CircuitClosed(cid, why) for cid in self._circuits]
        for request in self._requests.values():
            error = RelayError(why)
            if request.kind is RequestKind.OPEN:
                out.append(CircuitOpenFailed(request.ticket, request.peer, error))
            else:
                out.append(PairingFailed(request.ticket, request.peer, error))
        if self.lost_reason is None:
            self.lost_reason = reason
        self._circuits.clear()
        self._requests.clear()
        self._by_rid.clear()
        self._opens.clear()
        self._paired.clear()
        return out

    def _down(self) -> TransportClosed | None:
        """Why a request cannot be sent now, or None while registered."""
        if self.state is RelayClientState.REGISTERED:
            return None
        if self.close_reason is not None:
            return TransportClosed(self.close_reason)
        return TransportClosed(
            f"relay connection lost: {self.lost_reason or 'not connected'}; reconnecting"
        )

    # --- messages from the relay ------------------------------------------------------------

    def _dispatch(self, msg: wire.ControlMessage, now: float) -> list[Output]:
        if isinstance(msg, wire.Paired):
            return self._paired_msg(msg, now)
        if isinstance(msg, wire.Reject):
            return self._reject_msg(msg)
        if isinstance(msg, wire.Invite):
            initiator = PeerId(msg.initiator)
            keys = (msg.x25519_public, msg.kem_public)
            where = (msg.observed, msg.candidates)
            return [Invited(msg.request_id, initiator, *keys, *where, self.registrations)]
        if isinstance(msg, wire.CircuitOpen):
            return self._circuit_open_msg(msg, now)
        if isinstance(msg, wire.CircuitClose):
            return self._circuit_close_msg(msg, now)
        if isinstance(msg, wire.CircuitCredit | wire.CircuitWindow | wire.CircuitUdp):
            circuit = self._circuits.get(msg.circuit_id)
            udp = isinstance(msg, wire.CircuitUdp)
            return circuit.granted(msg) if circuit is not None and (self.credited or udp) else []
        if isinstance(msg, wire.Ping):
            return [_send(wire.Pong(msg.nonce))]
        if isinstance(msg, wire.Pong):
            self._heartbeat.pong(msg.nonce, now)
            return []
        if isinstance(msg, wire.Error | wire.Close):
            reason = f"relay closed the connection: {msg.reason or msg.code.name}"
            # another registration with our id took over: reconnecting would evict it in turn
            permanent = msg.code is wire.ErrorCode.REPLACED
            graceful = isinstance(msg, wire.Close) and msg.code is wire.ErrorCode.SHUTDOWN
            window = announced_window(msg.reason) if graceful else None
            return self._lose(reason, now, close=True, permanent=permanent, graceful=graceful,
                              window=window)  # fmt: skip
        return []  # a message only peers send, or the relay's keys again: nothing to do

    def _relayed(self, msg: wire.Relayed, now: float) -> list[Output]:
        circuit = self._circuits.get(msg.circuit_id)
        if circuit is None:
            return []  # in flight when the circuit closed
        if circuit.route_deadline is None:
            return [RelayedReceived(msg.circuit_id, msg.payload)]
        circuit.route_deadline = None
        first = msg.payload
        pairing, invited = circuit.pairing, circuit.invited
        if pairing is not None and invited is not None:
            circuit.pairing = circuit.invited = None
            if packet_type_of(first) is not PacketType.FRAME:  # a handshake: a new session
                return [InvitationAccepted(invited, pairing, first)]
        return [CircuitReopened(msg.circuit_id, circuit.peer, first)]

    def _paired_msg(self, msg: wire.Paired, now: float) -> list[Output]:
        cid = msg.circuit_id
        request = self._by_rid.pop(msg.request_id, None)
        if request is None:
            # nobody waits (timed out, cancelled): the relay must not keep the circuit open
            if cid == 0 or cid in self._circuits:
                return []
            return [_send(wire.CircuitClose(cid, wire.ErrorCode.NONE, _NOBODY_ASKED))]
        del self._requests[request.ticket]
        peer = request.peer
        if cid == 0 or cid in self._circuits:
            error: Exception = ProtocolError("the relay paired us on a circuit id already in use")
            return [PairingFailed(request.ticket, peer, error)]
        try:
            bundle = PublicBundle.checked(msg.x25519_public, msg.kem_public, peer)
        except HandshakeError as exc:
            reason = "the relay served keys that are not the peer's"
            close = wire.CircuitClose(cid, wire.ErrorCode.NOT_ALLOWED, reason)
            return [_send(close), PairingFailed(request.ticket, peer, exc)]
        self._paired.add(peer.digest)
        pairing = PairingCompleted(
            request.ticket, cid, bundle, msg.observed, msg.candidates, msg.role
        )
        if not request.route:
            self._circuits[cid] = ClientCircuit(cid, peer)
            return [pairing]
        circuit = ClientCircuit(cid, peer, now + self._route_timeout_s, pairing, request.invited)
        self._circuits[cid] = circuit
        self._push_timer(now + self._route_timeout_s, _T_ROUTE, circuit)
        return []

    def _reject_msg(self, msg: wire.Reject) -> list[Output]:
        request = self._by_rid.pop(msg.request_id, None)
        if request is None:
            return []  # an invitation withdrawn before we answered, or a stale answer
        del self._requests[request.ticket]
        peer = request.peer
        if request.kind is RequestKind.CONNECT:
            why = msg.reason or msg.code.name
            error = RelayError(f"pairing with {peer} refused: {why}", code=int(msg.code))
        else:
            error = RelayError(f"pairing with {peer} failed: relay withdrew it")
        return [PairingFailed(request.ticket, peer, error)]

    def _circuit_open_msg(self, msg: wire.CircuitOpen, now: float) -> list[Output]:
        cid = msg.circuit_id
        if cid == 0 or cid in self._circuits:
            return []  # not an id the relay assigns, or one already open
        peer = PeerId(msg.peer_id)
        head = self._opens[0] if self._opens else None
        if head is not None and head.peer == peer:  # the answer to our CircuitOpen
            self._opens.popleft()
            out: list[Output]
            if head.cancelled:
                close = wire.CircuitClose(cid, wire.ErrorCode.NONE, _NOBODY_ASKED)
                out = [_send(close)]
            else:
                del self._requests[head.ticket]
                self._circuits[cid] = ClientCircuit(cid, peer)
                out = [CircuitOpened(head.ticket, cid, peer)]
            return out + self._next_open(now)
        # the peer re-opened it: its first frame says which of our sessions it is for
        circuit = ClientCircuit(cid, peer, now + self._route_timeout_s)
        self._circuits[cid] = circuit
        self._push_timer(now + self._route_timeout_s, _T_ROUTE, circuit)
        return []

    def _circuit_close_msg(self, msg: wire.CircuitClose, now: float) -> list[Output]:
        why = msg.reason or msg.code.name
        if msg.circuit_id == 0:  # the answer to our CircuitOpen: refused
            if not self._opens:
                return []
            head = self._opens[0]
            error = RelayError(f"the relay refused a circuit to {head.peer}: {why}")
            return self._open_failed(head, error, now)
        if self._circuits.pop(msg.circuit_id, None) is None:
            return []
        return [CircuitClosed(msg.circuit_id, f"relay closed the circuit: {why}")]

    # --- requests ---------------------------------------------------------------------------

    def _check_ticket(self, ticket: int) -> None:
        if ticket in self._requests:
            raise ValueError(f"ticket {ticket} is already in use (a driver bug)")

    def _add_request(self, request: Request) -> None:
        self._requests[request.ticket] = request
        self._push_timer(request.deadline, _T_REQUEST, request)

    def _send_connect(self, request: Request, now: float) -> list[Output]:
        while True:
            rid = self._random.getrandbits(32)
            if rid not in self._by_rid:
                break
        request.kind = RequestKind.CONNECT
        request.rid = rid
        request.deadline = now + request.timeout
        self._add_request(request)
        self._by_rid[rid] = request
        return [_send(wire.Connect(rid, request.peer.digest))]

    def _open_failed(self, request: Request, error: Exception, now: float) -> list[Output]:
        """An open was refused or timed out (in flight or still waiting its turn)."""
        in_flight = self._opens[0] is request
        self._opens.remove(request)
        out: list[Output] = []
        if not request.cancelled:
            del self._requests[request.ticket]
            if request.fallback:
                self._paired.discard(request.peer.digest)  # the relay forgot it: pair again
                # a full timeout from the failure (from the deadline if noticed late)
                out = self._send_connect(request, min(now, request.deadline))
            else:
                out = [CircuitOpenFailed(request.ticket, request.peer, error)]
        if in_flight:
            out += self._next_open(now)
        return out

    def _next_open(self, now: float) -> list[Output]:
        """Send the next waiting CircuitOpen (failing it if its deadline passed meanwhile)."""
        if not self._opens:
            return []
        head = self._opens[0]
        if head.deadline > now:
            return [_send(wire.CircuitOpen(0, head.peer.digest))]
        return self._open_failed(head, head.open_timeout(), now)
