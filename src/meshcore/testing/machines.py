"""Stateful hypothesis machines over meshcore's sans-IO cores, for meshcore's own tests and
for anyone who changes or extends them: subclass one to add rules or change its settings.

- `SessionCoreMachine`: two session cores over a lossy, duplicating, reordering network.
- `SessionPathsMachine`: two sessions' path machines over relay circuits and direct
  connections that come and go, races and fallbacks included.
- `SessionRelaysMachine`: the same over several named relays that die, come back and close
  circuits: spares, moves between relays, probes.

Each lets either side end its direction (`send_eof`) at any moment: the Eof must arrive
exactly once, after everything sent before it, and the session finish once both ended.

Importing this module imports hypothesis.
"""

from __future__ import annotations

import os
import random
from collections.abc import Hashable
from typing import ClassVar, Final, TypeAlias

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshcore.errors import MeshError
from meshcore.proto.framing import KeyRing, ReceiveKey, SendKey
from meshcore.proto.paths import (
    MAX_PINGS,
    MAX_PROBES,
    MAX_RACE_LINKS,
    CloseLink,
    OpenRelay,
    PathLog,
    PathSettings,
    RaceOver,
    SessionPaths,
    StartRace,
)
from meshcore.proto.relaypaths import MAX_RELAY_CIRCUITS
from meshcore.proto.session import (
    FINISHED_REASON,
    EofReceived,
    MessageReceived,
    SessionCore,
    SessionFinished,
    SessionSettings,
    SessionState,
)

__all__ = ["SessionCoreMachine", "SessionPathsMachine", "SessionRelaysMachine"]

CORE_SETTINGS: Final = SessionSettings(
    window_frames=8,
    window_bytes=4096,
    ack_every_frames=3,
    retransmit_timeout_s=0.5,
    dead_after_s=None,
    reorder_frames=64,
    direct_window_frames=32,
    direct_window_bytes=16384,
)

PATHS_CORE_SETTINGS: Final = attrs.evolve(CORE_SETTINGS, keepalive_s=0.4)
PATHS_SETTINGS: Final = PathSettings(
    race_deadline_s=1.0,
    retry_s=1.0,
    retry_max_s=4.0,
    trust_s=1.0,
    dead_s=2.0,
    stable_s=3.0,
    reopen_retry_s=0.5,
    nominate_margin_s=0.1,
)
RELAYS_SETTINGS: Final = attrs.evolve(
    PATHS_SETTINGS, relay_circuits=2, relay_probe_s=0.5, spare_retry_s=2.0
)
SIDES: Final = ("a", "b")
SimLink: TypeAlias = tuple[str, int]
"""A link of `SessionPathsMachine`'s network: ("relay" or "direct", a serial number)."""


class SessionCoreMachine(RuleBasedStateMachine):
    """Two `SessionCore`s (a, b) with real keys over a network that loses, duplicates, delays
    and reorders frames, switches paths (and with them send windows) and lets time pass.

    Either side may end its direction (`send_eof`) at any moment.

    Invariants: each side receives exactly the other's messages, once, in order; a peer's
    Eof arrives once, after all of its messages; the send window and the reorder buffer stay
    within their bounds; once the network heals, everything sent arrives, and a session
    whose two directions ended has finished (at least on one side, and on both unless the
    network lost the last words and the finished side stopped lingering). Subclass to change
    `settings` or to add rules; run it with `TestX = SessionCoreMachine.TestCase`.
    """

    settings: ClassVar[SessionSettings] = CORE_SETTINGS

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        k1, k2 = os.urandom(32), os.urandom(32)
        ra, rb = KeyRing(), KeyRing()
        ra.install(SendKey(k1, 2, 0.0), ReceiveKey(k2, 1, 0.0), 0.0)
        rb.install(SendKey(k2, 1, 0.0), ReceiveKey(k1, 2, 0.0), 0.0)
        settings = self.settings
        self.cores = {"a": SessionCore(ra, 0.0, settings), "b": SessionCore(rb, 0.0, settings)}
        self.wire: dict[str, list[bytes]] = {"a": [], "b": []}  # frames in flight *to* key
        self.sent: dict[str, list[bytes]] = {"a": [], "b": []}
        self.got: dict[str, list[bytes]] = {"a": [], "b": []}
        self.eofs: dict[str, int] = {"a": 0, "b": 0}  # Eofs each side received
        self.finished: dict[str, bool] = {"a": False, "b": False}
        self.counter = 0

    def _other(self, side: str) -> str:
        return "b" if side == "a" else "a"

    def _collect(self, side: str) -> None:
        core = self.cores[side]
        for _path, frame in core.outbox():
            self.wire[self._other(side)].append(frame)
        for event in core.events():
            if isinstance(event, MessageReceived):
                self.got[side].append(event.payload)
            elif isinstance(event, EofReceived):
                self.eofs[side] += 1
                # everything the peer sent before its Eof arrived first
                assert self.got[side] == self.sent[self._other(side)], "Eof before data"
            else:
                assert isinstance(event, SessionFinished), event
                self.finished[side] = True

    @rule(side=st.sampled_from("ab"), size=st.integers(0, 600))
    def send(self, side: str, size: int) -> None:
        core = self.cores[side]
        if not core.can_send():
            return
        self.counter += 1
        payload = self.counter.to_bytes(4, "big") + os.urandom(size)
        core.send(payload, self.now)
        self.sent[side].append(payload)
        self._collect(side)

    @rule(side=st.sampled_from("ab"))
    def send_eof(self, side: str) -> None:
        try:
            self.cores[side].send_eof(self.now)
        except MeshError:  # the window is full (or the session is over): later
            return
        self._collect(side)

    @precondition(lambda self: self.wire["a"] or self.wire["b"])
    @rule(data=st.data(), side=st.sampled_from("ab"))
    def deliver(self, data: st.DataObject, side: str) -> None:
        queue = self.wire[side]
        if not queue:
            return
        i = data.draw(st.integers(0, len(queue) - 1), label="which frame")
        frame = queue.pop(i)
        self.cores[side].receive_frame(frame, self.now)
        self._collect(side)

    @rule(side=st.sampled_from("ab"), data=st.data())
    def drop(self, side: str, data: st.DataObject) -> None:
        queue = self.wire[side]
        if queue:
            queue.pop(data.draw(st.integers(0, len(queue) - 1)))

    @rule(side=st.sampled_from("ab"), data=st.data())
    def duplicate(self, side: str, data: st.DataObject) -> None:
        queue = self.wire[side]
        if queue:
            queue.append(queue[data.draw(st.integers(0, len(queue) - 1))])

    @rule(side=st.sampled_from("ab"))
    def path_down_then_up(self, side: str) -> None:
        # everything in flight towards `side` is lost, the sender moves to a new path
        self.wire[side].clear()
        self.cores[self._other(side)].retransmit_unacked(self.now)
        self._collect(self._other(side))

    @rule(side=st.sampled_from("ab"), direct=st.booleans())
    def path_changes_window(self, side: str, direct: bool) -> None:
        # e.g. a fallback from direct (wide window) to the relay (narrow) with a full buffer
        core = self.cores[side]
        core.use_direct_window(direct, self.now)
        core.retransmit_unacked(self.now)
        self._collect(side)

    @rule(dt=st.floats(0.001, 2.0))
    def advance(self, dt: float) -> None:
        self.now += dt
        for side in "ab":
            core = self.cores[side]
            deadline = core.get_timer()
            if deadline is not None and deadline <= self.now:
                core.handle_timer(self.now)
            self._collect(side)

    @invariant()
    def exactly_once_in_order(self) -> None:
        for side in "ab":
            got = self.got[side]
            assert got == self.sent[self._other(side)][: len(got)]

    @invariant()
    def an_eof_arrives_at_most_once_and_only_if_sent(self) -> None:
        for side in "ab":
            assert self.eofs[side] <= int(self.cores[self._other(side)].eof_sent)
            if self.finished[side]:
                assert self.cores[side].close_reason == FINISHED_REASON

    @invariant()
    def buffers_bounded(self) -> None:
        for core in self.cores.values():
            # white-box: the core's own buffers, not only what it reports
            assert core.unacked <= self.settings.direct_window_frames
            in_flight = core.unacked - core._unsent
            assert in_flight <= max(core._window_frames, 1)
            assert len(core._in.buffered) <= self.settings.reorder_frames

    def teardown(self) -> None:
        # a clean network from here on: everything sent must arrive
        for _ in range(200):
            self.now += 0.6
            for side in "ab":
                while self.wire[side]:
                    self.cores[side].receive_frame(self.wire[side].pop(0), self.now)
                    self._collect(side)
                self.cores[side].handle_timer(self.now)
                self._collect(side)
            if all(self.cores[s].all_acked for s in "ab") and not any(self.wire.values()):
                break
        for side in "ab":
            assert self.got[side] == self.sent[self._other(side)]
            assert self.eofs[side] == int(self.cores[self._other(side)].eof_sent)
        if all(core.eof_sent for core in self.cores.values()):
            assert any(self.finished.values()), "both directions ended, neither finished"
            for side in "ab":
                core = self.cores[side]
                if not self.finished[side]:  # the peer's last words were lost, and then
                    assert self.finished[self._other(side)]  # it stopped lingering
                    assert core.state is SessionState.OPEN and core.eof_received


class SessionPathsMachine(RuleBasedStateMachine):
    """Two `SessionPaths` (a controls) with real keys over a simulated network of relay
    circuits and direct connections; links are tuples ("relay"|"direct", n).

    Rules: sends, ends of direction (`send_eof`), deliveries in any order (delayed frames),
    duplicates, drops, time passing, direct connections coming up, links dying. Invariants:
    each side receives exactly the other's messages, once, in order, and a peer's Eof once,
    after all of them; every buffer stays within its bound; traffic goes only on live links;
    a closed session starts nothing; once the network behaves, everything sent arrives.
    Subclass to change `core_settings` or `path_settings`; run it with
    `TestX = SessionPathsMachine.TestCase`.
    """

    core_settings: ClassVar[SessionSettings] = PATHS_CORE_SETTINGS
    path_settings: ClassVar[PathSettings] = PATHS_SETTINGS
    relays: ClassVar[tuple[str, ...]] = ()
    """Named relays circuits run through (none: every circuit is on one unnamed relay)."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.circuit_relay: dict[SimLink, str | None] = {}
        """The relay each relay circuit runs through."""
        self.alive_relays: set[str] = set(self.relays)
        k1, k2 = os.urandom(32), os.urandom(32)
        ra, rb = KeyRing(), KeyRing()
        ra.install(SendKey(k1, 2, 0.0), ReceiveKey(k2, 1, 0.0), 0.0)
        rb.install(SendKey(k2, 1, 0.0), ReceiveKey(k1, 2, 0.0), 0.0)
        rng = random.Random(0)
        core = self.core_settings
        cores = {"a": SessionCore(ra, 0.0, core), "b": SessionCore(rb, 0.0, core)}
        self.paths = {
            side: SessionPaths(
                cores[side],
                0.0,
                controlling=side == "a",
                settings=self.path_settings,
                random=rng.random,
            )
            for side in SIDES
        }
        self.ids = 0
        self.live: set[SimLink] = set()
        self.wire: dict[tuple[SimLink, str], list[bytes]] = {}  # (link, to whom) -> frames
        self.sent: dict[str, list[bytes]] = {"a": [], "b": []}
        self.got: dict[str, list[bytes]] = {"a": [], "b": []}
        self.eofs: dict[str, int] = {"a": 0, "b": 0}
        self.finished: dict[str, bool] = {"a": False, "b": False}
        self.counter = 0
        first = self.relays[0] if self.relays else None
        relay = self._new_link("relay", first)
        for side in SIDES:
            self.paths[side].relay_up(relay, 0.0, relay=first)
            self.paths[side].handle_timer(0.0)  # the first race starts with the session
        self._settle()

    # ----------------------------------------------------------------- the simulated driver
    def _new_link(self, kind: str, relay: str | None = None) -> SimLink:
        self.ids += 1
        link = (kind, self.ids)
        self.live.add(link)
        if kind == "relay":
            self.circuit_relay[link] = relay
        return link

    def _open_relay(self, side: str, command: OpenRelay) -> None:
        """A circuit on the first live relay not avoided (any, with unnamed relays)."""
        paths = self.paths[side]
        if not self.relays:
            paths.relay_up(self._new_link("relay"), self.now, opened_here=True)
            return
        where = next(
            (r for r in self.relays if r in self.alive_relays and r not in command.avoid), None
        )
        if where is None:
            paths.relay_open_failed("no relay to open a circuit on", self.now, spare=command.spare)
            return
        link = self._new_link("relay", where)
        paths.relay_up(link, self.now, opened_here=True, relay=where, spare=command.spare)

    def _close(self, link: Hashable, reason: str) -> None:
        if link not in self.live:
            return
        self.live.discard(link)
        for side in SIDES:
            self.wire.pop((link, side), None)
            self.paths[side].link_down(link, reason, self.now)

    def _settle(self) -> None:
        """Run both sides' outputs until nothing more happens (what the trio driver does)."""
        for _ in range(50):
            busy = False
            for side in SIDES:
                busy |= self._drain(side)
            if not busy:
                return

    def _drain(self, side: str) -> bool:
        paths = self.paths[side]
        other = "b" if side == "a" else "a"
        busy = False
        for event in paths.events(self.now):
            if isinstance(event, MessageReceived):
                self.got[side].append(event.payload)
            elif isinstance(event, EofReceived):
                self.eofs[side] += 1
                assert self.got[side] == self.sent[other], "an Eof overtook a message"
            elif isinstance(event, SessionFinished):
                self.finished[side] = True
        for link, frame in paths.outbox():
            if link in self.live:
                self.wire.setdefault((link, other), []).append(frame)
        for command in paths.commands():
            busy = True
            if paths.core.state is not SessionState.OPEN:
                # a closed session only calls its race off and closes links
                assert isinstance(command, RaceOver | CloseLink), command
            if isinstance(command, StartRace):
                paths.race_started(self.now)
            elif isinstance(command, RaceOver):
                for loser in command.losers:
                    self._close(loser, "lost the race")
            elif isinstance(command, CloseLink):
                self._close(command.link, command.reason)
            elif isinstance(command, OpenRelay):
                self._open_relay(side, command)
            else:
                assert isinstance(command, PathLog)
        return busy

    def _expire_races(self) -> None:
        for side in SIDES:
            race = self.paths[side].race
            if race is not None and self.now >= race.deadline:
                self.paths[side].race_failed("deadline", self.now)

    def _deliver(self, key: tuple[SimLink, str], index: int) -> None:
        link, side = key
        frame = self.wire[key].pop(index)
        paths = self.paths[side]
        if link not in paths.kinds:
            if link[0] != "relay":
                return  # a connection this side already gave up on
            # a circuit the peer opened, routed by its frame
            paths.relay_up(link, self.now, relay=self.circuit_relay.get(link))
        paths.receive_frame(frame, link, self.now)
        self._settle()

    # ----------------------------------------------------------------- rules
    @rule(side=st.sampled_from(SIDES), size=st.integers(0, 300))
    def send(self, side: str, size: int) -> None:
        core = self.paths[side].core
        if not core.can_send():
            return
        self.counter += 1
        payload = self.counter.to_bytes(4, "big") + os.urandom(size)
        core.send(payload, self.now)
        self.sent[side].append(payload)
        self._settle()

    @rule(side=st.sampled_from(SIDES))
    def send_eof(self, side: str) -> None:
        try:
            self.paths[side].core.send_eof(self.now)
        except MeshError:  # the window is full (or the session is over): later
            return
        self._settle()

    @precondition(lambda self: any(self.wire.values()))
    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        keys = sorted((k for k, q in self.wire.items() if q), key=repr)
        key = data.draw(st.sampled_from(keys), label="link")
        queue = self.wire[key]
        # mostly the oldest frame (a stream), sometimes a later one (a delayed frame)
        index = data.draw(st.integers(0, len(queue) - 1) | st.just(0), label="frame")
        self._deliver(key, index)

    @rule()
    def flush(self) -> None:
        """A healthy moment: every queued frame arrives, in order, replies included."""
        for _ in range(20):
            keys = [k for k, q in self.wire.items() if q]
            if not keys:
                return
            for key in keys:
                while self.wire.get(key):
                    self._deliver(key, 0)

    @precondition(lambda self: any(self.wire.values()))
    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        keys = sorted((k for k, q in self.wire.items() if q), key=repr)
        key = data.draw(st.sampled_from(keys), label="link")
        queue = self.wire[key]
        queue.append(queue[data.draw(st.integers(0, len(queue) - 1), label="frame")])

    @precondition(lambda self: any(self.wire.values()))
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        keys = sorted((k for k, q in self.wire.items() if q), key=repr)
        key = data.draw(st.sampled_from(keys), label="link")
        queue = self.wire[key]
        queue.pop(data.draw(st.integers(0, len(queue) - 1), label="frame"))

    @rule(dt=st.sampled_from([0.01, 0.1, 0.3, 0.7, 1.5]))
    def tick(self, dt: float) -> None:
        self.now += dt
        for side in SIDES:
            self.paths[side].handle_timer(self.now)
        self._settle()
        self._expire_races()
        self._settle()

    @precondition(lambda self: all(self.paths[s].race is not None for s in SIDES))
    @rule()
    def direct_connection_up(self) -> None:
        link = self._new_link("direct")
        for side in SIDES:
            if not self.paths[side].candidate_up(link, self.now):
                self._close(link, "refused")
                break
        self._settle()

    @precondition(lambda self: any(link[0] == "direct" for link in self.live))
    @rule(data=st.data())
    def direct_connection_dies(self, data: st.DataObject) -> None:
        links = sorted((x for x in self.live if x[0] == "direct"), key=repr)
        self._close(data.draw(st.sampled_from(links)), "connection reset by peer")
        self._settle()

    # ----------------------------------------------------------------- invariants
    @invariant()
    def delivered_exactly_once_in_order(self) -> None:
        for side, other in (("a", "b"), ("b", "a")):
            got, sent = self.got[side], self.sent[other]
            assert got == sent[: len(got)], "a message was lost, duplicated or reordered"

    @invariant()
    def buffers_stay_bounded(self) -> None:
        for side in SIDES:
            paths = self.paths[side]
            core = paths.core
            # the window follows the path (the larger one on direct); frames sent on the
            # direct window stay in flight after a fall back until they are acknowledged
            settings = self.core_settings
            assert core.unacked <= max(settings.window_frames, settings.direct_window_frames)
            assert len(core._in.buffered) <= settings.reorder_frames  # white-box
            assert len(paths._pings) <= MAX_PINGS
            if paths.race is not None:
                assert len(paths.race.links) <= MAX_RACE_LINKS
            assert set(paths.kinds) <= self.live  # no state kept for links that are gone

    @invariant()
    def an_eof_arrives_at_most_once_and_only_if_sent(self) -> None:
        for side, other in (("a", "b"), ("b", "a")):
            assert self.eofs[side] <= int(self.paths[other].core.eof_sent)

    @invariant()
    def a_closed_session_is_left_alone(self) -> None:
        for side in SIDES:
            paths = self.paths[side]
            if paths.core.state is not SessionState.OPEN:
                assert paths.manager.closed and paths.race is None
                assert paths.manager.get_timer() is None

    @invariant()
    def traffic_only_goes_on_live_links(self) -> None:
        for side in SIDES:
            for target in self.paths[side].manager.targets:
                assert target in self.live

    def teardown(self) -> None:
        """The network heals: every frame is delivered in order, time passes; all arrives."""
        def done() -> bool:
            for side, other in (("a", "b"), ("b", "a")):
                if len(self.got[side]) != len(self.sent[other]):
                    return False
                if self.eofs[side] != int(self.paths[other].core.eof_sent):
                    return False
            return True

        for _ in range(200):
            if done():
                break
            while any(self.wire.values()):
                key = next(k for k, q in self.wire.items() if q)
                self._deliver(key, 0)
            self.tick(0.3)
        for side, other in (("a", "b"), ("b", "a")):
            assert self.got[side] == self.sent[other], "messages did not all arrive once healed"
            assert self.eofs[side] == int(self.paths[other].core.eof_sent)


class SessionRelaysMachine(SessionPathsMachine):
    """`SessionPathsMachine` over three named relays: the controlling side keeps a spare
    circuit on another relay, relays die (every circuit on them closes), come back and close
    single circuits, and the session moves between them.

    Extra invariants: at most one circuit per relay and `MAX_RELAY_CIRCUITS` in all, every
    tracked circuit live, probes bounded. Messages still arrive exactly once, in order.
    """

    path_settings: ClassVar[PathSettings] = RELAYS_SETTINGS
    relays: ClassVar[tuple[str, ...]] = ("r1", "r2", "r3")

    def _relay_links(self, relay: str | None = None) -> list[SimLink]:
        return sorted(
            (
                x
                for x in self.live
                if x[0] == "relay" and (relay is None or self.circuit_relay.get(x) == relay)
            ),
            key=repr,
        )

    @precondition(lambda self: len(self.alive_relays) > 0)
    @rule(data=st.data())
    def relay_dies(self, data: st.DataObject) -> None:
        """A relay dies (SIGKILL, or removed from the list): every circuit on it closes."""
        relay = data.draw(st.sampled_from(sorted(self.alive_relays)), label="relay")
        self.alive_relays.discard(relay)
        for link in self._relay_links(relay):
            self._close(link, f"relay connection lost: {relay} died")
        self._settle()

    @precondition(lambda self: len(self.alive_relays) < len(self.relays))
    @rule(data=st.data())
    def relay_returns(self, data: st.DataObject) -> None:
        dead = sorted(set(self.relays) - self.alive_relays)
        self.alive_relays.add(data.draw(st.sampled_from(dead), label="relay"))

    @precondition(lambda self: any(x[0] == "relay" for x in self.live))
    @rule(data=st.data())
    def relay_closes_a_circuit(self, data: st.DataObject) -> None:
        self._close(data.draw(st.sampled_from(self._relay_links()), label="circuit"), "closed")
        self._settle()

    @invariant()
    def one_circuit_per_relay(self) -> None:
        for side in SIDES:
            paths = self.paths[side]
            circuits = list(paths.manager.circuits)
            relays = [c.relay for c in circuits]
            assert len(relays) == len(set(relays)), "two circuits on one relay"
            assert len(circuits) <= MAX_RELAY_CIRCUITS
            assert all(c.link in self.live for c in circuits)
            assert len(paths._probes) <= MAX_PROBES  # white-box
            relay = paths.manager.relay
            assert relay is None or relay in paths.manager.circuits

    def teardown(self) -> None:
        self.alive_relays = set(self.relays)
        super().teardown()
