"""Sessions through a real in-process relay over loopback WebSockets: the library entry
points `connect` and `serve`, end to end."""

from __future__ import annotations

import hashlib
import math
import random
from functools import partial

import pytest
import trio

from meshcore import Identity, RelayError, Session, connect, serve
from meshcore._relay import RelayConfig, RelayServer, serve_relay

ALICE = Identity.generate()
BOB = Identity.generate()
MALLORY = Identity.generate()


def sizes(seed: int, count: int) -> list[int]:
    """Log-uniform sizes from 1 B to 64 KiB: every order of magnitude is well covered."""
    rng = random.Random(seed)
    return [
        max(1, min(65536, int(math.exp(rng.uniform(0, math.log(65536)))))) for _ in range(count)
    ]


async def test_ten_thousand_messages_each_way_through_the_relay() -> None:
    count = 10_000
    rng_a, rng_b = random.Random(1), random.Random(2)
    to_bob = [rng_a.randbytes(n) for n in sizes(3, count)]
    to_alice = [rng_b.randbytes(n) for n in sizes(4, count)]
    bob_got: list[bytes] = []
    bob_done = trio.Event()

    async def bob_handler(session: Session) -> None:
        async def send_all() -> None:
            for item in to_alice:
                await session.send(item)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_all)
            for _ in range(count):
                bob_got.append(await session.receive())
            bob_done.set()
            await session.wait_acknowledged()
            with trio.move_on_after(30):
                await session.receive()  # until alice closes

    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            relay: RelayServer = await nursery.start(serve_relay, RelayConfig(port=0))
            # relay only: this test is about the relay carrying a whole session
            await nursery.start(
                partial(serve, relay.url, BOB, [ALICE.peer_id], bob_handler, direct="never")
            )
            async with connect(relay.url, ALICE, BOB.peer_id, direct="never") as session:

                async def send_all() -> None:
                    for item in to_bob:
                        await session.send(item)

                alice_got: list[bytes] = []
                async with trio.open_nursery() as inner:
                    inner.start_soon(send_all)
                    for _ in range(count):
                        alice_got.append(await session.receive())
                await session.wait_acknowledged()
                await bob_done.wait()
                (circuit,) = relay.circuit_stats()
            nursery.cancel_scope.cancel()
    assert alice_got == to_alice
    assert bob_got == to_bob
    assert hashlib.sha256(b"".join(bob_got)).digest() == hashlib.sha256(b"".join(to_bob)).digest()
    # the relay forwarded at least every payload byte, and saw only ciphertext frames
    assert circuit.bytes_ab + circuit.bytes_ba >= sum(map(len, to_bob)) + sum(map(len, to_alice))


async def test_peer_not_on_the_allow_list_is_refused() -> None:
    async def never(session: Session) -> None:
        raise AssertionError("a refused peer got a session")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            relay: RelayServer = await nursery.start(serve_relay, RelayConfig(port=0))
            await nursery.start(serve, relay.url, BOB, [ALICE.peer_id], never)
            with pytest.raises(RelayError, match="not on the allow-list"):
                async with connect(relay.url, MALLORY, BOB.peer_id):
                    pass
            nursery.cancel_scope.cancel()


async def test_unknown_peer_is_a_clear_error() -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            relay: RelayServer = await nursery.start(serve_relay, RelayConfig(port=0))
            with pytest.raises(RelayError, match="refused"):
                async with connect(relay.url, ALICE, BOB.peer_id):
                    pass
            nursery.cancel_scope.cancel()


async def test_relay_that_substitutes_key_bundles_gets_no_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A malicious relay hands Alice Mallory's keys in place of Bob's (and Bob Mallory's in
    # place of Alice's). Pinned peer ids catch it before any handshake starts.
    import attrs

    import meshcore._relay as relay_module
    from meshcore.errors import HandshakeError
    from meshcore.proto import wire
    from meshcore.proto.matchmaker import Matchmaker, Send

    class SubstitutingMatchmaker(Matchmaker):
        def receive_data(self, conn_id, data, now):  # type: ignore[no-untyped-def]
            outputs = super().receive_data(conn_id, data, now)
            swapped = []
            for out in outputs:
                if isinstance(out, Send) and isinstance(out.message, wire.Paired):
                    forged = attrs.evolve(
                        out.message,
                        x25519_public=MALLORY.public.x25519_public,
                        kem_public=MALLORY.public.kem_public,
                    )
                    out = attrs.evolve(out, message=forged)
                swapped.append(out)
            return swapped

    monkeypatch.setattr(relay_module, "Matchmaker", SubstitutingMatchmaker)

    async def never(session: Session) -> None:
        raise AssertionError("a session was built on substituted keys")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            relay: RelayServer = await nursery.start(serve_relay, RelayConfig(port=0))
            await nursery.start(serve, relay.url, BOB, [ALICE.peer_id], never)
            with pytest.raises(HandshakeError, match="does not match that pinned id"):
                async with connect(relay.url, ALICE, BOB.peer_id):
                    pass
            nursery.cancel_scope.cancel()
