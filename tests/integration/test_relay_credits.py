"""Per-circuit credit through a real relay on loopback: a peer that agreed to credits hears
its circuit's window and credit, a fast sender is held to its credit so the relay drops
nothing and holds at most the window, and peers or relays without credits keep the
drop-tail behaviour they had (docs/relay.md, "Flow control")."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from test_relay import ALICE, BOB, WAIT_S, ControlClient, pair, start_relay

from meshcore._client import open_relay_client
from meshcore._relay import RelayConfig, RelayServer
from meshcore._transport import open_transport
from meshcore.proto import wire
from meshcore.proto.constants import (
    MAX_FRAME_BYTES,
    RELAY_CREDIT_SUBPROTOCOL,
    RELAY_UNCREDITED_WINDOW_BYTES,
)
from meshcore.proto.identity import Identity
from meshcore.proto.limits import RelayLimits

WINDOW = 4 * MAX_FRAME_BYTES
SIZE = 60_000


def config(**limits: object) -> RelayConfig:
    relay_limits = RelayLimits(**limits)  # type: ignore[arg-type]
    return RelayConfig(port=0, limits=relay_limits, shutdown_grace_s=1.0, close_flush_s=0.5)


@asynccontextmanager
async def credited_client(server: RelayServer, identity: Identity) -> AsyncIterator[ControlClient]:
    """A raw control client that offers credits in the upgrade, registered as `identity`."""
    async with open_transport(server.url, subprotocols=(RELAY_CREDIT_SUBPROTOCOL,)) as transport:
        assert transport.subprotocol == RELAY_CREDIT_SUBPROTOCOL
        client = ControlClient(transport)
        await client.register(identity)
        yield client


async def test_a_credited_peer_hears_its_window_and_first_credit_after_paired(
    nursery: trio.Nursery,
) -> None:
    server = await start_relay(nursery, config(circuit_window_bytes=WINDOW))
    async with credited_client(server, ALICE) as alice, credited_client(server, BOB) as bob:
        cid = await pair(alice, bob, BOB)
        assert await alice.expect(wire.CircuitWindow) == wire.CircuitWindow(cid, WINDOW)
        credit = await alice.expect(wire.CircuitCredit)
        assert credit.circuit_id == cid and 0 < credit.credit <= WINDOW


async def test_a_sender_that_overdraws_its_credit_loses_frames_not_memory(
    nursery: trio.Nursery,
) -> None:
    server = await start_relay(nursery, config(circuit_window_bytes=WINDOW))
    async with credited_client(server, ALICE) as alice, credited_client(server, BOB) as bob:
        cid = await pair(alice, bob, BOB)
        peak = 0
        with trio.fail_after(30):
            # Alice ignores her credit and Bob reads nothing: once Bob's socket buffers are
            # full nothing drains, no credit comes back, and Alice's frames are refused.
            for _ in range(2000):
                await alice.send(wire.Relayed(cid, bytes(SIZE)))
                peak = max(peak, server.stats().queued_bytes)
                if server.counters().dropped.get("no_credit", 0):
                    break
        assert server.counters().dropped["no_credit"] >= 1
        assert peak <= WINDOW + WINDOW // SIZE * wire.RELAYED_HEADER_BYTES


async def test_a_fast_sender_is_held_to_its_window_and_nothing_is_dropped(
    nursery: trio.Nursery,
) -> None:
    server = await start_relay(nursery, config(circuit_window_bytes=WINDOW))
    frames = 300  # 18 MB, dozens of windows
    async with (
        open_relay_client(server.url, ALICE) as alice,
        open_relay_client(server.url, BOB) as bob,
    ):
        got: list[int] = []
        peak = 0

        async def bob_reads() -> None:
            invitation = await bob.next_invitation()
            circuit = (await bob.accept(invitation)).circuit
            for _ in range(frames):
                got.append(int.from_bytes((await circuit.receive())[:4], "big"))

        with trio.fail_after(30):
            async with trio.open_nursery() as inner:
                inner.start_soon(bob_reads)
                circuit = (await alice.connect(BOB.peer_id)).circuit
                for n in range(frames):
                    await circuit.send(n.to_bytes(4, "big") + bytes(SIZE))
                    peak = max(peak, server.stats().queued_bytes)
                assert circuit.max_window == WINDOW
        assert got == list(range(frames))
        assert server.stats().dropped_frames == 0
        assert peak <= WINDOW + frames * wire.RELAYED_HEADER_BYTES


async def test_batches_larger_than_the_credit_go_out_whole_in_order_and_drop_nothing(
    nursery: trio.Nursery,
) -> None:
    # CircuitTransport.send_many writes what the credit covers at once and waits for the
    # rest: batches of a dozen frames against a window of four, one write per credit grant
    server = await start_relay(nursery, config(circuit_window_bytes=WINDOW))
    frames, batch = 240, 12
    async with (
        open_relay_client(server.url, ALICE) as alice,
        open_relay_client(server.url, BOB) as bob,
    ):
        got: list[int] = []

        async def bob_reads() -> None:
            invitation = await bob.next_invitation()
            circuit = (await bob.accept(invitation)).circuit
            while len(got) < frames:
                got.extend(int.from_bytes(f[:4], "big") for f in await circuit.receive_batch())

        with trio.fail_after(30):
            async with trio.open_nursery() as inner:
                inner.start_soon(bob_reads)
                circuit = (await alice.connect(BOB.peer_id)).circuit
                for start in range(0, frames, batch):
                    await circuit.send_many(
                        [n.to_bytes(4, "big") + bytes(SIZE) for n in range(start, start + batch)]
                    )
        assert got == list(range(frames))
        assert server.stats().dropped_frames == 0


async def test_a_relay_without_credits_leaves_the_peer_as_before(nursery: trio.Nursery) -> None:
    server = await start_relay(nursery, config(flow_control="drop"))
    async with (
        open_relay_client(server.url, ALICE) as alice,
        open_relay_client(server.url, BOB) as bob,
    ):

        async def bob_accepts() -> None:
            circuit = (await bob.accept(await bob.next_invitation())).circuit
            assert await circuit.receive() == b"hello"

        with trio.fail_after(WAIT_S):
            async with trio.open_nursery() as inner:
                inner.start_soon(bob_accepts)
                circuit = (await alice.connect(BOB.peer_id)).circuit
                await circuit.send(b"hello")  # at once: no credit to wait for
        assert circuit.max_window == RELAY_UNCREDITED_WINDOW_BYTES


async def test_a_peer_without_credits_gets_no_credit_messages(nursery: trio.Nursery) -> None:
    server = await start_relay(nursery, config(circuit_window_bytes=WINDOW))
    async with open_transport(server.url) as plain, credited_client(server, BOB) as bob:
        assert plain.subprotocol is None
        alice = ControlClient(plain)
        await alice.register(ALICE)
        cid = await pair(alice, bob, BOB)
        await alice.send(wire.Relayed(cid, b"first"))  # an old peer sends at once
        assert (await bob.expect(wire.CircuitWindow)).circuit_id == cid
        await bob.expect(wire.CircuitCredit)
        assert await bob.expect(wire.Relayed) == wire.Relayed(cid, b"first")
        await bob.send(wire.Relayed(cid, b"back"))
        assert await alice.expect(wire.Relayed) == wire.Relayed(cid, b"back")
