"""The hybrid handshake (docs/crypto-spec.md §3.3) against the attacks on its secrets (§4):
impersonation needs both static secrets (row 6 and the hybrid property), invalid points and
keys are refused (row 10), and no session exists without both post-quantum secrets in ck
(row 12). The shared helpers and identities live in test_handshake."""

from __future__ import annotations

import ast
import inspect
import struct
from collections.abc import Callable, Iterator

import pytest
from hypothesis import given
from test_handshake import ALICE, BOB, CAROL, responder, three_messages

from meshcore.errors import HandshakeError
from meshcore.proto import handshake as handshake_module
from meshcore.proto.handshake import (
    LABEL_MSG3,
    Initiator,
    Responder,
    decode_handshake_init_untrusted,
    decode_handshake_response_untrusted,
    prologue,
)
from meshcore.proto.identity import PublicBundle
from meshcore.proto.primitives import DEFAULT_PRIMITIVES, KeyPair, Primitives
from meshcore.proto.symmetric import SymmetricState
from meshcore.testing._handshake_strategies import (
    low_order_x25519_points,
    non_canonical_mlkem_public_keys,
    with_mac1,
)

# --- rows 6 and the hybrid property: impersonation needs BOTH static secrets --------------


def _reckless_initiator(
    claimed: PublicBundle, x_secret: bytes, kem_secret: bytes, resp: Responder, target: PublicBundle
) -> bytes:
    """An attacker following the spec as `claimed`, ignoring its own failed checks.

    Returns the msg3 it manages to produce. With the right secrets it is an honest initiator,
    which is the control that keeps the negative tests meaningful.
    """
    p = DEFAULT_PRIMITIVES
    s = SymmetricState()
    s.mix_hash(prologue(b"", target))
    header = struct.pack("<BBHI", 1, 1, 0, 7)
    s.mix_hash(header)
    e = p.x25519_keypair()
    s.mix_hash(e.public)
    s.mix_key(p.x25519(e.secret, target.x25519_public))
    ek = p.kem_keypair()
    s.mix_hash(ek.public)
    ct, ss = p.kem_encaps(target.kem_public)
    s.mix_hash(ct)
    s.mix_key(ss)
    body = header + e.public + ek.public + ct + s.encrypt_and_hash(claimed.peer_id.digest)
    s.mix_hash(claimed.x25519_public + claimed.kem_public)
    m = decode_handshake_response_untrusted(resp.respond(with_mac1(body + bytes(32), target), 0.0))
    s.mix_hash(m.header())
    s.mix_hash(m.ephemeral_x25519)
    s.mix_key(p.x25519(e.secret, m.ephemeral_x25519))
    s.mix_key(p.x25519(x_secret, m.ephemeral_x25519))
    s.mix_hash(m.ephemeral_ciphertext)
    s.mix_key(p.kem_decaps(ek.secret, m.ephemeral_ciphertext))
    s.mix_hash(m.static_ciphertext)
    s.mix_key(p.kem_decaps(kem_secret, m.static_ciphertext))
    try:
        s.decrypt_and_hash(m.confirmation)
    except HandshakeError:
        s.mix_hash(m.confirmation)  # ignore the failure and carry on regardless
    header3 = struct.pack("<BBHII", 3, 1, 0, m.sender_index, 7)
    s.mix_hash(header3)
    s.mix_hash(m.biscuit)
    s.mix_key(LABEL_MSG3)
    return with_mac1(header3 + m.biscuit + s.encrypt_and_hash(b"") + bytes(16), target)


def test_reckless_initiator_with_the_real_secrets_is_accepted() -> None:
    resp = responder()
    msg3 = _reckless_initiator(
        ALICE.public, ALICE.x25519_secret, ALICE.kem_secret, resp, BOB.public
    )
    assert resp.confirm(msg3, 0.0).peer_id == ALICE.peer_id


def test_kci_attacker_holding_the_responders_secrets_cannot_impersonate_the_initiator() -> None:
    # Row 6: the attacker stole Bob's static keys and uses them as its best guesses.
    resp = responder()
    msg3 = _reckless_initiator(ALICE.public, BOB.x25519_secret, BOB.kem_secret, resp, BOB.public)
    with pytest.raises(HandshakeError):
        resp.confirm(msg3, 0.0)


@pytest.mark.parametrize("known", ["x25519", "mlkem"])
def test_initiator_impersonation_needs_both_static_secrets(known: str) -> None:
    resp = responder()
    x = ALICE.x25519_secret if known == "x25519" else CAROL.x25519_secret
    kem = ALICE.kem_secret if known == "mlkem" else CAROL.kem_secret
    msg3 = _reckless_initiator(ALICE.public, x, kem, resp, BOB.public)
    with pytest.raises(HandshakeError):
        resp.confirm(msg3, 0.0)


def _reckless_responder(msg1: bytes, me: PublicBundle, x_secret: bytes, kem_secret: bytes) -> bytes:
    """An attacker answering Alice's msg1 as `me`, ignoring its failed decryptions."""
    p = DEFAULT_PRIMITIVES
    m = decode_handshake_init_untrusted(msg1)
    s = SymmetricState()
    s.mix_hash(prologue(b"", me))
    s.mix_hash(m.header())
    s.mix_hash(m.ephemeral_x25519)
    s.mix_key(p.x25519(x_secret, m.ephemeral_x25519))
    s.mix_hash(m.ephemeral_kem)
    s.mix_hash(m.static_ciphertext)
    s.mix_key(p.kem_decaps(kem_secret, m.static_ciphertext))
    try:
        s.decrypt_and_hash(m.encrypted_identity)
    except HandshakeError:
        s.mix_hash(m.encrypted_identity)  # it knows who is calling anyway
    s.mix_hash(ALICE.public.x25519_public + ALICE.public.kem_public)
    header = struct.pack("<BBHII", 2, 1, 0, 9, m.sender_index)
    s.mix_hash(header)
    e = p.x25519_keypair()
    s.mix_hash(e.public)
    s.mix_key(p.x25519(e.secret, m.ephemeral_x25519))
    s.mix_key(p.x25519(e.secret, ALICE.public.x25519_public))
    ct_e, ss_e = p.kem_encaps(m.ephemeral_kem)
    s.mix_hash(ct_e)
    s.mix_key(ss_e)
    ct_i, ss_i = p.kem_encaps(ALICE.public.kem_public)
    s.mix_hash(ct_i)
    s.mix_key(ss_i)
    body = header + e.public + ct_e + ct_i + s.encrypt_and_hash(b"") + bytes(160)
    return with_mac1(body + bytes(32), ALICE.public)


def test_reckless_responder_with_the_real_secrets_is_accepted() -> None:
    init = Initiator(ALICE, BOB.public)
    msg2 = _reckless_responder(init.start(0.0), BOB.public, BOB.x25519_secret, BOB.kem_secret)
    init.receive_response(msg2, 0.0)


@pytest.mark.parametrize("known", ["none", "x25519", "mlkem", "initiator"])
def test_responder_impersonation_needs_both_static_secrets(known: str) -> None:
    # R is authenticated to I after msg2 only if the attacker holds S_R.x AND S_R.kem; holding
    # the initiator's own secrets (KCI in the other direction) does not help either.
    x = {"x25519": BOB.x25519_secret, "initiator": ALICE.x25519_secret}.get(known)
    kem = {"mlkem": BOB.kem_secret, "initiator": ALICE.kem_secret}.get(known)
    init = Initiator(ALICE, BOB.public)
    msg2 = _reckless_responder(
        init.start(0.0), BOB.public, x or CAROL.x25519_secret, kem or CAROL.kem_secret
    )
    with pytest.raises(HandshakeError):
        init.receive_response(msg2, 0.0)


# --- row 10: invalid points and keys --------------------------------------------------------


@given(low_order_x25519_points())
def test_low_order_ephemeral_in_msg1_is_a_handshake_error(point: bytes) -> None:
    msg1 = Initiator(ALICE, BOB.public).start(0.0)
    with pytest.raises(HandshakeError):
        responder().respond(with_mac1(msg1[:8] + point + msg1[40:], BOB.public), 0.0)


@given(low_order_x25519_points())
def test_low_order_ephemeral_in_msg2_is_a_handshake_error_and_changes_nothing(
    point: bytes,
) -> None:
    init, resp, _, msg2 = three_messages()
    with pytest.raises(HandshakeError):
        init.receive_response(with_mac1(msg2[:12] + point + msg2[44:], ALICE.public), 0.0)
    msg3, _ = init.receive_response(msg2, 0.0)
    resp.confirm(msg3, 0.0)


class _HostileEphemerals(Primitives):
    """A dishonest initiator's primitives: sends a given ephemeral public key."""

    def __init__(self, x_public: bytes | None = None, kem_public: bytes | None = None) -> None:
        self.x_public, self.kem_public = x_public, kem_public

    def kem_keypair(self) -> KeyPair:
        pair = super().kem_keypair()
        return KeyPair(self.kem_public, pair.secret) if self.kem_public else pair


@given(non_canonical_mlkem_public_keys(base=ALICE.public.kem_public))
def test_non_canonical_ephemeral_kem_key_is_a_handshake_error(kem_public: bytes) -> None:
    # The initiator is authentic (msg1 decrypts fine); only its ephemeral ML-KEM key is bad,
    # so the responder's encapsulation is what refuses it.
    init = Initiator(ALICE, BOB.public, primitives=_HostileEphemerals(kem_public=kem_public))
    with pytest.raises(HandshakeError):
        responder().respond(init.start(0.0), 0.0)


def test_library_errors_never_escape_as_other_exceptions() -> None:
    class Exploding(Primitives):
        def kem_decaps(self, secret: bytes, ciphertext: bytes) -> bytes:
            return super().kem_decaps(secret, ciphertext[:-1])  # wrong length inside

    with pytest.raises(HandshakeError):
        responder(primitives=Exploding()).respond(Initiator(ALICE, BOB.public).start(0.0), 0.0)


# --- row 12: no session without both PQ secrets in ck --------------------------------------


class _Recording(Primitives):
    def __init__(self) -> None:
        self.secrets: list[bytes] = []

    def x25519(self, secret: bytes, public: bytes) -> bytes:
        self.secrets.append(super().x25519(secret, public))
        return self.secrets[-1]

    def kem_encaps(self, public: bytes) -> tuple[bytes, bytes]:
        ct, ss = super().kem_encaps(public)
        self.secrets.append(ss)
        return ct, ss

    def kem_decaps(self, secret: bytes, ciphertext: bytes) -> bytes:
        self.secrets.append(super().kem_decaps(secret, ciphertext))
        return self.secrets[-1]


@pytest.fixture
def mixed_keys(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    log: list[bytes] = []
    original: Callable[[SymmetricState, bytes], None] = SymmetricState.mix_key

    def spy(self: SymmetricState, ikm: bytes) -> None:
        log.append(ikm)
        original(self, ikm)

    monkeypatch.setattr(SymmetricState, "mix_key", spy)
    yield log


def test_every_shared_secret_is_mixed_into_ck_in_order(mixed_keys: list[bytes]) -> None:
    # Row 12: es, ss_R, ee, se, ss_e, ss_I -- on both sides, nothing skipped.
    pi, pr = _Recording(), _Recording()
    init = Initiator(ALICE, BOB.public, primitives=pi)
    resp = responder(primitives=pr)
    msg1 = init.start(0.0)
    i_msg1 = list(mixed_keys)
    msg2 = resp.respond(msg1, 0.0)
    r_msg2 = mixed_keys[len(i_msg1) :]
    del mixed_keys[:]
    msg3, _ = init.receive_response(msg2, 0.0)
    i_msg3 = list(mixed_keys)
    del mixed_keys[:]
    resp.confirm(msg3, 0.0)
    es, ss_r, ee, se, ss_e, ss_i = pi.secrets
    assert i_msg1 == [es, ss_r]
    assert i_msg3 == [ee, se, ss_e, ss_i, LABEL_MSG3]
    assert r_msg2 == [es, ss_r, ee, se, ss_e, ss_i] == pr.secrets
    assert mixed_keys == [LABEL_MSG3]
    assert len(set(pi.secrets)) == 6


def test_only_the_two_completing_methods_split_or_build_a_result() -> None:
    # Row 12 (static half): no other code path in handshake.py can produce a session.
    tree = ast.parse(inspect.getsource(handshake_module))
    producers: set[str] = set()
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef):
            for node in ast.walk(func):
                if isinstance(node, ast.Call):
                    f = node.func
                    name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                    if name in ("split", "HandshakeResult"):
                        producers.add(func.name)
    assert producers == {"receive_response", "confirm"}
