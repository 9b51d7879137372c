"""The relay's registry and pairing as a sans-IO state machine (docs/design.md §1-3,
docs/crypto-spec.md §3.11).

The driver assigns each connection an int id and feeds the `Matchmaker` what happened (a
connection opened, bytes or a message arrived, a connection closed, time passed); it answers
with outputs to execute: `Send`, `Forward`, `CloseConnection` and `LogEvent`. No sockets, no
clock reads; timers follow aioquic (`get_timer()` / `handle_timer(now)`). docs/relay.md has
the rules and the reasons. Its parts live next door: the circuit table (`circuits`), pending
pairings (`invitations`), records, outputs, stats and counters (`relayrecords`), the
admission rules (`admission`), limits (`limits`) and rate limits (`ratelimit`).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Final, Literal

from meshcore.errors import DecodeError, HandshakeError, MessageTooLarge, UnsupportedVersion
from meshcore.proto.admission import Refusal, circuit_open_refusal, connection_refusal
from meshcore.proto.circuits import CircuitStats, CircuitTable, circuit_text
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity, PeerId, PublicBundle
from meshcore.proto.invitations import Invitations
from meshcore.proto.limits import RelayLimits
from meshcore.proto.ratelimit import AddressBuckets, TokenBucket, address_key
from meshcore.proto.reconnect import reconnect_window, shutdown_reason
from meshcore.proto.relayauth import PendingAuth, make_challenge, prove_relay
from meshcore.proto.relayrecords import (
    CloseConnection,
    ConnRecord,
    ConnState,
    Forward,
    InviteRecord,
    LogEvent,
    MatchmakerCounters,
    MatchmakerStats,
    Output,
    Send,
    TimerHeap,
    reason_label,
)
from meshcore.proto.wire import (
    Accept,
    Auth,
    Challenge,
    CircuitClose,
    CircuitOpen,
    Close,
    Connect,
    ControlMessage,
    Error,
    ErrorCode,
    Hello,
    ObserveAddress,
    ObservedAddress,
    Ping,
    Pong,
    Registered,
    Reject,
    RelayChallenge,
    Relayed,
    RelayIdentity,
    clip_reason,
    decode_control_untrusted,
    encode_relayed,
)

# The machine's outputs, stats and limits are defined next door and re-exported here, so that
# a driver imports one module.
__all__ = [
    "CircuitStats",
    "CloseConnection",
    "ConnState",
    "Forward",
    "LogEvent",
    "Matchmaker",
    "MatchmakerCounters",
    "MatchmakerStats",
    "Output",
    "RelayLimits",
    "Send",
    "TokenBucket",
    "address_key",
]

_TIMER_CONN: Final = 0


# --- the machine ----------------------------------------------------------------------------


class Matchmaker:
    """The relay's registry of peers, pending pairings and circuits, keyed by connection id.

    Every method returns the outputs to execute, in order. A protocol violation closes only
    the connection that committed it. Every table is capped by `limits`.

    `identity` is the relay's static identity: every connection is first told its public keys
    (`RelayIdentity`), and a peer that knows the relay id may challenge the relay to prove it
    before its Hello (a fresh identity when None: the relay id then changes every run).
    `challenger` makes the KEM challenge for a Hello (tests may swap it); `random` supplies
    the circuit-id key and invitation ids.
    """

    def __init__(
        self,
        limits: RelayLimits | None = None,
        *,
        identity: Identity | None = None,
        challenger: Callable[[PublicBundle], tuple[Challenge, PendingAuth]] = make_challenge,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.limits = limits or RelayLimits()
        self.identity = identity or Identity.generate()
        """The relay's static identity; its peer id is the relay id."""
        public = self.identity.public
        self._identity_msg = RelayIdentity(public.x25519_public, public.kem_public)
        self._challenger = challenger
        self._random = random
        self._conns: dict[int, ConnRecord] = {}
        self._peers: dict[bytes, ConnRecord] = {}
        self._circuits = CircuitTable(
            random(32),
            max_circuits=self.limits.max_circuits,
            max_per_peer=self.limits.max_circuits_per_peer,
        )
        self._addr_buckets = AddressBuckets(
            self.limits.connections_per_s_per_ip,
            self.limits.connections_burst_per_ip,
            self.limits.max_tracked_addresses,
        )
        self._departed: OrderedDict[bytes, None] = OrderedDict()
        self._timers = TimerHeap(self._timer_is_live)
        self._counts = MatchmakerCounters()
        self._invitations = Invitations(
            self.limits,
            self._circuits,
            self._timers,
            self._live,
            random,
            refused=lambda code: self._refused("pairing", code),
            paired=self._count_pairing,
        )
        self._pending = 0
        self._ping_nonce = 0
        self._shutting_down = False

    # --- queries ----------------------------------------------------------------------------

    def stats(self) -> MatchmakerStats:
        """Current table sizes."""
        return MatchmakerStats(
            connections=len(self._conns),
            pending=self._pending,
            peers=len(self._peers),
            circuits=len(self._circuits),
            invites=self._invitations.count,
            tracked_addresses=len(self._addr_buckets),
            departed=len(self._departed),
            timers=len(self._timers),
        )

    def counters(self) -> MatchmakerCounters:
        """Totals since the start (registrations, pairings, refusals and closes by reason,
        bytes and frames forwarded): a copy, summed over the open circuits just now."""
        counts = self._counts.copy()
        circuits = self._circuits
        counts.forwarded_bytes, counts.forwarded_frames = circuits.forwarded()
        counts.unknown_circuit_frames = circuits.unknown_frames
        counts.circuit_closes.update(circuits.closes)
        return counts

    def circuit_stats(self) -> list[CircuitStats]:
        """A snapshot of every open circuit and its counters."""
        return self._circuits.stats()

    def state_of(self, conn_id: int) -> ConnState | None:
        """The registration state of a live connection, None once it is gone."""
        conn = self._conns.get(conn_id)
        return None if conn is None else conn.state

    def peer_of(self, conn_id: int) -> bytes | None:
        """The peer id a live connection registered as (None before it authenticated)."""
        conn = self._conns.get(conn_id)
        return conn.peer if conn is not None and conn.state is ConnState.REGISTERED else None

    def circuit_members(self, circuit_id: int) -> tuple[int, int] | None:
        """(initiator conn id, responder conn id) of an open circuit, None if closed."""
        c = self._circuits.get(circuit_id)
        return None if c is None else (c.a.conn_id, c.b.conn_id)

    @property
    def relay_id(self) -> PeerId:
        """The relay id: the fingerprint of the relay's static public keys."""
        return self.identity.peer_id

    def conn_ids(self) -> list[int]:
        """Ids of every live connection."""
        return list(self._conns)

    # --- connections ------------------------------------------------------------------------

    def connection_opened(self, conn_id: int, addr: Endpoint, now: float) -> list[Output]:
        """A connection from `addr` was accepted; admit it or refuse it (rate, capacity)."""
        if conn_id in self._conns:
            raise ValueError(f"connection id {conn_id} is already in use (a driver bug)")
        limits = self.limits
        refusal = connection_refusal(
            addr,
            shutting_down=self._shutting_down,
            buckets=self._addr_buckets,
            pending=self._pending,
            limits=limits,
            now=now,
        )
        if refusal is not None:
            return self._refuse_new(conn_id, addr, refusal)
        conn = ConnRecord(conn_id, addr, now, now + limits.hello_deadline_s)
        self._conns[conn_id] = conn
        self._pending += 1
        self._schedule_conn(conn, conn.deadline)
        return [Send(conn_id, self._identity_msg)]

    def connection_closed(
        self, conn_id: int, reason: str, now: float, *, cause: str = "disconnected"
    ) -> list[Output]:
        """The connection is gone (the peer left or the network broke); forget it. `cause`
        is the label it is counted under ("disconnected"; the driver's own closes say why).

        A no-op for connections the matchmaker closed itself (or never admitted).
        """
        conn = self._conns.get(conn_id)
        if conn is None:
            return []
        self._counts.closes[cause] += 1
        fields = self._conn_fields(conn)
        fields["reason"] = clip_reason(reason)
        out: list[Output] = [LogEvent("disconnected", fields, self._level(conn))]
        self._forget(conn, "the other peer disconnected", out)
        return out

    def receive_data(self, conn_id: int, data: bytes, now: float) -> list[Output]:
        """Decode one message from the connection's untrusted bytes and handle it."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return []
        if len(data) > self.limits.max_message_bytes:
            return self._violation(
                conn,
                ErrorCode.TOO_LARGE,
                f"message of {len(data)} bytes is over the relay's "
                f"{self.limits.max_message_bytes}-byte limit",
            )
        try:
            msg = decode_control_untrusted(data)
        except UnsupportedVersion as exc:
            return self._violation(conn, ErrorCode.UNSUPPORTED_VERSION, str(exc))
        except MessageTooLarge as exc:
            return self._violation(conn, ErrorCode.TOO_LARGE, str(exc))
        except DecodeError as exc:
            return self._violation(conn, ErrorCode.BAD_MESSAGE, f"malformed message: {exc}")
        if type(msg) is Relayed and conn.state is ConnState.REGISTERED:
            conn.last_rx = now
            return self._circuits.forward(conn, msg.circuit_id, data, len(msg.payload))
        return self._dispatch(conn, msg, now)

    def handle_message(self, conn_id: int, msg: ControlMessage, now: float) -> list[Output]:
        """Handle one already-decoded message from the connection."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return []
        if type(msg) is Relayed and conn.state is ConnState.REGISTERED:
            conn.last_rx = now
            data = encode_relayed(msg.circuit_id, msg.payload)
            return self._circuits.forward(conn, msg.circuit_id, data, len(msg.payload))
        return self._dispatch(conn, msg, now)

    def circuit_overflow(self, circuit_id: int, now: float) -> list[Output]:
        """The driver could not queue a frame on `circuit_id`: close it (QUEUE_OVERFLOW)."""
        circuit = self._circuits.get(circuit_id)
        if circuit is None:
            return []
        out: list[Output] = []
        reason = "a forwarding queue overflowed: the receiving peer reads too slowly"
        self._circuits.close(
            circuit, ErrorCode.QUEUE_OVERFLOW, reason, out, tell=(circuit.a, circuit.b)
        )
        return out

    def shutdown(self, now: float) -> list[Output]:
        """Close every circuit and connection with SHUTDOWN; refuse new connections after."""
        self._shutting_down = True
        self._counts.closes["shutdown"] += len(self._conns)
        out: list[Output] = [
            LogEvent("shutting down", {"peers": len(self._peers), "circuits": len(self._circuits)})
        ]
        # the reconnect window spreads the peers' return (docs/relay.md, "After a restart")
        reason = shutdown_reason(reconnect_window(len(self._peers), self.limits.restart_rate_per_s))
        for circuit in self._circuits.snapshot():
            self._circuits.close(
                circuit, ErrorCode.SHUTDOWN, reason, out, tell=(circuit.a, circuit.b)
            )
        for conn in list(self._conns.values()):
            out.append(Send(conn.conn_id, Close(ErrorCode.SHUTDOWN, reason)))
            out.append(CloseConnection(conn.conn_id, ErrorCode.SHUTDOWN, reason))
            self._forget(conn, reason, out)
        return out

    # --- timers -----------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When `handle_timer` should next be called (it may find nothing due), or None."""
        return self._timers.next_deadline()

    def handle_timer(self, now: float) -> list[Output]:
        """Enforce every deadline that has passed: HELLO/AUTH, invitations, pings, idleness."""
        out: list[Output] = []
        for kind, obj in self._timers.pop_due(now):
            if kind == _TIMER_CONN:
                assert isinstance(obj, ConnRecord)
                self._conn_timer(obj, now, out)
            else:
                assert isinstance(obj, InviteRecord)
                self._invitations.expire(obj, out)
        return out

    def _conn_timer(self, conn: ConnRecord, now: float, out: list[Output]) -> None:
        limits = self.limits
        if conn.state is not ConnState.REGISTERED:
            if now >= conn.deadline:
                what = "HELLO" if conn.state is ConnState.AWAITING_HELLO else "AUTH"
                out.extend(
                    self._violation(
                        conn,
                        ErrorCode.TIMEOUT,
                        f"no {what} within {limits.hello_deadline_s:g} s of connecting",
                    )
                )
            return
        silent = now - conn.last_rx
        if silent >= limits.idle_timeout_s:
            out.extend(
                self._violation(
                    conn,
                    ErrorCode.TIMEOUT,
                    f"nothing received for {limits.idle_timeout_s:g} s (pings unanswered)",
                )
            )
            return
        if silent >= limits.ping_interval_s and conn.ping_nonce is None:
            self._ping_nonce = (self._ping_nonce + 1) & 0xFFFF_FFFF_FFFF_FFFF
            conn.ping_nonce = self._ping_nonce
            out.append(Send(conn.conn_id, Ping(conn.ping_nonce)))
        if conn.ping_nonce is not None:
            self._schedule_conn(conn, conn.last_rx + limits.idle_timeout_s)
        else:
            self._schedule_conn(conn, conn.last_rx + limits.ping_interval_s)

    def _schedule_conn(self, conn: ConnRecord, when: float) -> None:
        conn.timer_seq = self._timers.push(when, _TIMER_CONN, conn, self._live())

    def _live(self) -> int:
        """Objects with a live deadline: every connection and every pending invitation."""
        return len(self._conns) + self._invitations.count

    def _timer_is_live(self, seq: int, kind: int, obj: object) -> bool:
        if kind == _TIMER_CONN:
            assert isinstance(obj, ConnRecord)
            return self._conns.get(obj.conn_id) is obj and obj.timer_seq == seq
        assert isinstance(obj, InviteRecord)
        return self._invitations.is_live(seq, obj)

    # --- dispatch ---------------------------------------------------------------------------

    def _dispatch(self, conn: ConnRecord, msg: ControlMessage, now: float) -> list[Output]:
        conn.last_rx = now
        kind = type(msg)
        if kind is ObserveAddress:  # in any state: netcheck asks without registering
            assert isinstance(msg, ObserveAddress)
            self._counts.address_echoes += 1
            return [Send(conn.conn_id, ObservedAddress(msg.nonce, conn.addr))]
        if conn.state is ConnState.AWAITING_HELLO:
            if kind is Hello:
                assert isinstance(msg, Hello)
                return self._hello(conn, msg)
            if kind is RelayChallenge:
                assert isinstance(msg, RelayChallenge)
                return self._prove(conn, msg)
            return self._violation(
                conn, ErrorCode.BAD_MESSAGE, f"expected Hello first, got {kind.__name__}"
            )
        if conn.state is ConnState.AWAITING_AUTH:
            if kind is Auth:
                assert isinstance(msg, Auth)
                return self._auth(conn, msg, now)
            return self._violation(
                conn,
                ErrorCode.BAD_MESSAGE,
                f"expected Auth (the challenge answer), got {kind.__name__}",
            )
        if isinstance(msg, Connect):
            target = self._peers.get(msg.target)
            return self._invitations.request(conn, msg, target, self._departed, now)
        if isinstance(msg, Accept):
            return self._invitations.accept(conn, msg, now)
        if isinstance(msg, Reject):
            return self._invitations.reject(conn, msg)
        if isinstance(msg, CircuitOpen):
            return self._circuit_open(conn, msg, now)
        if isinstance(msg, CircuitClose):
            return self._circuit_close(conn, msg)
        if isinstance(msg, Ping):
            return [Send(conn.conn_id, Pong(msg.nonce))]
        if isinstance(msg, Pong):
            if msg.nonce == conn.ping_nonce:
                conn.ping_nonce = None
                self._schedule_conn(conn, now + self.limits.ping_interval_s)
            return []
        if isinstance(msg, Close | Error):
            who = "closed" if isinstance(msg, Close) else "reported an error"
            reason = clip_reason(f"the peer {who}: {msg.reason or msg.code.name}")
            fields = self._conn_fields(conn)
            fields["reason"] = reason
            self._counts.closes["peer_closed"] += 1
            out: list[Output] = [
                LogEvent("disconnected", fields, self._level(conn)),
                CloseConnection(conn.conn_id, ErrorCode.NONE, reason),
            ]
            self._forget(conn, "the other peer disconnected", out)
            return out
        if kind is RelayChallenge:
            return self._violation(
                conn, ErrorCode.BAD_MESSAGE, "a RelayChallenge must come before Hello"
            )
        return self._violation(
            conn,
            ErrorCode.BAD_MESSAGE,
            f"{kind.__name__} is not a message a peer sends to the relay",
        )

    # --- registration -----------------------------------------------------------------------

    def _prove(self, conn: ConnRecord, challenge: RelayChallenge) -> list[Output]:
        """A peer that knows our relay id asks us to prove it, before its Hello (once)."""
        if conn.proved:
            return self._violation(
                conn, ErrorCode.BAD_MESSAGE, "only one RelayChallenge per connection"
            )
        try:
            proof = prove_relay(self.identity, challenge)
        except HandshakeError:
            return self._violation(
                conn, ErrorCode.BAD_MESSAGE, "unusable RelayChallenge: not a valid key exchange"
            )
        conn.proved = True
        return [Send(conn.conn_id, proof)]

    def _hello(self, conn: ConnRecord, hello: Hello) -> list[Output]:
        try:
            bundle = PublicBundle(hello.x25519_public, hello.kem_public)
        except DecodeError as exc:
            return self._violation(conn, ErrorCode.BAD_MESSAGE, f"unusable public keys: {exc}")
        challenge, pending = self._challenger(bundle)
        conn.pending = pending
        conn.x25519_public = hello.x25519_public
        conn.kem_public = hello.kem_public
        conn.candidates = hello.candidates
        conn.state = ConnState.AWAITING_AUTH
        return [Send(conn.conn_id, challenge)]

    def _auth(self, conn: ConnRecord, auth: Auth, now: float) -> list[Output]:
        pending = conn.pending
        conn.pending = None
        if pending is None or not pending.verify(auth):
            return self._violation(
                conn,
                ErrorCode.AUTH_FAILED,
                "wrong answer to the challenge: this connection does not hold the secret keys "
                "of the peer id it claimed",
            )
        peer_id = pending.peer_id
        peer = peer_id.digest
        old = self._peers.get(peer)
        if old is None and len(self._peers) >= self.limits.max_peers:
            return self._violation(
                conn,
                ErrorCode.CAPACITY,
                f"the relay is full ({self.limits.max_peers} peers); retry later or use another "
                "relay",
            )
        out: list[Output] = []
        conn.peer = peer
        conn.peer_text = peer_id.to_text()
        if old is not None:
            reason = "a newer connection registered this peer id"
            fields = self._conn_fields(old)
            fields["new_addr"] = str(conn.addr)
            out.append(LogEvent("replaced", fields))
            self._counts.closes["replaced"] += 1
            out.append(Send(old.conn_id, Close(ErrorCode.REPLACED, reason)))
            out.append(CloseConnection(old.conn_id, ErrorCode.REPLACED, reason))
            self._forget(old, "the other peer reconnected", out)
        conn.state = ConnState.REGISTERED
        self._pending -= 1
        self._peers[peer] = conn
        self._departed.pop(peer, None)
        limits = self.limits
        conn.bucket = TokenBucket(limits.pairings_per_s, limits.pairings_burst, now)
        self._schedule_conn(conn, now + limits.ping_interval_s)
        self._counts.registrations += 1
        out.append(Send(conn.conn_id, Registered(peer, conn.addr)))
        out.append(LogEvent("registered", {"peer": conn.peer_text, "addr": str(conn.addr)}))
        return out

    # --- circuits ---------------------------------------------------------------------------

    def _circuit_open(self, conn: ConnRecord, msg: CircuitOpen, now: float) -> list[Output]:
        other = self._peers.get(msg.peer_id)
        refusal = circuit_open_refusal(conn, msg, other, circuits=self._circuits, now=now)
        if refusal is not None:
            self._refused("circuit", refusal[0])
            return [Send(conn.conn_id, CircuitClose(msg.circuit_id, *refusal))]
        assert other is not None
        cid = self._circuits.open(conn, other, now).circuit_id
        self._counts.reopens += 1
        return [
            Send(conn.conn_id, CircuitOpen(cid, other.peer)),
            Send(other.conn_id, CircuitOpen(cid, conn.peer)),
            LogEvent(
                "circuit opened",
                {"a": conn.peer_text, "b": other.peer_text, "circuit": circuit_text(cid)},
            ),
        ]

    def _circuit_close(self, conn: ConnRecord, msg: CircuitClose) -> list[Output]:
        circuit = self._circuits.get(msg.circuit_id)
        if circuit is None or conn not in (circuit.a, circuit.b):
            return []  # already closed (both sides may close at once): nothing to do
        out: list[Output] = []
        reason = clip_reason(f"closed by the peer: {msg.reason or msg.code.name}")
        self._circuits.close(circuit, msg.code, reason, out, tell=(circuit.a, circuit.b))
        return out

    # --- closing ----------------------------------------------------------------------------

    def _count_pairing(self) -> None:
        self._counts.pairings += 1

    def _refused(self, request: str, code: ErrorCode) -> None:
        self._counts.refusals[request, reason_label(code)] += 1

    def _refuse_new(self, conn_id: int, addr: Endpoint, refusal: Refusal) -> list[Output]:
        code, reason = refusal
        self._refused("connection", code)
        self._counts.closes[reason_label(code)] += 1
        return [
            LogEvent(
                "refused", {"addr": str(addr), "code": code.name, "reason": reason}, "warning"
            ),
            Send(conn_id, Error(code, reason)),
            CloseConnection(conn_id, code, reason),
        ]

    def _violation(self, conn: ConnRecord, code: ErrorCode, reason: str) -> list[Output]:
        """Close `conn` (only it) for breaking a rule: log, tell it why, forget it."""
        reason = clip_reason(reason)
        self._counts.closes[reason_label(code)] += 1
        fields = self._conn_fields(conn)
        fields["code"] = code.name
        fields["reason"] = reason
        out: list[Output] = [
            LogEvent("closed", fields, "warning"),
            Send(conn.conn_id, Error(code, reason)),
            CloseConnection(conn.conn_id, code, reason),
        ]
        self._forget(conn, "the other peer disconnected", out)
        return out

    def _forget(self, conn: ConnRecord, why: str, out: list[Output]) -> None:
        """Remove `conn` from every table, telling the peers that shared state with it."""
        del self._conns[conn.conn_id]
        conn.timer_seq = 0
        self._timers.bound(self._live())
        if conn.state is not ConnState.REGISTERED:
            self._pending -= 1
            return
        if self._peers.get(conn.peer) is conn:
            del self._peers[conn.peer]
            self._departed[conn.peer] = None
            if len(self._departed) > self.limits.max_peers:
                self._departed.popitem(last=False)
        for cid in list(conn.circuits):
            circuit = self._circuits.get(cid)
            assert circuit is not None  # a member's circuits are open
            other = circuit.b if circuit.a is conn else circuit.a
            self._circuits.close(circuit, ErrorCode.PEER_OFFLINE, why, out, tell=(other,))
        self._invitations.withdraw(conn, out)

    def _conn_fields(self, conn: ConnRecord) -> dict[str, str | int | float]:
        fields: dict[str, str | int | float] = {"addr": str(conn.addr)}
        if conn.peer_text:
            fields = {"peer": conn.peer_text, **fields}
        return fields

    @staticmethod
    def _level(conn: ConnRecord) -> Literal["debug", "info", "warning"]:
        # Peers leaving matter; half-open connections going away do not.
        return "info" if conn.state is ConnState.REGISTERED else "debug"
