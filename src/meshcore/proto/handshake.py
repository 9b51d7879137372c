"""The meshcore/1 pqIK-hyb handshake (docs/crypto-spec.md §3.3): three messages, hybrid X25519 +
ML-KEM-768.

`Initiator` and `Responder` are sans-IO machines: bytes and `now` in, bytes and a
`HandshakeResult` out; the messages and their codec are in `handshake_messages` (re-exported
here). Every failed check raises the same `HandshakeError`, so a failure never tells an
attacker which check it tripped. The responder keeps no per-handshake state: its msg2
carries an encrypted "biscuit" that msg3 must return (Rosenpass).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
from collections.abc import Callable
from typing import Final

import attrs
from nacl import bindings as _nacl

from meshcore.errors import ConfigError, DecodeError, HandshakeError
from meshcore.proto.constants import (
    BISCUIT_KEY_ROTATE_S,
    BISCUIT_MAX_AGE_S,
    HANDSHAKE_TIMEOUT_S,
    MAC_BYTES,
    MAX_HANDSHAKE_BYTES,
    PROTOCOL_VERSION,
    SUITES,
)
from meshcore.proto.handshake_messages import (
    BISCUIT_BYTES,
    BISCUIT_KEY_ID_BYTES,
    BISCUIT_NONCE_BYTES,
    BISCUIT_PLAINTEXT,
    HANDSHAKE_CONFIRM_MIN_BYTES,
    HANDSHAKE_INIT_BYTES,
    HANDSHAKE_RESPONSE_BYTES,
    INIT_MAC1_OFFSET,
    MAX_CONFIRM_PAYLOAD_BYTES,
    MSG_CONFIRM,
    MSG_INIT,
    MSG_RESPONSE,
    RESPONSE_MAC1_OFFSET,
    HandshakeConfirm,
    HandshakeInit,
    HandshakeResponse,
    confirm_header,
    decode_handshake_confirm_untrusted,
    decode_handshake_init_untrusted,
    decode_handshake_response_untrusted,
    init_header,
    response_header,
)
from meshcore.proto.identity import Identity, PeerId, PublicBundle
from meshcore.proto.primitives import DEFAULT_PRIMITIVES, KeyPair, Primitives
from meshcore.proto.symmetric import SymmetricState, export

__all__ = [
    "BISCUIT_BYTES",
    "HANDSHAKE_CONFIRM_MIN_BYTES",
    "HANDSHAKE_INIT_BYTES",
    "HANDSHAKE_RESPONSE_BYTES",
    "LABEL_MAC1",
    "LABEL_MSG3",
    "LABEL_SAS",
    "MAX_CONFIRM_PAYLOAD_BYTES",
    "MSG_CONFIRM",
    "MSG_INIT",
    "MSG_RESPONSE",
    "SAS_BYTES",
    "HandshakeConfirm",
    "HandshakeInit",
    "HandshakeResponse",
    "HandshakeResult",
    "HandshakeRole",
    "Initiator",
    "InitiatorState",
    "Lookup",
    "Responder",
    "decode_handshake_confirm_untrusted",
    "decode_handshake_init_untrusted",
    "decode_handshake_response_untrusted",
    "mac1_key",
    "prologue",
]

LABEL_MAC1: Final = b"mac1----"
"""mac1 key = SHA-256(LABEL_MAC1 ‖ receiver's X25519 public ‖ receiver's ML-KEM public)."""
LABEL_MSG3: Final = b"msg3"
"""Mixed into ck before msg3 so the stateless responder can rebuild the AEAD key from ck."""
LABEL_SAS: Final = b"sas"
"""Exporter label of the short authentication string (docs/crypto-spec.md §3.5)."""
SAS_BYTES: Final = 5
_SAS_ALPHABET: Final = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, as peer ids

_KEEP_BISCUIT_KEYS: Final = 2
_MAX_NETWORK_ID_BYTES: Final = 255
_ZERO_MAC: Final = bytes(MAC_BYTES)

Lookup = Callable[[PeerId], PublicBundle | None]
"""The responder's allow-list: the pinned bundle of a peer id, or None to refuse it."""
Random = Callable[[int], bytes]


# --- shared pieces -------------------------------------------------------------------------


def prologue(network_id: bytes, responder: PublicBundle) -> bytes:
    """version ‖ SUITES ‖ len(network_id) ‖ network_id ‖ S_R.x ‖ S_R.kem (docs/crypto-spec.md
    §3.3)."""
    return (
        bytes((PROTOCOL_VERSION,))
        + SUITES
        + bytes((len(network_id),))
        + network_id
        + responder.x25519_public
        + responder.kem_public
    )


def mac1_key(receiver: PublicBundle) -> bytes:
    """The key of the mac1 that `receiver` checks: public, so it only proves "aimed at me"."""
    return hashlib.sha256(LABEL_MAC1 + receiver.x25519_public + receiver.kem_public).digest()


def _mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2b(data, key=key, digest_size=MAC_BYTES).digest()


def _check_mac1(key: bytes, data: bytes, mac1_offset: int) -> None:
    """The cheap filter (keyed BLAKE2b, < 1 µs), checked before any asymmetric work."""
    if not hmac.compare_digest(
        _mac(key, data[:mac1_offset]), data[mac1_offset : mac1_offset + MAC_BYTES]
    ):
        raise HandshakeError()


def _as_bytes(data: object) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise HandshakeError()
    return bytes(data)


def _check_network_id(network_id: bytes) -> bytes:
    if not isinstance(network_id, bytes) or len(network_id) > _MAX_NETWORK_ID_BYTES:
        raise ConfigError(f"network_id must be bytes of at most {_MAX_NETWORK_ID_BYTES} bytes")
    return network_id


def _random_index(random: Random) -> Callable[[], int]:
    return lambda: int.from_bytes(random(4), "little")


class HandshakeRole(enum.Enum):
    """Which side of the handshake this end played."""

    INITIATOR = "initiator"
    """Sent msg1 and msg3; sends with k_i2r."""
    RESPONDER = "responder"
    """Sent msg2; sends with k_r2i."""


@attrs.frozen(eq=False)
class HandshakeResult:
    """A completed handshake: who the peer is, the indices and the session's secrets.

    Secrets (keys, resumption and exporter secrets, transcript hash, payload) never appear
    in repr. `payload` is the application data carried in msg3 (received by the responder;
    the initiator's copy is what it sent).
    """

    peer_id: PeerId
    peer: PublicBundle
    role: HandshakeRole
    local_index: int
    remote_index: int
    send_key: bytes = attrs.field(repr=False)
    receive_key: bytes = attrs.field(repr=False)
    resume_secret: bytes = attrs.field(repr=False)
    transcript_hash: bytes = attrs.field(repr=False)
    payload: bytes = attrs.field(repr=False)
    created_at: float
    exporter_secret: bytes = attrs.field(repr=False)

    def exporter(self, label: bytes, context: bytes, length: int) -> bytes:
        """Keying material for `label` and `context`, identical on both sides (§3.5)."""
        return export(self.exporter_secret, label, context, length)

    def sas(self) -> str:
        """A short authentication string, e.g. "k3m9-x2qa": compare it aloud on first contact."""
        n = int.from_bytes(self.exporter(LABEL_SAS, b"", SAS_BYTES), "big")
        chars = "".join(_SAS_ALPHABET[(n >> (35 - 5 * i)) & 31] for i in range(8))
        return f"{chars[:4]}-{chars[4:]}"


# --- initiator -----------------------------------------------------------------------------


class InitiatorState(enum.Enum):
    """Where an `Initiator` is in the handshake."""

    NEW = "new"
    """Constructed; `start()` not called yet."""
    AWAITING_RESPONSE = "awaiting_response"
    """msg1 sent; waiting for a msg2 that authenticates the responder."""
    ESTABLISHED = "established"
    """msg2 accepted and msg3 produced; ephemeral secrets are erased."""
    CLOSED = "closed"
    """Abandoned with `close()`; ephemeral secrets are erased."""


class Initiator:
    """The initiator's side: `start()` gives msg1, `receive_response()` gives msg3 and keys.

    A msg2 that fails any check raises `HandshakeError` and changes nothing, so injected junk
    cannot kill a handshake in flight; the genuine msg2 is still accepted afterwards.
    """

    def __init__(
        self,
        local: Identity,
        remote: PublicBundle,
        *,
        network_id: bytes = b"",
        primitives: Primitives | None = None,
        random: Random = os.urandom,
        local_index: int | None = None,
    ) -> None:
        if remote.peer_id == local.peer_id:
            raise ConfigError("a peer cannot handshake with its own identity")
        self._local = local
        self._remote = remote
        self._network_id = _check_network_id(network_id)
        self._prims = primitives or DEFAULT_PRIMITIVES
        self._local_index = (
            local_index if local_index is not None else _random_index(random)()
        ) & 0xFFFF_FFFF
        self._mac1_local = mac1_key(local.public)  # msg2 is checked with our own keys
        self._mac1_remote = mac1_key(remote)
        self._status = InitiatorState.NEW
        self._started_at = 0.0
        self._sym: SymmetricState | None = None
        self._e_x: KeyPair | None = None
        self._e_kem: KeyPair | None = None

    @property
    def state(self) -> InitiatorState:
        """Where the handshake is."""
        return self._status

    @property
    def local_index(self) -> int:
        """Our index: msg2 carries it as its receiver index, so drivers route msg2 by it."""
        return self._local_index

    @property
    def started_at(self) -> float:
        """The `now` given to `start()`."""
        return self._started_at

    def start(self, now: float) -> bytes:
        """Produce msg1 with fresh ephemeral keys."""
        if self._status is not InitiatorState.NEW:
            raise HandshakeError("Initiator.start() may be called only once")
        p, remote = self._prims, self._remote
        sym = SymmetricState()
        sym.mix_hash(prologue(self._network_id, remote))
        header = init_header(self._local_index)
        sym.mix_hash(header)
        e_x = p.x25519_keypair()
        sym.mix_hash(e_x.public)
        sym.mix_key(p.x25519(e_x.secret, remote.x25519_public))  # es
        e_kem = p.kem_keypair()
        sym.mix_hash(e_kem.public)
        ct_r, ss_r = p.kem_encaps(remote.kem_public)
        sym.mix_hash(ct_r)
        sym.mix_key(ss_r)  # ss_R
        encrypted_identity = sym.encrypt_and_hash(self._local.peer_id.digest)
        sym.mix_hash(self._local.public.x25519_public + self._local.public.kem_public)
        body = header + e_x.public + e_kem.public + ct_r + encrypted_identity
        self._sym, self._e_x, self._e_kem = sym, e_x, e_kem
        self._started_at = now
        self._status = InitiatorState.AWAITING_RESPONSE
        return body + _mac(self._mac1_remote, body) + _ZERO_MAC

    def receive_response(
        self, msg2: bytes, now: float, payload: bytes = b""
    ) -> tuple[bytes, HandshakeResult]:
        """Authenticate the responder from msg2; return msg3 (carrying `payload`) and the keys.

        Raises:
            HandshakeError: msg2 is not a valid answer to our msg1 (state unchanged), the
                handshake is older than HANDSHAKE_TIMEOUT_S, or it is not awaiting a response.
        """
        if len(payload) > MAX_CONFIRM_PAYLOAD_BYTES:
            raise HandshakeError(f"msg3 payload is limited to {MAX_CONFIRM_PAYLOAD_BYTES} bytes")
        sym, e_x, e_kem = self._sym, self._e_x, self._e_kem
        if self._status is not InitiatorState.AWAITING_RESPONSE or not (sym and e_x and e_kem):
            raise HandshakeError()
        if not 0.0 <= now - self._started_at <= HANDSHAKE_TIMEOUT_S:
            raise HandshakeError()
        data = _as_bytes(msg2)
        if len(data) != HANDSHAKE_RESPONSE_BYTES:
            raise HandshakeError()
        _check_mac1(self._mac1_local, data, RESPONSE_MAC1_OFFSET)
        try:
            m = decode_handshake_response_untrusted(data)
        except DecodeError as exc:
            raise HandshakeError() from exc
        if m.receiver_index != self._local_index:
            raise HandshakeError()
        p, local = self._prims, self._local
        s = sym.copy()
        s.mix_hash(m.header())
        s.mix_hash(m.ephemeral_x25519)
        s.mix_key(p.x25519(e_x.secret, m.ephemeral_x25519))  # ee
        s.mix_key(p.x25519(local.x25519_secret, m.ephemeral_x25519))  # se
        s.mix_hash(m.ephemeral_ciphertext)
        s.mix_key(p.kem_decaps(e_kem.secret, m.ephemeral_ciphertext))  # ss_e
        s.mix_hash(m.static_ciphertext)
        s.mix_key(p.kem_decaps(local.kem_secret, m.static_ciphertext))  # ss_I
        s.decrypt_and_hash(m.confirmation)  # the responder is now authenticated
        header = confirm_header(m.sender_index, self._local_index)
        s.mix_hash(header)
        s.mix_hash(m.biscuit)
        s.mix_key(LABEL_MSG3)
        body = header + m.biscuit + s.encrypt_and_hash(payload)
        secrets = s.split()
        self._drop_secrets(InitiatorState.ESTABLISHED)
        result = HandshakeResult(
            peer_id=self._remote.peer_id,
            peer=self._remote,
            role=HandshakeRole.INITIATOR,
            local_index=self._local_index,
            remote_index=m.sender_index,
            send_key=secrets.i2r,
            receive_key=secrets.r2i,
            resume_secret=secrets.resume_secret,
            transcript_hash=secrets.transcript_hash,
            payload=payload,
            created_at=now,
            exporter_secret=secrets.exporter_secret,
        )
        return body + _mac(self._mac1_remote, body), result

    def close(self) -> None:
        """Abandon the handshake (e.g. on timeout) and drop the ephemeral secrets."""
        if self._status is not InitiatorState.ESTABLISHED:
            self._drop_secrets(InitiatorState.CLOSED)

    def _drop_secrets(self, status: InitiatorState) -> None:
        self._sym = self._e_x = self._e_kem = None
        self._status = status


# --- responder -----------------------------------------------------------------------------


@attrs.frozen
class _BiscuitKey:
    key_id: bytes
    key: bytes = attrs.field(repr=False)
    created_at: float


class Responder:
    """The responder's side, one per identity and long-lived; stateless per handshake.

    `respond(msg1)` returns msg2 and remembers nothing about it: the handshake state travels
    in msg2's biscuit, sealed under a key rotated every BISCUIT_KEY_ROTATE_S (two kept).
    `confirm(msg3)` opens the biscuit and accepts it at most once per peer (a monotonic
    biscuit number), within BISCUIT_MAX_AGE_S. The only state kept is one counter per peer
    that completed a handshake, so junk never grows it.
    """

    def __init__(
        self,
        local: Identity,
        lookup: Lookup,
        *,
        network_id: bytes = b"",
        primitives: Primitives | None = None,
        random: Random = os.urandom,
        allocate_index: Callable[[], int] | None = None,
    ) -> None:
        self._local = local
        self._lookup = lookup
        self._prims = primitives or DEFAULT_PRIMITIVES
        self._random = random
        self._allocate_index = allocate_index or _random_index(random)
        self._base = SymmetricState()
        self._base.mix_hash(prologue(_check_network_id(network_id), local.public))
        self._mac1_key = mac1_key(local.public)
        self._biscuit_keys: list[_BiscuitKey] = []
        self._biscuit_counter = 0
        self._biscuit_used: dict[PeerId, int] = {}

    @property
    def identity(self) -> Identity:
        """The identity this responder answers for."""
        return self._local

    def respond(self, msg1: bytes, now: float) -> bytes:
        """Answer a msg1 with a msg2 (a replayed msg1 simply gets a fresh msg2).

        Raises:
            HandshakeError: msg1 is malformed, not aimed at us (mac1), not decryptable, or
                from a peer that `lookup` does not accept.
        """
        data = _as_bytes(msg1)
        if len(data) != HANDSHAKE_INIT_BYTES:
            raise HandshakeError()
        _check_mac1(self._mac1_key, data, INIT_MAC1_OFFSET)
        try:
            m = decode_handshake_init_untrusted(data)
        except DecodeError as exc:
            raise HandshakeError() from exc
        p, local = self._prims, self._local
        s = self._base.copy()
        s.mix_hash(m.header())
        s.mix_hash(m.ephemeral_x25519)
        s.mix_key(p.x25519(local.x25519_secret, m.ephemeral_x25519))  # es
        s.mix_hash(m.ephemeral_kem)
        s.mix_hash(m.static_ciphertext)
        s.mix_key(p.kem_decaps(local.kem_secret, m.static_ciphertext))  # ss_R
        peer_id = PeerId(s.decrypt_and_hash(m.encrypted_identity))
        peer = self._accepted_peer(peer_id)
        s.mix_hash(peer.x25519_public + peer.kem_public)
        index = self._allocate_index() & 0xFFFF_FFFF
        header = response_header(index, m.sender_index)
        s.mix_hash(header)
        e_x = p.x25519_keypair()
        e_public = e_x.public
        s.mix_hash(e_public)
        s.mix_key(p.x25519(e_x.secret, m.ephemeral_x25519))  # ee
        s.mix_key(p.x25519(e_x.secret, peer.x25519_public))  # se
        del e_x  # the ephemeral secret is not needed again
        ct_e, ss_e = p.kem_encaps(m.ephemeral_kem)  # non-canonical e.kem -> HandshakeError
        s.mix_hash(ct_e)
        s.mix_key(ss_e)  # ss_e
        ct_i, ss_i = p.kem_encaps(peer.kem_public)
        s.mix_hash(ct_i)
        s.mix_key(ss_i)  # ss_I
        confirmation = s.encrypt_and_hash(b"")
        ck, h = s.snapshot()
        self._biscuit_counter += 1
        biscuit = self._seal_biscuit(header, ck, h, peer_id, now, index)
        body = header + e_public + ct_e + ct_i + confirmation + biscuit
        return body + _mac(mac1_key(peer), body) + _ZERO_MAC

    def confirm(self, msg3: bytes, now: float) -> HandshakeResult:
        """Authenticate the initiator from msg3 and return the session (with msg3's payload).

        Raises:
            HandshakeError: msg3 is malformed, its biscuit is forged, expired or already used,
                or the initiator's proof fails. Nothing changes on failure.
        """
        data = _as_bytes(msg3)
        if not HANDSHAKE_CONFIRM_MIN_BYTES <= len(data) <= MAX_HANDSHAKE_BYTES:
            raise HandshakeError()
        _check_mac1(self._mac1_key, data, len(data) - MAC_BYTES)
        try:
            m = decode_handshake_confirm_untrusted(data)
        except DecodeError as exc:
            raise HandshakeError() from exc
        msg2_header = response_header(m.receiver_index, m.sender_index)
        ck, h, fp, created, number, index = self._open_biscuit(msg2_header, m.biscuit, now)
        if index != m.receiver_index or not 0.0 <= now - created <= BISCUIT_MAX_AGE_S:
            raise HandshakeError()
        peer_id = PeerId(fp)
        if number <= self._biscuit_used.get(peer_id, 0):
            raise HandshakeError()  # replayed msg3, or an older handshake than one accepted
        peer = self._accepted_peer(peer_id)
        s = SymmetricState.restore(ck, h)
        s.mix_hash(m.header())
        s.mix_hash(m.biscuit)
        s.mix_key(LABEL_MSG3)
        payload = s.decrypt_and_hash(m.encrypted_payload)  # the initiator is authenticated
        secrets = s.split()
        self._biscuit_used[peer_id] = number
        return HandshakeResult(
            peer_id=peer_id,
            peer=peer,
            role=HandshakeRole.RESPONDER,
            local_index=m.receiver_index,
            remote_index=m.sender_index,
            send_key=secrets.r2i,
            receive_key=secrets.i2r,
            resume_secret=secrets.resume_secret,
            transcript_hash=secrets.transcript_hash,
            payload=payload,
            created_at=now,
            exporter_secret=secrets.exporter_secret,
        )

    def _accepted_peer(self, peer_id: PeerId) -> PublicBundle:
        if peer_id == self._local.peer_id:
            raise HandshakeError()  # our own identity reflected back at us
        peer = self._lookup(peer_id)
        if peer is None or peer.peer_id != peer_id:
            raise HandshakeError()
        return peer

    # --- biscuits ------------------------------------------------------------------------

    def _current_biscuit_key(self, now: float) -> _BiscuitKey:
        keys = self._biscuit_keys
        if not keys or not 0.0 <= now - keys[0].created_at < BISCUIT_KEY_ROTATE_S:
            fresh = _BiscuitKey(self._random(BISCUIT_KEY_ID_BYTES), self._random(32), now)
            self._biscuit_keys = [fresh, *keys][:_KEEP_BISCUIT_KEYS]
        return self._biscuit_keys[0]

    def _seal_biscuit(
        self, header: bytes, ck: bytes, h: bytes, peer_id: PeerId, now: float, index: int
    ) -> bytes:
        key = self._current_biscuit_key(now)
        nonce = self._random(BISCUIT_NONCE_BYTES)
        plain = BISCUIT_PLAINTEXT.pack(ck, h, peer_id.digest, now, self._biscuit_counter, index)
        sealed = _nacl.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plain, header + key.key_id, nonce, key.key
        )
        return key.key_id + nonce + sealed

    def _open_biscuit(
        self, header: bytes, biscuit: bytes, now: float
    ) -> tuple[bytes, bytes, bytes, float, int, int]:
        key_id = biscuit[:BISCUIT_KEY_ID_BYTES]
        nonce = biscuit[BISCUIT_KEY_ID_BYTES : BISCUIT_KEY_ID_BYTES + BISCUIT_NONCE_BYTES]
        sealed = biscuit[BISCUIT_KEY_ID_BYTES + BISCUIT_NONCE_BYTES :]
        max_key_age = _KEEP_BISCUIT_KEYS * BISCUIT_KEY_ROTATE_S
        for key in self._biscuit_keys:
            if key.key_id != key_id or not 0.0 <= now - key.created_at < max_key_age:
                continue
            try:
                plain = _nacl.crypto_aead_xchacha20poly1305_ietf_decrypt(
                    sealed, header + key_id, nonce, key.key
                )
            except Exception:  # nacl CryptoError: a forged or damaged biscuit
                continue
            ck, h, fp, created, number, index = BISCUIT_PLAINTEXT.unpack(plain)
            return ck, h, fp, created, number, index
        raise HandshakeError()
