"""X25519 (PyNaCl) and ML-KEM-768 (pqcrypto) behind one small, replaceable interface.

Every library error is mapped to the uniform `HandshakeError`, and tests inject a
deterministic `Primitives` for known-answer tests. There is deliberately no classical-only
fallback: importing this module without `pqcrypto` fails (docs/crypto-spec.md §4, pitfall 12).
"""

from __future__ import annotations

import hashlib
from typing import Final

import attrs

from meshcore.errors import CryptoLibraryMissing, HandshakeError
from meshcore.proto.constants import (
    MLKEM768_CT_BYTES,
    MLKEM768_PK_BYTES,
    MLKEM768_SK_BYTES,
    MLKEM768_SS_BYTES,
    X25519_KEY_BYTES,
)

__all__ = [
    "DEFAULT_PRIMITIVES",
    "KeyPair",
    "Primitives",
    "mlkem_public_key_is_canonical",
    "mlkem_secret_key_public_part",
]


try:
    from pqcrypto.kem import ml_kem_768 as _mlkem
except Exception as exc:  # ImportError, or a broken native extension
    raise CryptoLibraryMissing(
        "pqcrypto is required for the post-quantum (ML-KEM-768) handshake and meshcore never "
        "falls back to classical-only keys; install it with `pip install pqcrypto` "
        f"(import failed: {exc!r})"
    ) from exc

try:
    from nacl import bindings as _nacl
except Exception as exc:
    raise CryptoLibraryMissing(
        f"PyNaCl is required for X25519; install it with `pip install pynacl` "
        f"(import failed: {exc!r})"
    ) from exc


@attrs.frozen
class KeyPair:
    """A public key and its secret key; the secret never appears in repr."""

    public: bytes
    secret: bytes = attrs.field(repr=False)


_MLKEM_Q: Final = 3329
_MLKEM_POLY_BYTES: Final = 384  # 256 coefficients x 12 bits
_MLKEM_K: Final = 3
_MLKEM_T_BYTES: Final = _MLKEM_K * _MLKEM_POLY_BYTES  # 1152; then the 32-byte seed rho
_MLKEM_DK_PKE_BYTES: Final = _MLKEM_K * _MLKEM_POLY_BYTES  # 1152


def mlkem_public_key_is_canonical(public: bytes) -> bool:
    """True if `public` is a well-formed ML-KEM-768 encapsulation key (FIPS 203 §7.2 check).

    The check is the modulus test: every 12-bit coefficient of the encoded vector t must be
    below q = 3329. `pqcrypto`'s `encaps` performs the same test; this copy lets bundles be
    validated without spending an encapsulation.
    """
    if len(public) != MLKEM768_PK_BYTES:
        return False
    # Each 3 bytes hold two little-endian 12-bit coefficients.
    for i in range(0, _MLKEM_T_BYTES, 3):
        d = public[i] | (public[i + 1] << 8) | (public[i + 2] << 16)
        if (d & 0xFFF) >= _MLKEM_Q or (d >> 12) >= _MLKEM_Q:
            return False
    return True


def mlkem_secret_key_public_part(secret: bytes) -> bytes:
    """Return the encapsulation key embedded in a FIPS 203 ML-KEM-768 decapsulation key.

    The decapsulation key is dk_pke ‖ ek ‖ H(ek) ‖ z; `H(ek)` is checked, so a corrupted key
    is refused here rather than producing silently wrong shared secrets.

    Raises:
        ValueError: the secret key has the wrong length or its embedded hash does not match.
    """
    if len(secret) != MLKEM768_SK_BYTES:
        raise ValueError(f"ML-KEM-768 secret key must be {MLKEM768_SK_BYTES} bytes")
    ek_end = _MLKEM_DK_PKE_BYTES + MLKEM768_PK_BYTES
    ek = secret[_MLKEM_DK_PKE_BYTES:ek_end]
    h_ek = secret[ek_end : ek_end + 32]
    if hashlib.sha3_256(ek).digest() != h_ek:
        raise ValueError("ML-KEM-768 secret key is inconsistent (H(ek) mismatch)")
    return ek


def _require_len(value: bytes, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise HandshakeError()


class Primitives:
    """The asymmetric operations of the handshake, backed by PyNaCl and pqcrypto.

    Subclass and override to inject recorded values (known-answer tests). Every method raises
    only `HandshakeError` on bad input, never a library exception, so that no failure can be
    told apart from another (docs/crypto-spec.md §3.13).
    """

    def x25519_keypair(self) -> KeyPair:
        """Generate a fresh X25519 key pair from the OS CSPRNG."""
        public, secret = _nacl.crypto_box_keypair()
        return KeyPair(public=public, secret=secret)

    def x25519_public(self, secret: bytes) -> bytes:
        """The X25519 public key of `secret`."""
        _require_len(secret, X25519_KEY_BYTES)
        try:
            return bytes(_nacl.crypto_scalarmult_base(secret))
        except Exception as exc:
            raise HandshakeError() from exc

    def x25519(self, secret: bytes, public: bytes) -> bytes:
        """X25519(secret, public); a low-order or malformed `public` raises HandshakeError.

        libsodium refuses an all-zero result (what every low-order point produces) with a bare
        `RuntimeError`; that becomes the uniform handshake failure (docs/crypto-spec.md §1, note 5).
        """
        _require_len(secret, X25519_KEY_BYTES)
        _require_len(public, X25519_KEY_BYTES)
        try:
            return bytes(_nacl.crypto_scalarmult(secret, public))
        except Exception as exc:
            raise HandshakeError() from exc

    def kem_keypair(self) -> KeyPair:
        """Generate a fresh ML-KEM-768 key pair (pqcrypto takes no seed)."""
        public, secret = _mlkem.keygen()
        return KeyPair(public=bytes(public), secret=bytes(secret))

    def kem_encaps(self, public: bytes) -> tuple[bytes, bytes]:
        """Encapsulate to `public`; returns (ciphertext, shared secret).

        A non-canonical key (FIPS 203 modulus check) raises HandshakeError.
        """
        _require_len(public, MLKEM768_PK_BYTES)
        try:
            ct, ss = _mlkem.encaps(public)
        except Exception as exc:
            raise HandshakeError() from exc
        return bytes(ct), bytes(ss)

    def kem_decaps(self, secret: bytes, ciphertext: bytes) -> bytes:
        """Decapsulate; a wrong ciphertext yields a pseudorandom secret (implicit rejection)."""
        _require_len(secret, MLKEM768_SK_BYTES)
        _require_len(ciphertext, MLKEM768_CT_BYTES)
        try:
            ss = bytes(_mlkem.decaps(secret, ciphertext))
        except Exception as exc:
            raise HandshakeError() from exc
        if len(ss) != MLKEM768_SS_BYTES:
            raise HandshakeError()
        return ss


DEFAULT_PRIMITIVES: Final = Primitives()
"""The real implementation; used whenever a machine is given `primitives=None`."""
