"""Which relays a peer keeps connections to (`RelayPlan`): its k rendezvous relays ("home"),
and relays opened only to reach another peer's rendezvous relays ("visitor"), which close
once they carried no circuit for a while. Also the order in which relays are asked for a
peer (docs/relay-network.md).

Pure: relay lists, circuit counts and `now` in, `OpenConnection` / `CloseConnection`
commands out. Every peer computes the same rendezvous relays from the same list
(`meshcore.proto.rendezvous`), so no relay knows about another and none keeps shared state.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Collection, Iterable, Mapping
from typing import Final

import attrs

from meshcore.proto.identity import PeerId
from meshcore.proto.relaylist import RelayEntry
from meshcore.proto.rendezvous import DEFAULT_RENDEZVOUS_K, rendezvous_relays

__all__ = [
    "VISITOR_IDLE_S",
    "CloseConnection",
    "OpenConnection",
    "PlanCommand",
    "RelayPlan",
    "RelayRole",
]

VISITOR_IDLE_S: Final = 60.0
"""A connection opened only to reach another peer's rendezvous relay closes after this long
without a circuit (docs/design.md §6)."""


class RelayRole(enum.Enum):
    """Why a peer is connected to a relay."""

    HOME = "home"
    """One of the peer's k rendezvous relays: it stays registered there."""
    VISITOR = "visitor"
    """Opened to reach another peer there; closes after `visitor_idle_s` without a circuit."""
    LEAVING = "leaving"
    """No longer one of the peer's rendezvous relays (the list changed): closes as soon as
    no circuit (no live session) uses it."""


@attrs.frozen
class OpenConnection:
    """Connect and register at this relay."""

    entry: RelayEntry
    role: RelayRole


@attrs.frozen
class CloseConnection:
    """Close the connection to the relay at `url` (its circuits close with it)."""

    url: str
    reason: str


PlanCommand = OpenConnection | CloseConnection


@attrs.define
class _Use:
    entry: RelayEntry
    role: RelayRole
    circuits: int = 0
    idle_since: float | None = None
    """When the connection last had no circuit (None while it has one)."""


class RelayPlan:
    """The relay connections of one peer and when each closes.

    `set_entries` (the list changed), `visit` (a connection is needed to reach a peer),
    `observe` (circuit counts), `handle_timer` (idle visitors) and `dropped` (the driver
    gave a connection up) return the commands to execute. `uses` is what the driver should
    be connected to, with each connection's role.
    """

    def __init__(
        self,
        peer_id: PeerId,
        *,
        k: int = DEFAULT_RENDEZVOUS_K,
        visitor_idle_s: float = VISITOR_IDLE_S,
    ) -> None:
        if k < 1:
            raise ValueError(f"rendezvous_k must be at least 1, got {k}")
        if not visitor_idle_s >= 0:
            raise ValueError(f"visitor_idle_s must be at least 0, got {visitor_idle_s}")
        self.peer_id = peer_id
        self.k = k
        self.visitor_idle_s = visitor_idle_s
        self.entries: tuple[RelayEntry, ...] = ()
        self.homes: tuple[RelayEntry, ...] = ()
        """Our rendezvous relays, best first."""
        self._uses: dict[str, _Use] = {}

    # ----------------------------------------------------------------- queries
    @property
    def uses(self) -> dict[str, RelayRole]:
        """The relays we keep a connection to (by URL) and why."""
        return {url: use.role for url, use in self._uses.items()}

    def role(self, url: str) -> RelayRole | None:
        use = self._uses.get(url)
        return use.role if use is not None else None

    def find(self, url: str) -> RelayEntry | None:
        """The entry of the current list with this URL (None: not on the list)."""
        for entry in self.entries:
            if entry.url == url:
                return entry
        return None

    def dial_order(self, peer_id: PeerId) -> tuple[RelayEntry, ...]:
        """Where `peer_id` is registered, in the order to ask: its rendezvous relays."""
        return rendezvous_relays(peer_id, self.entries, self.k)

    def reopen_order(
        self, peer_id: PeerId, connected: Collection[str], avoid: Collection[str] = ()
    ) -> tuple[RelayEntry, ...]:
        """Relays to ask for a new circuit to `peer_id`, for a live session: its rendezvous
        relays we are connected to, then its other rendezvous relays, then the other relays
        we are connected to (the peer may visit one: the session may have met there);
        never one in `avoid` or one no longer on the list."""
        theirs = [e for e in self.dial_order(peer_id) if e.url not in avoid]
        first = [e for e in theirs if e.url in connected]
        then = [e for e in theirs if e.url not in connected]
        rest = [
            e for e in self.entries if e.url in connected and e.url not in avoid and e not in theirs
        ]
        return (*first, *then, *rest)

    # ----------------------------------------------------------------- inputs
    def set_entries(self, entries: Iterable[RelayEntry], now: float) -> list[PlanCommand]:
        """The relay list is now `entries`: leave relays removed from it at once (their
        sessions move to other relays), register at new rendezvous relays, and let former
        ones go once no session uses them."""
        self.entries = tuple(entries)
        self.homes = rendezvous_relays(self.peer_id, self.entries, self.k)
        listed = {e.url: e for e in self.entries}
        homes = {e.url for e in self.homes}
        out: list[PlanCommand] = []
        for url, use in list(self._uses.items()):
            entry = listed.get(url)
            if entry is None:
                del self._uses[url]
                out.append(CloseConnection(url, "removed from the relay list"))
            elif entry != use.entry:  # same URL, another relay id: a different relay
                del self._uses[url]
                out.append(CloseConnection(url, "its relay list entry changed"))
            elif url not in homes and use.role is RelayRole.HOME:
                use.role = RelayRole.LEAVING
                self._idle(use, now)
        for entry in self.homes:
            home = self._uses.get(entry.url)
            if home is None:
                self._uses[entry.url] = _Use(entry, RelayRole.HOME)
                out.append(OpenConnection(entry, RelayRole.HOME))
            else:
                home.role = RelayRole.HOME
                home.idle_since = None
        out += self.handle_timer(now)
        return out

    def visit(self, entry: RelayEntry, now: float) -> list[PlanCommand]:
        """A connection to `entry` is needed (to reach a peer registered there); opens one
        unless we have it (an idle one's clock starts again). Refused (no command) for a
        relay not on the list."""
        use = self._uses.get(entry.url)
        if use is not None:
            if use.role is RelayRole.LEAVING:
                use.role = RelayRole.VISITOR
            if use.idle_since is not None:
                use.idle_since = now
            return []
        if self.find(entry.url) != entry:
            return []
        self._uses[entry.url] = _Use(entry, RelayRole.VISITOR, idle_since=now)
        return [OpenConnection(entry, RelayRole.VISITOR)]

    def observe(self, circuits: Mapping[str, int], now: float) -> None:
        """The circuits open on each connection now (missing: none)."""
        for url, use in self._uses.items():
            use.circuits = circuits.get(url, 0)
            if use.circuits:
                use.idle_since = None
            elif use.idle_since is None:
                self._idle(use, now)

    def dropped(self, url: str) -> None:
        """The driver gave up the connection to `url` (a visitor that could not connect,
        or a registration replaced elsewhere); a later `visit` may open it again."""
        use = self._uses.get(url)
        if use is not None and use.role is not RelayRole.HOME:
            del self._uses[url]

    # ----------------------------------------------------------------- timers
    def get_timer(self) -> float | None:
        """When an idle connection is next due to close, or None."""
        due = [self._due(use) for use in self._uses.values()]
        soonest = min(due, default=math.inf)
        return None if soonest == math.inf else soonest

    def handle_timer(self, now: float) -> list[PlanCommand]:
        """Close the connections idle past their time."""
        out: list[PlanCommand] = []
        for url, use in list(self._uses.items()):
            if now >= self._due(use):
                del self._uses[url]
                why = (
                    "no longer a rendezvous relay of ours, and no session uses it"
                    if use.role is RelayRole.LEAVING
                    else f"no circuit for {self.visitor_idle_s:g} s"
                )
                out.append(CloseConnection(url, why))
        return out

    # ----------------------------------------------------------------- internals
    def _idle(self, use: _Use, now: float) -> None:
        use.idle_since = None if use.circuits else now

    def _due(self, use: _Use) -> float:
        if use.role is RelayRole.HOME or use.idle_since is None:
            return math.inf
        wait = 0.0 if use.role is RelayRole.LEAVING else self.visitor_idle_s
        return use.idle_since + wait
