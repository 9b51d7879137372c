"""The relay's registry and pairing as a sans-IO state machine (DESIGN.md §1-3, CRYPTO.md §3.11).

The driver assigns each connection an int id and feeds the `Matchmaker` what happened (a
connection opened, bytes or a message arrived, a connection closed, time passed); it answers
with outputs to execute: `Send`, `Forward`, `CloseConnection` and `LogEvent`. No sockets, no
clock reads; timers follow aioquic (`get_timer()` / `handle_timer(now)`). docs/relay.md has
the rules and the reasons.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import ipaddress
import os
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, Literal

import attrs

from meshcore.errors import DecodeError, MessageTooLarge, UnsupportedVersion
from meshcore.proto.constants import (
    MAX_CONTROL_BYTES,
    RELAY_CIRCUIT_QUEUE_BYTES,
    RELAY_CIRCUIT_QUEUE_FRAMES,
    RELAY_CONNECTION_QUEUE_BYTES,
    RELAY_CONNECTIONS_BURST_PER_IP,
    RELAY_CONNECTIONS_PER_S_PER_IP,
    RELAY_CONTROL_QUEUE_MESSAGES,
    RELAY_HELLO_DEADLINE_S,
    RELAY_IDLE_TIMEOUT_S,
    RELAY_INVITE_TIMEOUT_S,
    RELAY_MAX_CIRCUITS,
    RELAY_MAX_CIRCUITS_PER_PEER,
    RELAY_MAX_INVITES_PER_PEER,
    RELAY_MAX_PEERS,
    RELAY_MAX_PENDING_CONNECTIONS,
    RELAY_MAX_TRACKED_ADDRESSES,
    RELAY_PAIRINGS_BURST,
    RELAY_PAIRINGS_PER_S,
    RELAY_PING_INTERVAL_S,
    RELAY_TOTAL_QUEUE_BYTES,
)
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import PublicBundle
from meshcore.proto.relayauth import PendingAuth, make_challenge
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
    Invite,
    Paired,
    Ping,
    Pong,
    Registered,
    Reject,
    Relayed,
    Role,
    clip_reason,
    decode_control_untrusted,
    encode_relayed,
)

__all__ = [
    "CircuitStats",
    "CloseConnection",
    "ConnState",
    "Forward",
    "LogEvent",
    "Matchmaker",
    "MatchmakerStats",
    "Output",
    "RelayLimits",
    "Send",
    "TokenBucket",
    "address_key",
]

# --- limits ---------------------------------------------------------------------------------


def _at_least(minimum: float) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value < minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}, got {value}")

    return check


def _above(bound: float) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not value > bound:
            raise ValueError(f"{attribute.name} must be more than {bound}, got {value}")

    return check


def _at_most(maximum: float) -> Callable[[object, attrs.Attribute[Any], Any], None]:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value > maximum:
            raise ValueError(f"{attribute.name} must be at most {maximum}, got {value}")

    return check


def _limit(default: Any, help: str, *checks: Any) -> Any:
    """A RelayLimits field: its default, what it bounds (`help`, shown by --help), checks."""
    return attrs.field(default=default, validator=list(checks), metadata={"help": help})


_POSITIVE: Final = _above(0)
_ONE_OR_MORE: Final = _at_least(1)


@attrs.frozen
class RelayLimits:
    """Every limit the relay enforces; each bounds a table, a rate or a wait.

    Defaults come from `meshcore.proto.constants` (with their sources there). The queue
    bounds are enforced by the trio driver, the rest by the `Matchmaker`.
    """

    hello_deadline_s: float = _limit(
        RELAY_HELLO_DEADLINE_S,
        "seconds a new connection has to send HELLO and answer the challenge",
        _POSITIVE,
    )
    max_message_bytes: int = _limit(
        MAX_CONTROL_BYTES,
        "largest control message accepted, in bytes; a bigger one closes the connection",
        _at_least(1024),
        _at_most(MAX_CONTROL_BYTES),
    )
    connections_per_s_per_ip: float = _limit(
        RELAY_CONNECTIONS_PER_S_PER_IP,
        "new connections per second from one IPv4 address or IPv6 /64",
        _POSITIVE,
    )
    connections_burst_per_ip: int = _limit(
        RELAY_CONNECTIONS_BURST_PER_IP, "burst of new connections from one address", _ONE_OR_MORE
    )
    pairings_per_s: float = _limit(
        RELAY_PAIRINGS_PER_S,
        "pairing requests (Connect, CircuitOpen) per second per peer",
        _POSITIVE,
    )
    pairings_burst: int = _limit(
        RELAY_PAIRINGS_BURST, "burst of pairing requests per peer", _ONE_OR_MORE
    )
    max_peers: int = _limit(RELAY_MAX_PEERS, "registered peers at once", _ONE_OR_MORE)
    max_pending_connections: int = _limit(
        RELAY_MAX_PENDING_CONNECTIONS, "connections still in HELLO/AUTH at once", _ONE_OR_MORE
    )
    max_circuits: int = _limit(RELAY_MAX_CIRCUITS, "open circuits at once", _ONE_OR_MORE)
    max_circuits_per_peer: int = _limit(
        RELAY_MAX_CIRCUITS_PER_PEER, "open circuits one peer may take part in", _ONE_OR_MORE
    )
    max_invites_per_peer: int = _limit(
        RELAY_MAX_INVITES_PER_PEER,
        "pending invitations per peer, as target and as initiator",
        _ONE_OR_MORE,
    )
    invite_timeout_s: float = _limit(
        RELAY_INVITE_TIMEOUT_S,
        "seconds the target of an invitation has to accept or reject it",
        _POSITIVE,
    )
    circuit_queue_frames: int = _limit(
        RELAY_CIRCUIT_QUEUE_FRAMES, "relayed frames queued per circuit and direction", _ONE_OR_MORE
    )
    circuit_queue_bytes: int = _limit(
        RELAY_CIRCUIT_QUEUE_BYTES, "relayed bytes queued per circuit and direction", _ONE_OR_MORE
    )
    connection_queue_bytes: int = _limit(
        RELAY_CONNECTION_QUEUE_BYTES,
        "relayed bytes queued towards one connection, all its circuits together",
        _ONE_OR_MORE,
    )
    total_queue_bytes: int = _limit(
        RELAY_TOTAL_QUEUE_BYTES, "relayed bytes queued in the whole relay", _ONE_OR_MORE
    )
    control_queue_messages: int = _limit(
        RELAY_CONTROL_QUEUE_MESSAGES,
        "control messages queued towards one connection before it is closed as stuck",
        _at_least(4),
    )
    overflow: Literal["drop", "close"] = _limit(
        "drop",
        'when a circuit queue is full: "drop" the frame (sessions retransmit) or "close" the '
        "circuit with QUEUE_OVERFLOW",
        attrs.validators.in_(("drop", "close")),
    )
    ping_interval_s: float = _limit(
        RELAY_PING_INTERVAL_S, "seconds of silence from a peer before the relay pings it", _POSITIVE
    )
    idle_timeout_s: float = _limit(
        RELAY_IDLE_TIMEOUT_S,
        "seconds of silence (pings unanswered) before a peer is dropped",
        _POSITIVE,
    )
    max_tracked_addresses: int = _limit(
        RELAY_MAX_TRACKED_ADDRESSES,
        "source addresses with a connection-rate bucket (least recently seen evicted)",
        _ONE_OR_MORE,
    )


# --- outputs --------------------------------------------------------------------------------


@attrs.frozen
class Send:
    """Queue `message` for connection `conn_id`."""

    conn_id: int
    message: ControlMessage


@attrs.frozen
class Forward:
    """Queue the already-encoded `Relayed` message `data` for `conn_id`, on `circuit_id`.

    Relayed bytes are forwarded exactly as they arrived (same circuit id, same payload: the
    encoding is canonical), so the relay never re-encodes a frame. Subject to the circuit's
    queue bounds.
    """

    conn_id: int
    circuit_id: int
    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")


@attrs.frozen
class CloseConnection:
    """Flush what is queued for `conn_id` (briefly), then close it with `reason`.

    The matchmaker has already forgotten the connection; reporting its close later is a no-op.
    """

    conn_id: int
    code: ErrorCode
    reason: str


@attrs.frozen
class LogEvent:
    """Something worth one log line: `name` and `fields` (str, int or float values)."""

    name: str
    fields: dict[str, str | int | float]
    level: Literal["debug", "info", "warning"] = "info"


Output = Send | Forward | CloseConnection | LogEvent
"""What the driver has to do, in order."""


# --- small parts ----------------------------------------------------------------------------


class TokenBucket:
    """A token bucket: `rate` tokens per second, at most `burst` saved up; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means the caller is over its rate."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def address_key(addr: Endpoint) -> str:
    """What connection rate limits are keyed on: the IPv4 address, or the IPv6 /64
    (one host usually owns a whole /64, as WireGuard's ratelimiter assumes)."""
    if addr.family == 6:
        return str(ipaddress.IPv6Network((addr.host, 64), strict=False))
    return addr.host


class _CircuitIds:
    """Unpredictable, never-repeating 64-bit circuit ids: a keyed 4-round Feistel permutation
    of a counter (a bijection, so no id comes back until 2^64 circuits later). 0 is skipped:
    CircuitOpen uses it for "the relay assigns"."""

    __slots__ = ("_counter", "_key")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._counter = 0

    def next(self) -> int:
        while True:
            self._counter += 1
            left, right = self._counter >> 32, self._counter & 0xFFFF_FFFF
            for round_ in range(4):
                digest = hashlib.blake2b(
                    right.to_bytes(4, "big") + bytes((round_,)), key=self._key, digest_size=4
                ).digest()
                left, right = right, left ^ int.from_bytes(digest, "big")
            value = (left << 32) | right
            if value:
                return value


class ConnState(enum.Enum):
    """Where a connection is in registration."""

    AWAITING_HELLO = "awaiting hello"
    """Connected; the peer must send Hello (its public keys) before the deadline."""
    AWAITING_AUTH = "awaiting auth"
    """Challenge sent; the peer must answer with Auth before the same deadline."""
    REGISTERED = "registered"
    """Authenticated: reachable under its peer id, may pair and relay."""


class _Conn:
    """One control connection and everything the relay knows about it."""

    __slots__ = (
        "addr",
        "bucket",
        "candidates",
        "circuits",
        "conn_id",
        "deadline",
        "invites_in",
        "invites_out",
        "kem_public",
        "last_rx",
        "paired",
        "peer",
        "peer_text",
        "pending",
        "ping_nonce",
        "state",
        "timer_seq",
        "told_unknown",
        "x25519_public",
    )

    def __init__(self, conn_id: int, addr: Endpoint, now: float, deadline: float) -> None:
        self.conn_id = conn_id
        self.addr = addr
        self.state = ConnState.AWAITING_HELLO
        self.deadline = deadline
        self.last_rx = now
        self.timer_seq = 0
        self.pending: PendingAuth | None = None
        self.peer = b""
        self.peer_text = ""
        self.x25519_public = b""
        self.kem_public = b""
        self.candidates: tuple[Endpoint, ...] = ()
        self.bucket: TokenBucket | None = None
        self.ping_nonce: int | None = None
        self.circuits: set[int] = set()
        self.invites_in: dict[int, _Invite] = {}
        self.invites_out: dict[int, _Invite] = {}
        self.paired: OrderedDict[bytes, None] = OrderedDict()
        self.told_unknown: OrderedDict[int, None] = OrderedDict()


@attrs.define(slots=True, eq=False)
class _Invite:
    invite_id: int
    initiator: _Conn
    request_id: int
    target: _Conn
    deadline: float
    timer_seq: int = 0


@attrs.define(slots=True, eq=False)
class _Circuit:
    circuit_id: int
    a: _Conn
    b: _Conn
    opened_at: float
    bytes_ab: int = 0
    bytes_ba: int = 0
    frames_ab: int = 0
    frames_ba: int = 0


@attrs.frozen
class CircuitStats:
    """One open circuit: its members (a asked, b accepted) and its counters each way."""

    circuit_id: int
    a: str
    b: str
    opened_at: float
    bytes_ab: int
    bytes_ba: int
    frames_ab: int
    frames_ba: int


@attrs.frozen
class MatchmakerStats:
    """Sizes of every table (each has a cap in `RelayLimits`)."""

    connections: int
    pending: int
    peers: int
    circuits: int
    invites: int
    tracked_addresses: int
    departed: int
    timers: int


_TIMER_CONN: Final = 0
_TIMER_INVITE: Final = 1
_MAX_TOLD_UNKNOWN: Final = 16


def _cid(circuit_id: int) -> str:
    return f"{circuit_id:016x}"


# --- the machine ----------------------------------------------------------------------------


class Matchmaker:
    """The relay's registry of peers, pending pairings and circuits, keyed by connection id.

    Every method returns the outputs to execute, in order. A protocol violation closes only
    the connection that committed it. Every table is capped by `limits`.

    `challenger` makes the KEM challenge for a Hello (tests may swap it); `random` supplies
    the circuit-id key and invitation ids.
    """

    def __init__(
        self,
        limits: RelayLimits | None = None,
        *,
        challenger: Callable[[PublicBundle], tuple[Challenge, PendingAuth]] = make_challenge,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.limits = limits or RelayLimits()
        self._challenger = challenger
        self._random = random
        self._circuit_ids = _CircuitIds(random(32))
        self._conns: dict[int, _Conn] = {}
        self._peers: dict[bytes, _Conn] = {}
        self._circuits: dict[int, _Circuit] = {}
        self._addr_buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._departed: OrderedDict[bytes, None] = OrderedDict()
        self._timers: list[tuple[float, int, int, object]] = []
        self._timer_seq = 0
        self._pending = 0
        self._invites = 0
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
            invites=self._invites,
            tracked_addresses=len(self._addr_buckets),
            departed=len(self._departed),
            timers=len(self._timers),
        )

    def circuit_stats(self) -> list[CircuitStats]:
        """A snapshot of every open circuit and its counters."""
        return [
            CircuitStats(
                c.circuit_id,
                c.a.peer_text,
                c.b.peer_text,
                c.opened_at,
                c.bytes_ab,
                c.bytes_ba,
                c.frames_ab,
                c.frames_ba,
            )
            for c in self._circuits.values()
        ]

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

    def conn_ids(self) -> list[int]:
        """Ids of every live connection."""
        return list(self._conns)

    # --- connections ------------------------------------------------------------------------

    def connection_opened(self, conn_id: int, addr: Endpoint, now: float) -> list[Output]:
        """A connection from `addr` was accepted; admit it or refuse it (rate, capacity)."""
        if conn_id in self._conns:
            raise ValueError(f"connection id {conn_id} is already in use (a driver bug)")
        limits = self.limits
        if self._shutting_down:
            return self._refuse_new(conn_id, addr, ErrorCode.SHUTDOWN, "the relay is shutting down")
        key = address_key(addr)
        bucket = self._addr_buckets.get(key)
        if bucket is None:
            if len(self._addr_buckets) >= limits.max_tracked_addresses:
                self._addr_buckets.popitem(last=False)
            bucket = TokenBucket(
                limits.connections_per_s_per_ip, limits.connections_burst_per_ip, now
            )
            self._addr_buckets[key] = bucket
        else:
            self._addr_buckets.move_to_end(key)
        if not bucket.take(now):
            return self._refuse_new(
                conn_id,
                addr,
                ErrorCode.RATE_LIMITED,
                f"too many connections from {key}: at most {limits.connections_per_s_per_ip:g}/s "
                f"(burst {limits.connections_burst_per_ip}); retry later",
            )
        if self._pending >= limits.max_pending_connections:
            return self._refuse_new(
                conn_id,
                addr,
                ErrorCode.CAPACITY,
                "too many connections are registering right now; retry in a few seconds",
            )
        conn = _Conn(conn_id, addr, now, now + limits.hello_deadline_s)
        self._conns[conn_id] = conn
        self._pending += 1
        self._schedule_conn(conn, conn.deadline)
        return []

    def connection_closed(self, conn_id: int, reason: str, now: float) -> list[Output]:
        """The connection is gone (the peer left or the network broke); forget it.

        A no-op for connections the matchmaker closed itself (or never admitted).
        """
        conn = self._conns.get(conn_id)
        if conn is None:
            return []
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
            return self._relayed(conn, msg.circuit_id, data, len(msg.payload))
        return self._dispatch(conn, msg, now)

    def handle_message(self, conn_id: int, msg: ControlMessage, now: float) -> list[Output]:
        """Handle one already-decoded message from the connection."""
        conn = self._conns.get(conn_id)
        if conn is None:
            return []
        if type(msg) is Relayed and conn.state is ConnState.REGISTERED:
            conn.last_rx = now
            data = encode_relayed(msg.circuit_id, msg.payload)
            return self._relayed(conn, msg.circuit_id, data, len(msg.payload))
        return self._dispatch(conn, msg, now)

    def circuit_overflow(self, circuit_id: int, now: float) -> list[Output]:
        """The driver could not queue a frame on `circuit_id`: close it (QUEUE_OVERFLOW)."""
        circuit = self._circuits.get(circuit_id)
        if circuit is None:
            return []
        out: list[Output] = []
        reason = "a forwarding queue overflowed: the receiving peer reads too slowly"
        self._close_circuit(
            circuit, ErrorCode.QUEUE_OVERFLOW, reason, out, tell=(circuit.a, circuit.b)
        )
        return out

    def shutdown(self, now: float) -> list[Output]:
        """Close every circuit and connection with SHUTDOWN; refuse new connections after."""
        self._shutting_down = True
        out: list[Output] = [
            LogEvent("shutting down", {"peers": len(self._peers), "circuits": len(self._circuits)})
        ]
        reason = "the relay is shutting down; reconnect later"
        for circuit in list(self._circuits.values()):
            self._close_circuit(
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
        return self._timers[0][0] if self._timers else None

    def handle_timer(self, now: float) -> list[Output]:
        """Enforce every deadline that has passed: HELLO/AUTH, invitations, pings, idleness."""
        out: list[Output] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            _, seq, kind, obj = heapq.heappop(timers)
            if kind == _TIMER_CONN:
                assert isinstance(obj, _Conn)
                if self._conns.get(obj.conn_id) is obj and obj.timer_seq == seq:
                    self._conn_timer(obj, now, out)
            else:
                assert isinstance(obj, _Invite)
                if obj.timer_seq == seq and obj.target.invites_in.get(obj.invite_id) is obj:
                    self._expire_invite(obj, out)
        return out

    def _conn_timer(self, conn: _Conn, now: float, out: list[Output]) -> None:
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

    def _schedule_conn(self, conn: _Conn, when: float) -> None:
        conn.timer_seq = self._push_timer(when, _TIMER_CONN, conn)

    def _push_timer(self, when: float, kind: int, obj: object) -> int:
        self._timer_seq += 1
        heapq.heappush(self._timers, (when, self._timer_seq, kind, obj))
        self._bound_timers()
        return self._timer_seq

    def _bound_timers(self) -> None:
        """Keep the heap within 2 entries per live connection or invitation, plus 64."""
        if len(self._timers) > 2 * (len(self._conns) + self._invites) + 64:
            self._compact_timers()

    def _compact_timers(self) -> None:
        """Drop entries of forgotten connections and invitations (the heap stays O(live))."""

        def live(entry: tuple[float, int, int, object]) -> bool:
            _, seq, kind, obj = entry
            if kind == _TIMER_CONN:
                assert isinstance(obj, _Conn)
                return self._conns.get(obj.conn_id) is obj and obj.timer_seq == seq
            assert isinstance(obj, _Invite)
            return obj.timer_seq == seq and obj.target.invites_in.get(obj.invite_id) is obj

        # In place: handle_timer may be popping from this very list.
        self._timers[:] = [entry for entry in self._timers if live(entry)]
        heapq.heapify(self._timers)

    # --- dispatch ---------------------------------------------------------------------------

    def _dispatch(self, conn: _Conn, msg: ControlMessage, now: float) -> list[Output]:
        conn.last_rx = now
        kind = type(msg)
        if conn.state is ConnState.AWAITING_HELLO:
            if kind is Hello:
                assert isinstance(msg, Hello)
                return self._hello(conn, msg)
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
            return self._connect(conn, msg, now)
        if isinstance(msg, Accept):
            return self._accept(conn, msg, now)
        if isinstance(msg, Reject):
            return self._reject(conn, msg)
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
            out: list[Output] = [
                LogEvent("disconnected", fields, self._level(conn)),
                CloseConnection(conn.conn_id, ErrorCode.NONE, reason),
            ]
            self._forget(conn, "the other peer disconnected", out)
            return out
        return self._violation(
            conn,
            ErrorCode.BAD_MESSAGE,
            f"{kind.__name__} is not a message a peer sends to the relay",
        )

    # --- registration -----------------------------------------------------------------------

    def _hello(self, conn: _Conn, hello: Hello) -> list[Output]:
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

    def _auth(self, conn: _Conn, auth: Auth, now: float) -> list[Output]:
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
        out.append(Send(conn.conn_id, Registered(peer, conn.addr)))
        out.append(LogEvent("registered", {"peer": conn.peer_text, "addr": str(conn.addr)}))
        return out

    # --- pairing ----------------------------------------------------------------------------

    def _connect(self, conn: _Conn, msg: Connect, now: float) -> list[Output]:
        rid = msg.request_id
        limits = self.limits

        def refuse(code: ErrorCode, reason: str) -> list[Output]:
            return [Send(conn.conn_id, Reject(rid, code, reason))]

        assert conn.bucket is not None
        if not conn.bucket.take(now):
            return refuse(
                ErrorCode.RATE_LIMITED,
                f"too many pairing requests: at most {limits.pairings_per_s:g}/s "
                f"(burst {limits.pairings_burst}); retry later",
            )
        if rid in conn.invites_out:
            return refuse(
                ErrorCode.NOT_ALLOWED, "this request id is already pending; use a new one"
            )
        if len(conn.invites_out) >= limits.max_invites_per_peer:
            return refuse(
                ErrorCode.RATE_LIMITED,
                f"{limits.max_invites_per_peer} pairing requests already pending; wait for them",
            )
        if msg.target == conn.peer:
            return refuse(ErrorCode.NOT_ALLOWED, "a peer cannot pair with itself")
        target = self._peers.get(msg.target)
        if target is None:
            if msg.target in self._departed:
                return refuse(ErrorCode.PEER_OFFLINE, "that peer is not connected to this relay")
            return refuse(ErrorCode.PEER_UNKNOWN, "no peer with that id is registered here")
        if any(invite.target is target for invite in conn.invites_out.values()):
            # One pending invitation per (initiator, target): a single flooder cannot fill
            # the target's invitation slots; it needs as many registered identities.
            return refuse(
                ErrorCode.RATE_LIMITED, "a request to this peer is already pending; wait for it"
            )
        if len(target.invites_in) >= limits.max_invites_per_peer:
            return refuse(
                ErrorCode.CAPACITY, "the peer has too many pending invitations; retry later"
            )
        full = self._circuit_capacity(conn, target)
        if full:
            return refuse(ErrorCode.CAPACITY, full)
        invite_id = self._new_invite_id(target)
        invite = _Invite(invite_id, conn, rid, target, now + limits.invite_timeout_s)
        target.invites_in[invite_id] = invite
        conn.invites_out[rid] = invite
        self._invites += 1
        invite.timer_seq = self._push_timer(invite.deadline, _TIMER_INVITE, invite)
        return [
            Send(
                target.conn_id,
                Invite(
                    invite_id,
                    conn.peer,
                    conn.x25519_public,
                    conn.kem_public,
                    conn.addr,
                    conn.candidates,
                ),
            ),
            LogEvent("invited", {"a": conn.peer_text, "b": target.peer_text}, "debug"),
        ]

    def _new_invite_id(self, target: _Conn) -> int:
        while True:
            invite_id = int.from_bytes(self._random(4), "big")
            if invite_id and invite_id not in target.invites_in:
                return invite_id

    def _take_invite(self, target: _Conn, invite_id: int) -> _Invite | None:
        invite = target.invites_in.pop(invite_id, None)
        if invite is not None:
            del invite.initiator.invites_out[invite.request_id]
            self._invites -= 1
            self._bound_timers()
        return invite

    def _accept(self, conn: _Conn, msg: Accept, now: float) -> list[Output]:
        invite = self._take_invite(conn, msg.request_id)
        if invite is None:
            reason = "no pending invitation with this request id (expired or withdrawn)"
            return [Send(conn.conn_id, Reject(msg.request_id, ErrorCode.NOT_ALLOWED, reason))]
        a, b = invite.initiator, conn
        full = self._circuit_capacity(a, b)
        if full:
            return [
                Send(a.conn_id, Reject(invite.request_id, ErrorCode.CAPACITY, full)),
                Send(b.conn_id, Reject(msg.request_id, ErrorCode.CAPACITY, full)),
            ]
        circuit = self._open_circuit(a, b, now)
        cid = circuit.circuit_id
        for x, y in ((a, b), (b, a)):
            x.paired[y.peer] = None
            x.paired.move_to_end(y.peer)
            if len(x.paired) > self.limits.max_circuits_per_peer:
                x.paired.popitem(last=False)
        return [
            Send(
                a.conn_id,
                Paired(
                    invite.request_id,
                    cid,
                    Role.INITIATOR,
                    b.peer,
                    b.x25519_public,
                    b.kem_public,
                    b.addr,
                    b.candidates,
                ),
            ),
            Send(
                b.conn_id,
                Paired(
                    msg.request_id,
                    cid,
                    Role.RESPONDER,
                    a.peer,
                    a.x25519_public,
                    a.kem_public,
                    a.addr,
                    a.candidates,
                ),
            ),
            LogEvent("paired", {"a": a.peer_text, "b": b.peer_text, "circuit": _cid(cid)}),
        ]

    def _reject(self, conn: _Conn, msg: Reject) -> list[Output]:
        invite = self._take_invite(conn, msg.request_id)
        if invite is None:
            return []  # already expired or withdrawn: nothing to tell anyone
        code = ErrorCode.REJECTED if msg.code is ErrorCode.NONE else msg.code
        reason = clip_reason(f"the peer refused: {msg.reason or code.name}")
        return [
            Send(invite.initiator.conn_id, Reject(invite.request_id, code, reason)),
            LogEvent(
                "rejected",
                {
                    "a": invite.initiator.peer_text,
                    "b": conn.peer_text,
                    "code": code.name,
                    "reason": msg.reason,
                },
            ),
        ]

    def _expire_invite(self, invite: _Invite, out: list[Output]) -> None:
        self._take_invite(invite.target, invite.invite_id)
        out.append(
            Send(
                invite.initiator.conn_id,
                Reject(invite.request_id, ErrorCode.TIMEOUT, "the peer did not answer in time"),
            )
        )
        out.append(
            Send(
                invite.target.conn_id,
                Reject(invite.invite_id, ErrorCode.TIMEOUT, "invitation expired"),
            )
        )
        out.append(
            LogEvent(
                "invitation expired",
                {"a": invite.initiator.peer_text, "b": invite.target.peer_text},
            )
        )

    # --- circuits ---------------------------------------------------------------------------

    def _circuit_capacity(self, a: _Conn, b: _Conn) -> str:
        """Why a new circuit between a and b is impossible, or "" if it is possible."""
        limits = self.limits
        if len(self._circuits) >= limits.max_circuits:
            return f"the relay is at its limit of {limits.max_circuits} circuits; retry later"
        for who, conn in (("you are", a), ("the peer is", b)):
            if len(conn.circuits) >= limits.max_circuits_per_peer:
                return f"{who} already in {limits.max_circuits_per_peer} circuits; close some first"
        return ""

    def _open_circuit(self, a: _Conn, b: _Conn, now: float) -> _Circuit:
        cid = self._circuit_ids.next()
        circuit = _Circuit(cid, a, b, now)
        self._circuits[cid] = circuit
        a.circuits.add(cid)
        b.circuits.add(cid)
        return circuit

    def _circuit_open(self, conn: _Conn, msg: CircuitOpen, now: float) -> list[Output]:
        def refuse(code: ErrorCode, reason: str) -> list[Output]:
            return [Send(conn.conn_id, CircuitClose(msg.circuit_id, code, reason))]

        if msg.circuit_id != 0:
            return refuse(ErrorCode.NOT_ALLOWED, "send circuit id 0: the relay assigns circuit ids")
        assert conn.bucket is not None
        if not conn.bucket.take(now):
            return refuse(ErrorCode.RATE_LIMITED, "too many pairing requests; retry later")
        other = self._peers.get(msg.peer_id)
        if other is None:
            return refuse(ErrorCode.PEER_OFFLINE, "that peer is not connected to this relay")
        if other.peer not in conn.paired or conn.peer not in other.paired:
            return refuse(
                ErrorCode.NOT_ALLOWED,
                "not paired with that peer on these connections; send Connect first",
            )
        full = self._circuit_capacity(conn, other)
        if full:
            return refuse(ErrorCode.CAPACITY, full)
        cid = self._open_circuit(conn, other, now).circuit_id
        return [
            Send(conn.conn_id, CircuitOpen(cid, other.peer)),
            Send(other.conn_id, CircuitOpen(cid, conn.peer)),
            LogEvent(
                "circuit opened", {"a": conn.peer_text, "b": other.peer_text, "circuit": _cid(cid)}
            ),
        ]

    def _circuit_close(self, conn: _Conn, msg: CircuitClose) -> list[Output]:
        circuit = self._circuits.get(msg.circuit_id)
        if circuit is None or conn not in (circuit.a, circuit.b):
            return []  # already closed (both sides may close at once): nothing to do
        out: list[Output] = []
        reason = clip_reason(f"closed by the peer: {msg.reason or msg.code.name}")
        self._close_circuit(circuit, msg.code, reason, out, tell=(circuit.a, circuit.b))
        return out

    def _close_circuit(
        self,
        circuit: _Circuit,
        code: ErrorCode,
        reason: str,
        out: list[Output],
        *,
        tell: tuple[_Conn, ...],
    ) -> None:
        cid = circuit.circuit_id
        del self._circuits[cid]
        circuit.a.circuits.discard(cid)
        circuit.b.circuits.discard(cid)
        for conn in tell:
            out.append(Send(conn.conn_id, CircuitClose(cid, code, reason)))
        out.append(
            LogEvent(
                "circuit closed",
                {
                    "circuit": _cid(cid),
                    "a": circuit.a.peer_text,
                    "b": circuit.b.peer_text,
                    "code": code.name,
                    "bytes_ab": circuit.bytes_ab,
                    "bytes_ba": circuit.bytes_ba,
                    "frames_ab": circuit.frames_ab,
                    "frames_ba": circuit.frames_ba,
                },
            )
        )

    def _relayed(self, conn: _Conn, circuit_id: int, data: bytes, size: int) -> list[Output]:
        circuit = self._circuits.get(circuit_id)
        if circuit is not None:
            if circuit.a is conn:
                circuit.frames_ab += 1
                circuit.bytes_ab += size
                return [Forward(circuit.b.conn_id, circuit_id, data)]
            if circuit.b is conn:
                circuit.frames_ba += 1
                circuit.bytes_ba += size
                return [Forward(circuit.a.conn_id, circuit_id, data)]
        # Unknown, closed, or someone else's circuit: the same answer for all three (no
        # oracle), once per circuit id, and nobody else is touched. Frames still in flight
        # when a circuit closes land here, so this is not fatal.
        told = conn.told_unknown
        if circuit_id in told:
            return []
        told[circuit_id] = None
        if len(told) > _MAX_TOLD_UNKNOWN:
            told.popitem(last=False)
        reason = "no such circuit on this connection; frame dropped"
        return [Send(conn.conn_id, CircuitClose(circuit_id, ErrorCode.CIRCUIT_UNKNOWN, reason))]

    # --- closing ----------------------------------------------------------------------------

    def _refuse_new(
        self, conn_id: int, addr: Endpoint, code: ErrorCode, reason: str
    ) -> list[Output]:
        return [
            LogEvent(
                "refused", {"addr": str(addr), "code": code.name, "reason": reason}, "warning"
            ),
            Send(conn_id, Error(code, reason)),
            CloseConnection(conn_id, code, reason),
        ]

    def _violation(self, conn: _Conn, code: ErrorCode, reason: str) -> list[Output]:
        """Close `conn` (only it) for breaking a rule: log, tell it why, forget it."""
        reason = clip_reason(reason)
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

    def _forget(self, conn: _Conn, why: str, out: list[Output]) -> None:
        """Remove `conn` from every table, telling the peers that shared state with it."""
        del self._conns[conn.conn_id]
        conn.timer_seq = 0
        self._bound_timers()
        if conn.state is not ConnState.REGISTERED:
            self._pending -= 1
            return
        if self._peers.get(conn.peer) is conn:
            del self._peers[conn.peer]
            self._departed[conn.peer] = None
            if len(self._departed) > self.limits.max_peers:
                self._departed.popitem(last=False)
        for cid in list(conn.circuits):
            circuit = self._circuits[cid]
            other = circuit.b if circuit.a is conn else circuit.a
            self._close_circuit(circuit, ErrorCode.PEER_OFFLINE, why, out, tell=(other,))
        for invite in list(conn.invites_out.values()):
            self._take_invite(invite.target, invite.invite_id)
            reason = "the initiator disconnected"
            out.append(
                Send(
                    invite.target.conn_id, Reject(invite.invite_id, ErrorCode.PEER_OFFLINE, reason)
                )
            )
        for invite in list(conn.invites_in.values()):
            self._take_invite(conn, invite.invite_id)
            reason = "the peer disconnected before answering"
            out.append(
                Send(
                    invite.initiator.conn_id,
                    Reject(invite.request_id, ErrorCode.PEER_OFFLINE, reason),
                )
            )

    def _conn_fields(self, conn: _Conn) -> dict[str, str | int | float]:
        fields: dict[str, str | int | float] = {"addr": str(conn.addr)}
        if conn.peer_text:
            fields = {"peer": conn.peer_text, **fields}
        return fields

    @staticmethod
    def _level(conn: _Conn) -> Literal["debug", "info", "warning"]:
        # Peers leaving matter; half-open connections going away do not.
        return "info" if conn.state is ConnState.REGISTERED else "debug"
