"""Peer identities (docs/crypto-spec.md §3.2): static X25519 + ML-KEM-768 keys, their fingerprint,
key files.

A `PeerId` is SHA-256 over both public keys; peers pin ids out of band and accept a key
bundle only if it hashes to the pinned id, which defeats a relay that substitutes keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import stat
from pathlib import Path
from typing import Final

import attrs

from meshcore.errors import ConfigError, DecodeError, HandshakeError
from meshcore.proto.constants import (
    MLKEM768_PK_BYTES,
    MLKEM768_SK_BYTES,
    PEER_ID_BYTES,
    X25519_KEY_BYTES,
)
from meshcore.proto.primitives import (
    DEFAULT_PRIMITIVES,
    Primitives,
    mlkem_public_key_is_canonical,
    mlkem_secret_key_public_part,
)

__all__ = [
    "FINGERPRINT_LABEL",
    "IDENTITY_FILE_HEADER",
    "IDENTITY_FILE_LABEL",
    "PEER_ID_CHECKSUM_LABEL",
    "PEER_ID_TEXT_CHARS",
    "PUBLIC_BUNDLE_BYTES",
    "X25519_SMALL_ORDER_POINTS",
    "Identity",
    "PeerId",
    "PublicBundle",
    "x25519_public_key_is_valid",
]

FINGERPRINT_LABEL: Final = b"meshcore/1 fingerprint"
"""fp = SHA-256(FINGERPRINT_LABEL ‖ X25519_pk ‖ MLKEM_pk) (docs/crypto-spec.md §3.2)."""
PEER_ID_CHECKSUM_LABEL: Final = b"meshcore/1 peer id checksum"
"""The text form appends SHA-256(PEER_ID_CHECKSUM_LABEL ‖ fp)[:3], so typos are caught."""
IDENTITY_FILE_LABEL: Final = b"meshcore/1 identity file"
"""The key file's checksum line is SHA-256(IDENTITY_FILE_LABEL ‖ the lines above it)[:16]."""
IDENTITY_FILE_HEADER: Final = "meshcore identity v1"

_ALPHABET: Final = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32: no i, l, o, u
_ALIASES: Final = {"o": "0", "i": "1", "l": "1"}
_CHECKSUM_BYTES: Final = 3
PEER_ID_TEXT_CHARS: Final = (PEER_ID_BYTES + _CHECKSUM_BYTES) * 8 // 5  # 56
_BUNDLE_VERSION: Final = 1
PUBLIC_BUNDLE_BYTES: Final = 1 + X25519_KEY_BYTES + MLKEM768_PK_BYTES  # 1217
_MAX_KEY_FILE_BYTES: Final = 64 * 1024
_GENKEY_HINT: Final = "create one with `meshcore-peer genkey`"

X25519_SMALL_ORDER_POINTS: Final = tuple(
    bytes.fromhex(h)
    for h in (
        "0000000000000000000000000000000000000000000000000000000000000000",  # 0 (order 4)
        "0100000000000000000000000000000000000000000000000000000000000000",  # 1 (order 1)
        "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",  # order 8
        "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",  # order 8
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p - 1 (order 2)
        "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p (= 0)
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",  # p + 1 (= 1)
    )
)
"""Every encoding of a point of order dividing 8 on Curve25519 or its twist, bit 255 clear
(libsodium's blocklist): the u values 0, 1, -1 and the two of order 8, and the two that
have a second encoding below 2^255 (p and p + 1)."""
_SMALL_ORDER_X25519: Final = frozenset(X25519_SMALL_ORDER_POINTS)


def _base32(data: bytes) -> str:
    bits = len(data) * 8
    n = int.from_bytes(data, "big")
    return "".join(_ALPHABET[(n >> (bits - 5 * (i + 1))) & 31] for i in range(bits // 5))


def _peer_id_checksum(digest: bytes) -> bytes:
    return hashlib.sha256(PEER_ID_CHECKSUM_LABEL + digest).digest()[:_CHECKSUM_BYTES]


def _check_digest(_: object, __: object, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != PEER_ID_BYTES:
        raise DecodeError(f"a peer id is {PEER_ID_BYTES} bytes")


@attrs.frozen(repr=False)
class PeerId:
    """A peer's identity: the 32-byte fingerprint of its static public keys. Public, hashable."""

    digest: bytes = attrs.field(validator=_check_digest)

    @classmethod
    def of(cls, x25519_public: bytes, kem_public: bytes) -> PeerId:
        """The fingerprint of a pair of public keys."""
        return cls(hashlib.sha256(FINGERPRINT_LABEL + x25519_public + kem_public).digest())

    @property
    def route_id(self) -> bytes:
        """The first 16 bytes: the id the relay routes by (docs/crypto-spec.md §3.2)."""
        return self.digest[:16]

    def to_text(self) -> str:
        """56 lowercase Crockford-base32 characters (fingerprint plus a 24-bit checksum).

        No separators, so a double-click selects all of it; no i, l, o or u, so it reads aloud.
        """
        return _base32(self.digest + _peer_id_checksum(self.digest))

    def short(self) -> str:
        """The first 12 characters, for logs and status lines (not for pinning)."""
        return self.to_text()[:12]

    @classmethod
    def from_text(cls, text: str) -> PeerId:
        """Parse `to_text()` output; case, spaces, dashes and o/i/l look-alikes are tolerated.

        Raises:
            ConfigError: the text names the problem (length, a bad character, a typo).
        """
        cleaned = "".join(ch for ch in text.strip().lower() if ch not in " -_\t\n")
        cleaned = "".join(_ALIASES.get(ch, ch) for ch in cleaned)
        if len(cleaned) != PEER_ID_TEXT_CHARS:
            raise ConfigError(
                f"peer id {text!r} has {len(cleaned)} characters, expected "
                f"{PEER_ID_TEXT_CHARS}; copy the whole id (`meshcore-peer id` prints it)"
            )
        n = 0
        for pos, ch in enumerate(cleaned):
            value = _ALPHABET.find(ch)
            if value < 0:
                raise ConfigError(
                    f"peer id {text!r} has an invalid character {ch!r} at position {pos + 1}; "
                    f"peer ids use only {_ALPHABET}"
                )
            n = (n << 5) | value
        raw = n.to_bytes(PEER_ID_BYTES + _CHECKSUM_BYTES, "big")
        digest, checksum = raw[:PEER_ID_BYTES], raw[PEER_ID_BYTES:]
        if checksum != _peer_id_checksum(digest):
            raise ConfigError(
                f"peer id {text!r} fails its checksum: a character is wrong (a typo?); "
                "copy it again from the peer"
            )
        return cls(digest)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"PeerId({self.to_text()!r})"


def x25519_public_key_is_valid(public: bytes) -> bool:
    """True unless `public` is not 32 bytes or is a small-order point (X25519 with it
    outputs 0 for every secret key).

    A lookup in the blocklist with bit 255 masked, as X25519 masks it: the same answer as
    a probe multiplication (a test checks both), without its ~35 µs on the relay's path
    for every Hello. Public values only, so no constant time is needed.
    """
    if len(public) != X25519_KEY_BYTES:
        return False
    return public[:31] + bytes((public[31] & 0x7F,)) not in _SMALL_ORDER_X25519


@attrs.frozen(repr=False)
class PublicBundle:
    """A peer's static public keys. Constructing one validates both keys.

    Raises:
        DecodeError: a key has the wrong length, the X25519 key has small order, or the
            ML-KEM key is not canonical (FIPS 203 modulus check).
    """

    x25519_public: bytes
    kem_public: bytes
    peer_id: PeerId = attrs.field(init=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.x25519_public, bytes) or not isinstance(self.kem_public, bytes):
            raise DecodeError("public keys must be bytes")
        if len(self.x25519_public) != X25519_KEY_BYTES or len(self.kem_public) != MLKEM768_PK_BYTES:
            raise DecodeError(
                f"a key bundle holds a {X25519_KEY_BYTES}-byte X25519 key and a "
                f"{MLKEM768_PK_BYTES}-byte ML-KEM-768 key"
            )
        if not x25519_public_key_is_valid(self.x25519_public):
            raise DecodeError("the bundle's X25519 public key has small order")
        if not mlkem_public_key_is_canonical(self.kem_public):
            raise DecodeError("the bundle's ML-KEM-768 public key is not canonical")
        object.__setattr__(self, "peer_id", PeerId.of(self.x25519_public, self.kem_public))

    def __repr__(self) -> str:
        return f"PublicBundle(peer_id={self.peer_id.short()}…)"

    def encode(self) -> bytes:
        """version(1) ‖ X25519 public (32) ‖ ML-KEM-768 public (1184): 1217 bytes."""
        return bytes((_BUNDLE_VERSION,)) + self.x25519_public + self.kem_public

    @classmethod
    def decode_untrusted(cls, data: bytes) -> PublicBundle:
        """Decode `encode()` output from the network; raises only DecodeError."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError("a key bundle must be bytes")
        data = bytes(data)
        if len(data) != PUBLIC_BUNDLE_BYTES:
            raise DecodeError(f"a key bundle is {PUBLIC_BUNDLE_BYTES} bytes, got {len(data)}")
        if data[0] != _BUNDLE_VERSION:
            raise DecodeError(f"unknown key bundle version {data[0]}")
        return cls(data[1 : 1 + X25519_KEY_BYTES], data[1 + X25519_KEY_BYTES :])

    @classmethod
    def checked(
        cls,
        x25519_public: bytes,
        kem_public: bytes,
        pinned: PeerId | None,
        *,
        trust_on_first_use: bool = False,
    ) -> PublicBundle:
        """Accept keys fetched from an untrusted source only if they hash to the pinned id.

        This is the defence against a relay that serves substituted keys (docs/crypto-spec.md §4,
        row 15). With `pinned=None` the keys are refused unless the caller explicitly opts
        into trust-on-first-use; it is off by default.

        Raises:
            HandshakeError: the keys do not match the pinned id, no id is pinned (and TOFU is
                off), or the keys are malformed.
        """
        if pinned is None and not trust_on_first_use:
            raise HandshakeError(
                "no peer id is pinned for these keys and trust-on-first-use is off; pin the "
                "peer's id (or pass trust_on_first_use=True to accept unverified keys)"
            )
        try:
            bundle = cls(x25519_public, kem_public)
        except DecodeError as exc:
            raise HandshakeError() from exc
        if pinned is not None and bundle.peer_id != pinned:
            raise HandshakeError(
                f"the key bundle served for {pinned.short()}… does not match that pinned id; "
                "the relay or the network substituted keys (refused)"
            )
        return bundle


@attrs.frozen(repr=False, eq=False)
class Identity:
    """This node's static secret keys (X25519 and ML-KEM-768) and their public bundle.

    Secrets never appear in repr or str. Construct with `generate()`, `load()`, or
    `from_secrets()`, which derives and checks the public keys.
    """

    x25519_secret: bytes = attrs.field(repr=False)
    kem_secret: bytes = attrs.field(repr=False)
    public: PublicBundle

    @classmethod
    def from_secrets(cls, x25519_secret: bytes, kem_secret: bytes) -> Identity:
        """Rebuild an identity from its two secret keys, deriving the public keys.

        Raises:
            DecodeError: a key has the wrong length or the ML-KEM key is inconsistent.
        """
        if len(x25519_secret) != X25519_KEY_BYTES or len(kem_secret) != MLKEM768_SK_BYTES:
            raise DecodeError("identity secret keys have the wrong length")
        try:
            kem_public = mlkem_secret_key_public_part(kem_secret)
            x25519_public = DEFAULT_PRIMITIVES.x25519_public(x25519_secret)
        except (ValueError, HandshakeError) as exc:
            raise DecodeError(str(exc) or "invalid X25519 secret key") from exc
        return cls(x25519_secret, kem_secret, PublicBundle(x25519_public, kem_public))

    @classmethod
    def generate(cls, primitives: Primitives | None = None) -> Identity:
        """A fresh identity from the OS CSPRNG (or from `primitives`, for tests)."""
        prims = primitives or DEFAULT_PRIMITIVES
        x = prims.x25519_keypair()
        kem = prims.kem_keypair()
        return cls(x.secret, kem.secret, PublicBundle(x.public, kem.public))

    @property
    def peer_id(self) -> PeerId:
        """This node's peer id (public)."""
        return self.public.peer_id

    def __repr__(self) -> str:
        return f"Identity(peer_id={self.peer_id.short()}…, secrets hidden)"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Identity):
            return NotImplemented
        return (
            self.public == other.public
            and hmac.compare_digest(self.x25519_secret, other.x25519_secret)
            and hmac.compare_digest(self.kem_secret, other.kem_secret)
        )

    def __hash__(self) -> int:
        return hash(self.peer_id)

    __str__ = __repr__

    # --- key files ------------------------------------------------------------------------

    def to_text(self) -> str:
        """The key file's content: a versioned header, base64 secrets and a checksum line."""
        body = _file_body(self.peer_id, self.x25519_secret, self.kem_secret)
        return body + f"checksum: {_file_checksum(body)}\n"

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key file atomically with mode 0600.

        Raises:
            ConfigError: the file exists (and `overwrite` is false) or cannot be written.
        """
        target = Path(path)
        data = self.to_text().encode("ascii")
        tmp = target.with_name(f".{target.name}.{os.urandom(6).hex()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.fchmod(fd, 0o600)  # independent of the umask
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if overwrite:
                os.replace(tmp, target)
            else:
                try:
                    os.link(tmp, target)  # atomic "create unless it exists"
                except FileExistsError:
                    raise ConfigError(
                        f"identity file {target} already exists; refusing to overwrite it (a "
                        "new key changes your peer id); delete it first or pass overwrite=True"
                    ) from None
        except OSError as exc:
            raise ConfigError(f"cannot write identity file {target}: {exc.strerror}") from exc
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        _fsync_dir(target.parent)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Identity:
        """Read a key file written by `save()`.

        Raises:
            ConfigError: the file is missing, readable by group or others (the message gives
                the `chmod 600` fix), or corrupt, truncated or of an unknown format.
        """
        target = Path(path)
        try:
            fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise ConfigError(f"identity file {target} does not exist; {_GENKEY_HINT}") from None
        except OSError as exc:
            raise ConfigError(f"cannot open identity file {target}: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ConfigError(f"identity file {target} is not a regular file")
            mode = stat.S_IMODE(st.st_mode)
            if mode & 0o077:
                raise ConfigError(
                    f"identity file {target} is accessible by group or others (mode "
                    f"{mode:04o}); protect it with `chmod 600 {target}`"
                )
            raw = os.read(fd, _MAX_KEY_FILE_BYTES + 1)
        finally:
            os.close(fd)
        return cls._from_file_bytes(raw, target)

    @classmethod
    def _from_file_bytes(cls, raw: bytes, source: Path) -> Identity:
        def corrupt(detail: str) -> ConfigError:
            return ConfigError(
                f"identity file {source} is corrupt or truncated ({detail}); restore it from a "
                f"backup, or {_GENKEY_HINT} (a new key changes your peer id)"
            )

        if len(raw) > _MAX_KEY_FILE_BYTES:
            raise corrupt("file too large")
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise corrupt("not a text file") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        if not lines or not lines[0].startswith("meshcore identity "):
            raise ConfigError(f"{source} is not a meshcore identity file; {_GENKEY_HINT}")
        if lines[0] != IDENTITY_FILE_HEADER:
            raise ConfigError(
                f"identity file {source} has format {lines[0]!r}, but this meshcore reads "
                f"{IDENTITY_FILE_HEADER!r}; upgrade meshcore or {_GENKEY_HINT}"
            )
        fields: dict[str, str] = {}
        for line in lines[1:]:
            key, sep, value = line.partition(":")
            if not sep or key in fields:
                raise corrupt(f"unexpected line {key[:20]!r}")
            fields[key.strip()] = value.strip()
        expected = ("peer-id", "x25519-secret", "mlkem768-secret", "checksum")
        missing = [k for k in expected if k not in fields]
        if missing or len(fields) != len(expected):
            raise corrupt(f"missing {', '.join(missing)}" if missing else "unexpected fields")
        try:
            x_secret = base64.b64decode(fields["x25519-secret"], validate=True)
            kem_secret = base64.b64decode(fields["mlkem768-secret"], validate=True)
            peer_id = PeerId.from_text(fields["peer-id"])
        except (binascii.Error, ConfigError):
            raise corrupt("a field does not decode") from None
        body = _file_body(peer_id, x_secret, kem_secret)
        if fields["checksum"] != _file_checksum(body):
            raise corrupt("checksum mismatch")
        try:
            identity = cls.from_secrets(x_secret, kem_secret)
        except DecodeError as exc:
            raise corrupt(str(exc)) from None
        if identity.peer_id != peer_id:
            raise corrupt("the keys do not match the recorded peer id")
        return identity


def _file_body(peer_id: PeerId, x_secret: bytes, kem_secret: bytes) -> str:
    return (
        f"{IDENTITY_FILE_HEADER}\n"
        f"peer-id: {peer_id.to_text()}\n"
        f"x25519-secret: {base64.b64encode(x_secret).decode()}\n"
        f"mlkem768-secret: {base64.b64encode(kem_secret).decode()}\n"
    )


def _file_checksum(body: str) -> str:
    return hashlib.sha256(IDENTITY_FILE_LABEL + body.encode("ascii")).hexdigest()[:32]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
