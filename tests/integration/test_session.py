"""Sessions over in-memory transports: the real handshake and frames, with an honest or a
hostile middle (drop, duplicate, reorder, tamper, inject)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from meshcore._session import (
    Session,
    handshake_as_initiator,
    handshake_as_responder,
    open_session,
)
from meshcore._transport import Transport
from meshcore.errors import HandshakeError, SessionClosed
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.handshake import HandshakeResult, Responder
from meshcore.proto.identity import Identity
from meshcore.proto.paths import DirectMode, LinkKind, OpenRelay, PathLog, PathSettings, RelayState
from meshcore.proto.session import SessionSettings
from meshcore.testing.memory import Direction, MessageFilter, memory_transport_pair

ALICE = Identity.generate()
BOB = Identity.generate()
FAST = SessionSettings(dead_after_s=2.0, keepalive_s=0.5, retransmit_timeout_s=0.2)


async def handshake(ta: Transport, tb: Transport) -> tuple[HandshakeResult, HandshakeResult]:
    """ALICE's and BOB's results of one handshake between them over `ta` and `tb`."""
    responder = Responder(BOB, {ALICE.peer_id: ALICE.public}.get)
    results: dict[str, HandshakeResult] = {}

    async def run_a() -> None:
        results["a"] = await handshake_as_initiator(ta, ALICE, BOB.public)

    async def run_b() -> None:
        results["b"] = await handshake_as_responder(tb, responder)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_a)
            nursery.start_soon(run_b)
    return results["a"], results["b"]


@asynccontextmanager
async def session_pair(
    filter: MessageFilter | None = None, settings: SessionSettings = FAST
) -> AsyncIterator[tuple[Session, Session]]:
    ta, tb = memory_transport_pair(1024, filter=filter)
    ra, rb = await handshake(ta, tb)
    async with (
        open_session(ta, ra, settings=settings) as a,
        open_session(tb, rb, settings=settings) as b,
    ):
        yield a, b


def payloads(seed: int, count: int, max_size: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(1, max_size)) for _ in range(count)]


async def exchange(a: Session, b: Session, count: int, max_size: int) -> None:
    sent = {"a": payloads(1, count, max_size), "b": payloads(2, count, max_size)}

    async def sender(session: Session, items: list[bytes]) -> None:
        for item in items:
            await session.send(item)

    async def receiver(session: Session, expected: list[bytes]) -> None:
        digest_in = hashlib.sha256()
        for i, want in enumerate(expected):
            got = await session.receive()
            assert got == want, f"message {i} differs"
            digest_in.update(got)
        assert digest_in.digest() == hashlib.sha256(b"".join(expected)).digest()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender, a, sent["a"])
            nursery.start_soon(sender, b, sent["b"])
            nursery.start_soon(receiver, a, sent["b"])
            nursery.start_soon(receiver, b, sent["a"])


async def test_both_directions_exactly_once_in_order() -> None:
    async with session_pair() as (a, b):
        await exchange(a, b, 3000, 2048)
        assert a.peer_id == BOB.peer_id and b.peer_id == ALICE.peer_id


async def test_large_messages_both_ways() -> None:
    async with session_pair() as (a, b):
        await exchange(a, b, 200, 65536)


async def test_clean_close_is_end_of_channel() -> None:
    async with session_pair() as (a, b):
        await a.send(b"last words")
        await a.wait_acknowledged()
        await a.aclose("done")
        with trio.fail_after(5):
            assert await b.receive() == b"last words"
            with pytest.raises(trio.EndOfChannel):
                await b.receive()
        with pytest.raises(trio.ClosedResourceError):
            await a.send(b"more")


class Hostile:
    """Drops, duplicates, reorders and tampers with frames after the handshake."""

    def __init__(self, seed: int, rate: float) -> None:
        self.rng = random.Random(seed)
        self.rate = rate
        self.held: dict[Direction, bytes] = {}
        self.tampered: set[bytes] = set()

    def __call__(self, direction: Direction, data: bytes) -> Iterable[bytes]:
        if data[0] != 4:  # let the handshake through
            return [data]
        roll = self.rng.random()
        if roll < self.rate:
            return []  # drop
        if roll < 2 * self.rate:
            return [data, data]  # duplicate
        if roll < 3 * self.rate:
            bad = bytearray(data)
            bad[self.rng.randrange(len(bad))] ^= 1 << self.rng.randrange(8)
            self.tampered.add(bytes(bad))
            return [bytes(bad)]
        if roll < 4 * self.rate and direction not in self.held:
            self.held[direction] = data  # reorder: hold back, release after the next one
            return []
        held = self.held.pop(direction, None)
        return [data] if held is None else [data, held]


async def test_hostile_middle_never_gets_a_tampered_message_accepted() -> None:
    hostile = Hostile(seed=7, rate=0.04)
    settings = SessionSettings(dead_after_s=None, retransmit_timeout_s=0.2)
    async with session_pair(filter=hostile, settings=settings) as (a, b):
        await exchange(a, b, 1500, 3000)
        assert hostile.tampered, "the hostile middle never tampered: the test proves nothing"
        assert a.stats.rejected + b.stats.rejected >= 1


async def test_tampered_handshake_fails_with_a_clear_error() -> None:
    def flip_msg2(direction: Direction, data: bytes) -> Iterable[bytes]:
        if data[0] == 2:
            bad = bytearray(data)
            bad[100] ^= 0x01
            return [bytes(bad)]
        return [data]

    ta, tb = memory_transport_pair(filter=flip_msg2)
    responder = Responder(BOB, {ALICE.peer_id: ALICE.public}.get)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(handshake_as_responder, tb, responder)
            with pytest.raises(HandshakeError):
                await handshake_as_initiator(ta, ALICE, BOB.public)
            nursery.cancel_scope.cancel()


async def test_blackholed_session_ends_with_a_reason_instead_of_hanging() -> None:
    cut = trio.Event()

    def blackhole(direction: Direction, data: bytes) -> Iterable[bytes]:
        return [] if cut.is_set() and data[0] == 4 else [data]

    async with session_pair(filter=blackhole) as (a, b):
        await a.send(b"before")
        with trio.fail_after(5):
            assert await b.receive() == b"before"
        cut.set()
        with trio.fail_after(10), pytest.raises(trio.BrokenResourceError) as info:
            await b.receive()
        assert isinstance(info.value.__cause__, SessionClosed)
        assert "no authenticated frame" in str(info.value.__cause__)


async def test_swapped_circuit_fails_the_handshake() -> None:
    # The relay hands Alice's msg1 (meant for Bob) to Carol instead.
    carol = Identity.generate()
    ta, tc = memory_transport_pair()
    responder = Responder(carol, {ALICE.peer_id: ALICE.public}.get)

    async def carol_answers() -> None:
        with pytest.raises(HandshakeError):
            await handshake_as_responder(tc, responder, timeout=1.0)

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(carol_answers)
            with pytest.raises(HandshakeError):
                await handshake_as_initiator(ta, ALICE, BOB.public, timeout=1.0)


# --- the seam to a path driver -----------------------------------------------------------------

RELAY_ONLY = PathSettings(mode=DirectMode.NEVER)


class Driver:
    """A path driver that records what the session asks of it."""

    def __init__(self) -> None:
        self.woken = trio.Event()
        self.endpoints: list[tuple[Endpoint, ...]] = []

    def wake(self) -> None:
        self.woken.set()

    def endpoints_received(self, endpoints: tuple[Endpoint, ...]) -> None:
        self.endpoints.append(endpoints)

    def abort_direct(self, reason: str) -> bool:
        return False

    def relay_of(self, transport: object) -> str | None:
        return None  # one unnamed relay: a new circuit replaces the old one


async def test_a_driven_session_outlives_its_relay_link_on_a_circuit_the_driver_brings() -> None:
    ta, tb = memory_transport_pair(1024)
    ra, rb = await handshake(ta, tb)
    async with (
        open_session(ta, ra, settings=FAST) as a,
        open_session(tb, rb, settings=FAST) as b,
        trio.open_nursery() as links,
    ):
        da, db = Driver(), Driver()
        ca = a.attach_driver(da, controlling=True, settings=RELAY_ONLY)
        cb = b.attach_driver(db, controlling=False, settings=RELAY_ONLY)
        await a.send(b"before")
        with trio.fail_after(5):
            assert await b.receive() == b"before"
            await ta.aclose("the relay went away")
            await da.woken.wait()  # the controlling side is asked to re-open the circuit
        assert any(isinstance(c, OpenRelay) for c in ca.commands())
        assert a.path_stats.relay is RelayState.OPENING
        await a.send(b"during")  # queued until a circuit carries it
        t1, t2 = memory_transport_pair(1024)
        link_a = ca.attach_relay(t1, opened_here=True)
        assert link_a is not None
        links.start_soon(a.run_link, link_a)
        with trio.fail_after(5):
            first = await t2.receive()  # the keepalive the peer routes the circuit by
        link_b = cb.attach_relay(t2, first_frame=first)
        assert link_b is not None
        links.start_soon(b.run_link, link_b)
        await a.send(b"after")
        with trio.fail_after(5):
            assert [await b.receive(), await b.receive()] == [b"during", b"after"]
            await b.send(b"back")
            assert await a.receive() == b"back"
        assert a.path_stats.relay is b.path_stats.relay is RelayState.OPEN
        assert a.path_stats.sending_on == (LinkKind.RELAY,)
        assert a.path == "relay" and a.close_reason is None
        ca.detach()
        cb.detach()
        links.cancel_scope.cancel()


async def test_the_controlled_side_waits_for_the_peer_to_reopen_the_circuit() -> None:
    ta, tb = memory_transport_pair(1024)
    _ra, rb = await handshake(ta, tb)
    async with open_session(tb, rb, settings=FAST) as b:
        cb = b.attach_driver(Driver(), controlling=False, settings=RELAY_ONLY)
        await ta.aclose("the relay went away")
        with trio.fail_after(5):
            while b.path_stats.relay is not RelayState.LOST:
                await trio.sleep(0.01)
        commands = cb.commands()
        assert not any(isinstance(c, OpenRelay) for c in commands)
        assert any(isinstance(c, PathLog) and "waiting for the peer" in c.message for c in commands)
        assert b.close_reason is None


async def test_without_a_driver_a_lost_link_ends_the_session() -> None:
    ta, tb = memory_transport_pair(1024)
    _ra, rb = await handshake(ta, tb)
    async with open_session(tb, rb, settings=FAST) as b:
        b.attach_driver(Driver(), controlling=False, settings=RELAY_ONLY).detach()
        await ta.aclose("the relay went away")
        with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as info:
            await b.receive()
        assert "transport closed: the relay went away" in str(info.value.__cause__)


async def test_a_session_has_one_path_driver_and_an_ended_one_takes_no_links() -> None:
    async with session_pair() as (a, _b):
        control = a.attach_driver(Driver(), controlling=True, settings=RELAY_ONLY)
        with pytest.raises(RuntimeError, match="already has a path driver"):
            a.attach_driver(Driver(), controlling=True, settings=RELAY_ONLY)
        t1, _t2 = memory_transport_pair()
        assert not control.racing and not control.may_race  # direct="never"
        assert control.attach_candidate(t1) is None  # no race takes it
        assert control.owns_receiver_index(a.handshake.local_index)
        await a.aclose()
        assert control.attach_relay(t1) is None
        assert not control.start_race(())
        assert not control.owns_receiver_index(a.handshake.local_index)
