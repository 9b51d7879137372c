"""A session's relay circuits, at most one per relay (`RelayCircuits`): the round trip and the
last authenticated frame of each, the pick of the fastest live one, and the rule for leaving
the circuit that carries the session for a faster one (docs/relay-network.md).

Pure and small: `PathManager` (`meshcore.proto.pathpolicy`) owns one and decides with it.
Links and relay keys (a relay's URL) are opaque hashable values of the driver.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Final

import attrs

from meshcore.proto import constants as C

__all__ = [
    "MAX_RELAY_CIRCUITS",
    "RELAY_SWITCH_GAIN_S",
    "RELAY_SWITCH_RATIO",
    "RelayCircuit",
    "RelayCircuits",
    "clearly_faster",
]

MAX_RELAY_CIRCUITS: Final = C.MAX_RELAY_CIRCUITS
"""Relay circuits one session keeps at once, whatever the peer opens."""
RELAY_SWITCH_GAIN_S: Final = C.RELAY_SWITCH_GAIN_S
RELAY_SWITCH_RATIO: Final = C.RELAY_SWITCH_RATIO


def clearly_faster(candidate_s: float, current_s: float) -> bool:
    """Is a circuit with round trip `candidate_s` worth leaving one of `current_s` for?

    Only when it is at least `RELAY_SWITCH_GAIN_S` (10 ms) faster and below
    `RELAY_SWITCH_RATIO` (2/3) of the current round trip (Tailscale's rule for its relays),
    so that noise never makes a session flap between two similar relays.
    """
    return (
        candidate_s <= current_s - RELAY_SWITCH_GAIN_S
        and candidate_s < current_s * RELAY_SWITCH_RATIO
    )


@attrs.define
class RelayCircuit:
    """One relay circuit of a session."""

    link: Hashable
    relay: Hashable
    """The relay it runs through (None: unknown, e.g. a program's own rendezvous)."""
    up_since: float
    last_rx: float
    """When an authenticated frame last arrived on it."""
    rtt_s: float | None = None
    """The latest round trip measured on it (a PATH_CHALLENGE under the session keys)."""

    def alive(self, now: float, within_s: float) -> bool:
        return now - self.last_rx < within_s


class RelayCircuits:
    """The relay circuits of one session, by link, at most one per relay key."""

    __slots__ = ("_by_link",)

    def __init__(self) -> None:
        self._by_link: dict[Hashable, RelayCircuit] = {}

    def __len__(self) -> int:
        return len(self._by_link)

    def __contains__(self, link: object) -> bool:
        return link in self._by_link

    def __iter__(self) -> Iterator[RelayCircuit]:
        return iter(list(self._by_link.values()))

    def get(self, link: Hashable) -> RelayCircuit | None:
        return self._by_link.get(link)

    @property
    def relays(self) -> tuple[Hashable, ...]:
        """The relays the circuits run through."""
        return tuple(c.relay for c in self._by_link.values())

    def add(self, link: Hashable, relay: Hashable, now: float) -> RelayCircuit | None:
        """Track a new circuit; returns the one it replaces (same relay), if any."""
        old = next((c for c in self._by_link.values() if c.relay == relay), None)
        if old is not None and old.link is not link:
            del self._by_link[old.link]
        else:
            old = None
        existing = self._by_link.get(link)
        if existing is None:
            self._by_link[link] = RelayCircuit(link, relay, now, now)
        return old

    def remove(self, link: Hashable) -> RelayCircuit | None:
        return self._by_link.pop(link, None)

    def clear(self) -> list[RelayCircuit]:
        """Forget every circuit; returns them."""
        out = list(self._by_link.values())
        self._by_link.clear()
        return out

    def seen(self, link: Hashable, now: float) -> None:
        """An authenticated frame arrived on `link` (the hot path: one lookup)."""
        circuit = self._by_link.get(link)
        if circuit is not None:
            circuit.last_rx = now

    def best(
        self, now: float, within_s: float, *, excluding: Hashable = None
    ) -> RelayCircuit | None:
        """The live circuit (a frame within `within_s`) with the lowest known round trip
        (unmeasured ones after measured ones, the oldest first), not `excluding`."""
        live = [
            c for c in self._by_link.values() if c.link is not excluding and c.alive(now, within_s)
        ]
        if not live:
            return None
        return min(live, key=lambda c: (c.rtt_s is None, c.rtt_s or 0.0, c.up_since))

    def faster_than(self, current: Hashable, now: float, within_s: float) -> RelayCircuit | None:
        """A live circuit clearly faster than `current` (`clearly_faster`), or None."""
        active = self._by_link.get(current)
        if active is None or active.rtt_s is None:
            return None
        best = self.best(now, within_s, excluding=current)
        if best is None or best.rtt_s is None or not clearly_faster(best.rtt_s, active.rtt_s):
            return None
        return best
