"""When a live session rekeys, and where its rekey fragments go (docs/crypto-spec.md §3.8), for the
session's `SessionCore`, which sends the fragments as sealed control messages.

The session's original initiator starts a fresh handshake once its send key reaches
REKEY_AFTER_S, at most one attempt per REKEY_TIMEOUT_S; the other side answers with its
`RekeyResponder`. Keys are installed in the session's `KeyRing` once a handshake completes.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from meshcore.proto import constants as C
from meshcore.proto.framing import KeyRing
from meshcore.proto.inner import RekeyFragment
from meshcore.proto.rekey import RekeyInitiator, RekeyOutput, RekeyResponder, install_result

__all__ = ["RekeySchedule"]


class RekeySchedule:
    """The rekeying of one session: `initiator` (a factory of one attempt) on the session's
    original initiator, `responder` on the other side; `send(fragment, now)` seals and
    queues a fragment under the current keys."""

    def __init__(
        self,
        keys: KeyRing,
        send: Callable[[RekeyFragment, float], object],
        *,
        initiator: Callable[[], RekeyInitiator] | None = None,
        responder: RekeyResponder | None = None,
    ) -> None:
        self._keys = keys
        self._send = send
        self._initiator = initiator
        self._responder = responder
        self._attempt: RekeyInitiator | None = None
        self._next_try = -math.inf
        self.rekeys = 0
        """Handshakes completed (new keys installed)."""

    def next_at(self) -> float | None:
        """When `maybe_start` next has something to do (the initiator's side), or None."""
        send_key = self._keys.send_key
        if self._initiator is None or send_key is None:
            return None
        return max(send_key.created_at + C.REKEY_AFTER_S, self._next_try)

    def maybe_start(self, now: float) -> None:
        """Start an attempt if one is due."""
        factory = self._initiator
        if factory is None or now < self._next_try or not self._keys.needs_rekey(now):
            return
        if self._attempt is not None:
            self._attempt.close()
        attempt = factory()
        self._attempt = attempt
        self._next_try = now + C.REKEY_TIMEOUT_S
        self._apply(attempt.start(now), now)

    def receive(self, fragment: RekeyFragment, now: float) -> None:
        """An authenticated fragment from the peer.

        Raises `HandshakeError` if it breaks the handshake (the caller drops it; the
        initiator tries again after REKEY_TIMEOUT_S).
        """
        if self._responder is not None:
            self._apply(self._responder.receive(fragment, now), now)
        elif self._attempt is not None:
            self._apply(self._attempt.receive(fragment, now), now)

    def _apply(self, output: RekeyOutput, now: float) -> None:
        # the initiator's msg3 goes out under the current keys, so it is sealed first
        for fragment in output.fragments:
            self._send(fragment, now)
        if output.result is not None:
            install_result(self._keys, output.result, now)
            self.rekeys += 1
            self._attempt = None
