"""The Migrator: moves a live Session between its relay circuit and a direct connection with
zero loss, duplication or reordering, falls back when the direct path dies, and tries again
later (docs/direct.md).

All decisions are `meshcore.proto.paths`' (sans-IO); this module does the I/O they ask for:
races (dial every candidate of the peer from the shared port, staggered, re-dialing refusals,
under one cancel scope with a deadline), accepted connections and re-opened circuits handed
over by the rendezvous (the relay client), releasing and re-opening the relay circuit,
closing links. It acts on the session through the `PathControl` of `Session.attach_driver`,
and on the relay client through the `Rendezvous` protocol, so a program can give it a
rendezvous of its own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection, Hashable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Final, Protocol

import trio

from meshcore._direct import FramedTransport, SessionRoutes, dial, is_overlay_address
from meshcore._nursery import open_hidden_nursery
from meshcore._session import Link, Session
from meshcore._transport import Transport
from meshcore.errors import ConfigError, RelayError, TransportClosed
from meshcore.proto.constants import MAX_CANDIDATES
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity, PeerId
from meshcore.proto.paths import (
    CloseLink,
    DirectMode,
    OpenRelay,
    PathCommand,
    PathLog,
    PathSettings,
    RaceOver,
    StartRace,
)

__all__ = ["Migrator", "Rendezvous", "open_migrator"]

log = logging.getLogger("meshcore.path")

_LEVELS: Final = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING}
_MAX_PEER_CANDIDATES: Final = 2 * MAX_CANDIDATES
_CIRCUIT_OPEN_TIMEOUT_S: Final = 5.0


class Rendezvous(Protocol):
    """What a Migrator needs from the place its session's peers met (a `RelayClient`): who we
    are, where we can be reached, the table that routes arriving connections to sessions, and
    a way to open a new circuit to the peer.

    Everything is read when needed, so it may change while the migrator runs (a relay
    client learns `observed` anew on each registration).
    """

    @property
    def identity(self) -> Identity:
        """Our identity (the lower peer id of the two controls the session's paths)."""
        ...

    @property
    def candidates(self) -> Sequence[Endpoint]:
        """Our direct-path candidates, announced to the peer when a race starts."""
        ...

    @property
    def observed(self) -> Endpoint | None:
        """Our address as a third party sees it (a NAT's public mapping), announced too."""
        ...

    @property
    def local_port(self) -> int | None:
        """The local port direct dials leave from (None: no direct dials)."""
        ...

    @property
    def direct(self) -> object | None:
        """The listener that hands accepted direct connections to `routes` (None: there is
        none, so only `DirectMode.NEVER` works)."""
        ...

    @property
    def routes(self) -> SessionRoutes:
        """Where the migrator registers to be handed direct connections and re-opened
        circuits for its session (`Migrator.incoming_direct`, `incoming_circuit`)."""
        ...

    async def reopen_circuit(
        self, peer_id: PeerId, *, timeout: float, avoid: Collection[str] = ()
    ) -> Transport:
        """A new relay circuit to `peer_id`, for a session that lost its own or wants a
        spare, on a relay not named in `avoid` (URLs as `relay_of` gives them). Raises
        `RelayError` or `TransportClosed` if none opens within `timeout`; cancelled, it
        leaves no circuit open."""
        ...

    def relay_of(self, circuit: Transport) -> str | None:
        """The relay `circuit` runs through (its URL), None if unknown. A session keeps at
        most one circuit per relay, and opens spares only on relays it can name."""
        ...


class Migrator:
    """Moves one Session between the relay and a direct path; made by `open_migrator`.

    `path` is "relay" or "direct"; `migrations` counts moves onto a direct path,
    `fallbacks` moves back, `attempts` races started.
    """

    def __init__(
        self,
        session: Session,
        rendezvous: Rendezvous,
        peer_candidates: Iterable[Endpoint],
        settings: PathSettings,
        nursery: trio.Nursery,
    ) -> None:
        self.session = session
        self.rendezvous = rendezvous
        self.settings = settings
        self.peer_id = session.peer_id
        self._nursery = nursery
        self._wake = trio.Event()
        self._peer_candidates: dict[Endpoint, None] = {}
        self._add_candidates(tuple(peer_candidates))
        self._race_scope: trio.CancelScope | None = None
        self._race_nursery: trio.Nursery | None = None
        self._dialled: dict[Endpoint, None] = {}
        self._connected: set[Endpoint] = set()
        self._dial_errors: dict[Endpoint, str] = {}
        self._owned: set[Link] = set()
        controlling = rendezvous.identity.peer_id.digest < session.peer_id.digest
        self._control = session.attach_driver(self, controlling=controlling, settings=settings)

    # ----------------------------------------------------------------- state
    @property
    def path(self) -> str:
        """ "relay" or "direct"."""
        return self.session.path

    @property
    def migrations(self) -> int:
        return self.session.path_stats.migrations

    @property
    def fallbacks(self) -> int:
        return self.session.path_stats.fallbacks

    @property
    def attempts(self) -> int:
        return self.session.path_stats.attempts

    @property
    def direct_link(self) -> Link | None:
        """The direct connection carrying the session, if any."""
        return self._control.direct_link

    def relay_of(self, transport: Transport) -> str | None:
        """The relay a relay circuit of this session runs through (the rendezvous knows)."""
        return self.rendezvous.relay_of(transport)

    def abort_direct(self, reason: str = "aborted") -> bool:
        """Cut the direct connection at once with a TCP reset (tests; a forced fallback).

        Both sides see a transport error and fall back to the relay. False if not direct.
        """
        link = self.direct_link
        if link is None or not isinstance(link.transport, FramedTransport):
            return False
        link.transport.abort(reason)
        return True

    # ----------------------------------------------------------------- hooks: session
    def wake(self) -> None:
        """The session's paths have commands for us."""
        self._wake.set()

    def endpoints_received(self, endpoints: tuple[Endpoint, ...]) -> None:
        """The peer announced its candidates (ENDPOINTS): dial new ones if racing."""
        new = self._add_candidates(endpoints)
        if self._race_nursery is not None:
            for endpoint in new:
                self._dial_soon(endpoint, 0.0)

    # ----------------------------------------------------------------- hooks: rendezvous
    def owns_index(self, receiver_index: int) -> bool:
        """Is `receiver_index` one of this session's (routing accepted connections)?"""
        return self._control.owns_receiver_index(receiver_index)

    def incoming_direct(self, transport: FramedTransport, first_frame: bytes) -> bool:
        """A connection accepted on the shared port whose first frame is for this session."""
        control = self._control
        if not (control.racing or control.may_race):
            return False
        if not control.racing:
            self._start_race()
        link = control.attach_candidate(transport, first_frame=first_frame)
        if link is None:
            return False
        self._start_link(link)
        return True

    def incoming_circuit(self, circuit: Transport, first_frame: bytes) -> bool:
        """A relay circuit the peer re-opened for this session."""
        link = self._control.attach_relay(circuit, first_frame=first_frame)
        if link is None:
            return False
        self._start_link(link)
        return True

    # ----------------------------------------------------------------- commands
    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            for command in self._control.commands():
                self._execute(command)

    def _execute(self, command: PathCommand) -> None:
        if isinstance(command, PathLog):
            log.log(_LEVELS[command.level], "session %s: %s", self.peer_id, command.message)
        elif isinstance(command, StartRace):
            self._start_race()
        elif isinstance(command, RaceOver):
            if self._race_scope is not None:
                self._race_scope.cancel()
            for loser in command.losers:
                self._close_soon(loser, "another connection won the race")
        elif isinstance(command, CloseLink):
            self._close_soon(command.link, command.reason)
        elif isinstance(command, OpenRelay):
            self._nursery.start_soon(self._open_relay, command)

    # ----------------------------------------------------------------- races
    def _start_race(self) -> None:
        ours = list(self.rendezvous.candidates)
        observed = self.rendezvous.observed
        if observed is not None and observed not in ours:
            ours.append(observed)  # what the relay sees of us (a NAT's public mapping)
        if self._control.start_race(ours):
            self._nursery.start_soon(self._race)

    async def _race(self) -> None:
        settings = self.settings
        scope = trio.CancelScope(deadline=trio.current_time() + settings.race_deadline_s)
        self._race_scope = scope
        self._dialled = {}
        self._connected = set()
        self._dial_errors = {}
        try:
            with scope:
                async with trio.open_nursery() as nursery:
                    self._race_nursery = nursery
                    for i, endpoint in enumerate(self._peer_candidates):
                        self._dial_soon(endpoint, i * settings.stagger_s)
                    await trio.sleep_forever()
        finally:
            self._race_nursery = None
            self._race_scope = None
        if self._control.racing:  # the deadline passed without a winner
            self._control.race_failed(self._failure_reason())

    def _dial_soon(self, endpoint: Endpoint, delay: float) -> None:
        nursery = self._race_nursery
        if nursery is None or endpoint in self._dialled or endpoint in self.rendezvous.candidates:
            return
        self._dialled[endpoint] = None
        nursery.start_soon(self._dial, endpoint, delay)

    async def _dial(self, endpoint: Endpoint, delay: float) -> None:
        """Dial `endpoint` until the race ends; a connection that closes without winning
        (e.g. the peer's session was not ready to take it yet) is dialled again."""
        await trio.sleep(delay)
        port = self.rendezvous.local_port
        control = self._control
        redial_s = self.settings.redial_s
        while port is not None:
            transport = await dial(port, endpoint, redial_s=redial_s, errors=self._dial_errors)
            self._connected.add(endpoint)
            link = control.attach_candidate(transport)
            if link is None:
                self._nursery.start_soon(transport.aclose, "the race is over")
                return
            self._start_link(link)
            while not link.closed:
                await trio.sleep(redial_s)
            if not control.racing:
                return
            self._dial_errors[endpoint] = f"closed: {transport.close_reason}"
            await trio.sleep(redial_s)

    def _failure_reason(self) -> str:
        deadline = f"{self.settings.race_deadline_s:g} s"
        if not self._dialled:
            return f"no candidate of the peer to dial, and none dialled us within {deadline}"
        parts = []
        for endpoint in self._dialled:
            if endpoint in self._connected:
                parts.append(f"{endpoint} connected but did not validate")
            else:
                parts.append(f"{endpoint} {self._dial_errors.get(endpoint, 'no answer')}")
        shown = "; ".join(parts[:4]) + (f"; {len(parts) - 4} more" if len(parts) > 4 else "")
        return f"no path validated within {deadline} ({shown})"

    def _add_candidates(self, endpoints: tuple[Endpoint, ...]) -> list[Endpoint]:
        new = []
        for endpoint in endpoints:
            if endpoint in self._peer_candidates or endpoint.ip.is_unspecified:
                continue
            if is_overlay_address(endpoint.ip):
                continue  # reached through our own tunnel: never a direct path
            if len(self._peer_candidates) >= _MAX_PEER_CANDIDATES:
                break
            self._peer_candidates[endpoint] = None
            new.append(endpoint)
        return new

    # ----------------------------------------------------------------- links
    def _start_link(self, link: Link) -> None:
        self._owned.add(link)
        self._nursery.start_soon(self._run_link, link)

    async def _run_link(self, link: Link) -> None:
        try:
            await self.session.run_link(link)
        finally:
            self._owned.discard(link)
            with trio.CancelScope(shield=True):
                await link.transport.aclose("closed")

    def _close_soon(self, link: Hashable, reason: str) -> None:
        if isinstance(link, Link):
            self._nursery.start_soon(link.transport.aclose, reason)

    async def _open_relay(self, command: OpenRelay) -> None:
        avoid = tuple(relay for relay in command.avoid if isinstance(relay, str))
        try:
            # after a relay restart (or our reconnect) this pairs again: pairings belong to
            # relay connections; while the relay is away it fails and is retried
            circuit = await self.rendezvous.reopen_circuit(
                self.peer_id, timeout=_CIRCUIT_OPEN_TIMEOUT_S, avoid=avoid
            )
        except (RelayError, TransportClosed) as exc:
            self._control.relay_open_failed(str(exc), spare=command.spare)
            return
        link = self._control.attach_relay(circuit, opened_here=True, spare=command.spare)
        if link is None:
            await circuit.aclose("session ended")
            return
        self._start_link(link)


@asynccontextmanager
async def open_migrator(
    session: Session,
    rendezvous: Rendezvous,
    *,
    peer_candidates: Iterable[Endpoint] = (),
    settings: PathSettings | None = None,
) -> AsyncIterator[Migrator]:
    """Move `session` onto a direct path when one validates, and back when it dies; re-open
    its relay circuit when that is lost.

    `rendezvous` is where the peers met, usually the `RelayClient` the session's circuit
    came from (opened with `direct=True` for direct paths: it owns the shared port and
    routes accepted connections here). `peer_candidates` are addresses of the peer to dial
    (a `Pairing`'s `peer_candidates` and `peer_observed`); the peer announces more in the
    session. The peer with the lower peer id is the controlling side: it nominates the
    connection, releases and re-opens the relay circuit.

    Races, links and timers run in this block's own nursery. Leaving it, or cancellation,
    closes the session first (the Close goes out on the active path, under a shielded,
    bounded scope), then the links the migrator opened. Raises `ConfigError` if
    `rendezvous` has no direct listener while direct paths are wanted.
    """
    settings = settings or PathSettings()
    if settings.mode is not DirectMode.NEVER and rendezvous.direct is None:
        raise ConfigError(
            "direct paths need the relay client's shared-port listener: open it with "
            "open_relay_client(..., direct=True), or use direct='never'"
        )
    async with open_hidden_nursery() as nursery:
        migrator = Migrator(session, rendezvous, peer_candidates, settings, nursery)
        rendezvous.routes.add(migrator)
        nursery.start_soon(migrator._run)
        try:
            yield migrator
        finally:
            rendezvous.routes.remove(migrator)
            await session.aclose()
            migrator._control.detach()
            nursery.cancel_scope.cancel()
