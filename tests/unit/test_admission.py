"""The relay's admission rules, checked directly (the matchmaker's tests cover them in use)."""

from __future__ import annotations

from meshcore.proto.admission import circuit_open_refusal, connect_refusal, connection_refusal
from meshcore.proto.circuits import CircuitTable
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.limits import RelayLimits
from meshcore.proto.ratelimit import AddressBuckets, TokenBucket
from meshcore.proto.relayrecords import ConnRecord
from meshcore.proto.wire import CircuitOpen, Connect, ErrorCode

LIMITS = RelayLimits()
ADDR = Endpoint("192.0.2.1", 1000)


def peer(conn_id: int, peer_id: bytes, now: float = 0.0) -> ConnRecord:
    record = ConnRecord(conn_id, ADDR, now, now + 5)
    record.peer = peer_id
    record.bucket = TokenBucket(LIMITS.pairings_per_s, LIMITS.pairings_burst, now)
    return record


def table() -> CircuitTable:
    return CircuitTable(bytes(32), max_circuits=1, max_per_peer=1)


def test_a_relay_shutting_down_takes_no_connection() -> None:
    buckets = AddressBuckets(10.0, 20, 16)
    refusal = connection_refusal(
        ADDR, shutting_down=True, buckets=buckets, pending=0, limits=LIMITS, now=0.0
    )
    assert refusal is not None and refusal[0] is ErrorCode.SHUTDOWN


def test_connections_past_the_pending_cap_are_refused_for_capacity() -> None:
    buckets = AddressBuckets(10.0, 20, 16)
    full = LIMITS.max_pending_connections

    def check(pending: int) -> object:
        return connection_refusal(
            ADDR, shutting_down=False, buckets=buckets, pending=pending, limits=LIMITS, now=0.0
        )

    assert check(full - 1) is None
    refusal = check(full)
    assert isinstance(refusal, tuple) and refusal[0] is ErrorCode.CAPACITY


def test_a_pairing_request_passes_when_every_rule_holds() -> None:
    a, b = peer(1, b"a" * 32), peer(2, b"b" * 32)
    refusal = connect_refusal(
        a, Connect(1, b.peer), b, departed=(), circuits=table(), limits=LIMITS, now=0.0
    )
    assert refusal is None


def test_a_pairing_request_to_a_full_circuit_table_is_refused_for_capacity() -> None:
    a, b, c = peer(1, b"a" * 32), peer(2, b"b" * 32), peer(3, b"c" * 32)
    circuits = table()
    circuits.open(b, c, 0.0)
    refusal = connect_refusal(
        a, Connect(1, b.peer), b, departed=(), circuits=circuits, limits=LIMITS, now=0.0
    )
    assert refusal is not None and refusal[0] is ErrorCode.CAPACITY


def test_a_pairing_request_to_a_departed_peer_says_offline() -> None:
    a = peer(1, b"a" * 32)
    gone = b"g" * 32
    refusal = connect_refusal(
        a, Connect(1, gone), None, departed={gone}, circuits=table(), limits=LIMITS, now=0.0
    )
    assert refusal is not None and refusal[0] is ErrorCode.PEER_OFFLINE


def test_a_reopen_needs_a_pairing_on_both_connections() -> None:
    a, b = peer(1, b"a" * 32), peer(2, b"b" * 32)
    msg = CircuitOpen(0, b.peer)
    refusal = circuit_open_refusal(a, msg, b, circuits=table(), now=0.0)
    assert refusal is not None and refusal[0] is ErrorCode.NOT_ALLOWED
    a.paired[b.peer] = None
    b.paired[a.peer] = None
    assert circuit_open_refusal(a, msg, b, circuits=table(), now=0.0) is None


def test_a_reopen_must_leave_the_circuit_id_to_the_relay() -> None:
    a, b = peer(1, b"a" * 32), peer(2, b"b" * 32)
    refusal = circuit_open_refusal(a, CircuitOpen(5, b.peer), b, circuits=table(), now=0.0)
    assert refusal is not None and refusal[0] is ErrorCode.NOT_ALLOWED
