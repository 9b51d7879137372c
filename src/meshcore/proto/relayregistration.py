"""One attempt at registering with a relay, as a sans-IO machine: when the relay's id is
known, the relay proves it first (its keys, our challenge, its proof); then our Hello, the
relay's challenge, our Auth and Registered. Part of `RelayClientCore`.

Nothing of ours (keys, candidates) is sent to a relay that was expected to prove an id and
has not: a stranger on the relay's address learns nothing. docs/relay-client.md has the rules.
"""

from __future__ import annotations

import enum

from meshcore.errors import (
    DecodeError,
    MeshError,
    ProtocolError,
    RelayError,
    RelayNotVerified,
)
from meshcore.proto import wire
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity, PeerId, PublicBundle
from meshcore.proto.primitives import Primitives
from meshcore.proto.relayauth import PendingAuth, answer_challenge, challenge_relay

__all__ = ["Registration", "RelayClientState"]


class RelayClientState(enum.Enum):
    """Where the client is with its relay connection."""

    CONNECTING = "connecting"
    """The driver is dialling the relay (the first connection, or after `Reconnect`)."""
    VERIFYING = "verifying"
    """Connected to a relay whose id we know: waiting for its keys, then for its proof."""
    HELLO_SENT = "hello sent"
    """Hello (our public keys, our candidates) sent; the relay's Challenge awaited."""
    AUTHENTICATING = "authenticating"
    """The Challenge answered with Auth; Registered awaited, within the registration timeout."""
    REGISTERED = "registered"
    """Reachable under our peer id: pairing, invitations and circuits work."""
    LOST = "lost"
    """The connection, or an attempt at one, failed; waiting out the backoff."""
    CLOSED = "closed"
    """For good (replaced by another registration, closed, or the first attempt failed)."""


class Registration:
    """Registration on one relay connection, from its first message to `Registered`.

    `relay_id` None registers without checking the relay (it still tells us its keys, which
    `relay_keys` keeps). Every failure raises: `RelayNotVerified` while the relay has not
    proved `relay_id`, `RelayError` for a refusal, `ProtocolError` for a relay that breaks the
    protocol, `HandshakeError` for a challenge that is no valid key exchange.
    """

    def __init__(
        self,
        identity: Identity,
        relay: str,
        relay_id: PeerId | None,
        candidates: tuple[Endpoint, ...],
        *,
        primitives: Primitives | None = None,
    ) -> None:
        self._identity = identity
        self._relay = relay
        self._relay_id = relay_id
        self.candidates = candidates
        """The direct-connection candidates our Hello announces."""
        self._primitives = primitives
        self.state = RelayClientState.HELLO_SENT if relay_id is None else RelayClientState.VERIFYING
        self.relay_keys: PublicBundle | None = None
        """The keys the relay presented (its RelayIdentity), once it did."""
        self.verified = False
        """The relay proved that it holds the keys of `relay_id`."""
        self.registered: wire.Registered | None = None
        """The relay's Registered, once it came: the attempt succeeded."""
        self.rtt_s: float | None = None
        """The time from our Auth to the relay's Registered: one round trip."""
        self._pending: PendingAuth | None = None
        self._auth_sent_at = 0.0

    def start(self) -> list[wire.ControlMessage]:
        """What to send as soon as the connection is open: Hello, unless the relay must first
        prove its id (then nothing: its keys come first, unasked)."""
        return [self._hello()] if self._relay_id is None else []

    def receive_data(self, data: bytes, now: float) -> list[wire.ControlMessage]:
        """Handle one message from the relay's untrusted bytes; return what to send.

        Raises the exception that ends the attempt (see the class docstring).
        """
        try:
            msg = wire.decode_control_untrusted(data)
        except DecodeError as exc:
            if self.state is RelayClientState.VERIFYING:
                raise self._not_verified(f"it sent a malformed message ({exc})") from None
            raise
        if isinstance(msg, wire.Error | wire.Close):
            whom = "our registration" if self.state is RelayClientState.AUTHENTICATING else "us"
            raise RelayError(f"relay refused {whom}: {msg.reason}", code=int(msg.code))
        if self.state is RelayClientState.VERIFYING:
            return self._verifying(msg)
        if self.state is RelayClientState.HELLO_SENT:
            if isinstance(msg, wire.RelayIdentity) and self.relay_keys is None:
                self.relay_keys = _bundle_or_none(msg)  # told unasked; we do not check it
                return []
            if not isinstance(msg, wire.Challenge):
                raise ProtocolError(f"relay sent {type(msg).__name__} instead of a challenge")
            auth = answer_challenge(self._identity, msg, primitives=self._primitives)
            self.state = RelayClientState.AUTHENTICATING
            self._auth_sent_at = now
            return [auth]
        if not isinstance(msg, wire.Registered):
            raise ProtocolError(f"relay sent {type(msg).__name__} instead of registered")
        if msg.peer_id != self._identity.peer_id.digest:
            raise ProtocolError("relay registered us under another peer id")
        self.registered = msg
        self.rtt_s = now - self._auth_sent_at
        self.state = RelayClientState.REGISTERED
        return []

    def timed_out(self, timeout: float) -> MeshError:
        """The error of an attempt that did not finish within `timeout` seconds."""
        if self.state is RelayClientState.VERIFYING:
            return self._not_verified(f"it did not prove that identity within {timeout:g} s")
        return RelayError(f"relay at {self._relay} did not complete registration in {timeout:g} s")

    def _verifying(self, msg: wire.ControlMessage) -> list[wire.ControlMessage]:
        if self._pending is None:
            if not isinstance(msg, wire.RelayIdentity):
                raise self._not_verified(f"it sent {type(msg).__name__} instead of its keys")
            keys = _bundle_or_none(msg)
            if keys is None:
                raise self._not_verified("the keys it presented are not valid keys")
            self.relay_keys = keys
            if keys.peer_id != self._relay_id:
                raise self._not_verified(f"it presented the keys of relay {keys.peer_id}")
            challenge, self._pending = challenge_relay(keys, primitives=self._primitives)
            return [challenge]
        pending, self._pending = self._pending, None
        if not isinstance(msg, wire.RelayProof):
            raise self._not_verified(f"it sent {type(msg).__name__} instead of its proof")
        if not pending.verify(msg):
            raise self._not_verified("it could not prove that identity")
        self.verified = True
        self.state = RelayClientState.HELLO_SENT
        return [self._hello()]

    def _hello(self) -> wire.Hello:
        bundle = self._identity.public
        return wire.Hello(bundle.x25519_public, bundle.kem_public, self.candidates)

    def _not_verified(self, what: str) -> RelayNotVerified:
        assert self._relay_id is not None
        expected = self._relay_id.to_text()
        return RelayNotVerified(
            f"relay at {self._relay} is not relay {expected}: {what}; check the relay list "
            "entry (its URL and id)",
            url=self._relay,
            expected=expected,
        )


def _bundle_or_none(msg: wire.RelayIdentity) -> PublicBundle | None:
    try:
        return PublicBundle(msg.x25519_public, msg.kem_public)
    except DecodeError:
        return None
