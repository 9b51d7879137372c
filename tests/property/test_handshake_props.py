"""Properties of the handshake for all inputs: tampering always fails, junk is always refused.

Rows 1 and 16 of docs/crypto-spec.md §4. The attacker may recompute mac1 (its key is public).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from meshcore.errors import DecodeError, HandshakeError
from meshcore.proto.constants import MAC_BYTES
from meshcore.proto.handshake import (
    HandshakeConfirm,
    HandshakeInit,
    HandshakeResponse,
    HandshakeResult,
    Initiator,
    Responder,
    decode_handshake_confirm_untrusted,
    decode_handshake_init_untrusted,
    decode_handshake_response_untrusted,
)
from meshcore.proto.identity import Identity
from meshcore.testing._handshake_strategies import (
    handshake_confirms,
    handshake_inits,
    handshake_messages,
    handshake_responses,
    mac1_offset,
    mutated_handshake_encodings,
    with_mac1,
)

ALICE = Identity.generate()
BOB = Identity.generate()
RECEIVER = {1: BOB.public, 2: ALICE.public, 3: BOB.public}
Message = HandshakeInit | HandshakeResponse | HandshakeConfirm
DECODERS: dict[int, Callable[[bytes], Message]] = {
    1: decode_handshake_init_untrusted,
    2: decode_handshake_response_untrusted,
    3: decode_handshake_confirm_untrusted,
}


def _parties() -> tuple[Initiator, Responder]:
    return Initiator(ALICE, BOB.public), Responder(BOB, {ALICE.peer_id: ALICE.public}.get)


class _Undone(Exception):
    """The flip was in mac1 and recomputing mac1 undid it: not a tampering at all."""


def _tamper(msg: bytes, pos: int, bit: int, remac: bool) -> tuple[bytes, bool]:
    """Flip one bit (recomputing mac1 if asked); also say whether it landed in mac2."""
    kind = msg[0]
    pos %= len(msg)
    mac1_at = mac1_offset(msg)
    if remac and mac1_at <= pos < mac1_at + MAC_BYTES:
        raise _Undone
    in_mac2 = kind != 3 and pos >= mac1_at + MAC_BYTES
    out = msg[:pos] + bytes([msg[pos] ^ (1 << bit)]) + msg[pos + 1 :]
    if remac:
        out = with_mac1(out, RECEIVER[kind], msg_type=kind)
    return out, in_mac2


@given(
    which=st.sampled_from([1, 2, 3]),
    pos=st.one_of(st.integers(0, 11), st.integers(0, 1 << 16)),  # headers get extra attention
    bit=st.integers(0, 7),
    remac=st.booleans(),
    payload=st.binary(max_size=64),
)
def test_flipping_any_bit_of_any_message_fails_the_handshake(
    which: int, pos: int, bit: int, remac: bool, payload: bytes
) -> None:
    # Row 1: every header byte is in h or AD; the only harmless flip is in the ignored mac2.
    init, resp = _parties()
    in_mac2 = False
    try:
        msg1 = init.start(0.0)
        if which == 1:
            msg1, in_mac2 = _tamper(msg1, pos, bit, remac)
        msg2 = resp.respond(msg1, 0.0)
        if which == 2:
            msg2, in_mac2 = _tamper(msg2, pos, bit, remac)
        msg3, mine = init.receive_response(msg2, 0.0, payload)
        if which == 3:
            msg3, in_mac2 = _tamper(msg3, pos, bit, remac)
        theirs = resp.confirm(msg3, 0.0)
    except _Undone:
        assume(False)
        return
    except HandshakeError:
        assert not in_mac2, "a flip in the ignored mac2 field must not break the handshake"
        return
    assert in_mac2, f"tampered msg{which} (byte {pos % 4096}, bit {bit}) was accepted"
    assert mine.send_key == theirs.receive_key and mine.receive_key == theirs.send_key
    assert theirs.payload == payload


def _run_with_tamper(which: int, pos: int, bit: int) -> None:
    init, resp = _parties()
    msg1 = init.start(0.0)
    if which == 1:
        msg1, _ = _tamper(msg1, pos, bit, remac=True)
    msg2 = resp.respond(msg1, 0.0)
    if which == 2:
        msg2, _ = _tamper(msg2, pos, bit, remac=True)
    msg3, _ = init.receive_response(msg2, 0.0)
    if which == 3:
        msg3, _ = _tamper(msg3, pos, bit, remac=True)
    resp.confirm(msg3, 0.0)


@pytest.mark.parametrize(
    ("which", "pos"), [(1, p) for p in range(8)] + [(w, p) for w in (2, 3) for p in range(12)]
)
def test_flipping_any_header_bit_fails_the_handshake(which: int, pos: int) -> None:
    # Row 1, exhaustively over the headers (type, version, reserved, indices), mac1 recomputed.
    for bit in range(8):
        with pytest.raises(HandshakeError):
            _run_with_tamper(which, pos, bit)


@given(st.binary(max_size=5000))
def test_junk_into_every_entry_point_raises_only_handshake_error(data: bytes) -> None:
    # Row 16: no other exception, and no state growth on the long-lived responder.
    init, resp = _parties()
    init.start(0.0)
    before = (resp._biscuit_counter, dict(resp._biscuit_used), list(resp._biscuit_keys))
    for call in (resp.respond, resp.confirm, init.receive_response):
        with pytest.raises(HandshakeError):
            call(data, 0.0)
    assert (resp._biscuit_counter, dict(resp._biscuit_used), list(resp._biscuit_keys)) == before


@given(st.data())
def test_near_valid_mutations_into_every_entry_point_raise_only_handshake_error(
    data: st.DataObject,
) -> None:
    init, resp = _parties()
    msg1 = init.start(0.0)
    msg2 = resp.respond(msg1, 0.0)
    genuine = {1: msg1, 2: msg2}
    which = data.draw(st.sampled_from([1, 2]))
    bad = data.draw(mutated_handshake_encodings(genuine[which]))
    if data.draw(st.booleans()) and len(bad) > MAC_BYTES:
        try:
            bad = with_mac1(bad, RECEIVER[which], msg_type=which)
        except ValueError:
            pass
    original = genuine[which]
    only_mac2 = len(bad) == len(original) and bad[:-MAC_BYTES] == original[:-MAC_BYTES]
    assume(not only_mac2)  # mac2 is carried but ignored (docs/crypto.md)
    for call in (resp.respond, resp.confirm):
        with pytest.raises(HandshakeError):
            call(bad, 0.0)
    try:
        msg3, _ = init.receive_response(bad, 0.0)
    except HandshakeError:
        pass
    else:
        # Only a damaged biscuit passes the initiator (it is the responder's opaque state);
        # the responder then refuses the msg3 that carries it.
        assert which == 2 and bad[:2236] == msg2[:2236]
        with pytest.raises(HandshakeError):
            resp.confirm(msg3, 0.0)
        return
    msg3, _ = init.receive_response(msg2, 0.0)  # the genuine exchange still completes
    resp.confirm(msg3, 0.0)


@given(st.binary(max_size=5000))
def test_decoders_raise_only_decode_error_and_are_canonical(data: bytes) -> None:
    for decode in DECODERS.values():
        try:
            message = decode(data)
        except DecodeError:
            continue
        assert message.encode() == data


@given(handshake_messages())
def test_valid_messages_round_trip(
    message: HandshakeInit | HandshakeResponse | HandshakeConfirm,
) -> None:
    data = message.encode()
    assert DECODERS[data[0]](data) == message


@given(st.one_of(handshake_inits(), handshake_responses(), handshake_confirms(64)), st.data())
def test_mutated_encodings_decode_to_an_error_or_a_different_message(
    message: HandshakeInit | HandshakeResponse | HandshakeConfirm, data: st.DataObject
) -> None:
    original = message.encode()
    bad = data.draw(mutated_handshake_encodings(original))
    assert bad != original
    try:
        decoded = DECODERS[original[0]](bad)
    except DecodeError:
        return
    assert decoded != message and decoded.encode() == bad


@given(order=st.permutations([0, 0, 0, 0, 1, 1, 1, 1]), same_direction=st.booleans())
def test_interleaved_handshakes_never_mix(order: list[int], same_direction: bool) -> None:
    # Row 18: two handshakes in flight (A->B twice, or A->B and B->A), their four steps
    # interleaved in every possible way. Each one that completes has its own, matching keys;
    # the only refusal is an older msg3 from a peer whose newer biscuit was already accepted.
    bob_side = Responder(BOB, {ALICE.peer_id: ALICE.public}.get)
    alice_side = Responder(ALICE, {BOB.peer_id: BOB.public}.get)
    runs = [
        (Initiator(ALICE, BOB.public), bob_side),
        (Initiator(ALICE, BOB.public), bob_side)
        if same_direction
        else (Initiator(BOB, ALICE.public), alice_side),
    ]
    wire: list[bytes] = [b"", b""]
    step = [0, 0]
    clock = iter(range(100))
    responded: list[int] = [0, 0]
    confirmed: list[int | None] = [None, None]
    mine: list[HandshakeResult | None] = [None, None]
    theirs: list[HandshakeResult | None] = [None, None]
    for k in order:
        init, resp = runs[k]
        t = next(clock)
        if step[k] == 0:
            wire[k] = init.start(0.0)
        elif step[k] == 1:
            wire[k] = resp.respond(wire[k], 0.0)
            responded[k] = t
        elif step[k] == 2:
            wire[k], mine[k] = init.receive_response(wire[k], 0.0)
        else:
            other = 1 - k
            older = (
                same_direction and responded[other] > responded[k] and confirmed[other] is not None
            )
            if older:
                with pytest.raises(HandshakeError):
                    resp.confirm(wire[k], 0.0)
            else:
                theirs[k] = resp.confirm(wire[k], 0.0)
                confirmed[k] = t
        step[k] += 1
    keys = set()
    for k in (0, 1):
        m, r = mine[k], theirs[k]
        assert m is not None
        if r is not None:
            assert m.send_key == r.receive_key and m.receive_key == r.send_key
        keys |= {m.send_key, m.receive_key}
    assert len(keys) == 4
    assert any(r is not None for r in theirs)  # the newest handshake always completes
