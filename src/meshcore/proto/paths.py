"""Sans-IO path logic of a session: which link its frames take (the relay circuit or a direct
connection), how a direct connection is validated and nominated, when to fall back, and when
to try direct again.

DESIGN.md §1 steps 5-7 and §3 ("Zero loss across paths", "Timers"); CRYPTO.md §3.9. The trio
driver (`meshcore._migrator`) dials, accepts and closes connections; every decision is made
here, with `now` passed in, so that all of it runs under hypothesis without a socket.

Links are opaque hashable objects chosen by the driver. Three machines:

- `PathValidator`: one race. Both sides send a PATH_CHALLENGE on every candidate connection.
  The *controlling* side (the lower peer id, as in ICE) nominates the first connection whose
  PATH_RESPONSE matches; the other side takes the connection on which the first fresh,
  authenticated, non-probing frame arrives (RFC 9000 §9.3), which the controlling side sends
  only on the connection it nominated. So both end up on the same connection.
- `PathManager`: the policy. Active path, relay circuit state (open / released / re-opening),
  heartbeat trust and dead timers, fallback, retries with jittered exponential backoff.
- `SessionPaths`: glue around a `SessionCore`. Frames in from any link, frames out to the
  links the manager chose, race bookkeeping, pings; I/O commands for the driver.
"""

from __future__ import annotations

import enum
import hmac
import math
import os
import random as _random
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Final, Literal

import attrs

from meshcore.errors import ConfigError
from meshcore.proto import constants as C
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.inner import Endpoints, Keepalive, PathChallenge
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
    "CloseLink",
    "DirectMode",
    "LinkKind",
    "OpenRelay",
    "PathCommand",
    "PathLog",
    "PathManager",
    "PathSettings",
    "PathValidator",
    "PingAnswered",
    "RaceOver",
    "RelayState",
    "SessionPaths",
    "StartRace",
]

MAX_RACE_LINKS: Final = 2 * C.MAX_CANDIDATES
"""Candidate connections one race keeps at once (dialled and accepted); more are refused."""
MAX_PINGS: Final = 16
"""Unanswered pings remembered per session; the oldest is forgotten first."""

# --- settings --------------------------------------------------------------------------------


class DirectMode(enum.Enum):
    """Whether a session may leave the relay for a direct connection."""

    AUTO = "auto"
    """Start on the relay, move to a direct path when one validates, fall back when it dies."""
    NEVER = "never"
    """Stay on the relay (no listener, no dials)."""
    ONLY = "only"
    """Application data never crosses the relay: it waits for the direct path, and the
    session ends if no direct path validates or the direct path dies."""

    @classmethod
    def parse(cls, value: DirectMode | str) -> DirectMode:
        """`value` as a DirectMode; raises ConfigError naming the accepted values."""
        if isinstance(value, DirectMode):
            return value
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(
                f"direct={value!r} is not a direct-path mode; use 'auto', 'never' or 'only'"
            ) from None


def _parse_mode(value: DirectMode | str) -> DirectMode:
    return DirectMode.parse(value)


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{attribute.name} must be above 0, got {value}")


def _fraction(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0 <= value < 1:
        raise ConfigError(f"{attribute.name} must be in [0, 1), got {value}")


def _check_settings(inst: PathSettings) -> None:
    if inst.dead_s <= inst.trust_s:
        raise ConfigError(
            f"dead_s ({inst.dead_s:g}) must be longer than trust_s ({inst.trust_s:g}): a path "
            "is first distrusted (traffic on both paths), then declared dead"
        )
    if inst.retry_max_s < inst.retry_s:
        raise ConfigError(
            f"retry_max_s ({inst.retry_max_s:g}) must be at least retry_s ({inst.retry_s:g})"
        )


@attrs.frozen
class PathSettings:
    """Direct-path behaviour of a session; every default comes from `constants`."""

    mode: DirectMode = attrs.field(default=DirectMode.AUTO, converter=_parse_mode)
    race_deadline_s: float = attrs.field(default=C.DIRECT_RACE_DEADLINE_S, validator=_positive)
    """One race (dial every candidate, accept, validate) ends by then."""
    redial_s: float = attrs.field(default=C.DIRECT_REDIAL_S, validator=_positive)
    """A refused dial is tried again this often until the deadline (DESIGN.md §5)."""
    stagger_s: float = attrs.field(default=C.DIRECT_STAGGER_S, validator=_fraction)
    """Dials to successive candidates start this far apart."""
    retry_s: float = attrs.field(default=C.DIRECT_RETRY_S, validator=_positive)
    """After a failed race or a fallback, direct is tried again after about this long."""
    retry_jitter: float = attrs.field(default=C.DIRECT_RETRY_JITTER, validator=_fraction)
    retry_max_s: float = attrs.field(default=C.DIRECT_RETRY_MAX_S, validator=_positive)
    """The retry interval doubles with each consecutive failure, up to this."""
    stable_s: float = attrs.field(default=C.DIRECT_STABLE_S, validator=_positive)
    """A direct path that lived this long before dying resets the backoff."""
    trust_s: float = attrs.field(default=C.PATH_TRUST_S, validator=_positive)
    """No authenticated frame on the direct path for this long: send on both paths."""
    dead_s: float = attrs.field(default=C.PATH_DEAD_S, validator=_positive)
    """No authenticated frame on the direct path for this long: it is dead, fall back."""
    reopen_retry_s: float = attrs.field(default=C.RELAY_REOPEN_RETRY_S, validator=_positive)
    """A failed re-open of the relay circuit is tried again this often while needed."""
    nominate_margin_s: float = attrs.field(
        default=C.DIRECT_NOMINATE_MARGIN_S, validator=attrs.validators.ge(0)
    )
    """The controlling side nominates nothing this close to the race deadline."""

    def __attrs_post_init__(self) -> None:
        _check_settings(self)


# --- outputs ---------------------------------------------------------------------------------


class LinkKind(enum.Enum):
    """What a link is to the session."""

    RELAY = "relay"
    DIRECT = "direct"
    CANDIDATE = "candidate"
    """A connection in a race, not yet nominated."""


class RelayState(enum.Enum):
    """The relay circuit of a session."""

    OPEN = "open"
    RELEASED = "released"
    """We closed it on purpose: the session runs on the direct path."""
    OPENING = "opening"
    """A re-open (CircuitOpen) is in flight."""
    LOST = "lost"
    """Gone without our asking; the controlling side re-opens it when the session needs it."""


@attrs.frozen
class StartRace:
    """Dial every candidate of the peer now (the ENDPOINTS frame is already queued)."""


@attrs.frozen
class RaceOver:
    """The race ended: `winner` carries the session from now on (None: no direct path);
    cancel the dials and close `losers`."""

    winner: Hashable | None
    losers: tuple[Hashable, ...]


@attrs.frozen
class OpenRelay:
    """Re-open the relay circuit to the peer (CircuitOpen); report `relay_up` or
    `relay_open_failed`."""


@attrs.frozen
class CloseLink:
    """Close this link (a released relay circuit, a dead direct connection)."""

    link: Hashable
    reason: str


@attrs.frozen
class PathLog:
    """A line for the user's log."""

    level: Literal["debug", "info", "warning"]
    message: str


PathCommand = StartRace | RaceOver | OpenRelay | CloseLink | PathLog
"""What the I/O driver must do."""


@attrs.frozen
class _Resend:
    """Internal: send every unacknowledged message again on the active path."""


@attrs.frozen
class _Keepalive:
    """Internal: queue a keepalive on `path` (ACTIVE or a link): a non-probing frame."""

    path: Hashable


@attrs.frozen
class _Fail:
    """Internal: the session cannot go on."""

    reason: str


_Command = PathCommand | _Resend | _Keepalive | _Fail


@attrs.frozen
class PingAnswered:
    """A ping (PATH_CHALLENGE on the active path) was answered."""

    token: bytes = attrs.field(repr=False)
    kind: LinkKind
    rtt_s: float


def _ms(seconds: float) -> str:
    ms = seconds * 1e3
    return f"{ms:.1f} ms" if ms >= 1 else f"{ms:.2f} ms"


# --- one race --------------------------------------------------------------------------------


class PathValidator:
    """Validation and nomination of the candidate connections of one race.

    Every candidate gets one PATH_CHALLENGE (16 unpredictable bytes); its PATH_RESPONSE is
    accepted only on the same link, once, compared in constant time. See the module
    docstring for who nominates which link.
    """

    def __init__(
        self,
        *,
        controlling: bool,
        deadline: float,
        margin_s: float = C.DIRECT_NOMINATE_MARGIN_S,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.controlling = controlling
        self.deadline = deadline
        self._nominate_until = deadline - margin_s
        self._random_bytes = random_bytes
        self._challenges: dict[Hashable, tuple[bytes, float]] = {}
        self.links: dict[Hashable, None] = {}
        """Candidate links in the order they came up."""
        self.rtt: dict[Hashable, float] = {}
        self.winner: Hashable | None = None

    @property
    def full(self) -> bool:
        """True when no more candidate links may join this race."""
        return len(self.links) >= MAX_RACE_LINKS

    def add(self, link: Hashable, now: float) -> PathChallenge:
        """A candidate connection is up: returns the challenge to send on it."""
        if link in self.links:
            raise ValueError(f"link {link!r} is already in this race")
        if self.full:
            raise ValueError(f"a race keeps at most {MAX_RACE_LINKS} candidate links")
        data = self._random_bytes(C.PATH_CHALLENGE_BYTES)
        self.links[link] = None
        self._challenges[link] = (data, now)
        return PathChallenge(data)

    def remove(self, link: Hashable) -> None:
        """A candidate connection is gone."""
        self.links.pop(link, None)
        self._challenges.pop(link, None)

    def on_response(self, link: Hashable, data: bytes, now: float) -> bool:
        """A PATH_RESPONSE arrived on `link`; True if that nominates `link` (controlling side)."""
        entry = self._challenges.get(link)
        if entry is None or not hmac.compare_digest(entry[0], data):
            return False
        del self._challenges[link]  # single use
        self.rtt[link] = now - entry[1]
        if self.controlling and self.winner is None and now < self._nominate_until:
            self.winner = link
            return True
        return False

    def on_accepted(self, link: Hashable) -> bool:
        """A fresh non-probing frame arrived on `link`; True if that nominates it (the
        controlled side follows the controlling side's choice)."""
        if self.controlling or self.winner is not None or link not in self.links:
            return False
        self.winner = link
        return True


# --- the policy ------------------------------------------------------------------------------


class PathManager:
    """Which path a session uses, when it moves, and when it tries direct again.

    Feed it what happened (`relay_up`, `race_won`, `frame_received`, `direct_down`, ...) and
    the clock (`handle_timer`); read `targets` (where frames for the active path go) and take
    `take_commands()`. `random()` in [0, 1) jitters the retry interval.
    """

    def __init__(
        self,
        *,
        controlling: bool,
        settings: PathSettings,
        now: float,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.controlling = controlling
        self.settings = settings
        self.mode = settings.mode
        self._random = random
        self.relay: Hashable | None = None
        self.relay_state = RelayState.LOST
        self.direct: Hashable | None = None
        self.lapsed = False
        """True while the direct path is distrusted (silent for trust_s): send on both."""
        self.racing = False
        self.migrations = 0
        """Moves from the relay onto a direct path."""
        self.fallbacks = 0
        """Moves from a direct path back to the relay."""
        self.attempts = 0
        """Races started."""
        self.failures = 0
        """Consecutive failures (races, or direct paths that died young): the backoff."""
        self.last_error: str | None = None
        self.targets: tuple[Hashable, ...] = ()
        """Where frames for the active path go now (two links while the direct is distrusted;
        none while nothing may carry them, e.g. direct='only' before the direct path)."""
        self._direct_since = -math.inf
        self._direct_rx = -math.inf
        self._confirmed = False
        self._release_at: float | None = None
        self._reopen_at: float | None = None
        self._next_race: float | None = None if self.mode is DirectMode.NEVER else now
        self._commands: list[_Command] = []

    @property
    def active(self) -> LinkKind:
        """The path the session's traffic takes: RELAY or DIRECT."""
        return LinkKind.DIRECT if self.direct is not None else LinkKind.RELAY

    @property
    def next_race(self) -> float | None:
        """When the next race starts by itself (None: not scheduled)."""
        return self._next_race

    def keepalive_on(self, link: Hashable) -> None:
        """Send a keepalive on `link` (the first frame on a circuit we re-opened)."""
        self._commands.append(_Keepalive(link))

    def take_commands(self) -> list[_Command]:
        """Take what was decided since the last call."""
        out, self._commands = self._commands, []
        return out

    # ----------------------------------------------------------------- relay circuit
    def relay_up(self, link: Hashable, now: float) -> None:
        """A relay circuit carries the session (the first one, or a re-opened one)."""
        self.relay = link
        self.relay_state = RelayState.OPEN
        self._reopen_at = None
        if self.direct is None:
            if self.mode is not DirectMode.ONLY:
                self._commands.append(_Resend())
        elif not self.lapsed:
            self._schedule_release(now, self.settings.trust_s)
        self._retarget()

    def relay_down(self, link: Hashable, reason: str, now: float) -> None:
        """The relay circuit closed without our asking (the relay or the peer closed it)."""
        if link is not self.relay:
            return  # one we released or replaced
        self.relay = None
        self.relay_state = RelayState.LOST
        self._release_at = None
        self._retarget()
        if self.direct is None or self.lapsed:
            self._need_relay(f"relay circuit closed: {reason}")
        else:
            self._log("debug", f"relay circuit closed: {reason} (the direct path carries it)")

    def relay_open_failed(self, reason: str, now: float) -> None:
        """The re-open failed; it is tried again after `reopen_retry_s` while needed."""
        if self.relay_state is RelayState.OPENING:
            self.relay_state = RelayState.LOST
        self.last_error = reason
        self._log("warning", f"could not re-open the relay circuit: {reason}")
        self._reopen_at = now + self.settings.reopen_retry_s

    def _needs_relay(self) -> bool:
        return self.relay is None and (self.direct is None or self.lapsed)

    def _need_relay(self, why: str) -> None:
        if not self.controlling:
            self._log("info", f"waiting for the peer to re-open the relay circuit ({why})")
            return
        if self.relay_state is not RelayState.OPENING:
            self.relay_state = RelayState.OPENING
            self._reopen_at = None
            self._commands.append(OpenRelay())

    def _schedule_release(self, now: float, hold: float) -> None:
        if (
            self.controlling
            and self.direct is not None
            and self._confirmed
            and not self.lapsed
            and self.relay is not None
        ):
            self._release_at = now + hold

    # ----------------------------------------------------------------- races
    def may_race(self) -> bool:
        """True if a race may start now (not one running, no direct path, mode allows it)."""
        return self.mode is not DirectMode.NEVER and not self.racing and self.direct is None

    def race_started(self, now: float) -> None:
        """The driver started a race (on our timer, the peer's ENDPOINTS, or its dial)."""
        self.racing = True
        self.attempts += 1
        self._next_race = None

    def race_won(self, link: Hashable, rtt_s: float | None, now: float) -> None:
        """`link` won the race: the session moves onto it."""
        self.racing = False
        self.direct = link
        self.lapsed = False
        self._direct_since = self._direct_rx = now
        # the controlled side moves because the controlling side already did
        self._confirmed = not self.controlling
        self.migrations += 1
        self._retarget()
        self._commands.append(_Resend())
        self._commands.append(_Keepalive(ACTIVE))  # the nomination (or its confirmation)
        if rtt_s is not None:  # else the caller measures it first
            self._log("info", f"path relay -> direct (rtt {_ms(rtt_s)})")

    def race_failed(self, reason: str, now: float) -> None:
        """The race ended without a direct path."""
        if not self.racing:
            return
        self.racing = False
        self.failures += 1
        self.last_error = reason
        self._log("info", f"direct attempt failed: {reason}")
        if self.mode is DirectMode.ONLY:
            self._commands.append(_Fail(f"no direct path (direct='only'): {reason}"))
            return
        self._next_race = now + self._backoff()

    def endpoints_received(self, now: float) -> None:
        """The peer sent ENDPOINTS: it is racing, so race too."""
        if self.may_race():
            self._commands.append(StartRace())

    def _backoff(self) -> float:
        s = self.settings
        base = min(s.retry_s * 2.0 ** min(max(self.failures - 1, 0), 32), s.retry_max_s)
        return base * (1 + s.retry_jitter * (2 * self._random() - 1))

    # ----------------------------------------------------------------- the direct path
    def frame_received(self, link: Hashable, accepted: bool, now: float) -> None:
        """An authenticated frame arrived on `link` (`accepted`: a fresh non-probing one)."""
        if link is not self.direct:
            return
        self._direct_rx = now
        if self.lapsed:
            self.lapsed = False
            self._retarget()
            self._log("info", "the direct path answers again")
            self._schedule_release(now, self.settings.trust_s)
        if accepted and not self._confirmed:
            self._confirmed = True
            self._schedule_release(now, 0.0)

    def direct_down(self, link: Hashable, reason: str, now: float) -> None:
        """The direct connection failed (a transport error, or silence): back to the relay."""
        if link is not self.direct:
            return
        self.direct = None
        self.lapsed = False
        self._release_at = None
        self.last_error = reason
        self.fallbacks += 1
        self.failures = (
            0 if now - self._direct_since >= self.settings.stable_s else (self.failures + 1)
        )
        self._commands.append(CloseLink(link, reason))
        self._retarget()
        if self.mode is DirectMode.ONLY:
            self._commands.append(_Fail(f"the direct path failed (direct='only'): {reason}"))
            return
        self._log("warning", f"fell back to relay: {reason}")
        if self.relay is None:
            self._need_relay("it was released for the direct path")
        else:
            self._commands.append(_Resend())
        self._next_race = now + self._backoff()

    # ----------------------------------------------------------------- timers
    def get_timer(self) -> float | None:
        """When `handle_timer` next needs to run, or None."""
        deadlines = [t for t in (self._release_at, self._reopen_at) if t is not None]
        if self._next_race is not None and self.may_race():
            deadlines.append(self._next_race)
        if self.direct is not None:
            limit = self.settings.dead_s if self.lapsed else self.settings.trust_s
            deadlines.append(self._direct_rx + limit)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Run whatever is due at `now`."""
        s = self.settings
        if self.direct is not None:
            silent = now - self._direct_rx
            if silent >= s.dead_s:
                why = f"no authenticated frame on the direct path for {s.dead_s:g} s"
                self.direct_down(self.direct, why, now)
            elif silent >= s.trust_s and not self.lapsed:
                self.lapsed = True
                self._release_at = None
                self._retarget()
                self._log(
                    "warning", f"direct path silent for {s.trust_s:g} s: sending on both paths"
                )
                if self.relay is None:
                    self._need_relay("the direct path is silent")
        if self._release_at is not None and now >= self._release_at:
            self._release_at = None
            relay = self.relay
            if relay is not None and self.direct is not None and not self.lapsed:
                self.relay = None
                self.relay_state = RelayState.RELEASED
                self._retarget()
                self._commands.append(CloseLink(relay, "the session moved to a direct path"))
                self._log("info", "released the relay circuit (the control connection stays)")
        if self._reopen_at is not None and now >= self._reopen_at:
            self._reopen_at = None
            if self._needs_relay():
                self._need_relay("the relay circuit is still needed")
        if self._next_race is not None and now >= self._next_race and self.may_race():
            self._next_race = None
            self._commands.append(StartRace())

    # ----------------------------------------------------------------- internals
    def _retarget(self) -> None:
        direct, relay = self.direct, self.relay
        if direct is not None:
            self.targets = (direct, relay) if self.lapsed and relay is not None else (direct,)
        elif relay is None or self.mode is DirectMode.ONLY:
            self.targets = ()
        else:
            self.targets = (relay,)

    def _log(self, level: Literal["debug", "info", "warning"], message: str) -> None:
        self._commands.append(PathLog(level, message))


# --- glue around the session core ------------------------------------------------------------


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
        self._announce: bytes | None = None
        self._events: list[SessionEvent | PingAnswered] = []
        self._commands: list[PathCommand] = []

    def enable_direct(self, *, controlling: bool, settings: PathSettings, now: float) -> None:
        """Switch the direct-path policy on (the driver calls this once, before any race)."""
        relay = self.manager.relay
        self.settings = settings
        self.controlling = controlling
        self.manager = PathManager(
            controlling=controlling, settings=settings, now=now, random=self._random
        )
        if relay is not None:
            self.manager.relay_up(relay, now)
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

    # ----------------------------------------------------------------- links
    def relay_up(self, link: Hashable, now: float, *, opened_here: bool = False) -> None:
        """`link` is the session's relay circuit. `opened_here`: we re-opened it, so a frame
        goes out on it at once (the peer routes the new circuit by that frame's index)."""
        old = self.manager.relay
        if old is not None and old is not link:
            self.kinds.pop(old, None)
            self._commands.append(CloseLink(old, "replaced by a newer relay circuit"))
        self.kinds[link] = LinkKind.RELAY
        self.manager.relay_up(link, now)
        if opened_here:
            self.manager.keepalive_on(link)
        self._run(now)

    def relay_open_failed(self, reason: str, now: float) -> None:
        self.manager.relay_open_failed(reason, now)
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
        if result:
            manager = self.manager
            if link is manager.direct:
                manager.frame_received(link, result is FrameResult.ACCEPTED, now)
                if manager._commands:
                    self._run(now)
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
        sent = self._pings.pop(event.data, None)
        link = event.path
        if sent is not None:
            rtt = now - sent
            self.rtt[link] = rtt
            kind = self.kinds.get(link, LinkKind.RELAY)
            if event.data == self._announce:
                self._announce = None
                self._commands.append(PathLog("info", f"path relay -> direct (rtt {_ms(rtt)})"))
            else:
                self._events.append(PingAnswered(event.data, kind, rtt))
            return
        race = self.race
        if race is not None and race.on_response(link, event.data, now):
            self._won(link, now)
        elif race is not None and link in race.rtt:
            self.rtt[link] = race.rtt[link]

    def _run(self, now: float) -> None:
        closed = self.core.state is not SessionState.OPEN
        if not closed:
            # the window follows the active path (set before any resend below)
            self.core.use_direct_window(self.manager.active is LinkKind.DIRECT, now)
        for command in self.manager.take_commands():
            kind = type(command)
            if kind is _Resend:
                if not closed:
                    self.core.retransmit_unacked(now)
            elif kind is _Keepalive:
                assert isinstance(command, _Keepalive)
                if not closed and (command.path is ACTIVE or command.path in self.kinds):
                    self.core.queue_control(Keepalive(), now, command.path)
            elif kind is _Fail:
                assert isinstance(command, _Fail)
                self.core.fail(command.reason)
            elif isinstance(command, StartRace | RaceOver | OpenRelay | CloseLink | PathLog):
                if closed and kind is not CloseLink:
                    continue  # a closed session starts nothing new
                self._commands.append(command)
