"""The relay's admission rules: whether it takes a new connection, a pairing request
(`Connect`) or a circuit re-open (`CircuitOpen`), and if not, the code and reason to refuse
it with (docs/relay.md, "The rules" and "Limits").

Pure checks over the matchmaker's records; the `Matchmaker` sends the refusals and counts
them. A check that passes may consume a token of a rate limit, so call each once per request.
"""

from __future__ import annotations

from collections.abc import Container

from meshcore.proto.circuits import CircuitTable
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.limits import RelayLimits
from meshcore.proto.ratelimit import AddressBuckets, address_key
from meshcore.proto.reconnect import busy_reason, reconnect_window
from meshcore.proto.relayrecords import ConnRecord
from meshcore.proto.wire import CircuitOpen, Connect, ErrorCode

__all__ = ["Refusal", "circuit_open_refusal", "connect_refusal", "connection_refusal"]

Refusal = tuple[ErrorCode, str]
"""Why a request is refused: the code and a reason for the requester."""


def connection_refusal(
    addr: Endpoint,
    *,
    shutting_down: bool,
    buckets: AddressBuckets,
    pending: int,
    limits: RelayLimits,
    now: float,
) -> Refusal | None:
    """Why a connection from `addr` is refused (shutdown, its address's rate, too many
    registering), or None; takes a token from the address's bucket.

    A refusal for load says when to come back, "reconnect within S s" (the peer spreads its
    next attempt over S instead of doubling its backoff, docs/relay-client.md): for too many
    registering, S is the pending work over the rate the relay registers at
    (`restart_rate_per_s`); for an address's rate, the time its bucket takes to refill.
    """
    if shutting_down:
        return ErrorCode.SHUTDOWN, "the relay is shutting down"
    key = address_key(addr)
    if not buckets.take(key, now):
        refill_s = limits.connections_burst_per_ip / limits.connections_per_s_per_ip
        what = (
            f"too many connections from {key}: at most {limits.connections_per_s_per_ip:g}/s "
            f"(burst {limits.connections_burst_per_ip})"
        )
        return ErrorCode.RATE_LIMITED, busy_reason(what, refill_s)
    if pending >= limits.max_pending_connections:
        window_s = reconnect_window(pending, limits.restart_rate_per_s)
        what = f"too many connections are registering right now ({pending})"
        return ErrorCode.CAPACITY, busy_reason(what, window_s)
    return None


def connect_refusal(
    conn: ConnRecord,
    msg: Connect,
    target: ConnRecord | None,
    *,
    departed: Container[bytes],
    circuits: CircuitTable,
    limits: RelayLimits,
    now: float,
) -> Refusal | None:
    """Why `conn`'s request to pair with `target` (None: not registered here) is refused,
    or None; takes a token from `conn`'s pairing bucket."""
    assert conn.bucket is not None
    if not conn.bucket.take(now):
        return (
            ErrorCode.RATE_LIMITED,
            f"too many pairing requests: at most {limits.pairings_per_s:g}/s "
            f"(burst {limits.pairings_burst}); retry later",
        )
    if msg.request_id in conn.invites_out:
        return ErrorCode.NOT_ALLOWED, "this request id is already pending; use a new one"
    if len(conn.invites_out) >= limits.max_invites_per_peer:
        return (
            ErrorCode.RATE_LIMITED,
            f"{limits.max_invites_per_peer} pairing requests already pending; wait for them",
        )
    if msg.target == conn.peer:
        return ErrorCode.NOT_ALLOWED, "a peer cannot pair with itself"
    if target is None:
        if msg.target in departed:
            return ErrorCode.PEER_OFFLINE, "that peer is not connected to this relay"
        return ErrorCode.PEER_UNKNOWN, "no peer with that id is registered here"
    if any(invite.target is target for invite in conn.invites_out.values()):
        # One pending invitation per (initiator, target): a single flooder cannot fill the
        # target's invitation slots; it needs as many registered identities.
        return ErrorCode.RATE_LIMITED, "a request to this peer is already pending; wait for it"
    if len(target.invites_in) >= limits.max_invites_per_peer:
        return ErrorCode.CAPACITY, "the peer has too many pending invitations; retry later"
    full = circuits.capacity(conn, target)
    return (ErrorCode.CAPACITY, full) if full else None


def circuit_open_refusal(
    conn: ConnRecord,
    msg: CircuitOpen,
    other: ConnRecord | None,
    *,
    circuits: CircuitTable,
    now: float,
) -> Refusal | None:
    """Why `conn`'s request to re-open a circuit to `other` (None: not registered here) is
    refused, or None; takes a token from `conn`'s pairing bucket."""
    if msg.circuit_id != 0:
        return ErrorCode.NOT_ALLOWED, "send circuit id 0: the relay assigns circuit ids"
    assert conn.bucket is not None
    if not conn.bucket.take(now):
        return ErrorCode.RATE_LIMITED, "too many pairing requests; retry later"
    if other is None:
        return ErrorCode.PEER_OFFLINE, "that peer is not connected to this relay"
    if other.peer not in conn.paired or conn.peer not in other.paired:
        return (
            ErrorCode.NOT_ALLOWED,
            "not paired with that peer on these connections; send Connect first",
        )
    full = circuits.capacity(conn, other)
    return (ErrorCode.CAPACITY, full) if full else None
