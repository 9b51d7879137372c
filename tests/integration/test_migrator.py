"""The Migrator on loopback: zero loss, duplication and reordering across many migrations
(relay -> direct, direct killed abruptly -> relay, back to direct), fallback on silence,
re-opening the released relay circuit, and the log lines users read."""

from __future__ import annotations

import hashlib
import logging
import random

import attrs
import pytest
import trio

# the session-pair helpers live with the race tests
from test_direct import PATHS, SESSION, Side, pair, running_relay, wait_path

from meshcore._direct import FramedTransport
from meshcore._session import Session
from meshcore.proto.paths import LinkKind, PathSettings

MIGRATING = attrs.evolve(
    PATHS, race_deadline_s=2.0, retry_s=0.05, retry_max_s=0.1, stable_s=0.01, retry_jitter=0.1
)


class Stream:
    """One direction of numbered messages: the sender's and the receiver's running hashes."""

    def __init__(self, seed: int, count: int) -> None:
        self.count = count
        self.rng = random.Random(seed)
        self.sent_hash = hashlib.sha256()
        self.got_hash = hashlib.sha256()
        self.received = 0

    async def send(self, session: Session) -> None:
        for seq in range(self.count):
            payload = seq.to_bytes(8, "big") + self.rng.randbytes(self.rng.randrange(57))
            self.sent_hash.update(payload)
            await session.send(payload)

    async def receive(self, session: Session) -> None:
        for seq in range(self.count):
            payload = await session.receive()
            got = int.from_bytes(payload[:8], "big")
            assert got == seq, f"expected message {seq}, got {got} (lost, duplicated or reordered)"
            self.got_hash.update(payload)
            self.received = seq + 1


class Blackholed(trio.abc.Stream):
    """Stands in for a TCP stream whose packets vanish (a NAT forgot the mapping): writes
    succeed and go nowhere, reads never return. The real socket stays open underneath."""

    def __init__(self, real: trio.SocketStream) -> None:
        self.real = real
        self.socket = real.socket

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.real.aclose()


def blackhole_direct(*sides: Side) -> None:
    for side in sides:
        link = side.migrator.direct_link
        assert link is not None and isinstance(link.transport, FramedTransport)
        link.transport.stream = Blackholed(link.transport.stream)  # type: ignore[assignment]


async def wait_progress(streams: tuple[Stream, Stream], messages: int) -> None:
    """Until each direction delivered `messages` more (or is complete)."""
    targets = [min(s.received + messages, s.count) for s in streams]
    while any(s.received < t for s, t in zip(streams, targets, strict=True)):
        await trio.sleep(0.001)


async def test_100k_messages_over_20_migrations_arrive_exactly_once_in_order() -> None:
    each_way = 50_000
    to_b, to_a = Stream(1, each_way), Stream(2, each_way)
    streams = (to_b, to_a)
    kills = 0
    with trio.fail_after(120):
        async with running_relay() as relay, pair(relay, paths=MIGRATING) as (a, b):

            async def chaos() -> None:
                nonlocal kills
                while kills < 20:
                    with trio.fail_after(10):
                        await wait_path(a.session, b.session, path="direct")
                    await wait_progress(streams, 1500)  # traffic on the direct path
                    victim: Side = (a, b)[kills % 2]
                    if victim.migrator.abort_direct("killed by the test"):
                        kills += 1
                    with trio.fail_after(10):  # both sides noticed and fell back
                        while a.migrator.fallbacks < kills or b.migrator.fallbacks < kills:
                            await trio.sleep(0.001)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(to_b.send, a.session)
                nursery.start_soon(to_a.send, b.session)
                nursery.start_soon(to_b.receive, b.session)
                nursery.start_soon(to_a.receive, a.session)
                await chaos()
            with trio.fail_after(10):
                await wait_path(a.session, b.session, path="direct")
            migrations = (a.migrator.migrations, b.migrator.migrations)
            resent = a.session.stats.retransmitted + b.session.stats.retransmitted
            duplicates = a.session.stats.duplicates + b.session.stats.duplicates
    assert kills == 20
    assert min(migrations) >= 21  # relay -> direct, then back after each of the 20 kills
    for stream in streams:
        assert stream.received == each_way
        assert stream.got_hash.digest() == stream.sent_hash.digest()
    # the kills did cost something, which the receivers absorbed without a trace
    assert resent > 0 and duplicates > 0


async def test_an_abrupt_kill_falls_back_and_reopens_the_released_circuit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    paths = attrs.evolve(MIGRATING, retry_s=5.0, retry_max_s=5.0)  # no quick return to direct
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay, paths=paths) as (a, b):
            with trio.fail_after(2):
                await wait_path(a.session, b.session, path="direct")
                while relay.circuit_stats():
                    await trio.sleep(0.002)
            assert b.migrator.abort_direct("killed by the test")
            with trio.fail_after(2):
                await wait_path(a.session, b.session, path="relay")
                while not relay.circuit_stats():
                    await trio.sleep(0.002)
            for i in range(100):
                await a.session.send(b"%d" % i)
                await b.session.send(b"%d" % i)
                assert await b.session.receive() == b"%d" % i
                assert await a.session.receive() == b"%d" % i
            (circuit,) = relay.circuit_stats()
            assert circuit.frames_ab >= 100 and circuit.frames_ba >= 100
    lines = [r.getMessage() for r in caplog.records]
    assert sum("fell back to relay: " in line for line in lines) == 2  # one per side
    assert any("circuit opened" in line for line in lines)


async def test_a_silent_direct_path_is_distrusted_then_dropped_without_loss() -> None:
    paths = attrs.evolve(
        MIGRATING, trust_s=0.3, dead_s=0.8, retry_s=10.0, retry_max_s=10.0, stable_s=60.0
    )
    with trio.fail_after(30):
        async with (
            running_relay() as relay,
            pair(relay, paths=paths, settings=attrs.evolve(SESSION, keepalive_s=0.1)) as (a, b),
        ):
            with trio.fail_after(2):
                await wait_path(a.session, b.session, path="direct")
            blackhole_direct(a, b)  # the connection stays up but carries nothing any more
            start = trio.current_time()
            sent = 0
            distrusted = False
            while a.session.path != "relay" or b.session.path != "relay":
                await a.session.send(b"%d" % sent)
                sent += 1
                await trio.sleep(0.01)
                distrusted |= a.session.path_stats.distrusted
            took = trio.current_time() - start
            assert distrusted, "the silent path was never distrusted before it was dropped"
            assert paths.dead_s - 0.15 <= took < paths.dead_s + 1.0
            for i in range(sent):
                assert await b.session.receive() == b"%d" % i
            assert a.migrator.fallbacks == 1


async def test_traffic_goes_on_both_paths_while_the_direct_path_is_distrusted() -> None:
    paths = attrs.evolve(
        MIGRATING, trust_s=0.3, dead_s=5.0, retry_s=10.0, retry_max_s=10.0, stable_s=60.0
    )
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay, paths=paths) as (a, b):
            with trio.fail_after(2):
                await wait_path(a.session, b.session, path="direct")
                while relay.circuit_stats():
                    await trio.sleep(0.002)
            blackhole_direct(a, b)
            with trio.fail_after(2):
                while not (stats := a.session.path_stats).distrusted or stats.sending_on != (
                    LinkKind.DIRECT,
                    LinkKind.RELAY,
                ):
                    await trio.sleep(0.01)
            # the relay circuit came back for the duration; messages get through on it
            for i in range(20):
                await a.session.send(b"%d" % i)
                assert await b.session.receive() == b"%d" % i
            assert relay.circuit_stats()
            assert a.session.path == "direct"  # distrusted, not yet dead


async def test_the_direct_path_is_retried_until_it_works_again() -> None:
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay, paths=MIGRATING) as (a, b):
            for round_ in range(3):
                with trio.fail_after(5):
                    await wait_path(a.session, b.session, path="direct")
                assert a.migrator.abort_direct("killed by the test")
                with trio.fail_after(5):
                    while a.migrator.fallbacks <= round_:
                        await trio.sleep(0.001)
            with trio.fail_after(5):
                await wait_path(a.session, b.session, path="direct")
            assert a.migrator.migrations == b.migrator.migrations == 4


async def test_settings_reach_the_migrator() -> None:
    paths = PathSettings(race_deadline_s=1.5)
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay, paths=paths) as (a, _b):
            assert a.session._paths.settings.race_deadline_s == 1.5  # the policy's own
            assert a.migrator.settings is paths
