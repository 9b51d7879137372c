"""Proofs of identity on the relay's control connection (docs/crypto-spec.md §3.11), sans-IO.

The relay encapsulates to the connecting peer's static ML-KEM key and runs X25519 against its
static X25519 key; only the holder of both secret keys can answer with the right MAC, so
nobody can register under someone else's peer id. A peer that knows a relay's id puts the same
challenge to the relay the other way round (`challenge_relay` / `prove_relay`), under its own
transcript context, so that neither answer stands for the other. The labels differ from the
handshake's, so an answer is useless as any handshake value and vice versa (row 20).
docs/crypto.md has the exact bytes.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections.abc import Callable
from typing import Final

from meshcore.errors import HandshakeError
from meshcore.proto.constants import RELAY_AUTH_MAC_BYTES, RELAY_NONCE_BYTES
from meshcore.proto.identity import Identity, PeerId, PublicBundle
from meshcore.proto.primitives import DEFAULT_PRIMITIVES, Primitives
from meshcore.proto.symmetric import hash_sha256, hkdf_expand, hkdf_extract
from meshcore.proto.wire import Auth, Challenge, RelayChallenge, RelayProof

__all__ = [
    "LABEL_RELAY_AUTH_KEY",
    "LABEL_RELAY_AUTH_MAC",
    "LABEL_RELAY_PROOF",
    "RELAY_AUTH_PROTOCOL",
    "PendingAuth",
    "answer_challenge",
    "challenge_relay",
    "make_challenge",
    "prove_relay",
]

RELAY_AUTH_PROTOCOL: Final = b"meshcore/1 relay-auth X25519+MLKEM768 HMAC-SHA256"
"""Starts the relay-auth transcript hash; never used by the handshake."""
LABEL_RELAY_AUTH_KEY: Final = b"meshcore/1 relay-auth key"
"""HKDF-Expand info of the MAC key (from ss_kem ‖ dh, salted with the transcript hash)."""
LABEL_RELAY_AUTH_MAC: Final = b"meshcore/1 relay-auth mac"
"""Prefix of the MACed message: label ‖ nonce ‖ transcript hash."""
LABEL_RELAY_PROOF: Final = b"meshcore/1 relay-auth relay proof"
"""The transcript context of a relay proving its identity to a peer; a peer's own answer has
an empty context, so a peer's Auth never verifies as a RelayProof, nor the reverse."""
_MAX_CONTEXT_BYTES: Final = 0xFFFF


def _transcript(
    bundle: PublicBundle, nonce: bytes, ephemeral: bytes, ciphertext: bytes, context: bytes
) -> bytes:
    if len(context) > _MAX_CONTEXT_BYTES:
        raise HandshakeError("relay-auth context is limited to 65535 bytes")
    return hash_sha256(
        RELAY_AUTH_PROTOCOL
        + struct.pack("<H", len(context))
        + context
        + bundle.x25519_public
        + bundle.kem_public
        + nonce
        + ephemeral
        + ciphertext
    )


def _answer_mac(kem_secret: bytes, dh: bytes, nonce: bytes, transcript: bytes) -> bytes:
    # ML-KEM first, then X25519, as in TLS X25519MLKEM768; both needed to derive the key.
    key = hkdf_expand(hkdf_extract(transcript, kem_secret + dh), LABEL_RELAY_AUTH_KEY, 32)
    mac = hmac.digest(key, LABEL_RELAY_AUTH_MAC + nonce + transcript, "sha256")
    return mac[:RELAY_AUTH_MAC_BYTES]


class PendingAuth:
    """The relay's side of one challenge: the peer id claimed, and the answer it expects.

    Single use: the first `verify()` consumes it, so one challenge admits one attempt.
    """

    __slots__ = ("_expected", "bundle")

    def __init__(self, bundle: PublicBundle, expected: bytes) -> None:
        self.bundle = bundle
        self._expected: bytes | None = expected

    @property
    def peer_id(self) -> PeerId:
        """The peer id being proven."""
        return self.bundle.peer_id

    def __repr__(self) -> str:
        state = "pending" if self._expected is not None else "used"
        return f"PendingAuth(peer_id={self.peer_id.short()}…, {state})"

    def verify(self, answer: Auth | RelayProof) -> bool:
        """True if `answer` proves possession of both secret keys (constant-time comparison).

        A challenge made by `make_challenge` is answered by an `Auth`, one made by
        `challenge_relay` by a `RelayProof`; any other answer is False.
        """
        expected, self._expected = self._expected, None
        if expected is None or not isinstance(answer, Auth | RelayProof):
            return False
        return hmac.compare_digest(expected, answer.mac)


def make_challenge(
    bundle: PublicBundle,
    *,
    primitives: Primitives | None = None,
    random: Callable[[int], bytes] = os.urandom,
    context: bytes = b"",
) -> tuple[Challenge, PendingAuth]:
    """Challenge the holder of `bundle` (~0.2 ms: one encapsulation, one X25519).

    `context` binds the answer to something both sides know, e.g. the relay's URL, so that an
    answer cannot be forwarded to another relay; it defaults to empty.
    """
    nonce, ephemeral_public, ciphertext, pending = _challenge(
        bundle, primitives or DEFAULT_PRIMITIVES, random, context
    )
    challenge = Challenge(nonce=nonce, ephemeral_x25519=ephemeral_public, kem_ciphertext=ciphertext)
    return challenge, pending


def _challenge(
    bundle: PublicBundle, p: Primitives, random: Callable[[int], bytes], context: bytes
) -> tuple[bytes, bytes, bytes, PendingAuth]:
    nonce = random(RELAY_NONCE_BYTES)
    ephemeral = p.x25519_keypair()
    dh = p.x25519(ephemeral.secret, bundle.x25519_public)
    ephemeral_public = ephemeral.public
    del ephemeral  # the ephemeral secret is not needed again
    ciphertext, kem_secret = p.kem_encaps(bundle.kem_public)
    transcript = _transcript(bundle, nonce, ephemeral_public, ciphertext, context)
    pending = PendingAuth(bundle, _answer_mac(kem_secret, dh, nonce, transcript))
    return nonce, ephemeral_public, ciphertext, pending


def answer_challenge(
    identity: Identity,
    challenge: Challenge,
    *,
    primitives: Primitives | None = None,
    context: bytes = b"",
) -> Auth:
    """Prove to the relay that we hold `identity`'s secret keys.

    Raises:
        HandshakeError: the challenge is malformed (e.g. a small-order X25519 point).
    """
    if not isinstance(challenge, Challenge):
        raise HandshakeError()
    return Auth(mac=_answer(identity, challenge, primitives or DEFAULT_PRIMITIVES, context))


def _answer(
    identity: Identity, challenge: Challenge | RelayChallenge, p: Primitives, context: bytes
) -> bytes:
    dh = p.x25519(identity.x25519_secret, challenge.ephemeral_x25519)
    kem_secret = p.kem_decaps(identity.kem_secret, challenge.kem_ciphertext)
    transcript = _transcript(
        identity.public,
        challenge.nonce,
        challenge.ephemeral_x25519,
        challenge.kem_ciphertext,
        context,
    )
    return _answer_mac(kem_secret, dh, challenge.nonce, transcript)


# --- the other way round: a peer checks the relay it dialled ---------------------------------


def challenge_relay(
    bundle: PublicBundle,
    *,
    primitives: Primitives | None = None,
    random: Callable[[int], bytes] = os.urandom,
) -> tuple[RelayChallenge, PendingAuth]:
    """Challenge a relay that presented `bundle` (its RelayIdentity) to prove it holds the
    secret keys (~0.2 ms: one encapsulation, one X25519). The caller checks first that
    `bundle` hashes to the relay id it expects; the answer is a `RelayProof`."""
    nonce, ephemeral_public, ciphertext, pending = _challenge(
        bundle, primitives or DEFAULT_PRIMITIVES, random, LABEL_RELAY_PROOF
    )
    return RelayChallenge(nonce, ephemeral_public, ciphertext), pending


def prove_relay(
    identity: Identity, challenge: RelayChallenge, *, primitives: Primitives | None = None
) -> RelayProof:
    """The relay's answer to a peer's `RelayChallenge` (~0.1 ms: one decapsulation, one X25519).

    Raises:
        HandshakeError: the challenge is malformed (e.g. a small-order X25519 point).
    """
    if not isinstance(challenge, RelayChallenge):
        raise HandshakeError()
    p = primitives or DEFAULT_PRIMITIVES
    return RelayProof(mac=_answer(identity, challenge, p, LABEL_RELAY_PROOF))
