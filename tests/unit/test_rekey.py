"""Rekey: a full handshake inside a live session, fragmented into RekeyFragments (§3.8)."""

from __future__ import annotations

import pytest

from meshcore.errors import HandshakeError, UnknownReceiverIndex
from meshcore.proto.constants import (
    HANDSHAKE_TIMEOUT_S,
    MAX_REKEY_FRAGMENTS,
    OLD_KEY_RECEIVE_S,
    REKEY_FRAGMENT_BYTES,
)
from meshcore.proto.framing import KeyRing, peek_receiver_index
from meshcore.proto.handshake import Initiator, Responder
from meshcore.proto.identity import Identity
from meshcore.proto.inner import RekeyFragment, decode_inner_untrusted, encode_inner
from meshcore.proto.rekey import (
    REASSEMBLY_SLOTS,
    Reassembler,
    RekeyInitiator,
    RekeyOutput,
    RekeyResponder,
    fragment_message,
    install_result,
)

ALICE, BOB, CAROL = Identity.generate(), Identity.generate(), Identity.generate()
TRUSTED = {p.peer_id: p.public for p in (ALICE, BOB, CAROL)}


def established(now: float = 0.0) -> tuple[KeyRing, KeyRing, Responder]:
    """Alice (initiator) and Bob (responder) with a session from a full handshake."""
    responder = Responder(BOB, TRUSTED.get)
    initiator = Initiator(ALICE, BOB.public)
    msg2 = responder.respond(initiator.start(now), now)
    msg3, a_result = initiator.receive_response(msg2, now)
    b_result = responder.confirm(msg3, now)
    a, b = KeyRing(), KeyRing()
    install_result(a, a_result, now)
    install_result(b, b_result, now)
    return a, b, responder


def carry(sender: KeyRing, receiver: KeyRing, out: RekeyOutput, now: float) -> list[RekeyFragment]:
    """Send fragments through the session as sealed frames; return what the receiver gets."""
    received = []
    for fragment in out.fragments:
        frame = sender.seal(encode_inner(fragment), now)
        message = decode_inner_untrusted(receiver.open(frame, now))
        assert isinstance(message, RekeyFragment)
        received.append(message)
    return received


def rekey(a: KeyRing, b: KeyRing, responder: Responder, now: float) -> None:
    """Run one complete rekey from Alice through the session's frames."""
    machine = RekeyInitiator(ALICE, BOB.public)
    other = RekeyResponder(responder, ALICE.peer_id)
    outputs = [other.receive(f, now) for f in carry(a, b, machine.start(now), now)]
    msg2 = next(o for o in outputs if o.fragments)
    results = [machine.receive(f, now) for f in carry(b, a, msg2, now)]
    final = next(o for o in results if o.result is not None)
    assert final.result is not None
    confirmations = carry(a, b, final, now)  # msg3 sealed under the old keys first ...
    install_result(a, final.result, now)  # ... then Alice switches
    done = [other.receive(f, now) for f in confirmations]
    result = next(o.result for o in done if o.result is not None)
    install_result(b, result, now)


# --- fragmentation --------------------------------------------------------------------------


def test_handshake_message_splits_into_bounded_fragments_and_back() -> None:
    message = bytes(range(256)) * 10  # 2560 bytes
    fragments = fragment_message(7, message)
    assert len(fragments) == 3 <= MAX_REKEY_FRAGMENTS
    assert all(len(f.chunk) <= REKEY_FRAGMENT_BYTES for f in fragments)
    assert {(f.handshake_id, f.count) for f in fragments} == {(7, 3)}
    reassembler = Reassembler()
    assert [reassembler.add(f) for f in fragments] == [None, None, message]


def test_reassembly_accepts_reordered_and_duplicated_fragments() -> None:
    message = b"m" * (2 * REKEY_FRAGMENT_BYTES + 5)
    f0, f1, f2 = fragment_message(1, message)
    reassembler = Reassembler()
    assert reassembler.add(f2) is None
    assert reassembler.add(f2) is None
    assert reassembler.add(f0) is None
    assert reassembler.add(f1) == message


def test_single_fragment_message_passes_without_disturbing_one_in_progress() -> None:
    long, short = b"L" * (REKEY_FRAGMENT_BYTES + 1), b"short"
    first, second = fragment_message(1, long)
    reassembler = Reassembler()
    reassembler.add(first)
    assert reassembler.add(fragment_message(1, short)[0]) == short
    assert reassembler.add(second) == long


def test_fragments_of_two_attempts_may_interleave() -> None:
    old = fragment_message(1, b"o" * (REKEY_FRAGMENT_BYTES + 1))
    new = fragment_message(2, b"n" * (REKEY_FRAGMENT_BYTES + 1))
    reassembler = Reassembler()
    reassembler.add(old[0])
    reassembler.add(new[0])
    assert reassembler.add(old[1]) == b"o" * (REKEY_FRAGMENT_BYTES + 1)
    assert reassembler.add(new[1]) == b"n" * (REKEY_FRAGMENT_BYTES + 1)


def test_reassembly_holds_a_bounded_number_of_messages() -> None:
    messages = [fragment_message(i, bytes([i]) * (REKEY_FRAGMENT_BYTES + 1)) for i in range(5)]
    reassembler = Reassembler()
    for fragments in messages:
        reassembler.add(fragments[0])
    assert len(reassembler._partial) == REASSEMBLY_SLOTS
    assert reassembler.add(messages[0][1]) is None  # the oldest was dropped
    assert reassembler.add(messages[4][1]) == bytes([4]) * (REKEY_FRAGMENT_BYTES + 1)


def test_oversized_or_empty_message_cannot_be_fragmented() -> None:
    with pytest.raises(HandshakeError):
        fragment_message(1, b"")
    with pytest.raises(HandshakeError):
        fragment_message(1, bytes(MAX_REKEY_FRAGMENTS * REKEY_FRAGMENT_BYTES + 1))


# --- the rekey handshake --------------------------------------------------------------------


def test_rekey_installs_fresh_keys_on_both_sides() -> None:
    a, b, responder = established()
    old_index = peek_receiver_index(a.seal(b"", 1.0))
    rekey(a, b, responder, 2.0)
    frame = a.seal(b"after", 3.0)
    assert peek_receiver_index(frame) != old_index
    assert b.open(frame, 3.0) == b"after"
    assert a.open(b.seal(b"back", 3.0), 3.0) == b"back"
    assert not a.needs_rekey(3.0)


def test_frames_in_flight_under_old_keys_are_accepted_for_a_while() -> None:
    a, b, responder = established()
    late = [a.seal(bytes([i]), 1.0) for i in range(2)]
    rekey(a, b, responder, 2.0)
    assert b.open(late[0], 2.0 + OLD_KEY_RECEIVE_S - 0.01) == b"\x00"
    with pytest.raises(UnknownReceiverIndex):
        b.open(late[1], 2.0 + OLD_KEY_RECEIVE_S)


def test_rekey_initiator_ignores_fragments_of_other_handshakes() -> None:
    machine = RekeyInitiator(ALICE, BOB.public, handshake_id=5)
    machine.start(0.0)
    stray = RekeyFragment(handshake_id=6, index=0, count=1, chunk=b"\x02junk")
    out = machine.receive(stray, 0.0)  # junk with our id would raise HandshakeError
    assert (out.fragments, out.result, machine.done) == ((), None, False)


def test_rekey_that_authenticates_another_peer_is_refused() -> None:
    _, _, responder = established()
    carol = RekeyInitiator(CAROL, BOB.public, handshake_id=9)
    other = RekeyResponder(responder, ALICE.peer_id)  # the session is with Alice
    out = [other.receive(f, 0.0) for f in carol.start(0.0).fragments]
    msg2 = next(o for o in out if o.fragments)
    final = [carol.receive(f, 0.0) for f in msg2.fragments][-1]
    with pytest.raises(HandshakeError):
        for fragment in final.fragments:
            other.receive(fragment, 0.0)


def test_garbage_handshake_message_raises_handshake_error() -> None:
    _, _, responder = established()
    other = RekeyResponder(responder, ALICE.peer_id)
    with pytest.raises(HandshakeError):
        other.receive(RekeyFragment(handshake_id=1, index=0, count=1, chunk=b"\x07zz"), 0.0)
    with pytest.raises(HandshakeError):
        other.receive(RekeyFragment(handshake_id=1, index=0, count=1, chunk=b""), 0.0)


def test_rekey_attempt_expires_after_handshake_timeout() -> None:
    machine = RekeyInitiator(ALICE, BOB.public)
    assert not machine.expired(0.0)
    machine.start(10.0)
    assert not machine.expired(10.0 + HANDSHAKE_TIMEOUT_S)
    assert machine.expired(10.0 + HANDSHAKE_TIMEOUT_S + 0.001)
