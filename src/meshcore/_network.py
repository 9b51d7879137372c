"""A peer's connections to several relays (trio): `RelayNetwork` / `open_relay_network`.

The peer registers at its k rendezvous relays (highest-random-weight hashing of its id and
each relay's, `meshcore.proto.rendezvous`); to reach another peer it computes that peer's
rendezvous relays the same way and asks there, staggered, the first answer winning. Every
connection leaves from one shared local port, with one direct listener and one table of
sessions, and reconnects on its own. Relays share no state and never talk to each other:
every decision is the peers' (docs/relay-network.md). Which connections to keep is the pure
`meshcore.proto.relaynet.RelayPlan`'s decision; this module does the I/O.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from typing import Final, TypeVar

import trio

from meshcore._client import CircuitTransport, Invitation, Pairing, RelayClient
from meshcore._direct import DirectListener, SessionRoutes
from meshcore._netconn import ConnectionState, RelayConnection, RelayConnectionStatus
from meshcore._nursery import open_hidden_nursery
from meshcore._registry import Registry, RegistryListing
from meshcore._transport import Transport, open_reuseport_listener
from meshcore.errors import ConfigError, MeshError, RelayError, RelayNotVerified
from meshcore.proto.backoff import Backoff
from meshcore.proto.constants import (
    MAX_CANDIDATES,
    RELAY_RECONNECT_JITTER,
    RELAY_RECONNECT_MAX_S,
    RELAY_RECONNECT_MIN_S,
)
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity, PeerId
from meshcore.proto.relaylist import RelayEntry, check_relay_entries, parse_relay_spec
from meshcore.proto.relaynet import (
    VISITOR_IDLE_S,
    CloseConnection,
    OpenConnection,
    PlanCommand,
    RelayPlan,
    RelayRole,
)
from meshcore.proto.rendezvous import DEFAULT_RENDEZVOUS_K

__all__ = [
    "RELAY_STAGGER_S",
    "ConnectionState",
    "RelayConnectionStatus",
    "RelayNetwork",
    "RelaySpec",
    "open_relay_network",
    "relay_entries",
]

log = logging.getLogger("meshcore.network")

RELAY_STAGGER_S: Final = 0.5
"""Asking relays for a peer in turn, the next one is asked this long after the previous one
(at once if the previous one failed): a blackholed relay costs the others half a second,
not the whole timeout."""
_TEND_S: Final = 1.0
"""How often circuit counts are read for the idle timers of visitor connections."""
_INVITE_QUEUE: Final = 64

RelaySpec = Sequence[RelayEntry | str] | Registry
"""Relays for a network: entries, `URL[#RELAY_ID]` texts, or a `Registry` that changes."""

_T = TypeVar("_T")


def relay_entries(relays: Sequence[RelayEntry | str], *, name: str = "relays") -> list[RelayEntry]:
    """`relays` as checked entries (texts are `URL[#RELAY_ID]`). Each bad one is logged once,
    naming it, and skipped; raises `ConfigError` naming every problem if none is usable."""
    raw: list[object] = [
        parse_relay_spec(r) if isinstance(r, str) else r.to_mapping() for r in relays
    ]
    checked = check_relay_entries(raw, name=name)
    for problem in checked.problems:
        log.warning("relay list: %s", problem)
    return list(checked.require_usable(name).entries)


class RelayNetwork:
    """A peer's connections to the relays of a list or registry (made by
    `open_relay_network`).

    It registers at the peer's rendezvous relays, pairs with other peers at theirs
    (`connect`), hands out the invitations of every connection in one stream
    (`next_invitation`, `accept`, `reject`), and is the `Rendezvous` of the sessions made
    through it: its `reopen_circuit` opens a new circuit on any relay both peers reach, so a
    session moves to another relay when the one carrying it dies or leaves the list.

    Cancelling a request (`connect`, `accept`, `reopen_circuit`) withdraws it everywhere it
    was asked; a pairing or circuit that arrives later is closed.
    """

    def __init__(
        self,
        identity: Identity,
        relays: RelaySpec,
        *,
        rendezvous_k: int = DEFAULT_RENDEZVOUS_K,
        visitor_idle_s: float = VISITOR_IDLE_S,
        candidates: Sequence[Endpoint] = (),
        local_port: int | None = None,
        listener: trio.SocketListener | None = None,
        timeout: float = 10.0,
        reconnect_min_s: float = RELAY_RECONNECT_MIN_S,
        reconnect_max_s: float = RELAY_RECONNECT_MAX_S,
        stagger_s: float = RELAY_STAGGER_S,
    ) -> None:
        self.identity = identity
        self.registry = relays if isinstance(relays, Registry) else None
        """The registry followed (None for a fixed list)."""
        try:
            self._plan = RelayPlan(identity.peer_id, k=rendezvous_k, visitor_idle_s=visitor_idle_s)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if isinstance(relays, Registry):
            self._plan.entries = relays.entries
        else:
            self._plan.entries = tuple(relay_entries(relays))
        self.routes = SessionRoutes()
        """Live sessions, for accepted direct connections and circuits the peer re-opened."""
        self.direct = DirectListener(listener, self.routes) if listener is not None else None
        """The one direct listener on the shared port, shared by every relay connection."""
        self._configured = tuple(candidates)
        self._local_port = self.direct.port if self.direct is not None else local_port
        self._timeout = timeout
        self._reconnect = (reconnect_min_s, reconnect_max_s)
        self._stagger_s = stagger_s
        self._connections: dict[str, RelayConnection] = {}
        self._owners: weakref.WeakKeyDictionary[Invitation, RelayClient] = (
            weakref.WeakKeyDictionary()
        )
        self._invite_send, self._invite_recv = trio.open_memory_channel[
            tuple[Invitation, RelayClient]
        ](_INVITE_QUEUE)
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()

    # ----------------------------------------------------------------- state
    @property
    def entries(self) -> tuple[RelayEntry, ...]:
        """The relays of the current list."""
        return self._plan.entries

    @property
    def home_relays(self) -> tuple[RelayEntry, ...]:
        """Our rendezvous relays, best first: where we stay registered."""
        return self._plan.homes

    @property
    def rendezvous_k(self) -> int:
        return self._plan.k

    @property
    def listing(self) -> RegistryListing | None:
        """Where the list came from and when (None for a fixed list)."""
        return self.registry.listing if self.registry is not None else None

    def rendezvous_relays(self, peer_id: PeerId) -> tuple[RelayEntry, ...]:
        """Where `peer_id` registers (its rendezvous relays), in the order we ask there."""
        return self._plan.dial_order(peer_id)

    def connections(self) -> list[RelayConnectionStatus]:
        """Every relay connection now: url, id, verified, role, state, last error, RTT,
        circuits."""
        return [c.status(self._plan.role(url)) for url, c in self._connections.items()]

    @property
    def connected(self) -> bool:
        """True while registered at one relay at least."""
        return any(c.connected for c in self._connections.values())

    # ----------------------------------------------------------------- Rendezvous
    @property
    def candidates(self) -> tuple[Endpoint, ...]:
        """The direct-path candidates our relay connections announce (one port, every
        address they leave from), deduplicated."""
        seen: dict[Endpoint, None] = dict.fromkeys(self._configured)
        for conn in self._connections.values():
            if conn.connected and conn.client is not None:
                seen.update(dict.fromkeys(conn.client.candidates))
        return tuple(seen)[:MAX_CANDIDATES]

    @property
    def observed(self) -> Endpoint | None:
        """Our address as a relay sees it (a home relay's first)."""
        for conn in self._ordered():
            if conn.connected and conn.client is not None and conn.client.observed is not None:
                return conn.client.observed
        return None

    @property
    def local_port(self) -> int | None:
        """The shared local port of every relay connection and direct dial."""
        return self._local_port

    def relay_of(self, circuit: Transport) -> str | None:
        """The URL of the relay `circuit` runs through (None: not one of ours)."""
        for url, conn in self._connections.items():
            if conn.client is not None and conn.client.relay_of(circuit) is not None:
                return url
        return None

    async def reopen_circuit(
        self, peer_id: PeerId, *, timeout: float = 10.0, avoid: Collection[str] = ()
    ) -> Transport:
        """A new circuit to `peer_id` for a live session, on a relay both peers reach: the
        peer's rendezvous relays (those we are connected to first), then the other relays
        we are connected to; never one in `avoid`. Asked in turn, `RELAY_STAGGER_S` apart,
        the first circuit wins (the others are closed).

        Raises `RelayError` naming every relay tried and what happened there if none
        opens one within `timeout`. Cancelled, it leaves no circuit open.
        """
        connected = {url for url, c in self._connections.items() if c.connected}
        entries = self._plan.reopen_order(peer_id, connected, avoid)

        async def attempt(entry: RelayEntry, remaining: float) -> CircuitTransport:
            client = await self._client_for(entry)
            return await client.reopen_circuit(peer_id, timeout=remaining)

        return await self._first(
            entries, attempt, timeout, _close_circuit, f"no relay opened a circuit to {peer_id}"
        )

    # ----------------------------------------------------------------- meeting peers
    async def connect(self, peer_id: PeerId, *, timeout: float = 10.0) -> Pairing:
        """Pair with `peer_id` at its rendezvous relays, asked in turn (`RELAY_STAGGER_S`
        apart, at once after a refusal); the first pairing wins, later ones are closed.

        Raises `RelayError` naming every relay tried and what happened there when none
        pairs us within `timeout`, and `HandshakeError` if a relay served keys that are not
        `peer_id`'s. Cancellation abandons every attempt (late pairings are closed).
        """
        entries = self._plan.dial_order(peer_id)

        async def attempt(entry: RelayEntry, remaining: float) -> Pairing:
            client = await self._client_for(entry)
            return await client.connect(peer_id, timeout=remaining)

        return await self._first(
            entries,
            attempt,
            timeout,
            _close_pairing,
            f"no rendezvous relay of {peer_id} answered",
        )

    async def next_invitation(self) -> Invitation:
        """The next peer that asks (on any relay connection) to be paired with us.

        Cancelling it loses nothing. Raises `RelayError` once the network has closed.
        """
        try:
            invitation, client = await self._invite_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise RelayError("the relay network is closed") from None
        self._owners[invitation] = client
        return invitation

    async def accept(self, invitation: Invitation, *, timeout: float = 10.0) -> Pairing:
        """Accept `invitation` on the relay connection it came on (see
        `RelayClient.accept`); raises `RelayError` if that connection is gone."""
        return await self._owner(invitation).accept(invitation, timeout=timeout)

    async def reject(self, invitation: Invitation, reason: str) -> None:
        """Refuse `invitation`; never raises for a relay connection that is gone."""
        try:
            owner = self._owner(invitation)
        except RelayError:
            return
        await owner.reject(invitation, reason)

    # ----------------------------------------------------------------- running
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect to our rendezvous relays and keep the connections as the list changes.

        `await nursery.start(network.run)` returns once registered at one rendezvous relay,
        or once every first attempt failed (logged; they are retried with backoff). On
        cancellation every connection closes, with its circuits, and `next_invitation`
        raises `RelayError`.
        """
        try:
            async with open_hidden_nursery() as nursery:
                self._nursery = nursery
                if self.direct is not None:
                    await nursery.start(self.direct.serve)
                now = trio.current_time()
                self._execute(self._plan.set_entries(self._plan.entries, now))
                await self._first_registration()
                if self.registry is not None:
                    nursery.start_soon(self._follow, self.registry)
                nursery.start_soon(self._tend)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._invite_send.close()

    async def _first_registration(self) -> None:
        """Until registered at one rendezvous relay, or every first attempt is over (the
        failed ones are retried in the background: a peer may still reach others through
        their relays, and be reached once one of its own is back)."""
        homes = [self._connections[e.url] for e in self._plan.homes if e.url in self._connections]
        while not any(c.connected for c in homes):
            if all(not c.attempting for c in homes):
                shown = "; ".join(f"{c.entry.label()}: {c.last_error or c.ended}" for c in homes)
                log.warning("not registered at any rendezvous relay yet: %s", shown)
                return
            await self._changed.wait()

    async def _follow(self, registry: Registry) -> None:
        version = registry.version
        while True:
            version = await registry.changed(version)
            homes = {e.url for e in self._plan.homes}
            self._execute(self._plan.set_entries(registry.entries, trio.current_time()))
            now_homes = {e.url for e in self._plan.homes}
            if now_homes != homes:
                log.info(
                    "rendezvous relays now %s (were %s)",
                    ", ".join(sorted(now_homes)),
                    ", ".join(sorted(homes)),
                )

    async def _tend(self) -> None:
        """Count circuits for the idle timers of visitor connections and close idle ones."""
        while True:
            now = trio.current_time()
            self._plan.observe({url: c.circuits for url, c in self._connections.items()}, now)
            self._execute(self._plan.handle_timer(now))
            await trio.sleep(_TEND_S)

    def _execute(self, commands: list[PlanCommand]) -> None:
        for command in commands:
            if isinstance(command, OpenConnection):
                self._open(command.entry, command.role)
            elif isinstance(command, CloseConnection):
                conn = self._connections.pop(command.url, None)
                if conn is not None:
                    log.info("leaving relay %s: %s", conn.entry.label(), command.reason)
                    conn.close(command.reason)
        self._notify()

    def _open(self, entry: RelayEntry, role: RelayRole) -> RelayConnection:
        assert self._nursery is not None
        old = self._connections.get(entry.url)
        if old is not None and old.ended is None:
            return old
        minimum, maximum = self._reconnect
        conn = RelayConnection(
            entry,
            role,
            new_client=self._new_client,
            backoff=Backoff(minimum, maximum, RELAY_RECONNECT_JITTER),
            on_change=self._notify,
        )
        self._connections[entry.url] = conn
        if role is RelayRole.VISITOR:
            log.info("connecting to relay %s to reach a peer there", entry.label())
        self._nursery.start_soon(conn.run, self._invite_send, self._ended)
        return conn

    def _new_client(self, entry: RelayEntry) -> RelayClient:
        minimum, maximum = self._reconnect
        return RelayClient(
            self.identity,
            entry.url,
            relay_id=entry.relay_id,
            candidates=self._configured,
            local_port=self._local_port,
            listener=self.direct,
            routes=self.routes,
            timeout=self._timeout,
            reconnect_min_s=minimum,
            reconnect_max_s=maximum,
        )

    def _ended(self, conn: RelayConnection) -> None:
        if self._connections.get(conn.url) is conn and conn.ended is not None:
            del self._connections[conn.url]
            self._plan.dropped(conn.url)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _ordered(self) -> list[RelayConnection]:
        homes = [self._connections[e.url] for e in self._plan.homes if e.url in self._connections]
        return homes + [c for c in self._connections.values() if c not in homes]

    def _owner(self, invitation: Invitation) -> RelayClient:
        owner = self._owners.pop(invitation, None)
        if owner is None:
            raise RelayError("this invitation is not one of the network's, or was answered already")
        return owner

    # ----------------------------------------------------------------- asking relays in turn
    async def _client_for(self, entry: RelayEntry) -> RelayClient:
        """A registered connection to `entry`: ours, or a visitor connection opened now."""
        conn = self._connections.get(entry.url)
        self._execute(self._plan.visit(entry, trio.current_time()))
        if conn is None:
            conn = self._connections.get(entry.url)
            if conn is None:
                raise RelayError("not on the relay list any more")
        return await conn.wait_registered()

    async def _first(
        self,
        entries: Sequence[RelayEntry],
        attempt: Callable[[RelayEntry, float], Awaitable[_T]],
        timeout: float,
        discard: Callable[[_T], Awaitable[None]],
        failure: str,
    ) -> _T:
        """Run `attempt` on each of `entries` in turn, each `stagger_s` after the previous
        one started (at once when it failed); the first result wins, the others are
        cancelled or `discard`ed. Raises `RelayError(failure: what each relay said)`."""
        if not entries:
            raise RelayError(f"{failure}: the relay list has no usable relay")
        deadline = trio.current_time() + timeout
        errors: dict[str, str] = {}
        answered: list[str] = []
        won: list[_T] = []
        started = [trio.Event() for _ in entries]
        failed = [trio.Event() for _ in entries]

        async def one(index: int, entry: RelayEntry) -> None:
            if index:
                await started[index - 1].wait()
                with trio.move_on_after(self._stagger_s):
                    await failed[index - 1].wait()
            started[index].set()
            try:
                with trio.fail_at(deadline):
                    result = await attempt(entry, max(0.001, deadline - trio.current_time()))
            except trio.TooSlowError:
                errors[entry.url] = f"no answer within {timeout:g} s"
            except (MeshError, OSError) as exc:
                errors[entry.url] = str(exc) or type(exc).__name__
                if isinstance(exc, RelayError) and not isinstance(exc, RelayNotVerified):
                    answered.append(entry.url)  # it was reached, and said no
            else:
                if won:
                    await discard(result)
                else:
                    won.append(result)
                    nursery.cancel_scope.cancel()
                return
            failed[index].set()

        async with trio.open_nursery() as nursery:
            for index, entry in enumerate(entries):
                nursery.start_soon(one, index, entry)
        if won:
            return won[0]
        shown = "; ".join(f"{e.label()}: {errors.get(e.url, 'not tried')}" for e in entries)
        raise RelayError(f"{failure} ({len(entries)} tried): {shown}", unreachable=not answered)


async def _close_pairing(pairing: Pairing) -> None:
    await pairing.circuit.aclose("another relay answered first")


async def _close_circuit(circuit: CircuitTransport) -> None:
    await circuit.aclose("another relay answered first")


@asynccontextmanager
async def open_relay_network(
    relays: RelaySpec,
    identity: Identity,
    *,
    rendezvous_k: int = DEFAULT_RENDEZVOUS_K,
    direct: bool = True,
    local_port: int | None = None,
    candidates: Sequence[Endpoint] = (),
    timeout: float = 10.0,
    reconnect_min_s: float = RELAY_RECONNECT_MIN_S,
    reconnect_max_s: float = RELAY_RECONNECT_MAX_S,
    visitor_idle_s: float = VISITOR_IDLE_S,
    stagger_s: float = RELAY_STAGGER_S,
) -> AsyncIterator[RelayNetwork]:
    """Connect to the relays of `relays` (entries, `URL[#RELAY_ID]` texts, or a `Registry`
    followed as it changes) as a peer: registered at our `rendezvous_k` rendezvous relays.

    With `direct`, one listener for direct connections is opened first on `local_port` (0
    or None: a free port) and every relay connection leaves from that port
    (docs/direct.md). Connections opened to reach other peers close after `visitor_idle_s`
    without a circuit; every connection reconnects on its own with jittered backoff between
    `reconnect_min_s` and `reconnect_max_s`.

    The block starts once registered at one rendezvous relay, or once every first attempt
    failed: those are retried in the background (`connections()` shows them), and `connect`
    still reaches peers whose relays answer. Raises `ConfigError` for a list with no usable
    entry or an unusable port. The connections, the listener and their tasks live inside
    this `async with`; leaving it (or cancelling it) closes every connection and every
    circuit on them.
    """
    listener: trio.SocketListener | None = None
    if direct:
        try:
            listener = await open_reuseport_listener("0.0.0.0", local_port or 0)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for direct connections on port {local_port or 0}: "
                f"{exc.strerror or exc}; choose another port or pass direct='never'"
            ) from None
    try:
        network = RelayNetwork(
            identity,
            relays,
            rendezvous_k=rendezvous_k,
            visitor_idle_s=visitor_idle_s,
            candidates=candidates,
            local_port=local_port,
            listener=listener,
            timeout=timeout,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            stagger_s=stagger_s,
        )
        async with open_hidden_nursery() as nursery:
            await nursery.start(network.run)
            yield network
            nursery.cancel_scope.cancel()
    finally:
        if listener is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(listener)
