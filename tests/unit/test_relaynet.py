"""The relay connection plan (sans-IO): rendezvous relays registered at, visitor connections
and their idle timer, list changes (removed relays left at once, former rendezvous relays
left once unused, new ones registered at), and the order relays are asked in."""

from __future__ import annotations

import pytest

from meshcore.proto.identity import Identity
from meshcore.proto.relaylist import RelayEntry
from meshcore.proto.relaynet import (
    VISITOR_IDLE_S,
    CloseConnection,
    OpenConnection,
    RelayPlan,
    RelayRole,
)
from meshcore.proto.rendezvous import rendezvous_relays

ENTRIES = [RelayEntry(f"ws://10.0.0.{i}:7443/", Identity.generate().peer_id) for i in range(1, 6)]
ME = Identity.generate().peer_id


def opened(commands: list[object]) -> set[str]:
    return {c.entry.url for c in commands if isinstance(c, OpenConnection)}


def closed(commands: list[object]) -> dict[str, str]:
    return {c.url: c.reason for c in commands if isinstance(c, CloseConnection)}


def plan(k: int = 2) -> tuple[RelayPlan, set[str]]:
    p = RelayPlan(ME, k=k)
    commands = p.set_entries(ENTRIES, 0.0)
    return p, opened(commands)


def test_the_plan_registers_at_the_k_rendezvous_relays() -> None:
    p, urls = plan()
    homes = {e.url for e in rendezvous_relays(ME, ENTRIES, 2)}
    assert urls == homes
    assert p.uses == dict.fromkeys(homes, RelayRole.HOME)
    assert p.get_timer() is None  # home connections never idle out


def test_k_larger_than_the_list_takes_every_relay() -> None:
    p = RelayPlan(ME, k=9)
    assert opened(p.set_entries(ENTRIES[:3], 0.0)) == {e.url for e in ENTRIES[:3]}


def test_k_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RelayPlan(ME, k=0)


def test_a_visitor_closes_after_the_idle_time_without_a_circuit() -> None:
    p, homes = plan()
    other = next(e for e in ENTRIES if e.url not in homes)
    assert opened(p.visit(other, 10.0)) == {other.url}
    assert p.role(other.url) is RelayRole.VISITOR
    assert p.get_timer() == 10.0 + VISITOR_IDLE_S
    assert p.handle_timer(10.0 + VISITOR_IDLE_S - 0.1) == []
    assert closed(p.handle_timer(10.0 + VISITOR_IDLE_S)) == {
        other.url: f"no circuit for {VISITOR_IDLE_S:g} s"
    }
    assert other.url not in p.uses


def test_a_visitor_with_a_circuit_stays_and_its_clock_starts_when_it_has_none() -> None:
    p, homes = plan()
    other = next(e for e in ENTRIES if e.url not in homes)
    p.visit(other, 0.0)
    p.observe({other.url: 1}, 5.0)
    assert p.get_timer() is None
    assert p.handle_timer(500.0) == []
    p.observe({}, 600.0)
    assert p.get_timer() == 600.0 + VISITOR_IDLE_S
    p.observe({other.url: 2}, 601.0)  # in use again
    assert p.get_timer() is None


def test_visiting_again_restarts_the_idle_clock_and_opens_nothing() -> None:
    p, homes = plan()
    other = next(e for e in ENTRIES if e.url not in homes)
    p.visit(other, 0.0)
    assert p.visit(other, 30.0) == []
    assert p.get_timer() == 30.0 + VISITOR_IDLE_S


def test_visiting_a_home_or_an_unlisted_relay_opens_nothing() -> None:
    p, homes = plan()
    home = next(e for e in ENTRIES if e.url in homes)
    assert p.visit(home, 0.0) == []
    assert p.role(home.url) is RelayRole.HOME
    stranger = RelayEntry("ws://192.0.2.9:7443/")
    assert p.visit(stranger, 0.0) == []
    assert p.role(stranger.url) is None


def test_a_relay_removed_from_the_list_is_left_at_once_even_with_circuits() -> None:
    p, homes = plan()
    gone = next(e for e in ENTRIES if e.url in homes)
    p.observe({gone.url: 3}, 1.0)
    commands = p.set_entries([e for e in ENTRIES if e != gone], 2.0)
    assert closed(commands) == {gone.url: "removed from the relay list"}
    new_homes = {e.url for e in rendezvous_relays(ME, [e for e in ENTRIES if e != gone], 2)}
    assert opened(commands) == new_homes - homes
    assert {u for u, r in p.uses.items() if r is RelayRole.HOME} == new_homes


def test_a_former_rendezvous_relay_is_left_once_no_session_uses_it() -> None:
    p, _ = plan()
    ranked = rendezvous_relays(ME, ENTRIES, 5)
    newcomer = RelayEntry("ws://10.0.9.9:7443/", Identity.generate().peer_id)
    # find a newcomer that enters our top 2, pushing out our second rendezvous relay
    while rendezvous_relays(ME, [*ENTRIES, newcomer], 2)[0] != newcomer:
        newcomer = RelayEntry("ws://10.0.9.9:7443/", Identity.generate().peer_id)
    pushed_out = ranked[1]
    p.observe({pushed_out.url: 1}, 1.0)
    commands = p.set_entries([*ENTRIES, newcomer], 2.0)
    assert opened(commands) == {newcomer.url}
    assert closed(commands) == {}  # a session still uses it
    assert p.role(pushed_out.url) is RelayRole.LEAVING
    p.observe({}, 3.0)
    assert closed(p.handle_timer(3.0)) == {
        pushed_out.url: "no longer a rendezvous relay of ours, and no session uses it"
    }


def test_a_former_rendezvous_relay_without_circuits_is_left_in_the_same_step() -> None:
    p, _ = plan()
    pushed_out = rendezvous_relays(ME, ENTRIES, 2)[1]
    newcomer = RelayEntry("ws://10.0.9.9:7443/", Identity.generate().peer_id)
    while rendezvous_relays(ME, [*ENTRIES, newcomer], 2)[0] != newcomer:
        newcomer = RelayEntry("ws://10.0.9.9:7443/", Identity.generate().peer_id)
    commands = p.set_entries([*ENTRIES, newcomer], 2.0)
    assert pushed_out.url in closed(commands)


def test_an_entry_whose_id_changed_is_a_different_relay() -> None:
    p, homes = plan()
    home = next(e for e in ENTRIES if e.url in homes)
    swapped = RelayEntry(home.url, Identity.generate().peer_id)
    entries = [swapped if e == home else e for e in ENTRIES]
    commands = p.set_entries(entries, 1.0)
    assert closed(commands) == {home.url: "its relay list entry changed"}
    if swapped in rendezvous_relays(ME, entries, 2):
        assert swapped.url in opened(commands)


def test_a_visitor_that_becomes_a_rendezvous_relay_stays_without_an_idle_timer() -> None:
    home, second = rendezvous_relays(ME, ENTRIES, 2)
    p = RelayPlan(ME, k=1, visitor_idle_s=60.0)
    p.set_entries(ENTRIES, 0.0)
    assert opened(p.visit(second, 0.0)) == {second.url}  # a visitor (to reach a peer there)
    commands = p.set_entries([e for e in ENTRIES if e != home], 1.0)  # our home is removed
    assert p.role(second.url) is RelayRole.HOME  # the visitor is our rendezvous relay now
    assert second.url not in opened(commands)  # the same connection: not opened again
    assert second.url not in closed(p.handle_timer(1000.0))  # and no idle timer closes it


def test_the_dial_order_is_the_targets_rendezvous_relays() -> None:
    p, _ = plan()
    target = Identity.generate().peer_id
    assert p.dial_order(target) == rendezvous_relays(target, ENTRIES, 2)


def test_reopening_asks_connected_rendezvous_relays_first_then_others_never_avoided() -> None:
    p, _ = plan()
    target = Identity.generate().peer_id
    theirs = rendezvous_relays(target, ENTRIES, 2)
    elsewhere = next(e for e in ENTRIES if e not in theirs)
    connected = {theirs[1].url, elsewhere.url}
    assert p.reopen_order(target, connected) == (theirs[1], theirs[0], elsewhere)
    assert p.reopen_order(target, connected, avoid={theirs[1].url}) == (theirs[0], elsewhere)
    assert p.reopen_order(target, {"ws://192.0.2.1:1/"}) == theirs  # unlisted: never


def test_dropped_forgets_a_visitor_but_not_a_home() -> None:
    p, homes = plan()
    other = next(e for e in ENTRIES if e.url not in homes)
    p.visit(other, 0.0)
    p.dropped(other.url)
    assert other.url not in p.uses
    home = next(iter(homes))
    p.dropped(home)
    assert p.role(home) is RelayRole.HOME
