"""What the relay's `Matchmaker` keeps and says: its outputs, its record of each connection
and pending invitation, its deadlines, and the sizes of its tables.

The records are the matchmaker's own mutable state, shared with the circuit table
(`meshcore.proto.circuits`); drivers only ever see the outputs and the stats.
"""

from __future__ import annotations

import enum
import heapq
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from typing import Literal

import attrs

from meshcore.proto.endpoint import Endpoint
from meshcore.proto.ratelimit import TokenBucket
from meshcore.proto.relayauth import PendingAuth
from meshcore.proto.wire import ControlMessage, ErrorCode, Invite, Paired, Role

__all__ = [
    "CloseConnection",
    "ConnRecord",
    "ConnState",
    "Forward",
    "InviteRecord",
    "LogEvent",
    "MatchmakerCounters",
    "MatchmakerStats",
    "Output",
    "Send",
    "TimerHeap",
    "reason_label",
]

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


# --- records --------------------------------------------------------------------------------


class ConnState(enum.Enum):
    """Where a connection is in registration."""

    AWAITING_HELLO = "awaiting hello"
    """Connected and told the relay's keys; the peer must send Hello (its public keys) before
    the deadline, after challenging the relay to prove its id if it wants to."""
    AWAITING_AUTH = "awaiting auth"
    """Challenge sent; the peer must answer with Auth before the same deadline."""
    REGISTERED = "registered"
    """Authenticated: reachable under its peer id, may pair and relay."""


class ConnRecord:
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
        "proved",
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
        self.proved = False
        """The relay answered this connection's RelayChallenge (one per connection)."""
        self.circuits: set[int] = set()
        self.invites_in: dict[int, InviteRecord] = {}
        self.invites_out: dict[int, InviteRecord] = {}
        self.paired: OrderedDict[bytes, None] = OrderedDict()
        self.told_unknown: OrderedDict[int, None] = OrderedDict()

    def as_invite(self, invite_id: int) -> Invite:
        """The Invite telling a target that this (registered) peer asks to pair."""
        return Invite(
            invite_id, self.peer, self.x25519_public, self.kem_public, self.addr, self.candidates
        )

    def as_paired(self, request_id: int, circuit_id: int, role: Role) -> Paired:
        """The Paired telling the other peer who this one is; `role` is the receiver's."""
        return Paired(
            request_id,
            circuit_id,
            role,
            self.peer,
            self.x25519_public,
            self.kem_public,
            self.addr,
            self.candidates,
        )


@attrs.define(slots=True, eq=False)
class InviteRecord:
    """A pending invitation: `initiator` asked (with its `request_id`) to pair with `target`."""

    invite_id: int
    initiator: ConnRecord
    request_id: int
    target: ConnRecord
    deadline: float
    timer_seq: int = 0


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


def reason_label(code: ErrorCode) -> str:
    """An error code as a metrics label: its lower-case name ("rate_limited")."""
    return code.name.lower()


@attrs.define
class MatchmakerCounters:
    """Totals since the matchmaker started, each only growing (what the relay's metrics
    export; docs/observability.md). `Matchmaker.counters()` hands out a copy."""

    registrations: int = 0
    """Connections that answered the challenge and registered."""
    pairings: int = 0
    """Invitations accepted: each opened a circuit."""
    reopens: int = 0
    """Circuits re-opened with CircuitOpen."""
    address_echoes: int = 0
    """ObserveAddress questions answered (netcheck)."""
    refusals: Counter[tuple[str, str]] = attrs.field(factory=Counter)
    """(request, reason) -> requests refused; request is "connection", "pairing" or
    "circuit", reason a lower-case ErrorCode name ("rate_limited", "rejected", ...)."""
    closes: Counter[str] = attrs.field(factory=Counter)
    """reason -> connections closed: an ErrorCode name for the relay's own closes
    ("bad_message", "timeout", "replaced", "shutdown", ...), "peer_closed" when the peer
    said goodbye, "disconnected" when the connection just went away."""
    forwarded_bytes: int = 0
    """Payload bytes of Relayed frames forwarded on circuits (both ways)."""
    forwarded_frames: int = 0
    unknown_circuit_frames: int = 0
    """Relayed frames dropped because the sender is not on that circuit."""
    circuit_closes: Counter[str] = attrs.field(factory=Counter)
    """reason (lower-case ErrorCode name) -> circuits closed."""

    def copy(self) -> MatchmakerCounters:
        """An independent copy (the counters tables are copied too)."""
        return attrs.evolve(
            self,
            refusals=Counter(self.refusals),
            closes=Counter(self.closes),
            circuit_closes=Counter(self.circuit_closes),
        )


class TimerHeap:
    """Deadlines of the matchmaker's objects, with lazy cancellation.

    `push` returns a sequence number; an entry counts only while `is_live(seq, kind, obj)`
    says so (its owner keeps the number of its current deadline), so cancelling or moving a
    deadline is just pushing a new one. Dead entries are dropped when they come due, and all
    at once whenever they would outnumber the live ones (2 per live object, plus 64).
    """

    __slots__ = ("_heap", "_is_live", "_seq")

    def __init__(self, is_live: Callable[[int, int, object], bool]) -> None:
        self._heap: list[tuple[float, int, int, object]] = []
        self._is_live = is_live
        self._seq = 0

    def __len__(self) -> int:
        """Entries held, live or not."""
        return len(self._heap)

    def next_deadline(self) -> float | None:
        """The earliest deadline held (it may turn out dead), or None."""
        return self._heap[0][0] if self._heap else None

    def push(self, when: float, kind: int, obj: object, live: int) -> int:
        """Add a deadline for `obj`; `live` is how many objects have a live deadline now."""
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, kind, obj))
        self.bound(live)
        return self._seq

    def pop_due(self, now: float) -> Iterator[tuple[int, object]]:
        """Pop every deadline at or before `now`; yield (kind, obj) of the live ones, each
        checked when it is reached (handling one may kill a later one)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, seq, kind, obj = heapq.heappop(heap)
            if self._is_live(seq, kind, obj):
                yield kind, obj

    def bound(self, live: int) -> None:
        """Drop the dead entries if there are more than 2 * `live` + 64 entries."""
        if len(self._heap) > 2 * live + 64:
            # In place: pop_due may be iterating over this very list.
            self._heap[:] = [e for e in self._heap if self._is_live(e[1], e[2], e[3])]
            heapq.heapify(self._heap)
