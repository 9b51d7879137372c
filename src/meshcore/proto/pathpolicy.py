"""The path policy of a session (`PathManager`): which path carries it, the relay circuit's
state (open, released, re-opening), heartbeat trust and dead timers on the direct path,
fallback, and when to race again (jittered exponential backoff, `proto.backoff`).

Pure: events and `now` in, commands out (docs/direct.md, "Migration with zero loss",
"Fallback and retry", "Losing the relay"). Links are opaque hashable objects of the driver.
"""

from __future__ import annotations

import enum
import math
import random as _random
from collections.abc import Callable, Hashable
from typing import Literal

import attrs

from meshcore.proto.backoff import backoff_delay
from meshcore.proto.pathsettings import DirectMode, PathSettings
from meshcore.proto.relaypaths import MAX_RELAY_CIRCUITS, RelayCircuit, RelayCircuits
from meshcore.proto.session import ACTIVE

__all__ = [
    "CloseLink",
    "FailSession",
    "LinkKind",
    "OpenRelay",
    "PathCommand",
    "PathLog",
    "PathManager",
    "PolicyCommand",
    "ProbeRelays",
    "RaceOver",
    "RelayState",
    "ResendUnacked",
    "SendKeepalive",
    "StartRace",
    "describe_rtt",
]


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
    """Open a relay circuit to the peer (CircuitOpen, or a new pairing) on a relay not in
    `avoid`; report `relay_up` or `relay_open_failed`, with the same `spare`."""

    avoid: tuple[Hashable, ...] = ()
    """Relays (keys as `relay_up` was given them) the new circuit must not run through."""
    spare: bool = False
    """A spare: the session has a relay circuit, and wants one on another relay too."""


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


# What the policy asks of the path machine (`SessionPaths`), which does it on the session core;
# these never reach the driver.


@attrs.frozen
class ResendUnacked:
    """Send every unacknowledged message again on the active path."""


@attrs.frozen
class SendKeepalive:
    """Queue a keepalive on `path` (ACTIVE or a link): a non-probing frame."""

    path: Hashable


@attrs.frozen
class ProbeRelays:
    """Send a PATH_CHALLENGE on each of these relay circuits; report each answer's round
    trip with `relay_rtt`."""

    links: tuple[Hashable, ...]


@attrs.frozen
class FailSession:
    """The session cannot go on."""

    reason: str


PolicyCommand = PathCommand | ResendUnacked | SendKeepalive | FailSession | ProbeRelays
"""What `PathManager.take_commands` returns."""


def describe_rtt(seconds: float) -> str:
    """A round trip for a log line: "12.3 ms", or "0.42 ms" below a millisecond."""
    ms = seconds * 1e3
    return f"{ms:.1f} ms" if ms >= 1 else f"{ms:.2f} ms"


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else describe_rtt(seconds)


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
        """The relay circuit that carries the relayed path (one of `circuits`)."""
        self.circuits = RelayCircuits()
        """Every relay circuit of the session, at most one per relay: `relay` and spares."""
        self.relay_state = RelayState.LOST
        self.direct: Hashable | None = None
        self.lapsed = False
        """True while the direct path is distrusted (silent for trust_s): send on both."""
        self.racing = False
        self.migrations = 0
        """Moves from the relay onto a direct path."""
        self.fallbacks = 0
        """Moves from a direct path back to the relay."""
        self.fallbacks_silent = 0
        """Of those, the ones because the direct path went silent for `dead_s` (the others
        were transport errors)."""
        self.attempts = 0
        """Races started."""
        self.relay_moves = 0
        """Moves from one relay's circuit to another's (a relay died, left, or was slower)."""
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
        # a spare waits until the first race had its chance (a direct path needs none)
        self._spare_at = now if self.mode is DirectMode.NEVER else now + settings.race_deadline_s
        self._spare_pending = False
        self._spare_failures = 0
        self._probe_at = now
        self._silence_noted = -math.inf
        self._reopen_failures = 0
        self.closed = False
        """The session ended: nothing is started, retried, re-opened or logged any more."""
        self._commands: list[PolicyCommand] = []

    @property
    def active(self) -> LinkKind:
        """The path the session's traffic takes: RELAY or DIRECT."""
        return LinkKind.DIRECT if self.direct is not None else LinkKind.RELAY

    @property
    def relay_key(self) -> Hashable:
        """The relay the relayed path runs through (None: none, or unknown)."""
        circuit = self.circuits.get(self.relay) if self.relay is not None else None
        return circuit.relay if circuit is not None else None

    @property
    def next_race(self) -> float | None:
        """When the next race starts by itself (None: not scheduled)."""
        return self._next_race

    def keepalive_on(self, link: Hashable) -> None:
        """Send a keepalive on `link` (the first frame on a circuit we re-opened)."""
        self._commands.append(SendKeepalive(link))

    def take_commands(self) -> list[PolicyCommand]:
        """Take what was decided since the last call."""
        out, self._commands = self._commands, []
        return out

    def session_closed(self) -> None:
        """The session ended (closed by either side, finished or failed): a closed session
        never falls back, re-opens its circuit, races or pairs again, and its links going
        away afterwards is no news (docs/direct.md)."""
        self.closed = True
        self.racing = False
        self._spare_pending = False
        self._release_at = self._reopen_at = self._next_race = None
        self._commands.clear()

    # ----------------------------------------------------------------- relay circuit
    def relay_up(
        self, link: Hashable, now: float, *, relay: Hashable = None, spare: bool = False
    ) -> None:
        """A relay circuit through `relay` is up (the first one, a re-opened one, a spare, or
        one the peer opened). It replaces the session's circuit on the same relay; it carries
        the session if none does (`spare`: it answers `OpenRelay(spare=True)`)."""
        if self.closed:
            return
        if spare:
            self._spare_pending = False
            self._spare_failures = 0
        replaced = self.circuits.add(link, relay, now)
        if replaced is not None:
            self._commands.append(CloseLink(replaced.link, "replaced by a newer relay circuit"))
        if self.relay is None or (replaced is not None and replaced.link is self.relay):
            self._carry(link, now)
        elif len(self.circuits) > MAX_RELAY_CIRCUITS:
            self.circuits.remove(link)
            self._commands.append(CloseLink(link, "too many relay circuits for one session"))
        else:
            self._log("debug", f"spare relay circuit via {relay}")
            self._probe_at = now  # measure it, and the one carrying the session, at once
        self._retarget()

    def _carry(self, link: Hashable, now: float) -> None:
        """`link` (a relay circuit) carries the relayed path from now on."""
        self.relay = link
        self.relay_state = RelayState.OPEN
        self._reopen_at = None
        self._reopen_failures = 0
        if self.direct is None:
            if self.mode is not DirectMode.ONLY:
                self._commands.append(ResendUnacked())
        elif not self.lapsed:
            self._schedule_release(now, self.settings.trust_s)

    def relay_down(self, link: Hashable, reason: str, now: float) -> None:
        """A relay circuit closed without our asking (the relay, its connection or the peer
        closed it). A spare takes over at once if there is a live one."""
        lost = self.circuits.remove(link)
        if lost is None:
            return  # one we released or replaced
        if self.closed:  # nothing to do but forget it
            if link is self.relay:
                self.relay = None
            self._retarget()
            return
        if link is not self.relay:
            self._log("debug", f"spare relay circuit via {lost.relay} closed: {reason}")
            self._spare_at = now
            return
        self.relay = None
        self.relay_state = RelayState.LOST
        self._release_at = None
        spare = self.circuits.best(now, self.settings.dead_s)
        if spare is not None:
            relayed = self._relayed()
            self._carry(spare.link, now)
            if relayed:
                self._moved(lost, spare, f"its relay circuit closed: {reason}", now)
            self._retarget()
            return
        self._retarget()
        if self.direct is None or self.lapsed:
            self._need_relay(f"relay circuit closed: {reason}")
        else:
            self._log("debug", f"relay circuit closed: {reason} (the direct path carries it)")

    def relay_rtt(self, link: Hashable, rtt_s: float, now: float) -> None:
        """A probe on relay circuit `link` was answered after `rtt_s`. The session moves to
        a circuit clearly faster than the one carrying it (`clearly_faster`)."""
        circuit = self.circuits.get(link)
        if circuit is None or self.closed:
            return
        circuit.rtt_s = rtt_s
        if self.relay is None or not self._relayed():
            return
        silent = self._silent_carrier(now)
        faster = self.circuits.faster_than(self.relay, now, self.settings.trust_s)
        if silent is not None:
            self._switch(silent, now, resend=True)
        elif faster is not None:
            self._switch(faster, now, resend=False)

    def _switch(self, to: RelayCircuit, now: float, *, resend: bool) -> None:
        old = self.circuits.get(self.relay) if self.relay is not None else None
        if old is None or to.link is old.link:
            return
        self.relay = to.link
        if resend:
            self._commands.append(ResendUnacked())
            why = f"its relay circuit was silent for {self.settings.trust_s:g} s"
        else:
            why = f"rtt {_ms(old.rtt_s)} -> {_ms(to.rtt_s)}"
        self._moved(old, to, why, now)
        self._retarget()

    def _moved(self, old: RelayCircuit, new: RelayCircuit, why: str, now: float) -> None:
        self.relay_moves += 1
        self._spare_at = now  # a new spare, elsewhere
        self._log("info", f"relayed path via {old.relay} -> via {new.relay} ({why})")

    def _relayed(self) -> bool:
        """Does the relay circuit carry the session's traffic (no trusted direct path)?"""
        return self.direct is None or self.lapsed

    def _silent_carrier(self, now: float) -> RelayCircuit | None:
        """A live circuit to move to if the one carrying the session has been silent for
        `trust_s` (its relay may be gone without a word)."""
        if self.relay is None or len(self.circuits) < 2:
            return None
        carrier = self.circuits.get(self.relay)
        assert carrier is not None
        if now - carrier.last_rx < self.settings.trust_s:
            return None
        return self.circuits.best(now, self.settings.trust_s, excluding=carrier.link)

    def relay_open_failed(self, reason: str, now: float, *, spare: bool = False) -> None:
        """An `OpenRelay` failed; a needed circuit is tried again after `reopen_retry_s`, a
        spare after `reopen_retry_s` doubling per failure up to `spare_retry_s` (a relay
        that just restarted is back within a second or two; one that is gone costs little).

        A failed re-open is logged once at info level, the repeats at debug: the session is
        not lost until its dead timer says so (and then it says so once, as a warning)."""
        if self.closed:
            return
        if spare:
            self._spare_pending = False
            self._spare_failures += 1
            s = self.settings
            self._spare_at = now + backoff_delay(
                self._spare_failures,
                base_s=min(s.reopen_retry_s, s.spare_retry_s),
                max_s=s.spare_retry_s,
                jitter=s.retry_jitter,
                random=self._random,
            )
            self._log("debug", f"no spare relay circuit: {reason}")
            return
        if self.relay_state is RelayState.OPENING:
            self.relay_state = RelayState.LOST
        self.last_error = reason
        self._reopen_failures += 1
        level: Literal["debug", "info"] = "info" if self._reopen_failures == 1 else "debug"
        self._log(level, f"could not re-open the relay circuit: {reason}")
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
        return (
            self.mode is not DirectMode.NEVER
            and not self.racing
            and self.direct is None
            and not self.closed
        )

    def race_started(self, now: float) -> None:
        """The driver started a race (on our timer, the peer's ENDPOINTS, or its dial)."""
        self.racing = True
        self.attempts += 1
        self._next_race = None

    def race_won(self, link: Hashable, rtt_s: float | None, now: float) -> None:
        """`link` won the race: the session moves onto it."""
        if self.closed:
            return
        self.racing = False
        self.direct = link
        self.lapsed = False
        self._direct_since = self._direct_rx = now
        # the controlled side moves because the controlling side already did
        self._confirmed = not self.controlling
        self.migrations += 1
        self._retarget()
        self._commands.append(ResendUnacked())
        self._commands.append(SendKeepalive(ACTIVE))  # the nomination (or its confirmation)
        if rtt_s is not None:  # else the caller measures it first
            self._log("info", f"path relay -> direct (rtt {describe_rtt(rtt_s)})")

    def race_failed(self, reason: str, now: float) -> None:
        """The race ended without a direct path."""
        if not self.racing or self.closed:
            return
        self.racing = False
        self.failures += 1
        self.last_error = reason
        self._log("info", f"direct attempt failed: {reason}")
        if self.mode is DirectMode.ONLY:
            self._commands.append(FailSession(f"no direct path (direct='only'): {reason}"))
            return
        self._next_race = now + self._backoff()

    def endpoints_received(self, now: float) -> None:
        """The peer sent ENDPOINTS: it is racing, so race too."""
        if self.may_race():
            self._commands.append(StartRace())

    def _backoff(self) -> float:
        s = self.settings
        return backoff_delay(
            self.failures,
            base_s=s.retry_s,
            max_s=s.retry_max_s,
            jitter=s.retry_jitter,
            random=self._random,
        )

    # ----------------------------------------------------------------- the direct path
    def frame_received(self, link: Hashable, accepted: bool, now: float) -> bool:
        """An authenticated frame arrived on `link` (`accepted`: a fresh non-probing one).

        Returns True if that decided something (`take_commands` has more).
        """
        if link is not self.direct or self.closed:
            return False
        self._direct_rx = now
        if self.lapsed:
            self.lapsed = False
            self._retarget()
            self._log("info", "the direct path answers again")
            self._schedule_release(now, self.settings.trust_s)
        if accepted and not self._confirmed:
            self._confirmed = True
            self._schedule_release(now, 0.0)
        return bool(self._commands)

    def direct_down(self, link: Hashable, reason: str, now: float, *, silent: bool = False) -> None:
        """The direct connection failed (a transport error, or `silent` for `dead_s`): back
        to the relay. Logged at info level: the relay carries the session on."""
        if link is not self.direct:
            return
        if self.closed:  # nothing to do but forget it
            self.direct = None
            self._retarget()
            return
        self.fallbacks_silent += silent
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
            self._commands.append(FailSession(f"the direct path failed (direct='only'): {reason}"))
            return
        self._log("info", f"fell back to relay: {reason}")
        if self.relay is None:
            self._need_relay("it was released for the direct path")
        else:
            self._commands.append(ResendUnacked())
        self._next_race = now + self._backoff()

    # ----------------------------------------------------------------- timers
    def get_timer(self) -> float | None:
        """When `handle_timer` next needs to run, or None."""
        if self.closed:
            return None
        deadlines = [t for t in (self._release_at, self._reopen_at) if t is not None]
        if self._next_race is not None and self.may_race():
            deadlines.append(self._next_race)
        if self.direct is not None:
            limit = self.settings.dead_s if self.lapsed else self.settings.trust_s
            deadlines.append(self._direct_rx + limit)
        if self._may_open_spare():
            deadlines.append(self._spare_at)
        if len(self.circuits) > 1:
            deadlines.append(self._probe_at)
            for circuit in self.circuits:
                if circuit.link is not self.relay:
                    deadlines.append(circuit.last_rx + self.settings.dead_s)
                elif circuit.last_rx > self._silence_noted and self._relayed():
                    deadlines.append(circuit.last_rx + self.settings.trust_s)
        return min(deadlines) if deadlines else None

    def handle_timer(self, now: float) -> None:
        """Run whatever is due at `now`."""
        if self.closed:
            return
        s = self.settings
        if self.direct is not None:
            silent = now - self._direct_rx
            if silent >= s.dead_s:
                why = f"no authenticated frame on the direct path for {s.dead_s:g} s"
                self.direct_down(self.direct, why, now, silent=True)
            elif silent >= s.trust_s and not self.lapsed:
                self.lapsed = True
                self._release_at = None
                self._retarget()
                self._log("info", f"direct path silent for {s.trust_s:g} s: sending on both paths")
                if self.relay is None:
                    self._need_relay("the direct path is silent")
        if self._release_at is not None and now >= self._release_at:
            self._release_at = None
            relay = self.relay
            if relay is not None and self.direct is not None and not self.lapsed:
                self.relay = None
                self.relay_state = RelayState.RELEASED
                for circuit in self.circuits.clear():
                    self._commands.append(
                        CloseLink(circuit.link, "the session moved to a direct path")
                    )
                self._retarget()
                self._log("info", "released the relay circuit (the control connection stays)")
        if self._reopen_at is not None and now >= self._reopen_at:
            self._reopen_at = None
            if self._needs_relay():
                self._need_relay("the relay circuit is still needed")
        if self._next_race is not None and now >= self._next_race and self.may_race():
            self._next_race = None
            self._commands.append(StartRace())
        self._tend_circuits(now)

    def _tend_circuits(self, now: float) -> None:
        """Probe the relay circuits, drop dead spares, leave a silent carrier, open a spare."""
        s = self.settings
        if len(self.circuits) > 1:
            for circuit in self.circuits:
                if circuit.link is not self.relay and now - circuit.last_rx >= s.dead_s:
                    self.circuits.remove(circuit.link)
                    why = f"no frame on the spare relay circuit for {s.dead_s:g} s"
                    self._commands.append(CloseLink(circuit.link, why))
                    self._spare_at = now
            silent = self._silent_carrier(now)
            if silent is not None and self._relayed():
                self._switch(silent, now, resend=True)
            elif self.relay is not None:
                carrier = self.circuits.get(self.relay)
                if carrier is not None and now - carrier.last_rx >= s.trust_s:
                    self._silence_noted = carrier.last_rx  # nowhere to go: wait for a frame
        if len(self.circuits) > 1 and now >= self._probe_at:
            self._probe_at = now + s.relay_probe_s
            self._commands.append(ProbeRelays(tuple(c.link for c in self.circuits)))
        if self._may_open_spare() and now >= self._spare_at:
            self._spare_pending = True
            self._commands.append(OpenRelay(avoid=self.circuits.relays, spare=True))

    def _may_open_spare(self) -> bool:
        """Would this side open a spare relay circuit now (its time aside)?"""
        return (
            self.controlling
            and not self.closed
            and self.mode is not DirectMode.ONLY
            and self.direct is None
            and not self.racing
            and not self._spare_pending
            and self.relay is not None
            and self.relay_state is RelayState.OPEN
            and len(self.circuits) < self.settings.relay_circuits
            and self.relay_key is not None  # circuits of an unknown relay cannot be told apart
        )

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
