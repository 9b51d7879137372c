"""Sessions across relays (sans-IO): one circuit per relay, a spare on another relay, moving
when the carrying relay dies or falls silent, switching to a clearly faster circuit only,
and releasing every circuit for a direct path."""

from __future__ import annotations

import pytest

from meshcore.errors import ConfigError
from meshcore.proto.pathpolicy import (
    CloseLink,
    OpenRelay,
    PathLog,
    PathManager,
    ProbeRelays,
    RelayState,
    ResendUnacked,
)
from meshcore.proto.paths import DirectMode, PathSettings
from meshcore.proto.relaypaths import MAX_RELAY_CIRCUITS, RelayCircuits, clearly_faster

SETTINGS = PathSettings(
    mode=DirectMode.NEVER, trust_s=6.5, dead_s=15.0, relay_probe_s=3.0, spare_retry_s=30.0
)


def manager(
    *, controlling: bool = True, settings: PathSettings = SETTINGS, relay: str | None = "r1"
) -> PathManager:
    m = PathManager(controlling=controlling, settings=settings, now=0.0, random=lambda: 0.5)
    m.relay_up("c1", 0.0, relay=relay)
    m.take_commands()
    return m


def with_spare(m: PathManager, now: float = 0.0) -> PathManager:
    m.handle_timer(now)
    (opened,) = [c for c in m.take_commands() if isinstance(c, OpenRelay)]
    assert opened == OpenRelay(avoid=("r1",), spare=True)
    m.relay_up("c2", now, relay="r2", spare=True)
    m.take_commands()
    return m


def kinds(commands: list[object]) -> list[type]:
    return [type(c) for c in commands]


# --- the switching rule ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("candidate_ms", "current_ms", "switch"),
    [
        (30, 50, True),  # 20 ms faster and 60 %
        (35, 50, False),  # 15 ms faster but 70 % of the current
        (1, 9, False),  # 1/9 of it but only 8 ms faster
        (5, 16, True),
        (40, 50, False),  # 10 ms faster but 80 %
        (50, 50, False),
        (60, 50, False),
    ],
)
def test_only_a_clearly_faster_circuit_takes_over(
    candidate_ms: float, current_ms: float, switch: bool
) -> None:
    assert clearly_faster(candidate_ms / 1e3, current_ms / 1e3) is switch


def test_circuits_are_one_per_relay() -> None:
    circuits = RelayCircuits()
    assert circuits.add("c1", "r1", 0.0) is None
    assert circuits.add("c2", "r2", 0.0) is None
    replaced = circuits.add("c3", "r1", 1.0)
    assert replaced is not None and replaced.link == "c1"
    assert sorted(str(r) for r in circuits.relays) == ["r1", "r2"]


# --- spares ---------------------------------------------------------------------------------


def test_the_controlling_side_opens_a_spare_on_another_relay() -> None:
    m = with_spare(manager())
    assert len(m.circuits) == 2
    assert m.relay == "c1"  # the spare does not carry the session
    assert m.targets == ("c1",)


def test_with_direct_paths_the_spare_waits_for_the_first_race() -> None:
    m = manager(settings=PathSettings(mode=DirectMode.AUTO, race_deadline_s=5.0))
    m.handle_timer(0.0)
    assert not any(isinstance(c, OpenRelay) for c in m.take_commands())
    m.race_started(0.0)
    m.race_failed("no path", 5.0)
    assert m.get_timer() == 5.0
    m.handle_timer(5.0)
    assert OpenRelay(avoid=("r1",), spare=True) in m.take_commands()


def test_the_controlled_side_opens_no_spare() -> None:
    m = manager(controlling=False)
    m.handle_timer(100.0)
    assert not any(isinstance(c, OpenRelay) for c in m.take_commands())


def test_no_spare_when_the_relay_is_unknown_or_one_circuit_is_wanted() -> None:
    for m in (manager(relay=None), manager(settings=PathSettings(mode="never", relay_circuits=1))):
        m.handle_timer(100.0)
        assert not any(isinstance(c, OpenRelay) for c in m.take_commands())


def test_a_spare_that_could_not_be_opened_is_tried_again_with_backoff() -> None:
    m = manager()
    m.handle_timer(0.0)
    m.take_commands()
    now, waits = 1.0, []
    for _ in range(8):
        m.relay_open_failed("no other relay", now, spare=True)
        assert m.relay_state is RelayState.OPEN  # the session is unharmed
        timer = m.get_timer()
        assert timer is not None
        waits.append(round(timer - now, 3))
        now = timer
        m.handle_timer(now)
        assert OpenRelay(avoid=("r1",), spare=True) in m.take_commands()
    # from the re-open interval (1 s) doubling to spare_retry_s (30 s); no jitter here
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    m.relay_up("c2", now, relay="r2", spare=True)
    m.relay_down("c2", "closed", now + 1)
    m.handle_timer(now + 1)
    m.take_commands()
    m.relay_open_failed("again", now + 1, spare=True)
    assert m.get_timer() == now + 2  # a spare that worked resets the backoff


def test_relay_circuits_setting_is_bounded() -> None:
    with pytest.raises(ConfigError, match="relay_circuits"):
        PathSettings(relay_circuits=MAX_RELAY_CIRCUITS + 1)


# --- moving between relays --------------------------------------------------------------------


def test_when_the_carrying_relay_dies_the_spare_carries_at_once() -> None:
    m = with_spare(manager())
    m.relay_down("c1", "relay connection lost: connection reset", 10.0)
    commands = m.take_commands()
    assert m.relay == "c2" and m.relay_state is RelayState.OPEN
    assert m.targets == ("c2",)
    assert ResendUnacked() in commands  # whatever was in flight goes again, on the spare
    assert m.relay_moves == 1
    assert any(isinstance(c, PathLog) and "via r1 -> via r2" in c.message for c in commands)
    m.handle_timer(10.0)  # and a new spare elsewhere
    assert OpenRelay(avoid=("r2",), spare=True) in m.take_commands()


def test_without_a_spare_the_circuit_is_reopened() -> None:
    m = manager()
    m.relay_down("c1", "relay connection lost", 1.0)
    assert OpenRelay() in m.take_commands()
    assert m.relay_state is RelayState.OPENING


def test_the_controlled_side_moves_to_the_spare_the_peer_opened() -> None:
    m = manager(controlling=False)
    m.relay_up("c2", 1.0, relay="r2")  # the peer's spare
    assert m.relay == "c1"
    m.relay_down("c1", "relay connection lost", 2.0)
    assert m.relay == "c2"
    assert ResendUnacked() in m.take_commands()


def test_a_spare_dying_asks_for_another() -> None:
    m = with_spare(manager())
    m.relay_down("c2", "closed", 5.0)
    assert m.relay == "c1" and m.relay_moves == 0
    m.handle_timer(5.0)
    assert OpenRelay(avoid=("r1",), spare=True) in m.take_commands()


def test_a_new_circuit_on_the_same_relay_replaces_the_old_one() -> None:
    m = manager(controlling=False)
    m.relay_up("c2", 1.0, relay="r2")  # the peer's spare
    m.relay_up("c3", 3.0, relay="r1")  # the peer re-opened on r1
    assert CloseLink("c1", "replaced by a newer relay circuit") in m.take_commands()
    assert m.relay == "c3"
    assert len(m.circuits) == 2


def test_circuits_beyond_the_bound_are_closed() -> None:
    m = manager(controlling=False)
    for i in range(2, MAX_RELAY_CIRCUITS + 2):
        m.relay_up(f"c{i}", 1.0, relay=f"r{i}")
    assert len(m.circuits) == MAX_RELAY_CIRCUITS
    assert any(
        isinstance(c, CloseLink) and c.reason.startswith("too many") for c in m.take_commands()
    )


# --- round trips and silence ----------------------------------------------------------------


def test_circuits_are_probed_while_there_are_several() -> None:
    m = manager()
    m.handle_timer(0.0)
    assert not any(isinstance(c, ProbeRelays) for c in m.take_commands())  # one circuit
    m = with_spare(manager())
    m.handle_timer(0.0)
    assert ProbeRelays(("c1", "c2")) in m.take_commands()
    assert m.get_timer() == SETTINGS.relay_probe_s


def test_the_session_moves_to_a_clearly_faster_circuit_only() -> None:
    m = with_spare(manager())
    m.relay_rtt("c1", 0.050, 1.0)
    m.relay_rtt("c2", 0.035, 1.0)
    assert m.relay == "c1"
    m.relay_rtt("c2", 0.030, 2.0)
    commands = m.take_commands()
    assert m.relay == "c2" and m.relay_moves == 1
    assert ResendUnacked() not in commands  # both circuits work: nothing to resend
    m.relay_rtt("c1", 0.025, 3.0)  # 5 ms better: not enough to go back
    assert m.relay == "c2"


def test_a_silent_carrier_hands_over_to_a_spare_that_answers() -> None:
    m = with_spare(manager())
    s = SETTINGS
    m.circuits.seen("c2", s.trust_s - 0.5)  # the spare answers; the carrier does not
    assert m.get_timer() is not None and m.get_timer() <= s.trust_s  # type: ignore[operator]
    m.handle_timer(s.trust_s)
    commands = m.take_commands()
    assert m.relay == "c2"
    assert ResendUnacked() in commands
    assert any(isinstance(c, PathLog) and "silent" in c.message for c in commands)


def test_a_silent_carrier_with_no_live_spare_stays_and_does_not_spin() -> None:
    m = with_spare(manager())
    m.handle_timer(SETTINGS.trust_s)  # both silent
    assert m.relay == "c1"
    timer = m.get_timer()
    assert timer is not None and timer > SETTINGS.trust_s


def test_a_silent_spare_is_dropped_after_the_dead_time() -> None:
    m = with_spare(manager())
    m.circuits.seen("c1", SETTINGS.dead_s)
    m.handle_timer(SETTINGS.dead_s)
    assert any(isinstance(c, CloseLink) and c.link == "c2" for c in m.take_commands())
    assert len(m.circuits) == 1


def test_a_direct_path_releases_every_relay_circuit() -> None:
    settings = PathSettings(mode=DirectMode.AUTO, trust_s=6.5, dead_s=15.0)
    m = manager(settings=settings)
    m.race_started(0.0)
    m.race_failed("no", 5.0)
    m.handle_timer(5.0)
    m.take_commands()
    m.relay_up("c2", 5.0, relay="r2", spare=True)
    m.race_started(6.0)
    m.race_won("d", 0.001, 6.0)
    m.frame_received("d", True, 6.1)
    m.handle_timer(6.1)
    closed = {c.link for c in m.take_commands() if isinstance(c, CloseLink)}
    assert closed == {"c1", "c2"}
    assert len(m.circuits) == 0 and m.relay_state is RelayState.RELEASED
