"""Hypothesis strategies for the handshake: valid messages, hostile keys, near-valid mutations.

Message strategies yield objects that construct and encode (random contents, so they never
complete a handshake); `mutated_handshake_encodings` breaks a real encoding in the ways an
attacker on the relay would. `with_mac1` is the attacker's tool: mac1 keys are public, so
tests recompute it to get past the cheap filter and reach the cryptographic checks.
"""

from __future__ import annotations

import hashlib
from typing import Final

from hypothesis import strategies as st

from meshcore.proto import handshake, identity, relayauth, symmetric
from meshcore.proto.constants import (
    AEAD_TAG_BYTES,
    MAC_BYTES,
    MLKEM768_CT_BYTES,
    MLKEM768_PK_BYTES,
    PEER_ID_BYTES,
    PROTOCOL_NAME,
    SUITES,
    X25519_KEY_BYTES,
)
from meshcore.proto.handshake import (
    BISCUIT_BYTES,
    HANDSHAKE_INIT_BYTES,
    HANDSHAKE_RESPONSE_BYTES,
    MAX_CONFIRM_PAYLOAD_BYTES,
    MSG_CONFIRM,
    MSG_INIT,
    MSG_RESPONSE,
    HandshakeConfirm,
    HandshakeInit,
    HandshakeResponse,
    mac1_key,
)
from meshcore.proto.identity import X25519_SMALL_ORDER_POINTS, PublicBundle

__all__ = [
    "LOW_ORDER_X25519_POINTS",
    "PROTOCOL_LABELS",
    "handshake_confirms",
    "handshake_inits",
    "handshake_messages",
    "handshake_responses",
    "low_order_x25519_points",
    "mac1_offset",
    "mutated_handshake_encodings",
    "non_canonical_mlkem_public_keys",
    "with_mac1",
]

LOW_ORDER_X25519_POINTS: Final[tuple[bytes, ...]] = tuple(
    alias
    for point in X25519_SMALL_ORDER_POINTS
    for alias in (point, point[:31] + bytes([point[31] | 0x80]))
)
"""The X25519 small-order points (libsodium's list) and their top-bit-set aliases."""

_MLKEM_Q: Final = 3329

PROTOCOL_LABELS: Final[dict[str, bytes]] = {
    "PROTOCOL_NAME": PROTOCOL_NAME,
    "SUITES": SUITES,
    "symmetric.LABEL_CK": symmetric.LABEL_CK,
    "symmetric.LABEL_K": symmetric.LABEL_K,
    "symmetric.LABEL_I2R": symmetric.LABEL_I2R,
    "symmetric.LABEL_R2I": symmetric.LABEL_R2I,
    "symmetric.LABEL_RESUME": symmetric.LABEL_RESUME,
    "symmetric.LABEL_EXPORTER": symmetric.LABEL_EXPORTER,
    "handshake.LABEL_MAC1": handshake.LABEL_MAC1,
    "handshake.LABEL_MSG3": handshake.LABEL_MSG3,
    "handshake.LABEL_SAS": handshake.LABEL_SAS,
    "identity.FINGERPRINT_LABEL": identity.FINGERPRINT_LABEL,
    "identity.PEER_ID_CHECKSUM_LABEL": identity.PEER_ID_CHECKSUM_LABEL,
    "identity.IDENTITY_FILE_LABEL": identity.IDENTITY_FILE_LABEL,
    "relayauth.RELAY_AUTH_PROTOCOL": relayauth.RELAY_AUTH_PROTOCOL,
    "relayauth.LABEL_RELAY_AUTH_KEY": relayauth.LABEL_RELAY_AUTH_KEY,
    "relayauth.LABEL_RELAY_AUTH_MAC": relayauth.LABEL_RELAY_AUTH_MAC,
    "relayauth.LABEL_RELAY_PROOF": relayauth.LABEL_RELAY_PROOF,
}
"""Every domain-separation string of the identity, handshake and relay-auth protocols."""


def _fixed(size: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=size, max_size=size)


_u32 = st.integers(0, 0xFFFF_FFFF)


def handshake_inits() -> st.SearchStrategy[HandshakeInit]:
    """Well-formed msg1 objects with random contents."""
    return st.builds(
        HandshakeInit,
        sender_index=_u32,
        ephemeral_x25519=_fixed(X25519_KEY_BYTES),
        ephemeral_kem=_fixed(MLKEM768_PK_BYTES),
        static_ciphertext=_fixed(MLKEM768_CT_BYTES),
        encrypted_identity=_fixed(PEER_ID_BYTES + AEAD_TAG_BYTES),
        mac1=_fixed(MAC_BYTES),
        mac2=_fixed(MAC_BYTES),
        reserved=st.integers(0, 0xFFFF),
    )


def handshake_responses() -> st.SearchStrategy[HandshakeResponse]:
    """Well-formed msg2 objects with random contents."""
    return st.builds(
        HandshakeResponse,
        sender_index=_u32,
        receiver_index=_u32,
        ephemeral_x25519=_fixed(X25519_KEY_BYTES),
        ephemeral_ciphertext=_fixed(MLKEM768_CT_BYTES),
        static_ciphertext=_fixed(MLKEM768_CT_BYTES),
        confirmation=_fixed(AEAD_TAG_BYTES),
        biscuit=_fixed(BISCUIT_BYTES),
        mac1=_fixed(MAC_BYTES),
        mac2=_fixed(MAC_BYTES),
        reserved=st.integers(0, 0xFFFF),
    )


def handshake_confirms(
    max_payload: int = MAX_CONFIRM_PAYLOAD_BYTES,
) -> st.SearchStrategy[HandshakeConfirm]:
    """Well-formed msg3 objects with random contents and payload ciphertexts."""
    return st.builds(
        HandshakeConfirm,
        receiver_index=_u32,
        sender_index=_u32,
        biscuit=_fixed(BISCUIT_BYTES),
        encrypted_payload=st.binary(
            min_size=AEAD_TAG_BYTES,
            max_size=AEAD_TAG_BYTES + min(max_payload, MAX_CONFIRM_PAYLOAD_BYTES),
        ),
        mac1=_fixed(MAC_BYTES),
        reserved=st.integers(0, 0xFFFF),
    )


def handshake_messages() -> st.SearchStrategy[HandshakeInit | HandshakeResponse | HandshakeConfirm]:
    """Any of the three handshake messages."""
    return st.one_of(handshake_inits(), handshake_responses(), handshake_confirms(256))


def low_order_x25519_points() -> st.SearchStrategy[bytes]:
    """X25519 public values that make every DH output zero (docs/crypto-spec.md §4, row 10)."""
    return st.sampled_from(LOW_ORDER_X25519_POINTS)


@st.composite
def non_canonical_mlkem_public_keys(draw: st.DrawFn, base: bytes | None = None) -> bytes:
    """ML-KEM-768 encapsulation keys failing the FIPS 203 modulus check (a coefficient ≥ q).

    `base` (a real key) keeps every other byte valid; otherwise the rest is random.
    """
    key = bytearray(base if base is not None else draw(_fixed(MLKEM768_PK_BYTES)))
    group = draw(st.integers(0, 383))  # 3 bytes hold two 12-bit coefficients
    high = draw(st.booleans())
    value = draw(st.integers(_MLKEM_Q, 0xFFF))
    i = 3 * group
    d = key[i] | (key[i + 1] << 8) | (key[i + 2] << 16)
    d = (d & 0x000FFF) | (value << 12) if high else (d & 0xFFF000) | value
    key[i : i + 3] = d.to_bytes(3, "little")
    return bytes(key)


def mac1_offset(message: bytes) -> int:
    """Where mac1 starts in an encoded handshake message (by its type byte)."""
    if message[0] == MSG_INIT:
        return HANDSHAKE_INIT_BYTES - 2 * MAC_BYTES
    if message[0] == MSG_RESPONSE:
        return HANDSHAKE_RESPONSE_BYTES - 2 * MAC_BYTES
    if message[0] == MSG_CONFIRM:
        return len(message) - MAC_BYTES
    raise ValueError(f"not a handshake message type: {message[0]}")


def with_mac1(message: bytes, receiver: PublicBundle, *, msg_type: int | None = None) -> bytes:
    """Recompute mac1 of `message` for `receiver`, as anyone can (the key is public).

    `msg_type` locates mac1 when the type byte itself was tampered with.
    """
    kind = message[0] if msg_type is None else msg_type
    offset = mac1_offset(bytes((kind,)) + message[1:])
    mac = hashlib.blake2b(message[:offset], key=mac1_key(receiver), digest_size=MAC_BYTES)
    return message[:offset] + mac.digest() + message[offset + MAC_BYTES :]


@st.composite
def mutated_handshake_encodings(draw: st.DrawFn, data: bytes) -> bytes:
    """A near-valid variant of the encoded handshake message `data`, never equal to it.

    Bit flips, byte overwrites, truncation, extension, and header rewrites (type, version,
    reserved) -- what a tampering relay can do.
    """
    kind = draw(st.sampled_from(["flip", "byte", "truncate", "extend", "type", "version", "rsv"]))
    out = bytearray(data)
    if kind == "flip":
        pos = draw(st.integers(0, len(out) - 1))
        out[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "byte":
        pos = draw(st.integers(0, len(out) - 1))
        out[pos] = draw(st.integers(0, 255).filter(lambda b: b != data[pos]))
    elif kind == "truncate":
        out = out[: draw(st.integers(0, len(out) - 1))]
    elif kind == "extend":
        out += draw(st.binary(min_size=1, max_size=64))
    elif kind == "type":
        out[0] = draw(st.integers(0, 255).filter(lambda b: b != data[0]))
    elif kind == "version":
        out[1] = draw(st.integers(0, 255).filter(lambda b: b != data[1]))
    else:
        out[2:4] = draw(st.binary(min_size=2, max_size=2).filter(lambda b: b != data[2:4]))
    return bytes(out)
