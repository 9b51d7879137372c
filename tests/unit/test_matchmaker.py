"""The relay's matchmaker, one rule per test: registration, pairing, circuits, timers (its limits
and bad input: test_matchmaker_limits)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import pytest

from meshcore.proto import wire
from meshcore.proto.constants import RELAY_HEARTBEAT_S
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity, PublicBundle
from meshcore.proto.limits import RelayLimits
from meshcore.proto.matchmaker import (
    CloseConnection,
    ConnState,
    Forward,
    LogEvent,
    Matchmaker,
    Output,
    Send,
)
from meshcore.proto.relayauth import answer_challenge, challenge_relay, prove_relay

M = TypeVar("M")

IDENTITIES = [Identity.generate() for _ in range(4)]
ALICE, BOB, CAROL, MALLORY = IDENTITIES
RELAY = Identity.generate()
CANDIDATES = (Endpoint("10.0.0.2", 7000), Endpoint("fd00::2", 7000))


class Relay:
    """A matchmaker with a hand-driven clock and helpers that speak for the peers."""

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.mm = Matchmaker(limits, identity=RELAY)
        self.now = 1000.0
        self._next_conn = 0
        self._next_addr = 0

    def open(self, addr: Endpoint | None = None) -> tuple[int, list[Output]]:
        self._next_conn += 1
        if addr is None:
            self._next_addr += 1
            n = self._next_addr
            addr = Endpoint(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}", 1024 + n % 60000)
        return self._next_conn, self.mm.connection_opened(self._next_conn, addr, self.now)

    def send(self, conn: int, msg: wire.ControlMessage) -> list[Output]:
        return self.mm.receive_data(conn, wire.encode_control(msg), self.now)

    def hello(self, conn: int, identity: Identity) -> wire.Challenge:
        bundle = identity.public
        out = self.send(conn, wire.Hello(bundle.x25519_public, bundle.kem_public, CANDIDATES))
        return only(sent(out, conn), wire.Challenge)

    def register(self, identity: Identity, addr: Endpoint | None = None) -> int:
        conn, out = self.open(addr)
        assert sent(out, conn) == [wire.RelayIdentity(*_keys(RELAY))]
        challenge = self.hello(conn, identity)
        out = self.send(conn, answer_challenge(identity, challenge))
        registered = only(sent(out, conn), wire.Registered)
        assert registered.peer_id == identity.peer_id.digest
        return conn

    def pair(self, a: int, b: int, target: Identity, request_id: int = 7) -> int:
        out = self.send(a, wire.Connect(request_id, target.peer_id.digest))
        invite = only(sent(out, b), wire.Invite)
        out = self.send(b, wire.Accept(invite.request_id))
        paired = only(sent(out, a), wire.Paired)
        return paired.circuit_id

    def advance(self, seconds: float) -> list[Output]:
        self.now += seconds
        return self.mm.handle_timer(self.now)


def _keys(identity: Identity) -> tuple[bytes, bytes]:
    return identity.public.x25519_public, identity.public.kem_public


def sent(outputs: Sequence[Output], conn: int) -> list[wire.ControlMessage]:
    return [o.message for o in outputs if isinstance(o, Send) and o.conn_id == conn]


def only(messages: Sequence[object], cls: type[M]) -> M:
    assert len(messages) == 1 and isinstance(messages[0], cls), messages
    return messages[0]


def closed(outputs: Sequence[Output]) -> dict[int, wire.ErrorCode]:
    return {o.conn_id: o.code for o in outputs if isinstance(o, CloseConnection)}


def events(outputs: Sequence[Output], name: str) -> list[LogEvent]:
    return [o for o in outputs if isinstance(o, LogEvent) and o.name == name]


@pytest.fixture
def relay() -> Relay:
    return Relay()


# --- registration ---------------------------------------------------------------------------


def test_hello_is_answered_with_a_challenge(relay: Relay) -> None:
    conn, _ = relay.open()
    relay.hello(conn, ALICE)
    assert relay.mm.state_of(conn) is ConnState.AWAITING_AUTH


def test_correct_answer_registers_with_the_observed_address(relay: Relay) -> None:
    conn, _ = relay.open(Endpoint("203.0.113.9", 51000))
    challenge = relay.hello(conn, ALICE)
    out = relay.send(conn, answer_challenge(ALICE, challenge))
    assert sent(out, conn) == [
        wire.Registered(ALICE.peer_id.digest, Endpoint("203.0.113.9", 51000))
    ]
    (event,) = events(out, "registered")
    assert event.fields == {"peer": ALICE.peer_id.to_text(), "addr": "203.0.113.9:51000"}


def test_wrong_answer_closes_with_auth_failed(relay: Relay) -> None:
    conn, _ = relay.open()
    relay.hello(conn, ALICE)
    out = relay.send(conn, wire.Auth(bytes(32)))
    assert closed(out) == {conn: wire.ErrorCode.AUTH_FAILED}
    assert only(sent(out, conn), wire.Error).code is wire.ErrorCode.AUTH_FAILED
    assert relay.mm.stats().peers == 0


def test_cannot_register_under_another_peers_keys(relay: Relay) -> None:
    # Mallory announces Alice's public keys but holds only her own secrets.
    conn, _ = relay.open()
    challenge = relay.hello(conn, ALICE)
    out = relay.send(conn, answer_challenge(MALLORY, challenge))
    assert closed(out) == {conn: wire.ErrorCode.AUTH_FAILED}
    assert relay.mm.peer_of(conn) is None


def test_a_failed_impostor_does_not_disturb_the_registered_peer(relay: Relay) -> None:
    alice = relay.register(ALICE)
    conn, _ = relay.open()
    challenge = relay.hello(conn, ALICE)
    out = relay.send(conn, answer_challenge(MALLORY, challenge))
    assert closed(out) == {conn: wire.ErrorCode.AUTH_FAILED}
    assert sent(out, alice) == []
    assert relay.mm.peer_of(alice) == ALICE.peer_id.digest


# --- the relay proves its identity ------------------------------------------------------------


def test_every_connection_is_first_told_the_relays_keys(relay: Relay) -> None:
    conn, out = relay.open()
    (identity,) = sent(out, conn)
    assert isinstance(identity, wire.RelayIdentity)
    bundle = PublicBundle(identity.x25519_public, identity.kem_public)
    assert bundle.peer_id == relay.mm.relay_id == RELAY.peer_id


def test_relay_challenge_before_hello_is_answered_with_a_proof(relay: Relay) -> None:
    conn, _ = relay.open()
    challenge, pending = challenge_relay(RELAY.public)
    proof = only(sent(relay.send(conn, challenge), conn), wire.RelayProof)
    assert pending.verify(proof)
    assert relay.mm.state_of(conn) is ConnState.AWAITING_HELLO
    out = relay.send(conn, answer_challenge(ALICE, relay.hello(conn, ALICE)))
    assert only(sent(out, conn), wire.Registered).peer_id == ALICE.peer_id.digest


def test_the_proof_is_the_relays_own_answer(relay: Relay) -> None:
    conn, _ = relay.open()
    challenge, _ = challenge_relay(RELAY.public)
    proof = only(sent(relay.send(conn, challenge), conn), wire.RelayProof)
    assert proof == prove_relay(RELAY, challenge)


def test_a_relay_with_another_identity_gives_a_proof_that_does_not_verify() -> None:
    impostor = Relay()
    impostor.mm = Matchmaker(identity=MALLORY)
    conn, _ = impostor.open()
    challenge, pending = challenge_relay(RELAY.public)  # the peer expects RELAY
    assert not pending.verify(only(sent(impostor.send(conn, challenge), conn), wire.RelayProof))


def test_a_second_relay_challenge_is_a_violation(relay: Relay) -> None:
    conn, _ = relay.open()
    relay.send(conn, challenge_relay(RELAY.public)[0])
    out = relay.send(conn, challenge_relay(RELAY.public)[0])
    assert closed(out) == {conn: wire.ErrorCode.BAD_MESSAGE}
    assert "only one RelayChallenge" in only(sent(out, conn), wire.Error).reason


def test_a_relay_challenge_after_hello_is_a_violation(relay: Relay) -> None:
    conn, _ = relay.open()
    relay.hello(conn, ALICE)
    assert closed(relay.send(conn, challenge_relay(RELAY.public)[0])) == {
        conn: wire.ErrorCode.BAD_MESSAGE
    }
    registered = relay.register(BOB)
    out = relay.send(registered, challenge_relay(RELAY.public)[0])
    assert "must come before Hello" in only(sent(out, registered), wire.Error).reason


def test_a_relay_challenge_with_a_small_order_point_closes(relay: Relay) -> None:
    conn, _ = relay.open()
    challenge, _ = challenge_relay(RELAY.public)
    bad = wire.RelayChallenge(challenge.nonce, bytes(32), challenge.kem_ciphertext)
    out = relay.send(conn, bad)
    assert closed(out) == {conn: wire.ErrorCode.BAD_MESSAGE}
    assert relay.mm.stats().pending == 0


def test_relay_challenge_counts_against_the_hello_deadline(relay: Relay) -> None:
    conn, _ = relay.open()
    relay.send(conn, challenge_relay(RELAY.public)[0])
    out = relay.advance(RelayLimits().hello_deadline_s)
    assert closed(out) == {conn: wire.ErrorCode.TIMEOUT}


def test_a_matchmaker_without_an_identity_makes_one() -> None:
    first, second = Matchmaker(), Matchmaker()
    assert first.relay_id != second.relay_id
    assert first.identity.peer_id == first.relay_id


# --- registration, continued -----------------------------------------------------------------


def test_message_before_hello_closes_the_connection(relay: Relay) -> None:
    conn, _ = relay.open()
    out = relay.send(conn, wire.Connect(1, BOB.peer_id.digest))
    assert closed(out) == {conn: wire.ErrorCode.BAD_MESSAGE}


def test_second_hello_is_a_violation(relay: Relay) -> None:
    conn, _ = relay.open()
    relay.hello(conn, ALICE)
    bundle = ALICE.public
    out = relay.send(conn, wire.Hello(bundle.x25519_public, bundle.kem_public, ()))
    assert closed(out) == {conn: wire.ErrorCode.BAD_MESSAGE}


def test_hello_with_a_small_order_x25519_key_closes(relay: Relay) -> None:
    conn, _ = relay.open()
    out = relay.send(conn, wire.Hello(bytes(32), ALICE.public.kem_public, ()))
    assert closed(out) == {conn: wire.ErrorCode.BAD_MESSAGE}


def test_hello_after_registration_is_a_violation(relay: Relay) -> None:
    conn = relay.register(ALICE)
    bundle = ALICE.public
    out = relay.send(conn, wire.Hello(bundle.x25519_public, bundle.kem_public, ()))
    assert closed(out) == {conn: wire.ErrorCode.BAD_MESSAGE}


def test_no_hello_before_the_deadline_closes_with_timeout(relay: Relay) -> None:
    conn, _ = relay.open()
    assert relay.advance(RelayLimits().hello_deadline_s - 0.01) == []
    out = relay.advance(0.02)
    assert closed(out) == {conn: wire.ErrorCode.TIMEOUT}
    assert relay.mm.stats().pending == 0


def test_no_auth_before_the_deadline_closes_with_timeout(relay: Relay) -> None:
    conn, _ = relay.open()
    relay.hello(conn, ALICE)
    out = relay.advance(RelayLimits().hello_deadline_s)
    assert closed(out) == {conn: wire.ErrorCode.TIMEOUT}


def test_registered_peer_is_not_held_to_the_hello_deadline(relay: Relay) -> None:
    conn = relay.register(ALICE)
    assert closed(relay.advance(RelayLimits().hello_deadline_s + 1)) == {}
    assert relay.mm.state_of(conn) is ConnState.REGISTERED


def test_get_timer_reports_the_hello_deadline(relay: Relay) -> None:
    assert relay.mm.get_timer() is None
    relay.open()
    assert relay.mm.get_timer() == relay.now + RelayLimits().hello_deadline_s


def test_reregistration_replaces_the_old_connection(relay: Relay) -> None:
    old = relay.register(ALICE)
    conn, _ = relay.open()
    challenge = relay.hello(conn, ALICE)
    assert relay.mm.peer_of(old) == ALICE.peer_id.digest  # not replaced before auth
    out = relay.send(conn, answer_challenge(ALICE, challenge))
    assert closed(out) == {old: wire.ErrorCode.REPLACED}
    assert only(sent(out, old), wire.Close).code is wire.ErrorCode.REPLACED
    assert relay.mm.peer_of(conn) == ALICE.peer_id.digest
    assert relay.mm.stats().peers == 1


def test_replacement_closes_the_old_connections_circuits(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    cid = relay.pair(alice, bob, BOB)
    conn, _ = relay.open()
    out = relay.send(conn, answer_challenge(ALICE, relay.hello(conn, ALICE)))
    assert only(sent(out, bob), wire.CircuitClose).circuit_id == cid
    assert relay.mm.circuit_members(cid) is None


# --- pairing --------------------------------------------------------------------------------


def test_connect_invites_the_target_with_the_initiators_keys_and_addresses(relay: Relay) -> None:
    alice = relay.register(ALICE, Endpoint("203.0.113.1", 5000))
    bob = relay.register(BOB)
    out = relay.send(alice, wire.Connect(7, BOB.peer_id.digest))
    invite = only(sent(out, bob), wire.Invite)
    assert invite.initiator == ALICE.peer_id.digest
    assert (invite.x25519_public, invite.kem_public) == (
        ALICE.public.x25519_public,
        ALICE.public.kem_public,
    )
    assert invite.observed == Endpoint("203.0.113.1", 5000)
    assert invite.candidates == CANDIDATES
    assert sent(out, alice) == []  # nothing until Bob decides


def test_accept_pairs_both_with_the_other_sides_details(relay: Relay) -> None:
    alice = relay.register(ALICE, Endpoint("203.0.113.1", 5000))
    bob = relay.register(BOB, Endpoint("203.0.113.2", 6000))
    invite = only(sent(relay.send(alice, wire.Connect(7, BOB.peer_id.digest)), bob), wire.Invite)
    out = relay.send(bob, wire.Accept(invite.request_id))
    to_alice, to_bob = only(sent(out, alice), wire.Paired), only(sent(out, bob), wire.Paired)
    assert to_alice.circuit_id == to_bob.circuit_id != 0
    assert (to_alice.request_id, to_alice.role) == (7, wire.Role.INITIATOR)
    assert (to_bob.request_id, to_bob.role) == (invite.request_id, wire.Role.RESPONDER)
    assert (to_alice.peer_id, to_alice.kem_public) == (BOB.peer_id.digest, BOB.public.kem_public)
    assert (to_bob.peer_id, to_bob.kem_public) == (ALICE.peer_id.digest, ALICE.public.kem_public)
    assert to_alice.observed == Endpoint("203.0.113.2", 6000)
    assert to_bob.observed == Endpoint("203.0.113.1", 5000)
    assert to_alice.candidates == to_bob.candidates == CANDIDATES
    assert events(out, "paired")


def test_nothing_is_paired_without_the_targets_accept(relay: Relay) -> None:
    alice, _ = relay.register(ALICE), relay.register(BOB)
    relay.send(alice, wire.Connect(7, BOB.peer_id.digest))
    assert relay.mm.stats().circuits == 0
    assert relay.mm.stats().invites == 1


def test_circuit_ids_are_distinct_and_nonzero(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    ids = set()
    for request_id in range(1, 41):
        relay.now += 1.0  # stay under the pairing rate limit
        ids.add(relay.pair(alice, bob, BOB, request_id))
    assert len(ids) == 40 and 0 not in ids


def test_reject_is_passed_to_the_initiator(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    invite = only(sent(relay.send(alice, wire.Connect(7, BOB.peer_id.digest)), bob), wire.Invite)
    out = relay.send(
        bob, wire.Reject(invite.request_id, wire.ErrorCode.NOT_ALLOWED, "not on my list")
    )
    reject = only(sent(out, alice), wire.Reject)
    assert (reject.request_id, reject.code) == (7, wire.ErrorCode.NOT_ALLOWED)
    assert "not on my list" in reject.reason
    assert relay.mm.stats().invites == 0


def test_connect_to_an_unknown_peer_is_refused(relay: Relay) -> None:
    alice = relay.register(ALICE)
    out = relay.send(alice, wire.Connect(7, bytes(32)))
    assert only(sent(out, alice), wire.Reject).code is wire.ErrorCode.PEER_UNKNOWN


def test_connect_to_a_departed_peer_says_offline(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    relay.mm.connection_closed(bob, "gone", relay.now)
    out = relay.send(alice, wire.Connect(7, BOB.peer_id.digest))
    assert only(sent(out, alice), wire.Reject).code is wire.ErrorCode.PEER_OFFLINE


def test_connect_to_oneself_is_refused(relay: Relay) -> None:
    alice = relay.register(ALICE)
    out = relay.send(alice, wire.Connect(7, ALICE.peer_id.digest))
    assert only(sent(out, alice), wire.Reject).code is wire.ErrorCode.NOT_ALLOWED


def test_duplicate_pending_request_id_is_refused(relay: Relay) -> None:
    alice, _, _ = relay.register(ALICE), relay.register(BOB), relay.register(CAROL)
    relay.send(alice, wire.Connect(7, BOB.peer_id.digest))
    out = relay.send(alice, wire.Connect(7, CAROL.peer_id.digest))
    assert only(sent(out, alice), wire.Reject).code is wire.ErrorCode.NOT_ALLOWED


def test_only_one_request_per_target_may_be_pending(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    relay.send(alice, wire.Connect(7, BOB.peer_id.digest))
    out = relay.send(alice, wire.Connect(8, BOB.peer_id.digest))
    assert only(sent(out, alice), wire.Reject).code is wire.ErrorCode.RATE_LIMITED
    assert sent(out, bob) == []


def test_unanswered_invitation_expires_for_both_sides(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    invite = only(sent(relay.send(alice, wire.Connect(7, BOB.peer_id.digest)), bob), wire.Invite)
    out = relay.advance(RelayLimits().invite_timeout_s)
    assert only(sent(out, alice), wire.Reject) == wire.Reject(
        7, wire.ErrorCode.TIMEOUT, "the peer did not answer in time"
    )
    assert only(sent(out, bob), wire.Reject).request_id == invite.request_id
    assert relay.mm.stats().invites == 0


def test_initiator_leaving_withdraws_its_invitation(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    invite = only(sent(relay.send(alice, wire.Connect(7, BOB.peer_id.digest)), bob), wire.Invite)
    out = relay.mm.connection_closed(alice, "gone", relay.now)
    assert only(sent(out, bob), wire.Reject).request_id == invite.request_id
    out = relay.send(bob, wire.Accept(invite.request_id))
    assert only(sent(out, bob), wire.Reject).code is wire.ErrorCode.NOT_ALLOWED
    assert relay.mm.stats().circuits == 0


def test_target_leaving_fails_the_pending_connect(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    relay.send(alice, wire.Connect(7, BOB.peer_id.digest))
    out = relay.mm.connection_closed(bob, "gone", relay.now)
    assert only(sent(out, alice), wire.Reject) == wire.Reject(
        7, wire.ErrorCode.PEER_OFFLINE, "the peer disconnected before answering"
    )


def test_accept_of_an_unknown_invitation_is_refused_but_not_fatal(relay: Relay) -> None:
    bob = relay.register(BOB)
    out = relay.send(bob, wire.Accept(12345))
    assert only(sent(out, bob), wire.Reject).code is wire.ErrorCode.NOT_ALLOWED
    assert closed(out) == {}


# --- circuits -------------------------------------------------------------------------------


def test_relayed_frames_reach_the_other_member_both_ways_with_counters(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    cid = relay.pair(alice, bob, BOB)
    out = relay.send(alice, wire.Relayed(cid, b"x" * 100))
    assert out == [Forward(bob, cid, wire.encode_control(wire.Relayed(cid, b"x" * 100)))]
    out = relay.send(bob, wire.Relayed(cid, b"y" * 7))
    assert out == [Forward(alice, cid, wire.encode_control(wire.Relayed(cid, b"y" * 7)))]
    relay.send(bob, wire.Relayed(cid, b"z"))
    (stats,) = relay.mm.circuit_stats()
    assert (stats.bytes_ab, stats.frames_ab, stats.bytes_ba, stats.frames_ba) == (100, 1, 8, 2)


def test_frames_on_someone_elses_circuit_are_not_forwarded(relay: Relay) -> None:
    alice, bob, carol = relay.register(ALICE), relay.register(BOB), relay.register(CAROL)
    cid = relay.pair(alice, bob, BOB)
    out = relay.send(carol, wire.Relayed(cid, b"inject"))
    assert not any(isinstance(o, Forward) for o in out)
    assert only(sent(out, carol), wire.CircuitClose).code is wire.ErrorCode.CIRCUIT_UNKNOWN
    assert closed(out) == {}
    assert relay.mm.circuit_members(cid) == (alice, bob)


def test_unknown_circuit_is_reported_once_per_circuit_id(relay: Relay) -> None:
    alice = relay.register(ALICE)
    assert len(sent(relay.send(alice, wire.Relayed(99, b"a")), alice)) == 1
    assert relay.send(alice, wire.Relayed(99, b"a")) == []


def test_relayed_before_registration_closes_the_connection(relay: Relay) -> None:
    conn, _ = relay.open()
    out = relay.send(conn, wire.Relayed(1, b"a"))
    assert closed(out) == {conn: wire.ErrorCode.BAD_MESSAGE}


def test_circuit_close_releases_the_circuit_and_tells_both(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    cid = relay.pair(alice, bob, BOB)
    relay.send(alice, wire.Relayed(cid, b"abc"))
    out = relay.send(alice, wire.CircuitClose(cid, wire.ErrorCode.NONE, "done"))
    assert only(sent(out, alice), wire.CircuitClose).circuit_id == cid
    assert only(sent(out, bob), wire.CircuitClose).circuit_id == cid
    (event,) = events(out, "circuit closed")
    assert (event.fields["bytes_ab"], event.fields["frames_ab"], event.fields["frames_ba"]) == (
        3,
        1,
        0,
    )
    assert relay.mm.stats().circuits == 0


def test_circuit_close_by_a_non_member_changes_nothing(relay: Relay) -> None:
    alice, bob, carol = relay.register(ALICE), relay.register(BOB), relay.register(CAROL)
    cid = relay.pair(alice, bob, BOB)
    assert relay.send(carol, wire.CircuitClose(cid, wire.ErrorCode.NONE, "")) == []
    assert relay.mm.circuit_members(cid) == (alice, bob)


def test_closing_one_circuit_leaves_another_between_the_same_peers(relay: Relay) -> None:
    # py-libp2p kept relay state per peer id, so one circuit's close tore down the other.
    alice, bob = relay.register(ALICE), relay.register(BOB)
    first, second = relay.pair(alice, bob, BOB, 1), relay.pair(alice, bob, BOB, 2)
    relay.send(bob, wire.CircuitClose(first, wire.ErrorCode.NONE, ""))
    assert relay.mm.circuit_members(second) == (alice, bob)
    assert relay.send(alice, wire.Relayed(second, b"still here"))[0] == Forward(
        bob, second, wire.encode_control(wire.Relayed(second, b"still here"))
    )


def test_disconnect_closes_its_circuits_and_tells_the_other_member(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    cid = relay.pair(alice, bob, BOB)
    out = relay.mm.connection_closed(alice, "network", relay.now)
    close = only(sent(out, bob), wire.CircuitClose)
    assert (close.circuit_id, close.code) == (cid, wire.ErrorCode.PEER_OFFLINE)
    assert sent(out, alice) == []
    assert relay.mm.stats().circuits == 0 and relay.mm.stats().peers == 1


def test_circuit_open_reopens_a_circuit_between_paired_peers(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    first = relay.pair(alice, bob, BOB)
    relay.send(alice, wire.CircuitClose(first, wire.ErrorCode.NONE, "moved to direct"))
    out = relay.send(alice, wire.CircuitOpen(0, BOB.peer_id.digest))
    to_alice, to_bob = (
        only(sent(out, alice), wire.CircuitOpen),
        only(sent(out, bob), wire.CircuitOpen),
    )
    assert to_alice.circuit_id == to_bob.circuit_id not in (0, first)
    assert (to_alice.peer_id, to_bob.peer_id) == (BOB.peer_id.digest, ALICE.peer_id.digest)
    assert relay.mm.circuit_members(to_alice.circuit_id) == (alice, bob)


def test_circuit_open_without_a_pairing_is_refused(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    out = relay.send(alice, wire.CircuitOpen(0, BOB.peer_id.digest))
    assert only(sent(out, alice), wire.CircuitClose).code is wire.ErrorCode.NOT_ALLOWED
    assert sent(out, bob) == []


def test_circuit_open_after_the_peer_reconnected_needs_a_new_pairing(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    relay.pair(alice, bob, BOB)
    relay.register(BOB)  # replaces Bob's connection: his approval was for the old one
    out = relay.send(alice, wire.CircuitOpen(0, BOB.peer_id.digest))
    assert only(sent(out, alice), wire.CircuitClose).code is wire.ErrorCode.NOT_ALLOWED


def test_circuit_overflow_closes_the_circuit_for_both(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    cid = relay.pair(alice, bob, BOB)
    out = relay.mm.circuit_overflow(cid, relay.now)
    for conn in (alice, bob):
        assert only(sent(out, conn), wire.CircuitClose).code is wire.ErrorCode.QUEUE_OVERFLOW


# --- liveness -------------------------------------------------------------------------------


def test_silent_peer_is_pinged_then_dropped() -> None:
    relay = Relay(RelayLimits(ping_interval_s=10, idle_timeout_s=30))
    conn = relay.register(ALICE)
    assert isinstance(only(sent(relay.advance(10), conn), wire.Ping), wire.Ping)
    assert closed(relay.advance(19.9)) == {}
    assert closed(relay.advance(0.2)) == {conn: wire.ErrorCode.TIMEOUT}


def test_answered_pings_keep_a_peer(relay: Relay) -> None:
    limits = RelayLimits()
    conn = relay.register(ALICE)
    for _ in range(5):
        ping = only(sent(relay.advance(limits.ping_interval_s), conn), wire.Ping)
        assert relay.send(conn, wire.Pong(ping.nonce)) == []
    assert relay.mm.state_of(conn) is ConnState.REGISTERED


def test_a_peers_heartbeat_keeps_its_connection_without_the_relays_pings(relay: Relay) -> None:
    # A peer pings after RELAY_HEARTBEAT_S without news: the relay, whose own ping comes
    # only after ping_interval_s of silence, never needs to ping it, nor drops it.
    conn = relay.register(ALICE)
    for nonce in range(1, 60):
        out = relay.advance(RELAY_HEARTBEAT_S)
        assert sent(out, conn) == [] and closed(out) == {}
        assert sent(relay.send(conn, wire.Ping(nonce)), conn) == [wire.Pong(nonce)]
    assert relay.now - 1000.0 > 4 * RelayLimits().idle_timeout_s
    assert relay.mm.state_of(conn) is ConnState.REGISTERED


def test_ping_from_a_peer_is_answered(relay: Relay) -> None:
    conn = relay.register(ALICE)
    assert sent(relay.send(conn, wire.Ping(42)), conn) == [wire.Pong(42)]


def test_close_from_a_peer_closes_its_connection_gracefully(relay: Relay) -> None:
    conn = relay.register(ALICE)
    out = relay.send(conn, wire.Close(wire.ErrorCode.NONE, "bye"))
    assert closed(out) == {conn: wire.ErrorCode.NONE}
    assert relay.mm.stats().peers == 0


def test_shutdown_closes_every_circuit_and_connection(relay: Relay) -> None:
    alice, bob = relay.register(ALICE), relay.register(BOB)
    cid = relay.pair(alice, bob, BOB)
    pending, _ = relay.open()
    out = relay.mm.shutdown(relay.now)
    assert closed(out) == {c: wire.ErrorCode.SHUTDOWN for c in (alice, bob, pending)}
    for conn in (alice, bob):
        close = [m for m in sent(out, conn) if isinstance(m, wire.CircuitClose)]
        assert [c.circuit_id for c in close] == [cid]
    assert relay.mm.stats().connections == relay.mm.stats().circuits == 0


def test_connections_are_refused_after_shutdown(relay: Relay) -> None:
    relay.mm.shutdown(relay.now)
    conn, out = relay.open()
    assert closed(out) == {conn: wire.ErrorCode.SHUTDOWN}


def test_connections_refused_are_not_told_the_relays_keys(relay: Relay) -> None:
    relay.mm.shutdown(relay.now)
    conn, out = relay.open()
    assert not any(isinstance(m, wire.RelayIdentity) for m in sent(out, conn))


def test_reusing_a_live_connection_id_is_a_driver_bug(relay: Relay) -> None:
    relay.mm.connection_opened(1, Endpoint("192.0.2.1", 1), relay.now)
    with pytest.raises(ValueError, match="already in use"):
        relay.mm.connection_opened(1, Endpoint("192.0.2.1", 2), relay.now)


def test_events_for_a_forgotten_connection_are_ignored(relay: Relay) -> None:
    assert relay.mm.receive_data(77, b"\x01\x01", relay.now) == []
    assert relay.mm.connection_closed(77, "gone", relay.now) == []


def test_public_api_is_pinned() -> None:
    from meshcore.proto import matchmaker

    assert sorted(matchmaker.__all__) == [
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
