"""The Noise-style symmetric state of the handshake (docs/crypto-spec.md §3.4) and its key schedule
(§3.5).

SHA-256 for `h`, HKDF-SHA256 chaining for `ck`, ChaCha20-Poly1305 with `h` as associated data.
Every label is a module constant; the known-answer tests pin them, so a silent change breaks
compatibility loudly.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Final

import attrs
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshcore.errors import HandshakeError
from meshcore.proto.constants import AEAD_TAG_BYTES, PROTOCOL_NAME

__all__ = [
    "HASH_BYTES",
    "LABEL_CK",
    "LABEL_EXPORTER",
    "LABEL_I2R",
    "LABEL_K",
    "LABEL_R2I",
    "LABEL_RESUME",
    "SessionSecrets",
    "SymmetricState",
    "aead_nonce",
    "export",
    "hash_sha256",
    "hkdf_expand",
    "hkdf_extract",
]

HASH_BYTES: Final = 32

# --- labels (pinned by tests/unit/test_handshake_kat.py) -----------------------------------
LABEL_CK: Final = b"ck"
"""HKDF-Expand info for the next chaining key in MixKey."""
LABEL_K: Final = b"k"
"""HKDF-Expand info for the next AEAD key in MixKey."""
LABEL_I2R: Final = b"meshcore/1 i2r"
"""Split: the initiator-to-responder transport key (info = label ‖ h)."""
LABEL_R2I: Final = b"meshcore/1 r2i"
"""Split: the responder-to-initiator transport key (info = label ‖ h)."""
LABEL_RESUME: Final = b"meshcore/1 resume"
"""Split: the resumption secret `rs` for SESSION_RESUME (§3.10)."""
LABEL_EXPORTER: Final = b"meshcore/1 exporter"
"""Split: the exporter secret, from which `export()` derives application keys and the SAS."""

_MAX_NONCE: Final = (1 << 64) - 1


def hash_sha256(data: bytes) -> bytes:
    """SHA-256 of `data`."""
    return hashlib.sha256(data).digest()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """HKDF-Extract (RFC 5869) with SHA-256: HMAC(salt, ikm)."""
    return hmac.digest(salt, ikm, "sha256")


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-Expand (RFC 5869) with SHA-256; `length` is 1 .. 8160 bytes."""
    if not 0 < length <= 255 * HASH_BYTES:
        raise ValueError(f"HKDF-Expand length must be 1..{255 * HASH_BYTES}, got {length}")
    out = b""
    block = b""
    counter = 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes((counter,)), "sha256")
        out += block
        counter += 1
    return out[:length]


def aead_nonce(counter: int) -> bytes:
    """The 96-bit RFC 8439 nonce 0^32 ‖ LE64(counter), as in WireGuard."""
    return struct.pack("<4xQ", counter)


def export(exporter_secret: bytes, label: bytes, context: bytes, length: int) -> bytes:
    """Derive `length` bytes for `label` and `context` from a session's exporter secret.

    Both `label` (≤ 255 bytes) and `context` (≤ 65535 bytes) are length-prefixed, so no two
    (label, context) pairs share an input.
    """
    if len(label) > 0xFF or len(context) > 0xFFFF:
        raise ValueError("exporter label must be ≤ 255 bytes and context ≤ 65535 bytes")
    info = bytes((len(label),)) + label + struct.pack("<H", len(context)) + context
    return hkdf_expand(exporter_secret, info, length)


@attrs.frozen
class SessionSecrets:
    """What Split produces: directional keys, resumption and exporter secrets, transcript hash."""

    i2r: bytes = attrs.field(repr=False)
    r2i: bytes = attrs.field(repr=False)
    resume_secret: bytes = attrs.field(repr=False)
    exporter_secret: bytes = attrs.field(repr=False)
    transcript_hash: bytes


class SymmetricState:
    """Noise's SymmetricState over SHA-256 / HKDF-SHA256 / ChaCha20-Poly1305.

    `h` absorbs every public value in order; `ck` absorbs every shared secret through
    `mix_key`, so the chain stays secret while any one input is (a dual-PRF combiner).
    Failed decryption raises `HandshakeError` and leaves the state unchanged.
    """

    __slots__ = ("_ck", "_h", "_k", "_n")

    def __init__(self, protocol_name: bytes = PROTOCOL_NAME) -> None:
        if len(protocol_name) <= HASH_BYTES:
            h = protocol_name.ljust(HASH_BYTES, b"\x00")
        else:
            h = hash_sha256(protocol_name)
        self._h = h
        self._ck = h
        self._k: bytes | None = None
        self._n = 0

    def __repr__(self) -> str:
        return f"SymmetricState(h={self._h.hex()[:16]}…, has_key={self._k is not None})"

    @classmethod
    def restore(cls, chaining_key: bytes, handshake_hash: bytes) -> SymmetricState:
        """Rebuild a state from `snapshot()` output; it has no AEAD key until `mix_key`."""
        if len(chaining_key) != HASH_BYTES or len(handshake_hash) != HASH_BYTES:
            raise HandshakeError()
        state = cls.__new__(cls)
        state._ck = chaining_key
        state._h = handshake_hash
        state._k = None
        state._n = 0
        return state

    def snapshot(self) -> tuple[bytes, bytes]:
        """(ck, h): what the responder seals into its biscuit to stay stateless."""
        return self._ck, self._h

    def copy(self) -> SymmetricState:
        """An independent copy, so a failed message can be discarded without side effects."""
        other = SymmetricState.__new__(SymmetricState)
        other._ck = self._ck
        other._h = self._h
        other._k = self._k
        other._n = self._n
        return other

    @property
    def handshake_hash(self) -> bytes:
        """The running transcript hash `h` (public; used as associated data)."""
        return self._h

    def mix_hash(self, data: bytes) -> None:
        """h = SHA-256(h ‖ data)."""
        self._h = hashlib.sha256(self._h + data).digest()

    def mix_key(self, ikm: bytes) -> None:
        """prk = HKDF-Extract(ck, ikm); ck = Expand(prk, "ck"); k = Expand(prk, "k"); n = 0."""
        prk = hmac.digest(self._ck, ikm, "sha256")
        self._ck = hmac.digest(prk, LABEL_CK + b"\x01", "sha256")
        self._k = hmac.digest(prk, LABEL_K + b"\x01", "sha256")
        self._n = 0

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        """c = AEAD(k, n++, plaintext, AD = h); h = H(h ‖ c); returns c."""
        if self._k is None or self._n >= _MAX_NONCE:
            raise HandshakeError()
        ciphertext = ChaCha20Poly1305(self._k).encrypt(aead_nonce(self._n), plaintext, self._h)
        self._n += 1
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        """Inverse of `encrypt_and_hash`; a failed tag raises HandshakeError, state untouched."""
        if self._k is None or self._n >= _MAX_NONCE or len(ciphertext) < AEAD_TAG_BYTES:
            raise HandshakeError()
        try:
            plaintext = ChaCha20Poly1305(self._k).decrypt(aead_nonce(self._n), ciphertext, self._h)
        except InvalidTag as exc:
            raise HandshakeError() from exc
        self._n += 1
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> SessionSecrets:
        """Derive the session's secrets from the final ck and h, then forget ck and k.

        Every output is HKDF-Expand(ck, label ‖ h): bound to the complete transcript.
        """
        ck, h = self._ck, self._h
        if not ck:
            raise HandshakeError()
        secrets = SessionSecrets(
            i2r=hkdf_expand(ck, LABEL_I2R + h, HASH_BYTES),
            r2i=hkdf_expand(ck, LABEL_R2I + h, HASH_BYTES),
            resume_secret=hkdf_expand(ck, LABEL_RESUME + h, HASH_BYTES),
            exporter_secret=hkdf_expand(ck, LABEL_EXPORTER + h, HASH_BYTES),
            transcript_hash=h,
        )
        # Best-effort erasure (bytes are immutable): drop the only references we hold.
        self._ck = b""
        self._k = None
        return secrets
