"""Rendezvous by hashing: which relays a peer registers at, computed alike by every peer.

Highest-random-weight (rendezvous) hashing: each relay scores `SHA-256(label || peer id ||
relay key)` for a peer, and the peer's rendezvous relays are the `k` highest scores. Every
peer holding the same list computes the same answer without any lookup, and adding or
removing one relay of n moves only the peers whose top k it enters or leaves (about k/n).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

from meshcore.proto.identity import PeerId
from meshcore.proto.relaylist import RelayEntry

__all__ = ["DEFAULT_RENDEZVOUS_K", "relay_score", "rendezvous_relays"]

DEFAULT_RENDEZVOUS_K: Final = 2
"""Relays a peer registers at: one can die and the peer is still reachable."""
_LABEL: Final = b"meshcore/1 rendezvous"


def relay_score(peer_id: PeerId, entry: RelayEntry) -> bytes:
    """The weight of `entry` for `peer_id` (compared as bytes: big-endian 256-bit numbers)."""
    return hashlib.sha256(_LABEL + peer_id.digest + entry.key).digest()


def rendezvous_relays(
    peer_id: PeerId, entries: Iterable[RelayEntry], k: int = DEFAULT_RENDEZVOUS_K
) -> tuple[RelayEntry, ...]:
    """The `k` relays `peer_id` meets others at, best first (fewer if the list is shorter).

    The order of `entries` does not matter; ties (which need a SHA-256 collision) fall back
    to the relay key so that the answer is still the same everywhere.
    """
    if k < 1:
        raise ValueError(f"rendezvous needs k >= 1, got {k}")
    scored = sorted(entries, key=lambda e: (relay_score(peer_id, e), e.key), reverse=True)
    return tuple(scored[:k])
