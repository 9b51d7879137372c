"""Identities: peer ids and their text form, pinned key bundles, key files (docs/crypto-spec.md
§3.2)."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from meshcore.errors import ConfigError, DecodeError, HandshakeError
from meshcore.proto.identity import (
    FINGERPRINT_LABEL,
    IDENTITY_FILE_LABEL,
    PEER_ID_TEXT_CHARS,
    PUBLIC_BUNDLE_BYTES,
    Identity,
    PeerId,
    PublicBundle,
    x25519_public_key_is_valid,
)
from meshcore.proto.primitives import DEFAULT_PRIMITIVES
from meshcore.testing._handshake_strategies import (
    LOW_ORDER_X25519_POINTS,
    low_order_x25519_points,
    non_canonical_mlkem_public_keys,
)

ALICE = Identity.generate()
BOB = Identity.generate()
ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- PeerId ---------------------------------------------------------------------------------


def test_peer_id_is_sha256_of_label_and_both_public_keys() -> None:
    pub = ALICE.public
    expected = hashlib.sha256(FINGERPRINT_LABEL + pub.x25519_public + pub.kem_public).digest()
    assert ALICE.peer_id.digest == expected
    assert FINGERPRINT_LABEL == b"meshcore/1 fingerprint"


@given(st.binary(min_size=32, max_size=32))
def test_peer_id_text_round_trips(digest: bytes) -> None:
    peer = PeerId(digest)
    text = peer.to_text()
    assert len(text) == PEER_ID_TEXT_CHARS == 56
    assert set(text) <= set(ALPHABET)
    assert PeerId.from_text(text) == peer


def test_peer_id_str_is_its_text_form() -> None:
    assert str(ALICE.peer_id) == ALICE.peer_id.to_text()
    assert ALICE.peer_id.short() == ALICE.peer_id.to_text()[:12]


def test_peer_id_text_avoids_ambiguous_characters() -> None:
    assert not set("ilou") & set(ALPHABET)


def test_peer_id_from_text_tolerates_case_spacing_and_lookalikes() -> None:
    text = ALICE.peer_id.to_text()
    grouped = "-".join(text[i : i + 8] for i in range(0, len(text), 8))
    assert PeerId.from_text(f"  {grouped.upper()}\n") == ALICE.peer_id
    assert PeerId.from_text(text.replace("0", "O").replace("1", "l")) == ALICE.peer_id


@given(st.integers(0, PEER_ID_TEXT_CHARS - 1), st.sampled_from(ALPHABET))
def test_peer_id_from_text_catches_a_single_typo(pos: int, char: str) -> None:
    text = ALICE.peer_id.to_text()
    assume(text[pos] != char)
    typo = text[:pos] + char + text[pos + 1 :]
    with pytest.raises(ConfigError, match="checksum"):
        PeerId.from_text(typo)


def test_peer_id_from_text_names_a_wrong_length() -> None:
    with pytest.raises(ConfigError, match="55 characters, expected 56"):
        PeerId.from_text(ALICE.peer_id.to_text()[:-1])


def test_peer_id_from_text_names_an_invalid_character() -> None:
    text = ALICE.peer_id.to_text()
    with pytest.raises(ConfigError, match=r"invalid character 'u' at position 3"):
        PeerId.from_text(text[:2] + "u" + text[3:])


def test_peer_id_is_hashable_and_compares_by_value() -> None:
    table = {ALICE.peer_id: "alice"}
    assert table[PeerId(ALICE.peer_id.digest)] == "alice"
    assert ALICE.peer_id != BOB.peer_id


def test_peer_id_route_id_is_the_first_16_bytes() -> None:
    assert ALICE.peer_id.route_id == ALICE.peer_id.digest[:16]


@pytest.mark.parametrize("size", [0, 31, 33])
def test_peer_id_of_wrong_length_raises_decode_error(size: int) -> None:
    with pytest.raises(DecodeError):
        PeerId(b"\x00" * size)


# --- PublicBundle ---------------------------------------------------------------------------


def test_bundle_encode_decode_round_trips() -> None:
    data = ALICE.public.encode()
    assert len(data) == PUBLIC_BUNDLE_BYTES
    decoded = PublicBundle.decode_untrusted(data)
    assert decoded == ALICE.public
    assert decoded.peer_id == ALICE.peer_id


@given(st.binary(max_size=1300))
def test_bundle_decode_of_junk_raises_only_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        PublicBundle.decode_untrusted(data)


def test_bundle_decode_refuses_unknown_version() -> None:
    data = ALICE.public.encode()
    with pytest.raises(DecodeError, match="version"):
        PublicBundle.decode_untrusted(b"\x02" + data[1:])


@given(non_canonical_mlkem_public_keys(base=ALICE.public.kem_public))
def test_bundle_with_non_canonical_kem_key_is_refused(kem_public: bytes) -> None:
    with pytest.raises(DecodeError, match="canonical"):
        PublicBundle(ALICE.public.x25519_public, kem_public)


@given(low_order_x25519_points())
def test_bundle_with_low_order_x25519_key_is_refused(point: bytes) -> None:
    with pytest.raises(DecodeError, match="small order"):
        PublicBundle(point, ALICE.public.kem_public)


def _probe_accepts(public: bytes) -> bool:
    """The reference: a scalar multiplication, which libsodium refuses for small order."""
    try:
        DEFAULT_PRIMITIVES.x25519(bytes([0x40] + [0x11] * 30 + [0x40]), public)
    except HandshakeError:
        return False
    return True


_NEAR_SMALL_ORDER = st.builds(
    lambda point, bit: bytes(b ^ (1 << (bit % 8)) if i == bit // 8 else b
                             for i, b in enumerate(point)),
    low_order_x25519_points(),
    st.integers(0, 255),
)  # fmt: skip


@given(st.one_of(st.binary(min_size=32, max_size=32), low_order_x25519_points(),
                 _NEAR_SMALL_ORDER))  # fmt: skip
def test_small_order_blocklist_agrees_with_a_probe_multiplication(public: bytes) -> None:
    assert x25519_public_key_is_valid(public) == _probe_accepts(public)


def test_small_order_blocklist_refuses_every_listed_point_and_its_alias() -> None:
    assert len(LOW_ORDER_X25519_POINTS) == 14
    for point in LOW_ORDER_X25519_POINTS:
        assert not x25519_public_key_is_valid(point)
        assert not _probe_accepts(point)
    assert not x25519_public_key_is_valid(bytes(31))
    assert x25519_public_key_is_valid(ALICE.public.x25519_public)


def test_checked_bundle_accepts_keys_matching_the_pinned_id() -> None:
    pub = ALICE.public
    assert PublicBundle.checked(pub.x25519_public, pub.kem_public, ALICE.peer_id) == pub


def test_checked_bundle_refuses_substituted_keys() -> None:
    # The relay answers a request for Alice's keys with Bob's (docs/crypto-spec.md §4, row 15).
    with pytest.raises(HandshakeError, match="does not match"):
        PublicBundle.checked(BOB.public.x25519_public, BOB.public.kem_public, ALICE.peer_id)


def test_checked_bundle_refuses_a_mix_of_two_peers_keys() -> None:
    with pytest.raises(HandshakeError):
        PublicBundle.checked(ALICE.public.x25519_public, BOB.public.kem_public, ALICE.peer_id)


def test_trust_on_first_use_is_off_by_default() -> None:
    with pytest.raises(HandshakeError, match="trust-on-first-use is off"):
        PublicBundle.checked(ALICE.public.x25519_public, ALICE.public.kem_public, None)


def test_trust_on_first_use_accepts_unpinned_keys_only_when_asked() -> None:
    pub = ALICE.public
    bundle = PublicBundle.checked(pub.x25519_public, pub.kem_public, None, trust_on_first_use=True)
    assert bundle.peer_id == ALICE.peer_id


def test_checked_bundle_maps_malformed_keys_to_handshake_error() -> None:
    with pytest.raises(HandshakeError):
        PublicBundle.checked(b"\x00" * 32, ALICE.public.kem_public, None, trust_on_first_use=True)


# --- Identity -------------------------------------------------------------------------------


def _secret_fragments(identity: Identity) -> list[str]:
    xs, ks = identity.x25519_secret, identity.kem_secret
    return [
        xs.hex()[:16],
        ks.hex()[:16],
        base64.b64encode(xs).decode()[:16],
        base64.b64encode(ks).decode()[:16],
        repr(xs)[2:18],
    ]


def test_identity_repr_and_str_hide_secrets() -> None:
    for text in (repr(ALICE), str(ALICE)):
        assert ALICE.peer_id.short() in text
        for fragment in _secret_fragments(ALICE):
            assert fragment not in text


def test_identity_from_secrets_derives_the_same_public_keys() -> None:
    again = Identity.from_secrets(ALICE.x25519_secret, ALICE.kem_secret)
    assert again.public == ALICE.public and again == ALICE


def test_identity_from_secrets_refuses_inconsistent_kem_secret() -> None:
    corrupt = bytearray(ALICE.kem_secret)
    corrupt[2000] ^= 1
    with pytest.raises(DecodeError):
        Identity.from_secrets(ALICE.x25519_secret, bytes(corrupt))


def test_save_writes_mode_0600_even_with_permissive_umask(tmp_path: Path, umask_zero: None) -> None:
    path = tmp_path / "id.key"
    ALICE.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    ALICE.save(path)
    assert Identity.load(path) == ALICE


def test_save_leaves_no_temporary_files(tmp_path: Path) -> None:
    ALICE.save(tmp_path / "id.key")
    assert [p.name for p in tmp_path.iterdir()] == ["id.key"]


def test_key_file_starts_with_a_versioned_header_and_the_peer_id(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    ALICE.save(path)
    text = path.read_text()
    assert text.startswith("meshcore identity v1\n")
    assert f"peer-id: {ALICE.peer_id}" in text


def test_save_refuses_to_overwrite_by_default(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    ALICE.save(path)
    with pytest.raises(ConfigError, match="already exists"):
        BOB.save(path)
    assert Identity.load(path) == ALICE
    assert [p.name for p in tmp_path.iterdir()] == ["id.key"]


def test_save_overwrites_when_asked(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    ALICE.save(path)
    BOB.save(path, overwrite=True)
    assert Identity.load(path) == BOB
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_into_missing_directory_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot write identity file"):
        ALICE.save(tmp_path / "nope" / "id.key")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_load_refuses_group_or_other_access_with_chmod_hint(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "id.key"
    ALICE.save(path)
    path.chmod(mode)
    with pytest.raises(ConfigError) as info:
        Identity.load(path)
    assert f"chmod 600 {path}" in str(info.value)
    assert f"{mode:04o}" in str(info.value)


def test_load_accepts_mode_0400(tmp_path: Path) -> None:
    path = tmp_path / "id.key"
    ALICE.save(path)
    path.chmod(0o400)
    assert Identity.load(path) == ALICE


def test_load_of_missing_file_names_it_and_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "missing.key"
    with pytest.raises(ConfigError) as info:
        Identity.load(path)
    assert str(path) in str(info.value)
    assert "meshcore-peer genkey" in str(info.value)


def test_load_refuses_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "id.key"
    ALICE.save(real)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(ConfigError):
        Identity.load(link)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def test_load_of_corrupt_file_names_file_and_fix(tmp_path: Path) -> None:
    text = ALICE.to_text()
    pos = text.index("mlkem768-secret: ") + 40
    flipped = text[:pos] + ("A" if text[pos] != "A" else "B") + text[pos + 1 :]
    path = _write(tmp_path / "id.key", flipped.encode())
    with pytest.raises(ConfigError) as info:
        Identity.load(path)
    message = str(info.value)
    assert "corrupt" in message and str(path) in message and "meshcore-peer genkey" in message


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, 0.99])
def test_load_of_truncated_file_raises_config_error(tmp_path: Path, keep: float) -> None:
    data = ALICE.to_text().encode()
    path = _write(tmp_path / "id.key", data[: int(len(data) * keep)])
    with pytest.raises(ConfigError, match="corrupt or truncated"):
        Identity.load(path)


def test_load_of_empty_file_says_it_is_not_an_identity_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "id.key", b"")
    with pytest.raises(ConfigError, match="not a meshcore identity file"):
        Identity.load(path)


def test_load_of_binary_junk_raises_config_error(tmp_path: Path) -> None:
    path = _write(tmp_path / "id.key", os.urandom(3000))
    with pytest.raises(ConfigError):
        Identity.load(path)


def test_load_of_a_future_format_says_to_upgrade(tmp_path: Path) -> None:
    text = ALICE.to_text().replace("meshcore identity v1", "meshcore identity v9")
    path = _write(tmp_path / "id.key", text.encode())
    with pytest.raises(ConfigError, match="upgrade meshcore"):
        Identity.load(path)


def test_load_ignores_comment_lines(tmp_path: Path) -> None:
    text = "# my laptop's key\n" + ALICE.to_text()
    path = _write(tmp_path / "id.key", text.encode())
    assert Identity.load(path) == ALICE


def test_load_refuses_keys_that_do_not_match_the_recorded_peer_id(tmp_path: Path) -> None:
    # A consistent file whose peer-id line names Bob but whose keys are Alice's.
    lines = ALICE.to_text().splitlines()
    lines[1] = f"peer-id: {BOB.peer_id}"
    body = "\n".join(lines[:4]) + "\n"
    checksum = hashlib.sha256(IDENTITY_FILE_LABEL + body.encode()).hexdigest()[:32]
    path = _write(tmp_path / "id.key", (body + f"checksum: {checksum}\n").encode())
    with pytest.raises(ConfigError, match="do not match the recorded peer id"):
        Identity.load(path)


@given(pos=st.integers(0, 10_000), value=st.integers(0, 255))
def test_any_single_byte_change_to_a_key_file_is_refused_or_harmless(
    tmp_path_factory: pytest.TempPathFactory, pos: int, value: int
) -> None:
    data = bytearray(ALICE.to_text().encode())
    pos %= len(data)
    assume(data[pos] != value)
    data[pos] = value
    path = _write(tmp_path_factory.mktemp("k") / "id.key", bytes(data))
    try:
        loaded = Identity.load(path)
    except ConfigError:
        return
    assert loaded == ALICE  # e.g. whitespace changes that do not alter any field


def test_public_api_is_pinned() -> None:
    from meshcore.proto import identity

    assert sorted(identity.__all__) == [
        "FINGERPRINT_LABEL", "IDENTITY_FILE_HEADER", "IDENTITY_FILE_LABEL", "Identity",
        "PEER_ID_CHECKSUM_LABEL", "PEER_ID_TEXT_CHARS", "PUBLIC_BUNDLE_BYTES", "PeerId",
        "PublicBundle", "X25519_SMALL_ORDER_POINTS", "x25519_public_key_is_valid",
    ]  # fmt: skip
    assert all(hasattr(identity, name) for name in identity.__all__)
