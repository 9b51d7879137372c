"""A session's counters (what the peer's metrics export) and the status fields operators read:
traffic split by path and direction, moves and their causes, age, relay, why not direct."""

from __future__ import annotations

import attrs
import trio
from test_direct import PATHS, blackhole, pair, running_relay, wait_path

from meshcore.proto.paths import DirectMode

MESSAGE = b"m" * 1000


async def test_traffic_is_counted_on_the_path_that_carried_it() -> None:
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay) as (a, b):
            await wait_path(a.session, b.session, path="direct")
            before = a.session.counters()
            for _ in range(50):
                await a.session.send(MESSAGE)
            for _ in range(50):
                assert await b.session.receive() == MESSAGE
            await a.session.wait_acknowledged()
            sent, got = a.session.counters(), b.session.counters()
    # the race's ENDPOINTS, at least, went on the relay; the messages went direct
    assert sent.relay_frames_sent > 0 and sent.relay_bytes_sent > 0
    assert sent.direct_frames_sent - before.direct_frames_sent >= 50
    assert sent.direct_bytes_sent - before.direct_bytes_sent >= 50 * len(MESSAGE)
    assert got.direct_bytes_received >= 50 * len(MESSAGE)
    assert sent.relay_bytes_sent - before.relay_bytes_sent < 50 * len(MESSAGE)
    assert (sent.messages_sent, sent.message_bytes_sent) == (50, 50 * len(MESSAGE))
    assert (got.messages_received, got.message_bytes_received) == (50, 50 * len(MESSAGE))
    assert (sent.migrations, sent.fallbacks) == (1, 0)
    assert sent.direct_attempts >= 1


async def test_a_fallback_is_counted_with_its_cause() -> None:
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay) as (a, b):
            await wait_path(a.session, b.session, path="direct")
            assert a.session.force_fallback("test")
            await wait_path(a.session, path="relay")
            counters = a.session.counters()
    assert (counters.fallbacks, counters.fallbacks_silent) == (1, 0)


async def test_status_says_where_the_session_met_how_old_it_is_and_why_it_is_not_direct() -> None:
    with trio.fail_after(30):
        async with (
            running_relay() as relay,
            blackhole() as hole,
            pair(relay, dial_a=(hole,), dial_b=(hole,)) as (a, _b),
        ):
            first = a.session.status()
            assert first.relay == relay.url
            assert first.not_direct_reason is not None
            while "no path validated" not in (a.session.status().not_direct_reason or ""):
                await trio.sleep(0.05)
            later = a.session.status()
    assert later.age_s > first.age_s >= 0
    assert later.path == "relay"
    assert "next attempt in" in (later.not_direct_reason or "")


async def test_status_of_a_direct_session_has_no_reason_not_to_be() -> None:
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay) as (a, b):
            await wait_path(a.session, b.session, path="direct")
            status = a.session.status()
    assert status.not_direct_reason is None
    assert status.relay is None  # a direct session names no relay (its circuit is released)


async def test_status_says_when_direct_paths_are_off() -> None:
    never = attrs.evolve(PATHS, mode=DirectMode.NEVER)
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay, paths=never) as (a, _b):
            status = a.session.status()
    assert status.not_direct_reason == "direct paths are off (direct='never')"
