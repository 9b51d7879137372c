"""Primitives: real X25519 / ML-KEM-768 behind one interface, every failure a HandshakeError."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pqcrypto.kem import ml_kem_768

from meshcore.errors import HandshakeError
from meshcore.proto.constants import (
    MLKEM768_CT_BYTES,
    MLKEM768_PK_BYTES,
    MLKEM768_SK_BYTES,
    X25519_KEY_BYTES,
)
from meshcore.proto.primitives import (
    DEFAULT_PRIMITIVES,
    KeyPair,
    mlkem_public_key_is_canonical,
    mlkem_secret_key_public_part,
)
from meshcore.testing._handshake_strategies import (
    LOW_ORDER_X25519_POINTS,
    low_order_x25519_points,
    non_canonical_mlkem_public_keys,
)

P = DEFAULT_PRIMITIVES
KEM = P.kem_keypair()


def test_x25519_keypair_agrees_on_a_shared_secret() -> None:
    a, b = P.x25519_keypair(), P.x25519_keypair()
    assert len(a.public) == len(a.secret) == X25519_KEY_BYTES
    assert P.x25519(a.secret, b.public) == P.x25519(b.secret, a.public)


def test_x25519_public_matches_keypair() -> None:
    pair = P.x25519_keypair()
    assert P.x25519_public(pair.secret) == pair.public


def test_kem_roundtrip_gives_the_same_secret() -> None:
    assert len(KEM.public) == MLKEM768_PK_BYTES and len(KEM.secret) == MLKEM768_SK_BYTES
    ct, ss = P.kem_encaps(KEM.public)
    assert len(ct) == MLKEM768_CT_BYTES
    assert P.kem_decaps(KEM.secret, ct) == ss


def test_kem_decaps_of_tampered_ciphertext_is_implicit_rejection() -> None:
    ct, ss = P.kem_encaps(KEM.public)
    tampered = bytes([ct[0] ^ 1]) + ct[1:]
    other = P.kem_decaps(KEM.secret, tampered)
    assert len(other) == 32 and other != ss


def test_keypair_repr_hides_the_secret() -> None:
    pair = KeyPair(public=b"\x01" * 32, secret=b"\xaa" * 32)
    assert "secret" not in repr(pair)
    assert "\\xaa" not in repr(pair)


@given(low_order_x25519_points())
def test_x25519_with_low_order_point_raises_handshake_error(point: bytes) -> None:
    with pytest.raises(HandshakeError):
        P.x25519(P.x25519_keypair().secret, point)


def test_low_order_point_list_has_fourteen_entries() -> None:
    assert len(set(LOW_ORDER_X25519_POINTS)) == 14


@pytest.mark.parametrize("public", [b"", b"\x09" * 31, b"\x09" * 33])
def test_x25519_with_wrong_length_raises_handshake_error(public: bytes) -> None:
    with pytest.raises(HandshakeError):
        P.x25519(b"\x01" * 32, public)


@given(non_canonical_mlkem_public_keys(base=KEM.public))
def test_kem_encaps_to_non_canonical_key_raises_handshake_error(public: bytes) -> None:
    with pytest.raises(HandshakeError):
        P.kem_encaps(public)


@pytest.mark.parametrize("size", [0, MLKEM768_PK_BYTES - 1, MLKEM768_PK_BYTES + 1])
def test_kem_encaps_to_wrong_length_key_raises_handshake_error(size: int) -> None:
    with pytest.raises(HandshakeError):
        P.kem_encaps(b"\x00" * size)


@pytest.mark.parametrize("size", [0, MLKEM768_CT_BYTES - 1, MLKEM768_CT_BYTES + 1])
def test_kem_decaps_of_wrong_length_ciphertext_raises_handshake_error(size: int) -> None:
    with pytest.raises(HandshakeError):
        P.kem_decaps(KEM.secret, b"\x00" * size)


def test_kem_decaps_with_wrong_length_secret_raises_handshake_error() -> None:
    ct, _ = P.kem_encaps(KEM.public)
    with pytest.raises(HandshakeError):
        P.kem_decaps(KEM.secret[:-1], ct)


@given(st.integers(0, MLKEM768_PK_BYTES - 1), st.integers(0, 7))
def test_canonical_check_agrees_with_pqcrypto(pos: int, bit: int) -> None:
    key = bytearray(KEM.public)
    key[pos] ^= 1 << bit
    try:
        ml_kem_768.encaps(bytes(key))
        library_accepts = True
    except ValueError:
        library_accepts = False
    assert mlkem_public_key_is_canonical(bytes(key)) is library_accepts


def reference_canonical(public: bytes) -> bool:
    """FIPS 203's modulus check, one coefficient at a time."""
    for i in range(0, 1152, 3):
        d = public[i] | (public[i + 1] << 8) | (public[i + 2] << 16)
        if (d & 0xFFF) >= 3329 or (d >> 12) >= 3329:
            return False
    return True


_EDGE_BYTES = st.sampled_from([0x00, 0x01, 0x0C, 0x0D, 0x0E, 0x10, 0x1D, 0xCF, 0xD0, 0xD1, 0xFF])


@given(st.data())
def test_canonical_check_agrees_with_the_coefficient_loop(data: st.DataObject) -> None:
    key = bytearray(KEM.public)
    for _ in range(data.draw(st.integers(1, 6))):  # coefficients at and around q
        pos = data.draw(st.integers(0, 1151))
        key[pos] = data.draw(_EDGE_BYTES | st.integers(0, 255))
    assert mlkem_public_key_is_canonical(bytes(key)) is reference_canonical(bytes(key))


@pytest.mark.parametrize(("c1", "c2"), [(3328, 3328), (3329, 0), (0, 3329), (4095, 4095)])
def test_canonical_check_at_the_modulus(c1: int, c2: int) -> None:
    key = bytearray(KEM.public)
    key[300:303] = (c1 | c2 << 12).to_bytes(3, "little")
    assert mlkem_public_key_is_canonical(bytes(key)) is (c1 < 3329 and c2 < 3329)


def test_canonical_check_accepts_real_keys() -> None:
    assert mlkem_public_key_is_canonical(KEM.public)
    assert not mlkem_public_key_is_canonical(KEM.public[:-1])


def test_secret_key_public_part_is_the_encapsulation_key() -> None:
    assert mlkem_secret_key_public_part(KEM.secret) == KEM.public


def test_secret_key_public_part_detects_corruption() -> None:
    corrupt = bytearray(KEM.secret)
    corrupt[1500] ^= 0x10  # inside the embedded encapsulation key: H(ek) no longer matches
    with pytest.raises(ValueError, match="inconsistent"):
        mlkem_secret_key_public_part(bytes(corrupt))


def _import_without(module: str, target: str) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules[{module!r}] = None  # makes `import {module}` raise ImportError
        try:
            import {target}
        except Exception as exc:
            # meshcore's own package may be what failed to import, so check by class name.
            names = {{cls.__name__ for cls in type(exc).__mro__}}
            assert {{"MeshError", "ConfigError", "ImportError"}} <= names, names
            print("REFUSED:", exc)
        else:
            print("IMPORTED")
        """
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    "target",
    ["meshcore.proto.primitives", "meshcore.proto.handshake", "meshcore.proto.identity"],
)
def test_import_without_pqcrypto_refuses_instead_of_falling_back(target: str) -> None:
    proc = _import_without("pqcrypto", target)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("REFUSED:")
    assert "pqcrypto is required" in proc.stdout
    assert "pip install pqcrypto" in proc.stdout
    assert "classical-only" in proc.stdout


def test_import_without_pynacl_names_the_package() -> None:
    proc = _import_without("nacl", "meshcore.proto.primitives")
    assert proc.returncode == 0, proc.stderr
    assert "pip install pynacl" in proc.stdout


def test_public_api_is_pinned() -> None:
    from meshcore.proto import primitives

    assert sorted(primitives.__all__) == [
        "DEFAULT_PRIMITIVES", "KeyPair", "Primitives",
        "mlkem_public_key_is_canonical", "mlkem_secret_key_public_part",
    ]  # fmt: skip
    assert all(hasattr(primitives, name) for name in primitives.__all__)
