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
from meshcore.errors import HandshakeError, SessionClosed
from meshcore.proto.handshake import Responder
from meshcore.proto.identity import Identity
from meshcore.proto.session import SessionSettings
from meshcore.testing.memory import Direction, MessageFilter, memory_transport_pair

ALICE = Identity.generate()
BOB = Identity.generate()
FAST = SessionSettings(dead_after_s=2.0, keepalive_s=0.5, retransmit_timeout_s=0.2)


@asynccontextmanager
async def session_pair(
    filter: MessageFilter | None = None, settings: SessionSettings = FAST
) -> AsyncIterator[tuple[Session, Session]]:
    ta, tb = memory_transport_pair(1024, filter=filter)
    responder = Responder(BOB, {ALICE.peer_id: ALICE.public}.get)
    results: dict[str, object] = {}

    async def run_a() -> None:
        results["a"] = await handshake_as_initiator(ta, ALICE, BOB.public)

    async def run_b() -> None:
        results["b"] = await handshake_as_responder(tb, responder)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_a)
            nursery.start_soon(run_b)
    async with (
        open_session(ta, results["a"], settings=settings) as a,  # type: ignore[arg-type]
        open_session(tb, results["b"], settings=settings) as b,  # type: ignore[arg-type]
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
        assert a.core.stats.rejected + b.core.stats.rejected >= 1


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
