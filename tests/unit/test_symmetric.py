"""SymmetricState (docs/crypto-spec.md §3.4) and the key schedule (§3.5): formulas, AEAD, Split."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from hypothesis import given
from hypothesis import strategies as st

from meshcore.errors import HandshakeError
from meshcore.proto.constants import PROTOCOL_NAME
from meshcore.proto.symmetric import (
    LABEL_CK,
    LABEL_EXPORTER,
    LABEL_I2R,
    LABEL_K,
    LABEL_R2I,
    LABEL_RESUME,
    SymmetricState,
    aead_nonce,
    export,
    hkdf_expand,
    hkdf_extract,
)


def _keyed_pair() -> tuple[SymmetricState, SymmetricState]:
    a, b = SymmetricState(), SymmetricState()
    for s in (a, b):
        s.mix_hash(b"prologue")
        s.mix_key(b"\x42" * 32)
    return a, b


def test_labels_are_pinned() -> None:
    assert (LABEL_CK, LABEL_K) == (b"ck", b"k")
    assert LABEL_I2R == b"meshcore/1 i2r"
    assert LABEL_R2I == b"meshcore/1 r2i"
    assert LABEL_RESUME == b"meshcore/1 resume"
    assert LABEL_EXPORTER == b"meshcore/1 exporter"


def test_initial_h_and_ck_are_the_hash_of_the_protocol_name() -> None:
    ck, h = SymmetricState().snapshot()
    assert h == ck == hashlib.sha256(PROTOCOL_NAME).digest()


def test_short_protocol_name_is_zero_padded_as_in_noise() -> None:
    ck, h = SymmetricState(b"short").snapshot()
    assert h == ck == b"short" + bytes(27)


def test_mix_hash_is_sha256_of_h_and_data() -> None:
    s = SymmetricState()
    before = s.handshake_hash
    s.mix_hash(b"data")
    assert s.handshake_hash == hashlib.sha256(before + b"data").digest()


def test_mix_key_is_hkdf_with_ck_as_salt_and_ck_k_labels() -> None:
    s = SymmetricState()
    ck0, _ = s.snapshot()
    s.mix_key(b"ikm")
    prk = hmac.digest(ck0, b"ikm", "sha256")
    assert s.snapshot()[0] == hmac.digest(prk, b"ck\x01", "sha256")
    # The AEAD key is Expand(prk, "k"): check it by decrypting with it directly.
    key = hmac.digest(prk, b"k\x01", "sha256")
    h = s.handshake_hash
    ct = s.encrypt_and_hash(b"hello")
    assert ChaCha20Poly1305(key).decrypt(bytes(12), ct, h) == b"hello"


def test_rfc5869_test_case_1() -> None:
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    prk = hkdf_extract(salt, ikm)
    assert prk.hex() == "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    assert hkdf_expand(prk, info, 42).hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=100), st.integers(1, 300))
def test_hkdf_expand_agrees_with_cryptography(prk: bytes, info: bytes, length: int) -> None:
    reference = HKDFExpand(hashes.SHA256(), length, info).derive(prk)
    assert hkdf_expand(prk, info, length) == reference


@pytest.mark.parametrize("length", [0, 255 * 32 + 1])
def test_hkdf_expand_refuses_impossible_lengths(length: int) -> None:
    with pytest.raises(ValueError):
        hkdf_expand(b"k" * 32, b"", length)


def test_aead_nonce_is_four_zero_bytes_then_le64_counter() -> None:
    assert aead_nonce(1) == bytes(4) + (1).to_bytes(8, "little")
    assert aead_nonce(2**64 - 1) == bytes(4) + b"\xff" * 8


@given(st.binary(max_size=200))
def test_encrypt_then_decrypt_round_trips_and_hashes_agree(plaintext: bytes) -> None:
    a, b = _keyed_pair()
    ct = a.encrypt_and_hash(plaintext)
    assert b.decrypt_and_hash(ct) == plaintext
    assert a.handshake_hash == b.handshake_hash


@given(st.binary(max_size=64), st.data())
def test_tampered_ciphertext_fails_and_leaves_state_unchanged(
    plaintext: bytes, data: st.DataObject
) -> None:
    a, b = _keyed_pair()
    ct = a.encrypt_and_hash(plaintext)
    pos = data.draw(st.integers(0, len(ct) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = ct[:pos] + bytes([ct[pos] ^ (1 << bit)]) + ct[pos + 1 :]
    before = b.snapshot()
    with pytest.raises(HandshakeError):
        b.decrypt_and_hash(tampered)
    assert b.snapshot() == before
    assert b.decrypt_and_hash(ct) == plaintext  # the genuine message still works


def test_ciphertext_is_bound_to_the_transcript_hash() -> None:
    a, b = _keyed_pair()
    b.mix_hash(b"something a did not hash")
    with pytest.raises(HandshakeError):
        b.decrypt_and_hash(a.encrypt_and_hash(b"x"))


def test_second_encryption_under_one_key_uses_nonce_one() -> None:
    s = SymmetricState()
    ck0, _ = s.snapshot()
    s.mix_key(b"ikm")
    key = hmac.digest(hmac.digest(ck0, b"ikm", "sha256"), b"k\x01", "sha256")
    s.encrypt_and_hash(b"first")
    h = s.handshake_hash
    ct = s.encrypt_and_hash(b"second")
    assert ChaCha20Poly1305(key).decrypt(aead_nonce(1), ct, h) == b"second"


def test_encrypt_before_any_mix_key_raises() -> None:
    with pytest.raises(HandshakeError):
        SymmetricState().encrypt_and_hash(b"x")


def test_decrypt_of_short_input_raises() -> None:
    a, _ = _keyed_pair()
    with pytest.raises(HandshakeError):
        a.decrypt_and_hash(b"\x00" * 15)


def test_copy_is_independent() -> None:
    a, _ = _keyed_pair()
    c = a.copy()
    c.mix_hash(b"only in the copy")
    assert c.handshake_hash != a.handshake_hash


def test_restore_from_snapshot_continues_the_chain() -> None:
    a, _ = _keyed_pair()
    r = SymmetricState.restore(*a.snapshot())
    for s in (a, r):
        s.mix_key(b"next")
    assert a.snapshot() == r.snapshot()
    assert SymmetricState.restore(*a.snapshot()).copy().snapshot() == a.snapshot()


def test_restore_refuses_wrong_lengths() -> None:
    with pytest.raises(HandshakeError):
        SymmetricState.restore(b"x", b"y" * 32)


def test_split_follows_the_formula_and_keys_are_directional() -> None:
    a, b = _keyed_pair()
    ck, h = a.snapshot()
    sa, sb = a.split(), b.split()
    assert sa == sb
    assert sa.i2r == HKDFExpand(hashes.SHA256(), 32, LABEL_I2R + h).derive(ck)
    assert sa.r2i == hkdf_expand(ck, LABEL_R2I + h, 32)
    assert sa.resume_secret == hkdf_expand(ck, LABEL_RESUME + h, 32)
    assert sa.exporter_secret == hkdf_expand(ck, LABEL_EXPORTER + h, 32)
    assert sa.transcript_hash == h
    assert len({sa.i2r, sa.r2i, sa.resume_secret, sa.exporter_secret}) == 4


def test_split_erases_ck_and_cannot_run_twice() -> None:
    a, _ = _keyed_pair()
    a.split()
    with pytest.raises(HandshakeError):
        a.split()
    with pytest.raises(HandshakeError):
        a.encrypt_and_hash(b"x")


def test_session_secrets_repr_hides_keys() -> None:
    a, _ = _keyed_pair()
    secrets = a.split()
    text = repr(secrets)
    for value in (secrets.i2r, secrets.r2i, secrets.resume_secret, secrets.exporter_secret):
        assert value.hex()[:12] not in text and repr(value)[2:14] not in text


def test_exporter_separates_label_from_context() -> None:
    secret = b"\x07" * 32
    assert export(secret, b"ab", b"c", 32) != export(secret, b"a", b"bc", 32)
    assert export(secret, b"a", b"", 32) != export(secret, b"b", b"", 32)
    assert export(secret, b"a", b"x", 16) == export(secret, b"a", b"x", 32)[:16]


def test_exporter_refuses_oversized_label() -> None:
    with pytest.raises(ValueError):
        export(b"\x07" * 32, b"x" * 256, b"", 32)


def test_public_api_is_pinned() -> None:
    from meshcore.proto import symmetric

    assert sorted(symmetric.__all__) == [
        "HASH_BYTES", "LABEL_CK", "LABEL_EXPORTER", "LABEL_I2R", "LABEL_K", "LABEL_R2I",
        "LABEL_RESUME", "SessionSecrets", "SymmetricState", "aead_nonce", "export",
        "hash_sha256", "hkdf_expand", "hkdf_extract",
    ]  # fmt: skip
    assert all(hasattr(symmetric, name) for name in symmetric.__all__)
