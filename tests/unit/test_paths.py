"""Path logic (sans-IO): validation and nomination, the active path, heartbeat trust and dead
timers, fallback, relay release and re-open, retries with backoff, pings."""

from __future__ import annotations

import os
from collections.abc import Hashable

import pytest

from meshcore.errors import ConfigError
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.framing import KeyRing, ReceiveKey, SendKey
from meshcore.proto.inner import Endpoints, Keepalive, PathChallenge, PathResponse
from meshcore.proto.paths import (
    MAX_RACE_LINKS,
    CloseLink,
    DirectMode,
    LinkKind,
    OpenRelay,
    PathLog,
    PathManager,
    PathSettings,
    PathValidator,
    PingAnswered,
    RaceOver,
    RelayState,
    SessionPaths,
    StartRace,
)
from meshcore.proto.session import (
    EndpointsReceived,
    FrameResult,
    MessageReceived,
    SessionCore,
    SessionFailed,
)

FAST = PathSettings(
    race_deadline_s=5.0, retry_s=10.0, retry_max_s=80.0, trust_s=6.5, dead_s=15.0, stable_s=60.0
)
RELAY, DIRECT = "relay", "direct"


def mid_random() -> float:
    return 0.5  # no jitter: 1 + j * (2 * 0.5 - 1) == 1


def manager(
    *, controlling: bool = True, settings: PathSettings = FAST, now: float = 0.0
) -> PathManager:
    m = PathManager(controlling=controlling, settings=settings, now=now, random=mid_random)
    m.relay_up(RELAY, now)
    m.take_commands()
    return m


def logs(commands: list[object]) -> list[str]:
    return [c.message for c in commands if isinstance(c, PathLog)]


def on_direct(m: PathManager, now: float = 0.0) -> PathManager:
    m.race_started(now)
    m.race_won(DIRECT, 0.0004, now)
    m.take_commands()
    return m


# --- settings ---------------------------------------------------------------------------------


def test_settings_take_the_mode_as_text() -> None:
    assert PathSettings(mode="only").mode is DirectMode.ONLY  # type: ignore[arg-type]


def test_unknown_mode_is_a_config_error_naming_the_choices() -> None:
    with pytest.raises(ConfigError, match="'auto', 'never' or 'only'"):
        DirectMode.parse("sometimes")


def test_dead_time_must_exceed_trust_time() -> None:
    with pytest.raises(ConfigError, match="dead_s"):
        PathSettings(trust_s=5.0, dead_s=5.0)


def test_zero_deadline_is_refused() -> None:
    with pytest.raises(ConfigError, match="race_deadline_s"):
        PathSettings(race_deadline_s=0)


# --- validation and nomination ----------------------------------------------------------------


def validator(controlling: bool = True, deadline: float = 5.0) -> PathValidator:
    return PathValidator(controlling=controlling, deadline=deadline, margin_s=0.5)


def test_controlling_side_nominates_the_first_link_that_answers() -> None:
    v = validator()
    first = v.add("a", 0.0)
    second = v.add("b", 0.0)
    assert v.on_response("b", second.data, 0.002)
    assert not v.on_response("a", first.data, 0.003)
    assert v.winner == "b"
    assert v.rtt == {"b": 0.002, "a": 0.003}


def test_a_response_only_counts_on_the_link_it_was_asked_on() -> None:
    v = validator()
    challenge = v.add("a", 0.0)
    v.add("b", 0.0)
    assert not v.on_response("b", challenge.data, 0.001)
    assert v.winner is None


def test_a_response_counts_once() -> None:
    v = validator(controlling=False)
    challenge = v.add("a", 0.0)
    v.on_response("a", challenge.data, 0.001)
    v.on_response("a", challenge.data, 0.009)  # replayed: the round trip is not re-measured
    assert v.rtt == {"a": 0.001}


def test_a_wrong_response_does_not_validate() -> None:
    v = validator()
    challenge = v.add("a", 0.0)
    assert not v.on_response("a", bytes(16), 0.001)
    assert v.on_response("a", challenge.data, 0.002)


def test_challenges_are_unpredictable() -> None:
    v = validator()
    assert len({v.add(i, 0.0).data for i in range(32)}) == 32


def test_controlled_side_takes_the_link_of_the_first_non_probing_frame() -> None:
    v = validator(controlling=False)
    challenge = v.add("a", 0.0)
    v.add("b", 0.0)
    assert not v.on_response("a", challenge.data, 0.001)  # validates, but never nominates
    assert v.on_accepted("b")
    assert not v.on_accepted("a")
    assert v.winner == "b"


def test_controlling_side_ignores_non_probing_frames_for_nomination() -> None:
    v = validator()
    v.add("a", 0.0)
    assert not v.on_accepted("a")


def test_no_nomination_in_the_last_margin_before_the_deadline() -> None:
    v = validator(deadline=5.0)
    challenge = v.add("a", 0.0)
    assert not v.on_response("a", challenge.data, 4.6)
    assert v.winner is None


def test_a_race_keeps_a_bounded_number_of_links() -> None:
    v = validator()
    for i in range(MAX_RACE_LINKS):
        v.add(i, 0.0)
    assert v.full
    with pytest.raises(ValueError, match="at most"):
        v.add("one more", 0.0)


# --- the policy -------------------------------------------------------------------------------


def test_the_first_race_starts_at_once() -> None:
    m = manager()
    assert m.get_timer() == 0.0
    m.handle_timer(0.0)
    assert m.take_commands() == [StartRace()]


def test_never_mode_never_races() -> None:
    m = manager(settings=PathSettings(mode=DirectMode.NEVER))
    assert m.get_timer() is None
    m.endpoints_received(1.0)
    assert m.take_commands() == []


def test_winning_a_race_moves_traffic_to_direct_and_says_so() -> None:
    m = manager()
    m.race_started(0.0)
    m.race_won(DIRECT, 0.0004, 0.1)
    assert m.targets == (DIRECT,)
    assert m.active is LinkKind.DIRECT
    assert m.migrations == 1
    assert logs(m.take_commands()) == ["path relay -> direct (rtt 0.40 ms)"]


def test_controlling_side_releases_the_relay_once_the_peer_moved_too() -> None:
    m = on_direct(manager())
    m.handle_timer(0.1)
    assert not any(isinstance(c, CloseLink) for c in m.take_commands())
    m.frame_received(DIRECT, True, 0.2)  # the peer's confirming keepalive on the direct path
    assert m.get_timer() == 0.2
    m.handle_timer(0.2)
    commands = m.take_commands()
    assert CloseLink(RELAY, "the session moved to a direct path") in commands
    assert m.relay is None and m.relay_state is RelayState.RELEASED


def test_a_probe_on_the_direct_path_does_not_confirm_the_move() -> None:
    m = on_direct(manager())
    m.frame_received(DIRECT, False, 0.2)
    m.handle_timer(0.2)
    assert m.relay == RELAY


def test_controlled_side_never_releases_the_relay() -> None:
    m = on_direct(manager(controlling=False))
    m.frame_received(DIRECT, True, 0.2)
    m.handle_timer(0.2)
    assert m.relay == RELAY
    assert not any(isinstance(c, CloseLink) for c in m.take_commands())


def released(m: PathManager) -> PathManager:
    m.frame_received(DIRECT, True, 0.0)
    m.handle_timer(0.0)
    m.take_commands()
    return m


def test_silence_past_trust_time_sends_on_both_paths_and_reopens_the_relay() -> None:
    m = released(on_direct(manager()))
    assert m.get_timer() == 6.5
    m.handle_timer(6.5)
    assert m.lapsed
    commands = m.take_commands()
    assert OpenRelay() in commands
    assert "direct path silent for 6.5 s: sending on both paths" in logs(commands)
    m.relay_up("relay2", 6.6)
    assert m.targets == (DIRECT, "relay2")


def test_a_frame_after_silence_ends_dual_sending() -> None:
    m = on_direct(manager())
    m.handle_timer(6.5)
    assert m.targets == (DIRECT, RELAY)
    m.frame_received(DIRECT, True, 7.0)
    assert m.targets == (DIRECT,)
    assert "the direct path answers again" in logs(m.take_commands())


def test_after_recovering_from_silence_the_relay_is_released_only_after_a_hold() -> None:
    m = released(on_direct(manager()))
    m.handle_timer(6.5)
    m.relay_up("relay2", 6.6)
    m.frame_received(DIRECT, True, 7.0)
    m.handle_timer(7.0)
    assert m.relay == "relay2"
    m.frame_received(DIRECT, True, 13.0)
    m.handle_timer(7.0 + FAST.trust_s)
    assert m.relay is None


def test_silence_past_dead_time_falls_back_to_the_relay() -> None:
    m = on_direct(manager())
    m.handle_timer(6.5)
    m.take_commands()
    m.handle_timer(15.0)
    assert m.direct is None and m.targets == (RELAY,)
    commands = m.take_commands()
    assert CloseLink(DIRECT, "no authenticated frame on the direct path for 15 s") in commands
    assert "fell back to relay: no authenticated frame on the direct path for 15 s" in logs(
        commands
    )


def test_a_transport_error_falls_back_at_once_and_reopens_a_released_relay() -> None:
    m = released(on_direct(manager()))
    m.direct_down(DIRECT, "direct connection lost: connection reset by peer", 1.0)
    assert m.targets == ()  # nothing carries traffic until the relay circuit is back
    commands = m.take_commands()
    assert OpenRelay() in commands
    assert "fell back to relay: direct connection lost: connection reset by peer" in logs(commands)
    m.relay_up("relay2", 1.01)
    assert m.targets == ("relay2",)
    assert m.fallbacks == 1


def test_the_controlled_side_waits_for_the_peer_to_reopen_the_relay() -> None:
    m = on_direct(manager(controlling=False))
    m.relay_down(RELAY, "closed by the peer", 0.5)
    m.take_commands()
    m.direct_down(DIRECT, "reset", 1.0)
    commands = m.take_commands()
    assert OpenRelay() not in commands
    assert any("waiting for the peer to re-open" in line for line in logs(commands))


def test_a_failed_reopen_is_retried() -> None:
    m = released(on_direct(manager()))
    m.direct_down(DIRECT, "reset", 1.0)
    m.take_commands()
    m.relay_open_failed("the relay refused: rate limited", 1.1)
    assert m.get_timer() == pytest.approx(1.1 + FAST.reopen_retry_s)
    m.handle_timer(1.1 + FAST.reopen_retry_s)
    assert OpenRelay() in m.take_commands()


def test_a_relay_closed_under_a_healthy_direct_path_is_not_reopened() -> None:
    m = on_direct(manager())
    m.relay_down(RELAY, "closed by the relay", 1.0)
    assert OpenRelay() not in m.take_commands()
    assert m.targets == (DIRECT,)


def test_a_failed_race_is_retried_after_the_retry_interval() -> None:
    m = manager()
    m.race_started(0.0)
    m.race_failed("no path validated within 5 s (127.0.0.1:9 refused)", 5.0)
    assert logs(m.take_commands()) == [
        "direct attempt failed: no path validated within 5 s (127.0.0.1:9 refused)"
    ]
    assert m.get_timer() == 15.0
    m.handle_timer(15.0)
    assert m.take_commands() == [StartRace()]


def test_retries_back_off_while_they_keep_failing_up_to_the_cap() -> None:
    m = manager()
    now, gaps = 0.0, []
    for _ in range(6):
        m.race_started(now)
        m.race_failed("nothing", now)
        timer = m.get_timer()
        assert timer is not None
        gaps.append(timer - now)
        now = timer
    assert gaps == [10.0, 20.0, 40.0, 80.0, 80.0, 80.0]


def test_retries_are_jittered() -> None:
    low = PathManager(controlling=True, settings=FAST, now=0.0, random=lambda: 0.0)
    high = PathManager(controlling=True, settings=FAST, now=0.0, random=lambda: 0.999)
    for m in (low, high):
        m.race_started(0.0)
        m.race_failed("nothing", 0.0)
    assert low.get_timer() == pytest.approx(9.0)
    assert high.get_timer() == pytest.approx(10.0 * (1 + 0.1 * 0.998))


def test_a_direct_path_that_dies_young_counts_as_a_failure() -> None:
    m = on_direct(manager(), now=0.0)
    m.direct_down(DIRECT, "reset", 1.0)
    assert m.failures == 1


def test_a_long_lived_direct_path_resets_the_backoff() -> None:
    m = manager()
    for t in (0.0, 1.0):
        m.race_started(t)
        m.race_failed("nothing", t)
    assert m.failures == 2
    on_direct(m, now=2.0)
    m.frame_received(DIRECT, True, 70.0)
    m.direct_down(DIRECT, "reset", 70.0)
    assert m.failures == 0
    assert m.get_timer() == pytest.approx(80.0)


def test_the_peers_endpoints_start_a_race_when_idle() -> None:
    m = manager()
    m.race_started(0.0)
    m.race_failed("nothing", 5.0)
    m.take_commands()
    m.endpoints_received(6.0)
    assert m.take_commands() == [StartRace()]


def test_the_peers_endpoints_are_ignored_while_racing_or_direct() -> None:
    m = manager()
    m.race_started(0.0)
    m.endpoints_received(0.1)
    assert m.take_commands() == []
    m.race_won(DIRECT, None, 0.2)
    m.take_commands()
    m.endpoints_received(0.3)
    assert m.take_commands() == []


def test_only_mode_holds_traffic_until_the_direct_path() -> None:
    m = manager(settings=PathSettings(mode=DirectMode.ONLY))
    assert m.targets == ()
    m.race_started(0.0)
    m.race_won(DIRECT, None, 0.1)
    assert m.targets == (DIRECT,)


# --- the session glue -------------------------------------------------------------------------


def core_pair(now: float = 0.0) -> tuple[SessionCore, SessionCore]:
    k1, k2 = os.urandom(32), os.urandom(32)
    ra, rb = KeyRing(), KeyRing()
    ra.install(SendKey(k1, 2, now), ReceiveKey(k2, 1, now), now)
    rb.install(SendKey(k2, 1, now), ReceiveKey(k1, 2, now), now)
    return SessionCore(ra, now), SessionCore(rb, now)


class Pair:
    """Two SessionPaths (a controls) and a perfect network: frames move on `pump`."""

    def __init__(self, settings: PathSettings = FAST) -> None:
        ca, cb = core_pair()
        self.a = SessionPaths(ca, 0.0, controlling=True, settings=settings, random=mid_random)
        self.b = SessionPaths(cb, 0.0, controlling=False, settings=settings, random=mid_random)
        self.a.relay_up(RELAY, 0.0)
        self.b.relay_up(RELAY, 0.0)
        self.got: dict[str, list[bytes]] = {"a": [], "b": []}
        self.events: dict[str, list[object]] = {"a": [], "b": []}
        self.commands: dict[str, list[object]] = {"a": [], "b": []}
        self.seen: dict[Hashable, list[tuple[str, bytes]]] = {}

    def pump(self, now: float = 0.0) -> None:
        for _ in range(20):
            moved = False
            for name, src, dst in (("a", self.a, self.b), ("b", self.b, self.a)):
                for event in src.events(now):
                    if isinstance(event, MessageReceived):
                        self.got[name].append(event.payload)
                    else:
                        self.events[name].append(event)
                self.commands[name] += src.commands()
                for link, frame in src.outbox():
                    self.seen.setdefault(link, []).append((name, frame))
                    dst.receive_frame(frame, link, now)
                    moved = True
            if not moved:
                return


def test_frame_result_tells_probes_from_traffic() -> None:
    a, b = core_pair()
    probe = a.seal_control(PathChallenge(b"p" * 16), 0.0)
    answer = a.seal_control(PathResponse(b"p" * 16), 0.0)
    keepalive = a.seal_control(Keepalive(), 0.0)
    assert b.receive_frame(probe, 0.0, "x") is FrameResult.PROBE
    assert b.receive_frame(answer, 0.0, "x") is FrameResult.PROBE
    assert b.receive_frame(keepalive, 0.0, "x") is FrameResult.ACCEPTED
    assert b.receive_frame(keepalive, 0.0, "x") is FrameResult.DROPPED  # a replay


def test_a_race_moves_both_sides_onto_the_same_link() -> None:
    p = Pair()
    p.a.race_started(0.0, [Endpoint("127.0.0.1", 4000)])
    p.b.race_started(0.0)
    for link in ("c1", "c2"):
        assert p.a.candidate_up(link, 0.0)
        assert p.b.candidate_up(link, 0.0)
    p.pump(0.001)
    assert p.a.manager.direct == p.b.manager.direct == "c1"
    assert RaceOver("c1", ("c2",)) in p.commands["a"]
    assert RaceOver("c1", ("c2",)) in p.commands["b"]
    assert p.a.active is p.b.active is LinkKind.DIRECT


def test_stats_tell_the_path_the_race_and_the_counters() -> None:
    p = Pair()
    before = p.a.stats()
    assert (before.active, before.sending_on, before.relay) == (
        LinkKind.RELAY,
        (LinkKind.RELAY,),
        RelayState.OPEN,
    )
    assert (before.racing, before.migrations, before.attempts) == (False, 0, 0)
    p.a.race_started(0.0)
    p.b.race_started(0.0)
    assert p.a.stats().racing and p.a.stats().attempts == 1
    assert p.a.candidate_up("c1", 0.0) and p.b.candidate_up("c1", 0.0)
    p.pump(0.001)
    after = p.a.stats()
    assert (after.active, after.sending_on, after.racing) == (
        LinkKind.DIRECT,
        (LinkKind.DIRECT,),
        False,
    )
    assert (after.migrations, after.fallbacks, after.distrusted) == (1, 0, False)
    p.a.link_down("c1", "connection reset", 1.0)
    fallen = p.a.stats()
    assert (fallen.active, fallen.fallbacks, fallen.last_error) == (
        LinkKind.RELAY,
        1,
        "connection reset",
    )


def test_the_race_announces_our_candidates_on_the_relay() -> None:
    p = Pair()
    p.a.race_started(0.0, [Endpoint("127.0.0.1", 4000)])
    p.pump()
    assert EndpointsReceived((Endpoint("127.0.0.1", 4000),)) in p.events["b"]
    assert StartRace() in p.commands["b"]  # the peer's ENDPOINTS make b race too


def test_messages_sent_across_a_migration_arrive_once_in_order() -> None:
    p = Pair()
    for i in range(5):
        p.a.core.send(b"%d" % i, 0.0)
    p.a.outbox()  # these five are lost on the relay
    p.a.race_started(0.0)
    p.b.race_started(0.0)
    p.a.candidate_up("c1", 0.0)
    p.b.candidate_up("c1", 0.0)
    p.pump(0.001)
    for i in range(5, 10):
        p.a.core.send(b"%d" % i, 0.002)
    p.pump(0.002)
    assert p.got["b"] == [b"%d" % i for i in range(10)]
    assert all(link == "c1" for link in p.seen if link != RELAY)


def test_after_fallback_unacknowledged_messages_go_out_on_the_relay() -> None:
    p = Pair()
    p.a.race_started(0.0)
    p.b.race_started(0.0)
    p.a.candidate_up("c1", 0.0)
    p.b.candidate_up("c1", 0.0)
    p.pump(0.001)
    p.a.core.send(b"lost on the direct path", 0.01)
    p.a.outbox()
    p.a.link_down("c1", "reset", 0.02)
    p.b.link_down("c1", "reset", 0.02)
    p.seen.clear()
    p.pump(0.02)
    assert p.got["b"] == [b"lost on the direct path"]
    assert set(p.seen) == {RELAY}


def test_a_ping_reports_its_round_trip_and_path() -> None:
    p = Pair()
    token = p.a.ping(1.0)
    p.b.receive_frame(p.a.outbox()[0][1], RELAY, 1.0)
    (link, reply), *_ = p.b.outbox()
    p.a.receive_frame(reply, link, 1.25)
    assert p.a.events(1.25) == [PingAnswered(token, LinkKind.RELAY, 0.25)]


def test_only_mode_fails_the_session_when_the_race_fails() -> None:
    p = Pair(PathSettings(mode=DirectMode.ONLY))
    p.a.race_started(0.0)
    p.a.race_failed("no path validated within 5 s", 5.0)
    failures = [e for e in p.a.events(5.0) if isinstance(e, SessionFailed)]
    assert failures == [
        SessionFailed("no direct path (direct='only'): no path validated within 5 s")
    ]


def test_a_closed_session_starts_nothing_new() -> None:
    p = Pair()
    p.a.core.close(0, "bye", 0.0)
    p.a.handle_timer(0.0)
    assert not any(isinstance(c, StartRace) for c in p.a.commands())


def test_endpoints_are_announced_to_at_most_the_candidate_limit() -> None:
    p = Pair()
    many = [Endpoint("127.0.0.1", 1000 + i) for i in range(40)]
    p.a.race_started(0.0, many)
    (_, frame), *_ = p.a.outbox()
    plaintext = p.b.core.keys.open(frame, 0.0)
    from meshcore.proto.inner import decode_inner_untrusted

    message = decode_inner_untrusted(plaintext)
    assert isinstance(message, Endpoints) and len(message.endpoints) == 16


# --- a clean close is not a failure -----------------------------------------------------------


def direct_pair() -> Pair:
    p = Pair()
    p.a.race_started(0.0)
    p.b.race_started(0.0)
    assert p.a.candidate_up("c1", 0.0) and p.b.candidate_up("c1", 0.0)
    p.pump(0.001)
    assert p.a.manager.direct == p.b.manager.direct == "c1"
    p.commands = {"a": [], "b": []}
    return p


@pytest.mark.parametrize("end", ["close", "finish"])
def test_after_the_peer_closed_its_links_going_away_start_nothing(end: str) -> None:
    p = direct_pair()
    if end == "close":
        p.a.core.close(0, "bye", 0.01)
    else:
        p.a.core.send_eof(0.01)
        p.b.core.send_eof(0.01)
    p.pump(0.01)
    assert p.b.core.close_reason is not None and p.b.manager.closed
    # then its process exits: the direct connection closes, the relay drops the circuit
    p.b.link_down("c1", "direct connection closed by the peer", 0.02)
    p.b.link_down(RELAY, "circuit closed", 0.02)
    p.b.handle_timer(100.0)
    assert p.b.commands() == [] and p.b.get_timer() is None
    stats = p.b.stats()
    assert stats.fallbacks == 0 and stats.last_error is None
    assert not p.b.manager.may_race()


def test_a_race_running_when_the_session_closes_is_called_off() -> None:
    p = Pair()
    p.b.race_started(0.0)
    assert p.b.candidate_up("c1", 0.0)
    p.a.core.close(0, "bye", 0.0)
    p.pump(0.0)
    assert RaceOver(None, ("c1",)) in p.commands["b"]
    assert not p.b.racing


def test_fallbacks_and_failed_reopens_are_news_not_warnings() -> None:
    m = released(on_direct(manager()))
    m.direct_down(DIRECT, "reset", 1.0)
    m.relay_open_failed("peer offline", 1.1)
    m.relay_open_failed("peer offline", 2.1)
    levels = [(c.level, c.message) for c in m.take_commands() if isinstance(c, PathLog)]
    assert levels == [
        ("info", "fell back to relay: reset"),
        ("info", "could not re-open the relay circuit: peer offline"),
        ("debug", "could not re-open the relay circuit: peer offline"),
    ]
