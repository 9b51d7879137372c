"""The matchmaker's counters (what the relay's metrics export) and netcheck's address echo."""

from __future__ import annotations

from test_matchmaker import ALICE, BOB, CAROL, MALLORY, Relay, closed, only, sent

from meshcore.proto import wire
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.limits import RelayLimits
from meshcore.proto.matchmaker import Send
from meshcore.proto.relayauth import answer_challenge


def test_observe_address_is_answered_before_hello_and_leaves_the_state_alone() -> None:
    relay = Relay()
    conn, _ = relay.open(Endpoint("203.0.113.7", 41000))
    out = relay.send(conn, wire.ObserveAddress(99))
    assert out == [Send(conn, wire.ObservedAddress(99, Endpoint("203.0.113.7", 41000)))]
    relay.hello(conn, ALICE)  # still expecting a Hello: netcheck never registers
    assert relay.mm.counters().address_echoes == 1


def test_observe_address_is_answered_to_a_registered_peer_too() -> None:
    relay = Relay()
    conn = relay.register(ALICE, Endpoint("2001:db8::5", 7))
    out = relay.send(conn, wire.ObserveAddress(1))
    assert only(sent(out, conn), wire.ObservedAddress).observed == Endpoint("2001:db8::5", 7)


def test_a_netcheck_connection_still_meets_the_hello_deadline() -> None:
    relay = Relay()
    conn, _ = relay.open()
    relay.send(conn, wire.ObserveAddress(1))
    out = relay.advance(RelayLimits().hello_deadline_s)
    assert closed(out) == {conn: wire.ErrorCode.TIMEOUT}
    assert relay.mm.counters().closes == {"timeout": 1}


def test_registrations_pairings_and_reopens_are_counted() -> None:
    relay = Relay()
    alice, bob = relay.register(ALICE), relay.register(BOB)
    cid = relay.pair(alice, bob, BOB)
    relay.send(alice, wire.CircuitClose(cid, wire.ErrorCode.NONE, "direct now"))
    relay.now += 1
    out = relay.send(alice, wire.CircuitOpen(0, BOB.peer_id.digest))
    assert only(sent(out, bob), wire.CircuitOpen).circuit_id != 0
    counts = relay.mm.counters()
    assert (counts.registrations, counts.pairings, counts.reopens) == (2, 1, 1)
    assert counts.circuit_closes == {"none": 1}


def test_forwarded_bytes_and_frames_add_open_and_closed_circuits() -> None:
    relay = Relay()
    alice, bob = relay.register(ALICE), relay.register(BOB)
    cid = relay.pair(alice, bob, BOB)
    relay.send(alice, wire.Relayed(cid, b"x" * 100))
    relay.send(bob, wire.Relayed(cid, b"y" * 20))
    counts = relay.mm.counters()
    assert (counts.forwarded_bytes, counts.forwarded_frames) == (120, 2)
    relay.send(bob, wire.CircuitClose(cid, wire.ErrorCode.NONE, ""))
    relay.send(alice, wire.Relayed(cid, b"late"))  # a frame still in flight: dropped
    counts = relay.mm.counters()
    assert (counts.forwarded_bytes, counts.forwarded_frames) == (120, 2)
    assert counts.unknown_circuit_frames == 1


def test_refusals_are_counted_by_request_and_reason() -> None:
    relay = Relay()
    alice, bob = relay.register(ALICE), relay.register(BOB)
    relay.send(alice, wire.Connect(1, bytes(32)))  # nobody
    relay.send(alice, wire.Connect(2, ALICE.peer_id.digest))  # oneself
    invite = only(sent(relay.send(alice, wire.Connect(3, BOB.peer_id.digest)), bob), wire.Invite)
    relay.send(bob, wire.Reject(invite.request_id, wire.ErrorCode.NONE, "no"))
    relay.send(alice, wire.CircuitOpen(0, CAROL.peer_id.digest))
    assert relay.mm.counters().refusals == {
        ("pairing", "peer_unknown"): 1,
        ("pairing", "not_allowed"): 1,
        ("pairing", "rejected"): 1,
        ("circuit", "peer_offline"): 1,
    }


def test_refused_connections_are_counted_as_refusals_and_closes() -> None:
    relay = Relay(RelayLimits(connections_per_s_per_ip=1.0, connections_burst_per_ip=1))
    addr = Endpoint("198.51.100.1", 1)
    relay.open(addr)
    _, out = relay.open(addr)
    assert closed(out)
    counts = relay.mm.counters()
    assert counts.refusals == {("connection", "rate_limited"): 1}
    assert counts.closes == {"rate_limited": 1}


def test_every_way_a_connection_ends_is_counted_by_reason() -> None:
    relay = Relay()
    alice = relay.register(ALICE)
    conn, _ = relay.open()
    relay.send(conn, wire.Auth(bytes(32)))  # out of order: bad message
    conn, _ = relay.open()
    relay.send(conn, answer_challenge(MALLORY, relay.hello(conn, ALICE)))  # wrong answer
    relay.register(ALICE)  # replaces the first registration
    bob = relay.register(BOB)
    relay.send(bob, wire.Close(wire.ErrorCode.NONE, "bye"))
    carol = relay.register(CAROL)
    relay.mm.connection_closed(carol, "reset", relay.now)
    relay.mm.connection_closed(alice, "already gone", relay.now)  # closed by the relay: no-op
    relay.register(BOB)
    relay.mm.shutdown(relay.now)
    assert relay.mm.counters().closes == {
        "bad_message": 1,
        "auth_failed": 1,
        "replaced": 1,
        "peer_closed": 1,
        "disconnected": 1,
        "shutdown": 2,
    }


def test_a_driver_names_the_cause_of_its_own_close() -> None:
    relay = Relay()
    conn = relay.register(ALICE)
    relay.mm.connection_closed(conn, "not reading", relay.now, cause="stuck")
    assert relay.mm.counters().closes == {"stuck": 1}


def test_counters_are_a_copy() -> None:
    relay = Relay()
    counts = relay.mm.counters()
    counts.closes["made up"] += 1
    counts.registrations = 5
    assert relay.mm.counters().closes == {}
    assert relay.mm.counters().registrations == 0
