"""Rekeying (docs/crypto-spec.md §3.8): a fresh full hybrid handshake carried inside the live
session.

The three handshake messages travel as `RekeyFragment` inner messages of at most
REKEY_FRAGMENT_BYTES, sealed under the session's current keys, so only authenticated
fragments ever reach reassembly and its buffer cannot be poisoned. The new keys go into the
session's `KeyRing`; the previous receive key keeps accepting frames in flight for
OLD_KEY_RECEIVE_S.

Order matters on the initiator: seal the msg3 fragments under the *current* keys first, then
install the new keys (`RekeyOutput.result`), because the responder can only read msg3 with
the keys it already has. Fragments carry the handshake id the initiator picked; fragments of
any other handshake are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Final

import attrs

from meshcore.errors import HandshakeError
from meshcore.proto.constants import (
    HANDSHAKE_TIMEOUT_S,
    MAX_HANDSHAKE_BYTES,
    MAX_REKEY_FRAGMENTS,
    REKEY_FRAGMENT_BYTES,
)
from meshcore.proto.framing import KeyRing, ReceiveKey, SendKey
from meshcore.proto.handshake import HandshakeResult, Initiator, Responder
from meshcore.proto.identity import Identity, PeerId, PublicBundle
from meshcore.proto.inner import RekeyFragment
from meshcore.proto.packet import PacketType
from meshcore.proto.primitives import Primitives

__all__ = [
    "REASSEMBLY_SLOTS",
    "Reassembler",
    "RekeyInitiator",
    "RekeyOutput",
    "RekeyResponder",
    "fragment_message",
    "install_result",
]

Random = Callable[[int], bytes]

REASSEMBLY_SLOTS: Final = 2
"""Handshake messages reassembled at once (the current attempt and one straggler)."""

_MAX_MESSAGE: Final = min(MAX_HANDSHAKE_BYTES, MAX_REKEY_FRAGMENTS * REKEY_FRAGMENT_BYTES)


def fragment_message(handshake_id: int, message: bytes) -> list[RekeyFragment]:
    """Split one handshake message into RekeyFragments of at most REKEY_FRAGMENT_BYTES."""
    if not 0 < len(message) <= _MAX_MESSAGE:
        raise HandshakeError(f"a rekey handshake message is 1..{_MAX_MESSAGE} bytes")
    chunks = [
        message[i : i + REKEY_FRAGMENT_BYTES] for i in range(0, len(message), REKEY_FRAGMENT_BYTES)
    ]
    return [
        RekeyFragment(handshake_id=handshake_id, index=i, count=len(chunks), chunk=chunk)
        for i, chunk in enumerate(chunks)
    ]


class Reassembler:
    """Puts handshake messages back together from their fragments.

    Bounded: it works on at most REASSEMBLY_SLOTS messages at once (two, so a late fragment of
    a retried attempt does not wipe out the current one), each of at most MAX_REKEY_FRAGMENTS
    chunks; the least recently started message is dropped first. Single-fragment messages
    pass straight through. Duplicates are harmless. Feed it only fragments that came out of
    authenticated frames.
    """

    __slots__ = ("_partial",)

    def __init__(self) -> None:
        self._partial: dict[tuple[int, int], dict[int, bytes]] = {}

    def add(self, fragment: RekeyFragment) -> bytes | None:
        """Take one fragment; return the whole message once its last fragment is in."""
        count = fragment.count
        if count == 1:
            return fragment.chunk
        key = (fragment.handshake_id, count)
        chunks = self._partial.get(key)
        if chunks is None:
            if len(self._partial) >= REASSEMBLY_SLOTS:
                del self._partial[next(iter(self._partial))]
            chunks = self._partial[key] = {}
        chunks[fragment.index] = fragment.chunk
        if len(chunks) < count:
            return None
        del self._partial[key]
        return b"".join(chunks[i] for i in range(count))


@attrs.frozen(eq=False)
class RekeyOutput:
    """What a rekey machine wants done: send `fragments` (sealed under the current keys),
    then, if `result` is set, install it with `install_result`."""

    fragments: tuple[RekeyFragment, ...] = ()
    result: HandshakeResult | None = None


def install_result(ring: KeyRing, result: HandshakeResult, now: float) -> None:
    """Make a completed handshake's keys the session's current keys."""
    ring.install(
        SendKey(result.send_key, result.remote_index, result.created_at),
        ReceiveKey(result.receive_key, result.local_index, result.created_at),
        now,
    )


class RekeyInitiator:
    """The session's original initiator rekeying: msg1 out, msg2 in, msg3 out plus new keys.

    One object per attempt; after HANDSHAKE_TIMEOUT_S (`expired`) start a new one with a new
    handshake id (at most one attempt per REKEY_TIMEOUT_S is the session's rule).
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
        handshake_id: int | None = None,
    ) -> None:
        """`remote` must be the session's peer; `local_index` our receiver index for the new
        keys (default random; give one that is not in use)."""
        self._initiator = Initiator(
            local,
            remote,
            network_id=network_id,
            primitives=primitives,
            random=random,
            local_index=local_index,
        )
        self._handshake_id = (
            handshake_id if handshake_id is not None else int.from_bytes(random(4), "little")
        )
        self._reassembler = Reassembler()
        self._started_at: float | None = None
        self._done = False

    @property
    def handshake_id(self) -> int:
        return self._handshake_id

    @property
    def done(self) -> bool:
        """Whether msg2 was accepted and the new keys handed out."""
        return self._done

    def expired(self, now: float) -> bool:
        """Whether the attempt ran out of time (HANDSHAKE_TIMEOUT_S after `start`)."""
        return self._started_at is not None and now - self._started_at > HANDSHAKE_TIMEOUT_S

    def start(self, now: float) -> RekeyOutput:
        """The msg1 fragments to send."""
        msg1 = self._initiator.start(now)
        self._started_at = now
        return RekeyOutput(fragments=tuple(fragment_message(self._handshake_id, msg1)))

    def receive(self, fragment: RekeyFragment, now: float) -> RekeyOutput:
        """Take one authenticated fragment from the peer.

        Returns nothing to do until msg2 is complete, then the msg3 fragments and the result.
        Raises HandshakeError if msg2 does not authenticate the session's peer.
        """
        if self._done or fragment.handshake_id != self._handshake_id:
            return RekeyOutput()
        msg2 = self._reassembler.add(fragment)
        if msg2 is None:
            return RekeyOutput()
        msg3, result = self._initiator.receive_response(msg2, now)
        self._done = True
        return RekeyOutput(
            fragments=tuple(fragment_message(self._handshake_id, msg3)), result=result
        )

    def close(self) -> None:
        """Abandon the attempt and drop its ephemeral secrets."""
        self._initiator.close()


class RekeyResponder:
    """The other side of rekeys within one session: msg1 in, msg2 out, msg3 in plus new keys.

    Wraps the node's long-lived (stateless) `Responder` and checks that the handshake
    authenticated the session's own peer, not another identity the node also accepts.
    """

    def __init__(self, responder: Responder, peer: PeerId) -> None:
        self._responder = responder
        self._peer = peer
        self._reassembler = Reassembler()

    def receive(self, fragment: RekeyFragment, now: float) -> RekeyOutput:
        """Take one authenticated fragment; answer msg1 with msg2 fragments, msg3 with keys.

        Raises HandshakeError for a handshake message that fails, or that authenticates
        someone other than the session's peer.
        """
        message = self._reassembler.add(fragment)
        if message is None:
            return RekeyOutput()
        if not message:
            raise HandshakeError()
        if message[0] == PacketType.HANDSHAKE_INIT:
            msg2 = self._responder.respond(message, now)
            return RekeyOutput(fragments=tuple(fragment_message(fragment.handshake_id, msg2)))
        if message[0] == PacketType.HANDSHAKE_CONFIRM:
            result = self._responder.confirm(message, now)
            if result.peer_id != self._peer:
                raise HandshakeError()
            return RekeyOutput(result=result)
        raise HandshakeError()
