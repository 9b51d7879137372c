"""SESSION_RESUME (docs/crypto-spec.md §3.10): new keys for a session in one round trip, no 0-RTT
data.

The client proves it holds the resumption secret `rs` with a MAC; both sides contribute a
fresh nonce and an X25519 ephemeral, so resumed keys never repeat earlier ones. The server
answers with an ACK no larger than the request, caches that ACK for retransmissions, and
treats the resume as done only when the first frame under the new keys authenticates.

Byte layouts (integers little-endian)::

    RESUME (88 B)      0 type=5 u8 | 1 version u8 | 2 reserved u16 | 4 idx_I' u32
                       8 resume_id (16) | 24 n_c (16) | 40 e_c.x (32) | 72 mac (16)
    RESUME_ACK (76 B)  0 type=6 u8 | 1 version u8 | 2 reserved u16 | 4 idx_R' u32
                       8 idx_I' u32 | 12 n_s (16) | 28 e_s.x (32) | 60 tag (16)

    resume_id = HKDF-Expand(rs, "meshcore/1 resume id", 16)
    mac       = HMAC-SHA256(HKDF-Expand(rs, "meshcore/1 resume mac", 32), RESUME[:72])[:16]
    prk       = HKDF-Extract(salt = rs, ikm = X25519(e_c, e_s))
    th        = SHA-256("meshcore/1 resume th" || RESUME || ACK[:60])
    k_i2r', k_r2i', rs', kc = HKDF-Expand(prk, label || th, 32) for the four labels below
    tag       = ChaCha20-Poly1305(kc, nonce 0, plaintext "", AD = th)
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

import attrs
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshcore.errors import (
    AuthenticationError,
    DecodeError,
    HandshakeError,
    ProtocolError,
    ReplayError,
    UnknownReceiverIndex,
)
from meshcore.proto.codec import U8, U16LE, U32LE, Bytes, Const, Layout
from meshcore.proto.constants import (
    AEAD_TAG_BYTES,
    MAC_BYTES,
    PROTOCOL_VERSION,
    RESUME_MAX_AGE_S,
    X25519_KEY_BYTES,
)
from meshcore.proto.framing import ReceiveKey, SendKey, peek_receiver_index
from meshcore.proto.packet import PacketType
from meshcore.proto.primitives import DEFAULT_PRIMITIVES, Primitives
from meshcore.proto.symmetric import aead_nonce, hkdf_expand, hkdf_extract

__all__ = [
    "LABEL_RESUME_I2R",
    "LABEL_RESUME_ID",
    "LABEL_RESUME_KC",
    "LABEL_RESUME_MAC",
    "LABEL_RESUME_NEXT",
    "LABEL_RESUME_R2I",
    "LABEL_RESUME_TH",
    "RESUME_ACK_BYTES",
    "RESUME_ACK_TYPE",
    "RESUME_BYTES",
    "RESUME_MAX_PENDING",
    "RESUME_TYPE",
    "Resume",
    "ResumeAck",
    "ResumeClient",
    "ResumeClientState",
    "ResumeConfirmed",
    "ResumeServer",
    "ResumedKeys",
    "decode_resume_ack_untrusted",
    "decode_resume_untrusted",
    "resume_id_of",
]

RESUME_TYPE: Final = PacketType.RESUME
RESUME_ACK_TYPE: Final = PacketType.RESUME_ACK
RESUME_ID_BYTES: Final = 16
NONCE_BYTES: Final = 16
SECRET_BYTES: Final = 32
RESUME_MAX_PENDING: Final = 4
"""Distinct RESUME attempts (different n_c) answered per resumption secret; older are dropped."""

LABEL_RESUME_ID: Final = b"meshcore/1 resume id"
LABEL_RESUME_MAC: Final = b"meshcore/1 resume mac"
LABEL_RESUME_TH: Final = b"meshcore/1 resume th"
LABEL_RESUME_I2R: Final = b"meshcore/1 resume i2r"
LABEL_RESUME_R2I: Final = b"meshcore/1 resume r2i"
LABEL_RESUME_NEXT: Final = b"meshcore/1 resume next"
LABEL_RESUME_KC: Final = b"meshcore/1 resume kc"

_MAX_INDEX: Final = 0xFFFFFFFF

Random = Callable[[int], bytes]
OwnerT = TypeVar("OwnerT", bound=Hashable)

_REJECTED: Final = (
    "RESUME rejected: unknown, expired or already used resumption, or a bad MAC; "
    "run a full handshake"
)


_ID: Final = Bytes(RESUME_ID_BYTES)
_NONCE: Final = Bytes(NONCE_BYTES)
_X25519: Final = Bytes(X25519_KEY_BYTES)
_MAC: Final = Bytes(MAC_BYTES, secret=True)
_TAG: Final = Bytes(AEAD_TAG_BYTES)


@attrs.frozen
class Resume:
    """RESUME: the client asks to resume the session whose secret derives `resume_id`."""

    sender_index: int = attrs.field(**U32LE.spec)
    resume_id: bytes = attrs.field(**_ID.spec)
    client_nonce: bytes = attrs.field(**_NONCE.spec)
    ephemeral: bytes = attrs.field(**_X25519.spec)
    mac: bytes = attrs.field(**_MAC.spec)

    def encode(self) -> bytes:
        """The canonical 88 bytes."""
        return _RESUME.encode(self)


@attrs.frozen
class ResumeAck:
    """RESUME_ACK: the server's nonce, ephemeral and key-confirmation tag."""

    sender_index: int = attrs.field(**U32LE.spec)
    receiver_index: int = attrs.field(**U32LE.spec)
    server_nonce: bytes = attrs.field(**_NONCE.spec)
    ephemeral: bytes = attrs.field(**_X25519.spec)
    confirmation: bytes = attrs.field(**_TAG.spec)

    def encode(self) -> bytes:
        """The canonical 76 bytes."""
        return _ACK.encode(self)


def _envelope(msg_type: PacketType) -> tuple[Const, Const, Const]:
    return (
        Const("type", U8, msg_type),
        Const("version", U8, PROTOCOL_VERSION),
        Const("reserved", U16LE, 0),
    )


_RESUME: Final = Layout(
    Resume,
    (*_envelope(RESUME_TYPE), "sender_index", "resume_id", "client_nonce", "ephemeral", "mac"),
)
_ACK: Final = Layout(
    ResumeAck,
    (
        *_envelope(RESUME_ACK_TYPE), "sender_index", "receiver_index", "server_nonce",
        "ephemeral", "confirmation",
    ),
)  # fmt: skip
RESUME_BYTES: Final = _RESUME.fixed_size  # 88
RESUME_ACK_BYTES: Final = _ACK.fixed_size  # 76
_RESUME_SIGNED: Final = _RESUME.offset_of("mac")  # 72: what the MAC covers
_ACK_SIGNED: Final = _ACK.offset_of("confirmation")  # 60: what the transcript hash covers


def decode_resume_untrusted(data: bytes | bytearray | memoryview) -> Resume:
    """Parse a RESUME from the network; raises DecodeError and nothing else."""
    if len(data) != RESUME_BYTES:
        raise DecodeError(f"a RESUME must be {RESUME_BYTES} bytes, got {len(data)}")
    msg: Resume = _RESUME.decode(memoryview(bytes(data)))
    return msg


def decode_resume_ack_untrusted(data: bytes | bytearray | memoryview) -> ResumeAck:
    """Parse a RESUME_ACK from the network; raises DecodeError and nothing else."""
    if len(data) != RESUME_ACK_BYTES:
        raise DecodeError(f"a RESUME_ACK must be {RESUME_ACK_BYTES} bytes, got {len(data)}")
    msg: ResumeAck = _ACK.decode(memoryview(bytes(data)))
    return msg


def resume_id_of(resume_secret: bytes) -> bytes:
    """The 16-byte public identifier of a resumption secret (pseudorandom, single-use)."""
    return hkdf_expand(resume_secret, LABEL_RESUME_ID, RESUME_ID_BYTES)


def _resume_mac(resume_secret: bytes, signed: bytes) -> bytes:
    key = hkdf_expand(resume_secret, LABEL_RESUME_MAC, SECRET_BYTES)
    return hmac.digest(key, signed, "sha256")[:MAC_BYTES]


@attrs.frozen(eq=False)
class ResumedKeys:
    """The outcome of a resume: a fresh key pair, its indices, and the next resumption secret.

    Install the keys into the session's KeyRing exactly once; `next_resume_secret` replaces
    the old secret (a ratchet: every resumption secret is used once).
    """

    send_key: SendKey
    receive_key: ReceiveKey
    local_index: int
    remote_index: int
    next_resume_secret: bytes = attrs.field(repr=False)
    created_at: float


@attrs.frozen
class _Derived:
    i2r: bytes = attrs.field(repr=False)
    r2i: bytes = attrs.field(repr=False)
    next_secret: bytes = attrs.field(repr=False)
    confirmation: bytes


def _derive(resume_secret: bytes, shared: bytes, resume: bytes, ack_signed: bytes) -> _Derived:
    prk = hkdf_extract(resume_secret, shared)
    th = hashlib.sha256(LABEL_RESUME_TH + resume + ack_signed).digest()
    kc = hkdf_expand(prk, LABEL_RESUME_KC + th, SECRET_BYTES)
    return _Derived(
        i2r=hkdf_expand(prk, LABEL_RESUME_I2R + th, SECRET_BYTES),
        r2i=hkdf_expand(prk, LABEL_RESUME_R2I + th, SECRET_BYTES),
        next_secret=hkdf_expand(prk, LABEL_RESUME_NEXT + th, SECRET_BYTES),
        confirmation=ChaCha20Poly1305(kc).encrypt(aead_nonce(0), b"", th),
    )


def _x25519(primitives: Primitives, secret: bytes, public: bytes) -> bytes:
    try:
        return primitives.x25519(secret, public)
    except HandshakeError:  # low-order or malformed point
        raise AuthenticationError(_REJECTED) from None


class ResumeClientState(enum.Enum):
    """Where a `ResumeClient` is."""

    NEW = "new"
    """Constructed; `start()` not called yet."""
    AWAITING_ACK = "awaiting_ack"
    """RESUME produced; waiting for the server's ACK (retransmit `start()` as needed)."""
    RESUMED = "resumed"
    """ACK accepted and keys handed out once; the ephemeral secret is erased."""


class ResumeClient:
    """The side that asks to resume: `start()` gives RESUME, `receive_ack()` gives the keys.

    Its first frame sealed with the new send key is what confirms the resume to the server,
    so send one promptly (a keepalive will do). The keys are handed out exactly once: a
    duplicated ACK raises ReplayError instead of resetting counters (docs/crypto-spec.md pitfall 9).
    """

    def __init__(
        self,
        resume_secret: bytes,
        local_index: int,
        now: float,
        random: Random = os.urandom,
        *,
        primitives: Primitives | None = None,
    ) -> None:
        """`local_index`: the receiver index we choose for the resumed session (idx_I')."""
        if len(resume_secret) != SECRET_BYTES:
            raise ValueError(f"a resumption secret is {SECRET_BYTES} bytes")
        if not 0 <= local_index <= _MAX_INDEX:
            raise ValueError(f"local_index must be a u32, got {local_index}")
        self._secret = resume_secret
        self._local_index = local_index
        self._now = now
        self._random = random
        self._prims = primitives or DEFAULT_PRIMITIVES
        self._state = ResumeClientState.NEW
        self._ephemeral_secret: bytes | None = None
        self._resume = b""

    @property
    def state(self) -> ResumeClientState:
        return self._state

    @property
    def local_index(self) -> int:
        return self._local_index

    def start(self) -> bytes:
        """The RESUME message; calling again returns the same bytes (for retransmission)."""
        if self._state is ResumeClientState.NEW:
            secret = self._random(X25519_KEY_BYTES)
            nonce = self._random(NONCE_BYTES)
            public = self._prims.x25519_public(secret)
            unsigned = Resume(
                self._local_index, resume_id_of(self._secret), nonce, public, bytes(MAC_BYTES)
            ).encode()[:_RESUME_SIGNED]
            self._resume = unsigned + _resume_mac(self._secret, unsigned)
            self._ephemeral_secret = secret
            self._state = ResumeClientState.AWAITING_ACK
        return self._resume

    def receive_ack(
        self, data: bytes | bytearray | memoryview, now: float | None = None
    ) -> ResumedKeys:
        """Check the server's ACK and derive the resumed keys (created at `now`, by default the
        `now` given to the constructor).

        Raises DecodeError for a malformed ACK, AuthenticationError for one that does not
        answer our RESUME (nothing changes: the genuine ACK is still accepted), ReplayError
        once the keys were already handed out, ProtocolError before `start()`.
        """
        if self._state is ResumeClientState.RESUMED:
            raise ReplayError("RESUME_ACK after the resume completed; dropped")
        ephemeral_secret = self._ephemeral_secret
        if self._state is not ResumeClientState.AWAITING_ACK or ephemeral_secret is None:
            raise ProtocolError("unexpected RESUME_ACK: no resume is in progress")
        ack = decode_resume_ack_untrusted(data)
        if ack.receiver_index != self._local_index:
            raise AuthenticationError("RESUME_ACK answers another resume; dropped")
        shared = _x25519(self._prims, ephemeral_secret, ack.ephemeral)
        ack_bytes = bytes(data)
        derived = _derive(self._secret, shared, self._resume, ack_bytes[:_ACK_SIGNED])
        if not hmac.compare_digest(derived.confirmation, ack.confirmation):
            raise AuthenticationError("RESUME_ACK failed key confirmation; dropped")
        created = self._now if now is None else now
        self._ephemeral_secret = None
        self._state = ResumeClientState.RESUMED
        return ResumedKeys(
            send_key=SendKey(derived.i2r, ack.sender_index, created),
            receive_key=ReceiveKey(derived.r2i, self._local_index, created),
            local_index=self._local_index,
            remote_index=ack.sender_index,
            next_resume_secret=derived.next_secret,
            created_at=created,
        )

    def __repr__(self) -> str:
        return f"ResumeClient(local_index={self._local_index}, state={self._state.value})"


@attrs.frozen(eq=False)
class ResumeConfirmed(Generic[OwnerT]):
    """A resume the server accepted: the confirming frame authenticated under the new keys.

    `owner` names the session (as given to `ResumeServer.add`); `plaintext` is the confirming
    frame's content, to be handled like any other received frame.
    """

    owner: OwnerT
    keys: ResumedKeys
    plaintext: bytes = attrs.field(repr=False)


@attrs.define(eq=False)
class _Pending:
    resume: bytes
    ack: bytes
    keys: ResumedKeys


@attrs.define(eq=False)
class _Entry(Generic[OwnerT]):
    owner: OwnerT
    secret: bytes = attrs.field(repr=False)
    resume_id: bytes
    expires_at: float
    pending: dict[bytes, _Pending] = attrs.Factory(dict)


class ResumeServer(Generic[OwnerT]):
    """The side that answers RESUMEs, for all sessions of one node.

    It holds one resumption secret per session (`owner`), only in memory: a restart means a
    full handshake. Each secret is usable at most once: the first confirmed resume deletes it
    and holds the ratcheted next secret instead, until the same deadline, RESUME_MAX_AGE_S
    after the full handshake that `add` registered (a resume is no substitute for one). A
    retransmitted RESUME (same n_c) gets the byte-identical cached ACK; the ACK is never
    larger than the RESUME (no amplification).
    """

    def __init__(
        self,
        *,
        random: Random = os.urandom,
        allocate_index: Callable[[], int] | None = None,
        primitives: Primitives | None = None,
    ) -> None:
        """`allocate_index` picks our receiver index for a resumed session (default: random;
        give one that avoids indices in use)."""
        self._random = random
        self._allocate_index = allocate_index or (
            lambda: int.from_bytes(random(4), "little") & _MAX_INDEX
        )
        self._prims = primitives or DEFAULT_PRIMITIVES
        self._by_id: dict[bytes, _Entry[OwnerT]] = {}
        self._by_owner: dict[OwnerT, _Entry[OwnerT]] = {}
        self._by_index: dict[int, tuple[_Entry[OwnerT], bytes]] = {}

    def __len__(self) -> int:
        """Resumption secrets held."""
        return len(self._by_id)

    def add(self, owner: OwnerT, resume_secret: bytes, now: float) -> None:
        """Hold `resume_secret` from a full handshake completed at `now` for the session
        `owner`, until now + RESUME_MAX_AGE_S.

        Replaces the owner's previous secret and any resume of it in progress. The client
        side of a resume also calls this with its `next_resume_secret` if it serves resumes
        for the session too, so that both ends forget the used secret.
        """
        if len(resume_secret) != SECRET_BYTES:
            raise ValueError(f"a resumption secret is {SECRET_BYTES} bytes")
        self._hold(owner, resume_secret, now + RESUME_MAX_AGE_S)

    def _hold(self, owner: OwnerT, resume_secret: bytes, expires_at: float) -> None:
        self.remove(owner)
        resume_id = resume_id_of(resume_secret)
        stale = self._by_id.get(resume_id)
        if stale is not None:
            self._drop(stale)
        entry = _Entry(owner, resume_secret, resume_id, expires_at)
        self._by_id[resume_id] = entry
        self._by_owner[owner] = entry

    def remove(self, owner: OwnerT) -> None:
        """Forget the session's secret (e.g. the session closed, or it resumed elsewhere)."""
        entry = self._by_owner.get(owner)
        if entry is not None:
            self._drop(entry)

    def expire(self, now: float) -> None:
        """Forget every secret past RESUME_MAX_AGE_S."""
        for entry in [e for e in self._by_id.values() if now >= e.expires_at]:
            self._drop(entry)

    def is_pending(self, receiver_index: int) -> bool:
        """Whether frames for `receiver_index` belong to a resume awaiting confirmation."""
        return receiver_index in self._by_index

    def receive(self, data: bytes | bytearray | memoryview, now: float) -> bytes:
        """Answer a RESUME with a RESUME_ACK (76 bytes, never more than the 88 received).

        Raises DecodeError for a malformed RESUME and AuthenticationError for one that is
        unknown, expired, already used or forged. No keys are usable before `confirm`.
        """
        resume = decode_resume_untrusted(data)
        entry = self._by_id.get(resume.resume_id)
        if entry is None:
            raise AuthenticationError(_REJECTED)
        if now >= entry.expires_at:
            self._drop(entry)
            raise AuthenticationError(_REJECTED)
        resume_bytes = bytes(data)
        expected = _resume_mac(entry.secret, resume_bytes[:_RESUME_SIGNED])
        if not hmac.compare_digest(expected, resume.mac):
            raise AuthenticationError(_REJECTED)
        cached = entry.pending.get(resume.client_nonce)
        if cached is not None:
            if not hmac.compare_digest(cached.resume, resume_bytes):
                raise AuthenticationError(_REJECTED)  # n_c reused with other content
            return cached.ack
        return self._answer(entry, resume, resume_bytes, now)

    def confirm(self, frame: bytes | bytearray | memoryview, now: float) -> ResumeConfirmed[OwnerT]:
        """Accept a resume: `frame` is the first transport frame under its new keys.

        On success the old secret is gone for good, the next one is held in its place, and the
        returned keys (their window already holding `frame`) go into the session's KeyRing.
        Raises UnknownReceiverIndex when no resume awaits `frame`, and what ReceiveKey.open
        raises when it does not authenticate (nothing changes then).
        """
        index = peek_receiver_index(frame)
        found = self._by_index.get(index)
        if found is None:
            raise UnknownReceiverIndex(
                f"no resume awaits confirmation under receiver index {index}",
                receiver_index=index,
            )
        entry, nonce = found
        if now >= entry.expires_at:
            self._drop(entry)
            raise AuthenticationError(_REJECTED)
        keys = entry.pending[nonce].keys
        plaintext = keys.receive_key.open(frame, now)
        self._drop(entry)
        # The ratchet keeps the deadline of the full handshake that started the chain, so
        # resumes can never postpone the next post-quantum handshake past RESUME_MAX_AGE_S.
        self._hold(entry.owner, keys.next_resume_secret, entry.expires_at)
        return ResumeConfirmed(owner=entry.owner, keys=keys, plaintext=plaintext)

    def _answer(
        self, entry: _Entry[OwnerT], resume: Resume, resume_bytes: bytes, now: float
    ) -> bytes:
        secret = self._random(X25519_KEY_BYTES)
        public = self._prims.x25519_public(secret)
        shared = _x25519(self._prims, secret, resume.ephemeral)
        local_index = self._allocate_index()
        for _ in range(8):  # never shadow another resume in progress
            if local_index not in self._by_index:
                break
            local_index = self._allocate_index()
        else:
            other, other_nonce = self._by_index.pop(local_index)
            del other.pending[other_nonce]
        unsigned = ResumeAck(
            local_index,
            resume.sender_index,
            self._random(NONCE_BYTES),
            public,
            bytes(AEAD_TAG_BYTES),
        )
        signed = unsigned.encode()[:_ACK_SIGNED]
        derived = _derive(entry.secret, shared, resume_bytes, signed)
        ack = signed + derived.confirmation
        keys = ResumedKeys(
            send_key=SendKey(derived.r2i, resume.sender_index, now),
            receive_key=ReceiveKey(derived.i2r, local_index, now),
            local_index=local_index,
            remote_index=resume.sender_index,
            next_resume_secret=derived.next_secret,
            created_at=now,
        )
        if len(entry.pending) >= RESUME_MAX_PENDING:
            oldest = next(iter(entry.pending))
            self._by_index.pop(entry.pending.pop(oldest).keys.local_index, None)
        entry.pending[resume.client_nonce] = _Pending(resume_bytes, ack, keys)
        self._by_index[local_index] = (entry, resume.client_nonce)
        return ack

    def _drop(self, entry: _Entry[OwnerT]) -> None:
        for pending in entry.pending.values():
            self._by_index.pop(pending.keys.local_index, None)
        entry.pending.clear()
        if self._by_id.get(entry.resume_id) is entry:
            del self._by_id[entry.resume_id]
        if self._by_owner.get(entry.owner) is entry:
            del self._by_owner[entry.owner]

    def __repr__(self) -> str:
        return f"ResumeServer(secrets={len(self._by_id)}, pending={len(self._by_index)})"
