"""The path machine of a session (`SessionPaths`): a `SessionCore` over several links. Frames
in from any link, frames out to the links the policy chose, race bookkeeping, pings; I/O
commands for the driver (`meshcore._migrator`), which dials, accepts and closes connections.

Every decision is made in the sans-IO parts, with `now` passed in, so that all of it runs
under hypothesis without a socket (docs/direct.md):

- `pathsettings.py`: `DirectMode`, `PathSettings`;
- `pathvalidation.py`: `PathValidator`, one race's challenges and nomination;
- `pathpolicy.py`: `PathManager`, the policy (active path, relay circuit, timers, retries);
- this module: `SessionPaths`, the glue around the session core.

The names of all four are importable from here.
"""

from __future__ import annotations

import os
import random as _random
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Final

import attrs

from meshcore.proto import constants as C
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.inner import Endpoints, Keepalive, PathChallenge
from meshcore.proto.pathpolicy import (
    CloseLink,
    FailSession,
    LinkKind,
    OpenRelay,
    PathCommand,
    PathLog,
    PathManager,
    ProbeRelays,
    RaceOver,
    RelayState,
    ResendUnacked,
    SendKeepalive,
    StartRace,
    describe_rtt,
)
from meshcore.proto.pathsettings import DirectMode, PathSettings
from meshcore.proto.pathvalidation import MAX_RACE_LINKS, PathValidator
from meshcore.proto.session import (
    ACTIVE,
    EndpointsReceived,
    FrameResult,
    PathChallengeReceived,
    PathResponseReceived,
    SessionCore,
    SessionEvent,
    SessionState,
)

__all__ = [
    "MAX_PINGS",
    "MAX_PROBES",
    "MAX_RACE_LINKS",
    "CloseLink",
    "DirectMode",
    "LinkKind",
    "OpenRelay",
    "PathCommand",
    "PathLog",
    "PathManager",
    "PathSettings",
    "PathStats",
    "PathValidator",
    "PingAnswered",
    "RaceOver",
    "RelayState",
    "SessionPaths",
    "StartRace",
]

MAX_PINGS: Final = 16
"""Unanswered pings remembered per session; the oldest is forgotten first."""
MAX_PROBES: Final = 16
"""Unanswered relay-circuit probes remembered per session; the oldest is forgotten first."""


@attrs.frozen
class PathStats:
    """A snapshot of a session's path policy (`SessionPaths.stats`), for displays and tests."""

    active: LinkKind
    """RELAY or DIRECT: where the session's traffic goes."""
    sending_on: tuple[LinkKind, ...]
    """The kinds of link frames for the active path go on now: two while the direct path is
    distrusted and the relay circuit is up, none while nothing may carry them."""
    relay: RelayState
    racing: bool
    """A race for a direct path is running."""
    distrusted: bool
    """The direct path has been silent for `trust_s`: traffic goes on both paths."""
    migrations: int
    """Moves from the relay onto a direct path."""
    fallbacks: int
    """Moves from a direct path back to the relay."""
    attempts: int
    """Races started."""
    last_error: str | None
    """The latest path failure (a failed race, a fallback, a failed circuit re-open)."""
    relay_moves: int = 0
    """Moves from one relay's circuit to another's."""
    relay_circuits: int = 0
    """Relay circuits the session holds now (the one carrying it and spares)."""
    fallbacks_silent: int = 0
    """Fallbacks because the direct path went silent for `dead_s` (not a transport error)."""
    next_race: float | None = None
    """When the next race starts by itself (None: not scheduled)."""


@attrs.frozen
class PingAnswered:
    """A ping (PATH_CHALLENGE on the active path) was answered."""

    token: bytes = attrs.field(repr=False)
    kind: LinkKind
    rtt_s: float


class SessionPaths:
    """A `SessionCore` over several links: routes its frames, runs races and pings, and hands
    the driver the I/O it must do.

    Call `receive_frame` for every frame from any link, then take `events()` (application
    events, `EndpointsReceived`, `PingAnswered`), `outbox()` (`(link, frame)`) and
    `commands()` (`PathCommand`), in that order. A session that never goes direct uses it with
    `DirectMode.NEVER` and one relay link.
    """

    def __init__(
        self,
        core: SessionCore,
        now: float,
        *,
        controlling: bool = False,
        settings: PathSettings | None = None,
        random: Callable[[], float] = _random.random,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.core = core
        self.relay_window: Callable[[Hashable], int | None] = _no_window
        """The window relay circuit `link` allows (the relay's credit window), or None if
        it sets none: the driver, which knows the circuits, provides it."""
        self.settings = settings or PathSettings(mode=DirectMode.NEVER)
        self.controlling = controlling
        self._random = random
        self._random_bytes = random_bytes
        self.manager = PathManager(
            controlling=controlling, settings=self.settings, now=now, random=random
        )
        self.kinds: dict[Hashable, LinkKind] = {}
        self.race: PathValidator | None = None
        self.rtt: dict[Hashable, float] = {}
        """Latest measured round trip per link (validation or ping)."""
        self._pings: OrderedDict[bytes, float] = OrderedDict()
        self._probes: OrderedDict[bytes, tuple[Hashable, float]] = OrderedDict()
        self._announce: bytes | None = None
        self._events: list[SessionEvent | PingAnswered] = []
        self._commands: list[PathCommand] = []

    def enable_direct(
        self, *, controlling: bool, settings: PathSettings, now: float, relay: Hashable = None
    ) -> None:
        """Switch the path policy on (the driver calls this once, before any race); `relay`
        is the relay the session's first circuit runs through."""
        link = self.manager.relay
        self.settings = settings
        self.controlling = controlling
        self.manager = PathManager(
            controlling=controlling, settings=settings, now=now, random=self._random
        )
        if link is not None:
            self.manager.relay_up(link, now, relay=relay)
            self._run(now)

    # ----------------------------------------------------------------- queries
    @property
    def active(self) -> LinkKind:
        """RELAY or DIRECT."""
        return self.manager.active

    @property
    def active_link(self) -> Hashable | None:
        """The link the session's traffic takes (None while none can)."""
        m = self.manager
        return m.direct if m.direct is not None else m.relay

    @property
    def racing(self) -> bool:
        return self.manager.racing

    @property
    def has_commands(self) -> bool:
        return bool(self._commands)

    def stats(self) -> PathStats:
        """A snapshot of the policy's state and counters."""
        m = self.manager
        kinds = self.kinds
        return PathStats(
            active=m.active,
            sending_on=tuple(kinds.get(link, LinkKind.RELAY) for link in m.targets),
            relay=m.relay_state,
            racing=m.racing,
            distrusted=m.lapsed,
            migrations=m.migrations,
            fallbacks=m.fallbacks,
            attempts=m.attempts,
            last_error=m.last_error,
            relay_moves=m.relay_moves,
            relay_circuits=len(m.circuits),
            fallbacks_silent=m.fallbacks_silent,
            next_race=m.next_race if m.may_race() else None,
        )

    @property
    def relay(self) -> Hashable:
        """The relay carrying the session (the key `relay_up` was given), None when the
        session is direct or has no relay circuit."""
        m = self.manager
        return m.relay_key if m.direct is None or m.lapsed else None

    # ----------------------------------------------------------------- links
    def relay_up(
        self,
        link: Hashable,
        now: float,
        *,
        opened_here: bool = False,
        relay: Hashable = None,
        spare: bool = False,
    ) -> None:
        """`link` is a relay circuit of the session, through `relay` (it replaces the one
        on the same relay). `opened_here`: we opened it, so a frame goes out on it at once
        (the peer routes the new circuit by that frame's index); `spare`: it answers an
        `OpenRelay(spare=True)`."""
        self.kinds[link] = LinkKind.RELAY
        self.manager.relay_up(link, now, relay=relay, spare=spare)
        if opened_here and link in self.manager.circuits:
            self.manager.keepalive_on(link)
        self._run(now)

    def relay_open_failed(self, reason: str, now: float, *, spare: bool = False) -> None:
        self.manager.relay_open_failed(reason, now, spare=spare)
        self._run(now)

    def candidate_up(self, link: Hashable, now: float) -> bool:
        """A candidate connection is up (dialled, or accepted and routed here): challenge it.
        False if no race is running or the race is full (close the link)."""
        race = self.race
        if race is None or race.full or self.core.state is not SessionState.OPEN:
            return False
        self.kinds[link] = LinkKind.CANDIDATE
        self.core.queue_control(race.add(link, now), now, link)
        return True

    def link_down(self, link: Hashable, reason: str, now: float) -> None:
        """`link` closed (an error, the peer, or us)."""
        kind = self.kinds.pop(link, None)
        if kind is LinkKind.RELAY:
            self.manager.relay_down(link, reason, now)
        elif kind is LinkKind.DIRECT:
            self.manager.direct_down(link, reason, now)
        elif kind is LinkKind.CANDIDATE and self.race is not None:
            self.race.remove(link)
        self.rtt.pop(link, None)
        self._run(now)

    # ----------------------------------------------------------------- races
    def race_started(self, now: float, endpoints: Sequence[Endpoint] = ()) -> None:
        """A race starts: announce our candidates to the peer (ENDPOINTS, on the relay)."""
        if self.race is not None:
            return
        s = self.settings
        self.race = PathValidator(
            controlling=self.controlling,
            deadline=now + s.race_deadline_s,
            margin_s=min(s.nominate_margin_s, s.race_deadline_s / 10),
            random_bytes=self._random_bytes,
        )
        self.manager.race_started(now)
        if endpoints and self.core.state is SessionState.OPEN:
            relay = self.manager.relay
            message = Endpoints(tuple(endpoints[: C.MAX_CANDIDATES]))
            self.core.queue_control(message, now, relay if relay is not None else ACTIVE)
        self._run(now)

    def race_failed(self, reason: str, now: float) -> None:
        """The race deadline passed without a winner: close every candidate."""
        race = self.race
        if race is None:
            return
        self.race = None
        losers = tuple(race.links)
        for link in losers:
            self.kinds.pop(link, None)
        self._commands.append(RaceOver(None, losers))
        self.manager.race_failed(reason, now)
        self._run(now)

    def _won(self, link: Hashable, now: float) -> None:
        race = self.race
        assert race is not None
        self.race = None
        losers = tuple(x for x in race.links if x is not link)
        for loser in losers:
            self.kinds.pop(loser, None)
        self.kinds[link] = LinkKind.DIRECT
        rtt = race.rtt.get(link)
        self._commands.append(RaceOver(link, losers))
        self.manager.race_won(link, rtt, now)
        if rtt is not None:
            self.rtt[link] = rtt
        else:  # we did not measure it yet: ask, and say we moved once it is known
            self._announce = self.ping(now)
        self._run(now)

    # ----------------------------------------------------------------- frames
    def receive_frame(self, frame: bytes, link: Hashable, now: float) -> FrameResult:
        """Feed one frame that arrived on `link` to the session."""
        result = self.core.receive_frame(frame, now, link)
        if self.core.state is not SessionState.OPEN:
            if not self.manager.closed:
                self._run(now)  # this frame ended the session: the policy stops
            return result
        if result:
            manager = self.manager
            if link is manager.direct:
                if manager.frame_received(link, result is FrameResult.ACCEPTED, now):
                    self._run(now)
            elif link in manager.circuits:
                manager.circuits.seen(link, now)
            elif (
                result is FrameResult.ACCEPTED
                and self.race is not None
                and self.race.on_accepted(link)
            ):
                self._won(link, now)
        return result

    def ping(self, now: float) -> bytes:
        """Send a PATH_CHALLENGE on the active path; `PingAnswered` with the returned token
        reports the round trip."""
        token = self._random_bytes(C.PATH_CHALLENGE_BYTES)
        self._pings[token] = now
        while len(self._pings) > MAX_PINGS:
            self._pings.popitem(last=False)
        self.core.queue_control(PathChallenge(token), now)
        return token

    # ----------------------------------------------------------------- timers
    def get_timer(self) -> float | None:
        core, manager = self.core.get_timer(), self.manager.get_timer()
        if core is None or manager is None:
            return core if manager is None else manager
        return min(core, manager)

    def handle_timer(self, now: float) -> None:
        self.core.handle_timer(now)
        self.manager.handle_timer(now)
        self._run(now)

    # ----------------------------------------------------------------- outputs
    def events(self, now: float) -> list[SessionEvent | PingAnswered]:
        """Take the events for the driver; path events are handled here."""
        if self.core.state is not SessionState.OPEN and not self.manager.closed:
            self._run(now)  # the session just ended: the policy stops
        for event in self.core.events():
            kind = type(event)
            if kind is PathResponseReceived:
                assert isinstance(event, PathResponseReceived)
                self._on_response(event, now)
            elif kind is PathChallengeReceived:
                continue  # answered by the core on the same link
            else:
                if kind is EndpointsReceived:
                    self.manager.endpoints_received(now)
                    self._run(now)
                self._events.append(event)
        out, self._events = self._events, []
        return out

    def outbox(self) -> list[tuple[Hashable, bytes]]:
        """Take the frames to send, each with the link it goes on."""
        frames = self.core.outbox()
        if not frames:
            return []
        targets = self.manager.targets
        kinds = self.kinds
        out: list[tuple[Hashable, bytes]] = []
        append = out.append
        if len(targets) == 1:
            (only,) = targets
            for path, frame in frames:
                if path is ACTIVE:
                    append((only, frame))
                elif path in kinds:
                    append((path, frame))
        else:
            for path, frame in frames:
                if path is ACTIVE:
                    for target in targets:
                        append((target, frame))
                elif path in kinds:
                    append((path, frame))
        return out

    def commands(self) -> list[PathCommand]:
        """Take the I/O the driver must do."""
        out, self._commands = self._commands, []
        return out

    # ----------------------------------------------------------------- internals
    def _on_response(self, event: PathResponseReceived, now: float) -> None:
        link = event.path
        probe = self._probes.get(event.data)
        if probe is not None and probe[0] is link:
            del self._probes[event.data]
            self.rtt[link] = now - probe[1]
            self.manager.relay_rtt(link, now - probe[1], now)
            self._run(now)
            return
        sent = self._pings.pop(event.data, None)
        if sent is not None:
            rtt = now - sent
            self.rtt[link] = rtt
            kind = self.kinds.get(link, LinkKind.RELAY)
            if event.data == self._announce:
                self._announce = None
                message = f"path relay -> direct (rtt {describe_rtt(rtt)})"
                self._commands.append(PathLog("info", message))
            else:
                self._events.append(PingAnswered(event.data, kind, rtt))
            return
        race = self.race
        if race is not None and race.on_response(link, event.data, now):
            self._won(link, now)
        elif race is not None and link in race.rtt:
            self.rtt[link] = race.rtt[link]

    def refresh_window(self, now: float) -> None:
        """Size the send window for the active path: its kind, and on a relay circuit the
        window the relay grants (which grows as the circuit carries more)."""
        if self.core.state is not SessionState.OPEN:
            return
        manager = self.manager
        direct = manager.active is LinkKind.DIRECT
        relay = manager.relay
        cap = None if direct or relay is None else self.relay_window(relay)
        self.core.use_direct_window(direct, now, cap)

    def _probe(self, links: tuple[Hashable, ...], now: float) -> None:
        for link in links:
            if link not in self.kinds:
                continue
            token = self._random_bytes(C.PATH_CHALLENGE_BYTES)
            self._probes[token] = (link, now)
            self.core.queue_control(PathChallenge(token), now, link)
        while len(self._probes) > MAX_PROBES:
            self._probes.popitem(last=False)

    def _run(self, now: float) -> None:
        closed = self.core.state is not SessionState.OPEN
        if closed and not self.manager.closed:
            self._session_closed()
        if not closed:
            self.refresh_window(now)  # the window follows the active path (before any resend)
        for command in self.manager.take_commands():
            kind = type(command)
            if kind is ResendUnacked:
                if not closed:
                    self.core.retransmit_unacked(now)
            elif kind is SendKeepalive:
                assert isinstance(command, SendKeepalive)
                if not closed and (command.path is ACTIVE or command.path in self.kinds):
                    self.core.queue_control(Keepalive(), now, command.path)
            elif kind is FailSession:
                assert isinstance(command, FailSession)
                self.core.fail(command.reason)
            elif kind is ProbeRelays:
                assert isinstance(command, ProbeRelays)
                if not closed:
                    self._probe(command.links, now)
            elif isinstance(command, StartRace | RaceOver | OpenRelay | CloseLink | PathLog):
                if closed and kind is not CloseLink and kind is not RaceOver:
                    continue  # a closed session starts nothing new
                self._commands.append(command)

    def _session_closed(self) -> None:
        """The session ended, cleanly or not: the policy stops (no fallback, re-open or
        retry, nothing logged), and a race still running is called off."""
        self.manager.session_closed()
        race = self.race
        if race is not None:
            self.race = None
            losers = tuple(race.links)
            for link in losers:
                self.kinds.pop(link, None)
            self._commands.append(RaceOver(None, losers))


def _no_window(_link: Hashable) -> int | None:
    return None
