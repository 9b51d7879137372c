"""The relay under bad input and abuse: garbage, oversized frames, clients that never finish
HELLO, connection churn, pairing floods and slow readers. Throughout, an honest pair keeps
working and the relay's tables and queues stay bounded."""

from __future__ import annotations

import trio
from test_relay import (
    ALICE,
    BOB,
    CAROL,
    FAST,
    MALLORY,
    WAIT_S,
    ControlClient,
    exchange,
    open_client,
    pair,
    start_relay,
)

from meshcore._relay import RelayConfig
from meshcore._transport import open_transport
from meshcore.proto import wire
from meshcore.proto.constants import MAX_CONTROL_BYTES, PROTOCOL_VERSION
from meshcore.proto.identity import Identity
from meshcore.proto.limits import RelayLimits
from meshcore.proto.relayauth import answer_challenge

DAVE = Identity.generate()
CHURN = RelayLimits(connections_per_s_per_ip=1e6, connections_burst_per_ip=1_000_000)


def config(**limits: object) -> RelayConfig:
    relay_limits = RelayLimits(**limits)  # type: ignore[arg-type]
    return RelayConfig(port=0, limits=relay_limits, shutdown_grace_s=1.0, close_flush_s=0.5)


async def wait_until(predicate: object, what: str) -> None:
    """Poll relay stats (bounded) until `predicate()` holds: closes finish asynchronously."""
    assert callable(predicate)
    with trio.fail_after(WAIT_S):
        while not predicate():
            await trio.sleep(0.01)


MALFORMED = [
    b"",
    b"\x01",
    bytes((PROTOCOL_VERSION + 1, 1)),
    bytes((PROTOCOL_VERSION, 200)),
    bytes((PROTOCOL_VERSION, 1)) + b"short hello",
    bytes((PROTOCOL_VERSION, 12)) + b"\x00" * 8 + b"\xff\xff\xff\xff",
    b"\x00garbage" * 100,
]


async def test_garbage_closes_only_that_connection(nursery: trio.Nursery) -> None:
    server = await start_relay(nursery)
    async with open_client(server, ALICE) as alice, open_client(server, BOB) as bob:
        cid = await pair(alice, bob, BOB)
        for index, data in enumerate(MALFORMED):
            registered = index % 2 == 0
            async with open_client(server, MALLORY if registered else None) as mallory:
                await mallory.transport.send(data)
                error = await mallory.expect(wire.Error)
                assert error.code in (
                    wire.ErrorCode.BAD_MESSAGE,
                    wire.ErrorCode.UNSUPPORTED_VERSION,
                    wire.ErrorCode.TOO_LARGE,
                )
                await mallory.closed_reason()
            await exchange(alice, bob, cid, b"still fine %d" % index)
        assert server.stats().peers == 2


async def test_oversized_frame_closes_only_that_connection(nursery: trio.Nursery) -> None:
    server = await start_relay(nursery)
    async with open_client(server, ALICE) as alice, open_client(server, BOB) as bob:
        cid = await pair(alice, bob, BOB)
        async with open_transport(server.url, max_message=4 * MAX_CONTROL_BYTES) as big:
            client = ControlClient(big)
            await client.register(MALLORY)
            await big.send(wire.encode_relayed(1, b"")[:-4] + b"\xff" * (2 * MAX_CONTROL_BYTES))
            reason = await client.closed_reason()
            assert "1009" in reason or "too big" in reason.lower()
        await exchange(bob, alice, cid, b"unaffected")
        assert server.stats().peers == 2


async def test_client_that_never_sends_hello_is_dropped(nursery: trio.Nursery) -> None:
    server = await start_relay(nursery, config(hello_deadline_s=0.2))
    async with open_client(server) as idle:
        error = await idle.expect(wire.Error)
        assert error.code is wire.ErrorCode.TIMEOUT and "HELLO" in error.reason
        await idle.closed_reason()
    assert server.stats().pending == 0


async def test_client_that_never_answers_the_challenge_is_dropped(nursery: trio.Nursery) -> None:
    server = await start_relay(nursery, config(hello_deadline_s=0.2))
    async with open_client(server) as idle:
        await idle.hello(ALICE)
        error = await idle.expect(wire.Error)
        assert error.code is wire.ErrorCode.TIMEOUT and "AUTH" in error.reason
        await idle.closed_reason()
    assert server.stats().peers == 0


async def test_connection_burst_from_one_address_is_rate_limited(nursery: trio.Nursery) -> None:
    server = await start_relay(
        nursery, config(connections_burst_per_ip=3, connections_per_s_per_ip=0.01)
    )
    async with (
        open_client(server),
        open_client(server),
        open_client(server),
        open_client(server) as fourth,
    ):
        assert (await fourth.expect(wire.Error)).code is wire.ErrorCode.RATE_LIMITED
        await fourth.closed_reason()


async def test_full_relay_refuses_new_peers_but_keeps_its_own(nursery: trio.Nursery) -> None:
    server = await start_relay(nursery, config(max_peers=2))
    async with open_client(server, ALICE) as alice, open_client(server, BOB) as bob:
        cid = await pair(alice, bob, BOB)
        async with open_client(server) as carol:
            challenge = await carol.hello(CAROL)
            await carol.send(answer_challenge(CAROL, challenge))
            assert (await carol.expect(wire.Error)).code is wire.ErrorCode.CAPACITY
        await exchange(alice, bob, cid, b"ours")


async def test_thousand_connect_disconnect_cycles_leave_the_relay_clean(
    nursery: trio.Nursery,
) -> None:
    server = await start_relay(nursery, RelayConfig(port=0, limits=CHURN, shutdown_grace_s=1))
    async with open_client(server, ALICE) as alice, open_client(server, BOB) as bob:
        cid = await pair(alice, bob, BOB)
        done = 0

        async def churn(worker: int) -> None:
            nonlocal done
            for i in range(125):
                async with open_transport(server.url) as transport:
                    client = ControlClient(transport)
                    if i % 10 == 0:  # some register (and replace each other) before leaving
                        await client.register(CAROL)
                    elif i % 3 == 0:
                        await client.hello(DAVE)
                done += 1

        with trio.fail_after(60):
            async with trio.open_nursery() as workers:
                for worker in range(8):
                    workers.start_soon(churn, worker)
                for n in range(50):  # the honest pair keeps talking through the churn
                    await exchange(alice, bob, cid, b"%d" % n)
                    await trio.sleep(0.01)
        assert done == 1000
        await wait_until(lambda: server.stats().connections == 2, "churned connections gone")
        stats = server.stats()
        assert (stats.peers, stats.pending, stats.circuits, stats.invites) == (2, 0, 1, 0)
        await exchange(bob, alice, cid, b"after the churn")


async def test_pairing_flood_is_rate_limited_and_the_honest_pair_still_pairs(
    nursery: trio.Nursery,
) -> None:
    server = await start_relay(nursery)
    limits = RelayLimits()
    async with (
        open_client(server, ALICE) as alice,
        open_client(server, BOB) as bob,
        open_client(server, MALLORY) as mallory,
    ):
        invites = rejects = 0
        bob_paired: list[wire.Paired] = []
        alice_paired = trio.Event()

        async def bob_rejects_strangers() -> None:  # what a peer with an allow-list does
            nonlocal invites
            while True:
                with trio.fail_after(WAIT_S):
                    msg = await bob.receive()
                if isinstance(msg, wire.Paired):
                    bob_paired.append(msg)
                    alice_paired.set()
                    continue
                assert isinstance(msg, wire.Invite)
                if msg.initiator == ALICE.peer_id.digest:
                    await bob.send(wire.Accept(msg.request_id))
                    continue
                invites += 1
                await bob.send(wire.Reject(msg.request_id, wire.ErrorCode.NOT_ALLOWED, "no"))

        async def mallory_reads() -> None:
            nonlocal rejects
            while True:
                msg = await mallory.receive()
                assert isinstance(msg, wire.Reject)
                rejects += 1

        async with trio.open_nursery() as inner:
            inner.start_soon(mallory_reads)
            inner.start_soon(bob_rejects_strangers)
            with trio.fail_after(WAIT_S):
                for rid in range(1000):
                    await mallory.send(wire.Connect(rid, BOB.peer_id.digest))
                    if rid == 500:  # Alice asks in the middle of the flood
                        await alice.send(wire.Connect(1, BOB.peer_id.digest))
                await wait_until(lambda: rejects == 1000, "every flood request answered")
                await alice_paired.wait()
            inner.cancel_scope.cancel()
        assert server.stats().invites == 0
        assert invites <= limits.pairings_burst + limits.pairings_per_s * WAIT_S
        paired = await alice.expect(wire.Paired)
        assert [p.circuit_id for p in bob_paired] == [paired.circuit_id]
        await exchange(alice, bob, paired.circuit_id, b"paired despite the flood")


async def test_slow_reader_costs_bounded_memory_and_others_keep_working(
    nursery: trio.Nursery,
) -> None:
    server = await start_relay(nursery)
    limits = RelayLimits()
    async with (
        open_client(server, ALICE) as alice,
        open_client(server, BOB) as bob,
        open_client(server, CAROL) as carol,
        open_client(server, DAVE) as dave,
    ):
        slow = await pair(alice, bob, BOB, 1)
        other = await pair(carol, dave, DAVE, 2)
        filler = b"s" * 65532
        peak = 0
        with trio.fail_after(30):
            for n in range(400):  # ~26 MB at Bob, who reads nothing
                await alice.send(wire.Relayed(slow, n.to_bytes(4, "big") + filler))
                peak = max(peak, server.stats().queued_bytes)
                if n % 50 == 0:
                    await exchange(carol, dave, other, b"unaffected %d" % n)
        assert peak <= limits.circuit_queue_bytes + 65536 + 64
        await wait_until(lambda: server.stats().dropped_frames > 0, "frames dropped")
        # Bob reads again: what he gets is Alice's frames, on the right circuit, in order.
        with trio.fail_after(WAIT_S):
            got = [await bob.expect(wire.Relayed) for _ in range(40)]
        numbers = [int.from_bytes(m.payload[:4], "big") for m in got]
        assert all(m.circuit_id == slow and m.payload[4:] == filler for m in got)
        assert numbers == sorted(set(numbers))


async def test_queue_overflow_can_close_the_circuit_instead(nursery: trio.Nursery) -> None:
    server = await start_relay(nursery, config(overflow="close", circuit_queue_frames=2))
    async with open_client(server, ALICE) as alice, open_client(server, BOB) as bob:
        cid = await pair(alice, bob, BOB)
        with trio.fail_after(30):
            while server.stats().circuits:  # Bob reads nothing
                await alice.send(wire.Relayed(cid, b"o" * 65536))
        close = await alice.expect(wire.CircuitClose)
        assert (close.circuit_id, close.code) == (cid, wire.ErrorCode.QUEUE_OVERFLOW)


async def test_frames_on_a_foreign_circuit_are_refused_and_not_delivered(
    nursery: trio.Nursery,
) -> None:
    server = await start_relay(nursery, FAST)
    async with (
        open_client(server, ALICE) as alice,
        open_client(server, BOB) as bob,
        open_client(server, MALLORY) as mallory,
    ):
        cid = await pair(alice, bob, BOB)
        await mallory.send(wire.Relayed(cid, b"injected"))
        close = await mallory.expect(wire.CircuitClose)
        assert (close.circuit_id, close.code) == (cid, wire.ErrorCode.CIRCUIT_UNKNOWN)
        await exchange(alice, bob, cid, b"genuine")  # Bob's next frame is Alice's, not Mallory's
        (stats,) = server.circuit_stats()
        assert (stats.frames_ab, stats.frames_ba) == (1, 0)
