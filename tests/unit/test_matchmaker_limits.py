"""The relay's matchmaker, what it refuses: its rate limits and table bounds, and bad input,
which closes only the connection that sent it. The helpers live in test_matchmaker."""

from __future__ import annotations

import pytest
from test_matchmaker import ALICE, BOB, CAROL, MALLORY, Relay, closed, events, only, sent

from meshcore.proto import wire
from meshcore.proto.constants import PROTOCOL_VERSION
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.limits import RelayLimits
from meshcore.proto.matchmaker import address_key
from meshcore.proto.ratelimit import TokenBucket
from meshcore.proto.relayauth import answer_challenge


@pytest.fixture
def relay() -> Relay:
    return Relay()


# --- limits ---------------------------------------------------------------------------------


def test_pairing_requests_are_rate_limited_per_connection(relay: Relay) -> None:
    alice, _ = relay.register(ALICE), relay.register(BOB)
    burst = RelayLimits().pairings_burst
    codes = [
        only(sent(relay.send(alice, wire.Connect(i, bytes(32))), alice), wire.Reject).code
        for i in range(burst + 1)
    ]
    assert codes == [wire.ErrorCode.PEER_UNKNOWN] * burst + [wire.ErrorCode.RATE_LIMITED]
    relay.now += 1.0
    out = relay.send(alice, wire.Connect(99, bytes(32)))
    assert only(sent(out, alice), wire.Reject).code is wire.ErrorCode.PEER_UNKNOWN


def test_connections_are_rate_limited_per_address(relay: Relay) -> None:
    addr = Endpoint("192.0.2.7", 1000)
    burst = RelayLimits().connections_burst_per_ip
    for _ in range(burst):
        assert closed(relay.open(addr)[1]) == {}
    conn, out = relay.open(Endpoint("192.0.2.7", 1001))
    assert closed(out) == {conn: wire.ErrorCode.RATE_LIMITED}
    assert closed(relay.open(Endpoint("192.0.2.8", 1000))[1]) == {}  # others unaffected


def test_ipv6_rate_limits_key_on_the_slash_64() -> None:
    assert address_key(Endpoint("2001:db8:1:2::1", 9)) == address_key(
        Endpoint("2001:db8:1:2:ffff::9", 9)
    )
    assert address_key(Endpoint("2001:db8:1:3::1", 9)) != address_key(
        Endpoint("2001:db8:1:2::1", 9)
    )


def test_token_bucket_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=1, now=0.0)
    assert bucket.take(0.0) and not bucket.take(0.1)
    assert bucket.take(0.6)


def test_max_peers_refuses_a_new_peer_but_allows_a_replacement() -> None:
    relay = Relay(RelayLimits(max_peers=1))
    relay.register(ALICE)
    conn, _ = relay.open()
    out = relay.send(conn, answer_challenge(BOB, relay.hello(conn, BOB)))
    assert closed(out) == {conn: wire.ErrorCode.CAPACITY}
    relay.register(ALICE)


def test_max_pending_connections_refuses_more() -> None:
    relay = Relay(RelayLimits(max_pending_connections=2))
    relay.open(), relay.open()
    conn, out = relay.open()
    assert closed(out) == {conn: wire.ErrorCode.CAPACITY}


def test_max_circuits_per_peer_refuses_more_pairings() -> None:
    relay = Relay(RelayLimits(max_circuits_per_peer=1))
    alice, bob = relay.register(ALICE), relay.register(BOB)
    relay.pair(alice, bob, BOB)
    out = relay.send(alice, wire.Connect(8, BOB.peer_id.digest))
    assert only(sent(out, alice), wire.Reject).code is wire.ErrorCode.CAPACITY


def test_max_circuits_refuses_more_pairings() -> None:
    relay = Relay(RelayLimits(max_circuits=1))
    alice, bob, carol = relay.register(ALICE), relay.register(BOB), relay.register(CAROL)
    relay.pair(alice, bob, BOB)
    out = relay.send(carol, wire.Connect(8, ALICE.peer_id.digest))
    assert only(sent(out, carol), wire.Reject).code is wire.ErrorCode.CAPACITY


def test_max_invites_per_target_refuses_more() -> None:
    relay = Relay(RelayLimits(max_invites_per_peer=1, pairings_burst=10))
    alice, _, carol = relay.register(ALICE), relay.register(BOB), relay.register(CAROL)
    relay.send(alice, wire.Connect(1, BOB.peer_id.digest))
    out = relay.send(carol, wire.Connect(2, BOB.peer_id.digest))
    assert only(sent(out, carol), wire.Reject).code is wire.ErrorCode.CAPACITY


def test_max_pending_requests_per_initiator_refuses_more() -> None:
    relay = Relay(RelayLimits(max_invites_per_peer=1, pairings_burst=10))
    alice, _, _ = relay.register(ALICE), relay.register(BOB), relay.register(CAROL)
    relay.send(alice, wire.Connect(1, BOB.peer_id.digest))
    out = relay.send(alice, wire.Connect(2, CAROL.peer_id.digest))
    assert only(sent(out, alice), wire.Reject).code is wire.ErrorCode.RATE_LIMITED


def test_rate_limit_table_is_capped() -> None:
    relay = Relay(RelayLimits(max_tracked_addresses=5))
    for _ in range(20):
        relay.open()
    assert relay.mm.stats().tracked_addresses == 5


def test_timer_table_stays_bounded_over_many_short_connections(relay: Relay) -> None:
    for _ in range(1000):
        conn, _ = relay.open()
        relay.mm.connection_closed(conn, "bye", relay.now)
    assert relay.mm.stats().timers <= 64 + 2


# --- bad input ------------------------------------------------------------------------------


def test_garbage_closes_only_that_connection(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    cid = relay.pair(alice, bob, BOB)
    mallory = relay.register(MALLORY)
    out = relay.mm.receive_data(mallory, b"\x01\xff garbage", relay.now)
    assert closed(out) == {mallory: wire.ErrorCode.BAD_MESSAGE}
    assert sent(out, alice) == sent(out, bob) == []
    assert relay.mm.circuit_members(cid) == (alice, bob)


def test_oversized_message_closes_with_too_large() -> None:
    relay = Relay(RelayLimits(max_message_bytes=2048))
    conn = relay.register(ALICE)
    out = relay.send(conn, wire.Relayed(1, bytes(4096)))
    assert closed(out) == {conn: wire.ErrorCode.TOO_LARGE}


def test_unknown_version_closes_with_unsupported_version(relay: Relay) -> None:
    conn, _ = relay.open()
    out = relay.mm.receive_data(conn, bytes((PROTOCOL_VERSION + 1, 1)), relay.now)
    assert closed(out) == {conn: wire.ErrorCode.UNSUPPORTED_VERSION}


def test_relay_only_message_from_a_peer_closes_it(relay: Relay) -> None:
    conn = relay.register(ALICE)
    out = relay.send(conn, wire.Registered(ALICE.peer_id.digest, Endpoint("192.0.2.1", 1)))
    assert closed(out) == {conn: wire.ErrorCode.BAD_MESSAGE}


def test_violation_log_names_the_address_and_reason(relay: Relay) -> None:
    conn, _ = relay.open(Endpoint("192.0.2.99", 4242))
    out = relay.mm.receive_data(conn, b"", relay.now)
    (event,) = events(out, "closed")
    assert event.fields["addr"] == "192.0.2.99:4242"
    assert "truncated" in str(event.fields["reason"])
