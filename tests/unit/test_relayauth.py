"""The KEM challenges of the control connection: only the key holder can answer for its peer
id (the relay's challenge to a peer), and only the relay holding its keys can prove its relay
id (a peer's challenge to the relay)."""

from __future__ import annotations

import hmac
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.errors import HandshakeError
from meshcore.proto.constants import RELAY_AUTH_MAC_BYTES
from meshcore.proto.handshake import Initiator, Responder, decode_handshake_init_untrusted
from meshcore.proto.identity import Identity
from meshcore.proto.relayauth import (
    PendingAuth,
    answer_challenge,
    challenge_relay,
    make_challenge,
    prove_relay,
)
from meshcore.proto.wire import Auth, Challenge, RelayChallenge, RelayProof
from meshcore.testing._handshake_strategies import (
    PROTOCOL_LABELS,
    low_order_x25519_points,
    with_mac1,
)

ALICE = Identity.generate()
BOB = Identity.generate()
MALLORY = Identity.generate()
RELAY = Identity.generate()
OTHER_RELAY = Identity.generate()


def test_key_holder_answers_the_challenge() -> None:
    challenge, pending = make_challenge(ALICE.public)
    auth = answer_challenge(ALICE, challenge)
    assert isinstance(auth, Auth) and len(auth.mac) == RELAY_AUTH_MAC_BYTES
    assert pending.peer_id == ALICE.peer_id
    assert pending.verify(auth)


def test_pending_auth_admits_one_attempt_only() -> None:
    challenge, pending = make_challenge(ALICE.public)
    auth = answer_challenge(ALICE, challenge)
    assert pending.verify(Auth(mac=bytes(32))) is False
    assert pending.verify(auth) is False


def test_challenges_are_fresh() -> None:
    first, _ = make_challenge(ALICE.public)
    second, _ = make_challenge(ALICE.public)
    assert first.nonce != second.nonce
    assert first.ephemeral_x25519 != second.ephemeral_x25519
    assert first.kem_ciphertext != second.kem_ciphertext


def test_impostor_without_the_secret_keys_cannot_answer_for_someone_elses_id() -> None:
    # Mallory registers with Alice's public bundle but holds only his own secret keys.
    challenge, pending = make_challenge(ALICE.public)
    assert not pending.verify(answer_challenge(MALLORY, challenge))


@pytest.mark.parametrize("known", ["x25519", "mlkem"])
def test_answer_needs_both_static_secrets(known: str) -> None:
    # A half-thief (one of the two secret keys) fails: the proof is hybrid.
    x = ALICE.x25519_secret if known == "x25519" else MALLORY.x25519_secret
    kem = ALICE.kem_secret if known == "mlkem" else MALLORY.kem_secret
    half = Identity(x25519_secret=x, kem_secret=kem, public=ALICE.public)
    challenge, pending = make_challenge(ALICE.public)
    assert not pending.verify(answer_challenge(half, challenge))


def test_answer_to_one_challenge_does_not_verify_another() -> None:
    first, _ = make_challenge(ALICE.public)
    _, pending = make_challenge(ALICE.public)
    assert not pending.verify(answer_challenge(ALICE, first))


def test_answer_is_bound_to_the_context() -> None:
    challenge, pending = make_challenge(ALICE.public, context=b"wss://relay-a.example")
    assert not pending.verify(answer_challenge(ALICE, challenge, context=b"wss://relay-b"))
    challenge, pending = make_challenge(ALICE.public, context=b"wss://relay-a.example")
    assert pending.verify(answer_challenge(ALICE, challenge, context=b"wss://relay-a.example"))


@given(st.sampled_from(["nonce", "ephemeral_x25519", "kem_ciphertext"]), st.data())
def test_tampered_challenge_gives_an_answer_that_does_not_verify(
    field: str, data: st.DataObject
) -> None:
    challenge, pending = make_challenge(ALICE.public)
    value = bytearray(getattr(challenge, field))
    pos = data.draw(st.integers(0, len(value) - 1))
    value[pos] ^= 1 << data.draw(st.integers(0, 7))
    fields = {"nonce": challenge.nonce, "ephemeral_x25519": challenge.ephemeral_x25519,
              "kem_ciphertext": challenge.kem_ciphertext, field: bytes(value)}  # fmt: skip
    try:
        auth = answer_challenge(ALICE, Challenge(**fields))
    except HandshakeError:
        return  # the flip produced an invalid point: refused outright
    assert not pending.verify(auth)


@given(low_order_x25519_points())
def test_low_order_ephemeral_is_a_handshake_error(point: bytes) -> None:
    challenge, _ = make_challenge(ALICE.public)
    bad = Challenge(challenge.nonce, point, challenge.kem_ciphertext)
    with pytest.raises(HandshakeError):
        answer_challenge(ALICE, bad)


def test_answer_refuses_something_that_is_not_a_challenge() -> None:
    with pytest.raises(HandshakeError):
        answer_challenge(ALICE, b"\x00" * 1152)  # type: ignore[arg-type]


def test_verify_of_something_that_is_not_an_auth_is_false() -> None:
    _, pending = make_challenge(ALICE.public)
    assert pending.verify(b"\x00" * 32) is False  # type: ignore[arg-type]


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return a == b

    monkeypatch.setattr(hmac, "compare_digest", spy)
    challenge, pending = make_challenge(ALICE.public)
    auth = answer_challenge(ALICE, challenge)
    assert pending.verify(auth)
    assert calls == [(calls[0][0], auth.mac)]


def test_pending_auth_repr_hides_the_expected_answer() -> None:
    challenge, pending = make_challenge(ALICE.public)
    mac = answer_challenge(ALICE, challenge).mac
    assert mac.hex()[:12] not in repr(pending) and repr(mac)[2:14] not in repr(pending)
    assert isinstance(pending, PendingAuth) and ALICE.peer_id.short() in repr(pending)


def test_make_challenge_uses_the_injected_randomness_for_the_nonce() -> None:
    challenge, _ = make_challenge(ALICE.public, random=lambda n: b"\x5a" * n)
    assert challenge.nonce == b"\x5a" * 32


# --- a peer verifies the relay ---------------------------------------------------------------


def test_relay_holding_its_keys_proves_its_identity() -> None:
    challenge, pending = challenge_relay(RELAY.public)
    proof = prove_relay(RELAY, challenge)
    assert isinstance(proof, RelayProof) and len(proof.mac) == RELAY_AUTH_MAC_BYTES
    assert pending.peer_id == RELAY.peer_id
    assert pending.verify(proof)


def test_a_relay_with_another_identity_cannot_prove_this_one() -> None:
    # A stranger on the relay's address presents the real relay's (public) keys.
    challenge, pending = challenge_relay(RELAY.public)
    assert not pending.verify(prove_relay(OTHER_RELAY, challenge))


def test_a_proof_replayed_from_another_connection_fails() -> None:
    # A man in the middle recorded the relay's proof for an earlier challenge.
    earlier, _ = challenge_relay(RELAY.public)
    recorded = prove_relay(RELAY, earlier)
    _, pending = challenge_relay(RELAY.public)
    assert not pending.verify(recorded)


def test_a_proof_answers_only_the_challenge_it_was_made_for() -> None:
    # Another relay's proof of a challenge made out to it does not verify for this relay.
    theirs, _ = challenge_relay(OTHER_RELAY.public)
    _, pending = challenge_relay(RELAY.public)
    assert not pending.verify(prove_relay(OTHER_RELAY, theirs))


@pytest.mark.parametrize("known", ["x25519", "mlkem"])
def test_relay_proof_needs_both_static_secrets(known: str) -> None:
    x = RELAY.x25519_secret if known == "x25519" else MALLORY.x25519_secret
    kem = RELAY.kem_secret if known == "mlkem" else MALLORY.kem_secret
    half = Identity(x25519_secret=x, kem_secret=kem, public=RELAY.public)
    challenge, pending = challenge_relay(RELAY.public)
    assert not pending.verify(prove_relay(half, challenge))


def test_proofs_and_peer_answers_do_not_stand_for_each_other() -> None:
    # The same key holder answering the same values in the two directions gives two MACs:
    # the transcript contexts differ, so a reflected answer is useless either way.
    challenge, pending = make_challenge(RELAY.public)
    as_relay = RelayChallenge(challenge.nonce, challenge.ephemeral_x25519, challenge.kem_ciphertext)
    assert not pending.verify(RelayProof(prove_relay(RELAY, as_relay).mac))
    relay_challenge, relay_pending = challenge_relay(RELAY.public)
    as_peer = Challenge(
        relay_challenge.nonce, relay_challenge.ephemeral_x25519, relay_challenge.kem_ciphertext
    )
    assert not relay_pending.verify(RelayProof(answer_challenge(RELAY, as_peer).mac))


@given(st.sampled_from(["nonce", "ephemeral_x25519", "kem_ciphertext"]), st.data())
def test_a_tampered_relay_challenge_gives_a_proof_that_does_not_verify(
    field: str, data: st.DataObject
) -> None:
    # Transcript binding: every bit of the challenge is covered by the proof.
    challenge, pending = challenge_relay(RELAY.public)
    value = bytearray(getattr(challenge, field))
    pos = data.draw(st.integers(0, len(value) - 1))
    value[pos] ^= 1 << data.draw(st.integers(0, 7))
    fields = {"nonce": challenge.nonce, "ephemeral_x25519": challenge.ephemeral_x25519,
              "kem_ciphertext": challenge.kem_ciphertext, field: bytes(value)}  # fmt: skip
    try:
        proof = prove_relay(RELAY, RelayChallenge(**fields))
    except HandshakeError:
        return  # an invalid point: refused outright
    assert not pending.verify(proof)


@given(st.binary(min_size=32, max_size=32))
def test_no_guessed_proof_verifies(mac: bytes) -> None:
    _, pending = challenge_relay(RELAY.public)
    assert not pending.verify(RelayProof(mac))


def test_a_relay_proof_admits_one_attempt_only() -> None:
    challenge, pending = challenge_relay(RELAY.public)
    proof = prove_relay(RELAY, challenge)
    assert pending.verify(RelayProof(bytes(32))) is False
    assert pending.verify(proof) is False


@given(low_order_x25519_points())
def test_low_order_ephemeral_in_a_relay_challenge_is_a_handshake_error(point: bytes) -> None:
    challenge, _ = challenge_relay(RELAY.public)
    with pytest.raises(HandshakeError):
        prove_relay(RELAY, RelayChallenge(challenge.nonce, point, challenge.kem_ciphertext))


def test_prove_relay_refuses_a_peer_challenge() -> None:
    challenge, _ = make_challenge(RELAY.public)
    with pytest.raises(HandshakeError):
        prove_relay(RELAY, challenge)  # type: ignore[arg-type]


def test_challenge_relay_uses_the_injected_randomness_for_the_nonce() -> None:
    challenge, _ = challenge_relay(RELAY.public, random=lambda n: b"\x5a" * n)
    assert challenge.nonce == b"\x5a" * 32


# --- row 20: cross-protocol key reuse -------------------------------------------------------


def test_labels_are_distinct_and_none_is_a_prefix_of_another() -> None:
    labels = list(PROTOCOL_LABELS.values())
    assert len(set(labels)) == len(labels)
    for a, b in itertools.permutations(labels, 2):
        assert not b.startswith(a), (a, b)


def test_relay_auth_answer_built_from_a_handshake_does_not_verify_as_a_handshake_mac() -> None:
    # A malicious relay turns Alice's msg1 to Bob into a "challenge" for Bob: Bob's answer is
    # keyed by the same es and ss_R secrets as msg1, yet is useless inside the handshake.
    initiator = Initiator(ALICE, BOB.public)
    msg1 = initiator.start(0.0)
    m1 = decode_handshake_init_untrusted(msg1)
    challenge = Challenge(b"\x00" * 32, m1.ephemeral_x25519, m1.static_ciphertext)
    answer = answer_challenge(BOB, challenge).mac
    responder = Responder(BOB, {ALICE.peer_id: ALICE.public}.get)
    msg2 = responder.respond(msg1, 0.0)
    for cut in (answer[:16], answer[16:]):
        assert cut not in msg1 and cut not in msg2
        forged = msg2[:2220] + cut + msg2[2236:]  # as msg2's confirmation tag
        with pytest.raises(HandshakeError):
            initiator.receive_response(with_mac1(forged, ALICE.public), 0.0)
        forged1 = msg1[:2344] + cut + msg1[2360:]  # as msg1's identity tag
        with pytest.raises(HandshakeError):
            responder.respond(with_mac1(forged1, BOB.public), 0.0)
    initiator.receive_response(msg2, 0.0)  # the genuine msg2 still completes


def test_handshake_tag_does_not_verify_as_a_relay_auth_answer() -> None:
    _, pending = make_challenge(BOB.public)
    msg1 = Initiator(ALICE, BOB.public).start(0.0)
    assert not pending.verify(Auth(mac=msg1[2344:2360] + msg1[2360:2376]))


def test_public_api_is_pinned() -> None:
    from meshcore.proto import relayauth

    assert sorted(relayauth.__all__) == [
        "LABEL_RELAY_AUTH_KEY", "LABEL_RELAY_AUTH_MAC", "LABEL_RELAY_PROOF", "PendingAuth",
        "RELAY_AUTH_PROTOCOL", "answer_challenge", "challenge_relay", "make_challenge",
        "prove_relay",
    ]  # fmt: skip
    assert all(hasattr(relayauth, name) for name in relayauth.__all__)
