"""The trio relay client over loopback, where its driver does something of its own: a relay
that sends garbage is left and dialled again, a replaced registration ends the client for
good, and a registration that never completes fails the first attempt."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio

from meshcore._client import open_relay_client
from meshcore._relay import RelayConfig, RelayServer, serve_relay
from meshcore._transport import WebSocketTransport, serve_transport
from meshcore.errors import RelayError, TransportClosed
from meshcore.proto import wire
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity, PublicBundle
from meshcore.proto.relayauth import make_challenge

ALICE = Identity.generate()


async def fake_relay(
    nursery: trio.Nursery, handler: Callable[[WebSocketTransport, int], Awaitable[None]]
) -> str:
    """A WebSocket server that runs `handler(transport, n)` for its n-th connection (from 1)."""
    count = 0

    async def numbered(transport: WebSocketTransport) -> None:
        nonlocal count
        count += 1
        await handler(transport, count)

    endpoints: list[Endpoint] = await nursery.start(
        partial(serve_transport, numbered, "127.0.0.1", 0)
    )
    return f"ws://127.0.0.1:{endpoints[0].port}/"


async def register(transport: WebSocketTransport) -> None:
    """The relay's side of registration, with a real challenge."""
    hello = wire.decode_control_untrusted(await transport.receive())
    assert isinstance(hello, wire.Hello)
    bundle = PublicBundle(hello.x25519_public, hello.kem_public)
    challenge, pending = make_challenge(bundle)
    await transport.send(wire.encode_control(challenge))
    auth = wire.decode_control_untrusted(await transport.receive())
    assert isinstance(auth, wire.Auth) and pending.verify(auth)
    observed = Endpoint("127.0.0.1", 1)
    await transport.send(wire.encode_control(wire.Registered(bundle.peer_id.digest, observed)))


async def test_a_relay_that_sends_garbage_is_left_and_dialled_again(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "meshcore.client")
    close_reasons: list[str] = []

    async def handler(transport: WebSocketTransport, n: int) -> None:
        await register(transport)
        if n == 1:
            await transport.send(b"\x01\xee not a message")
            try:
                await transport.receive()
            except TransportClosed as exc:  # the client closes, saying why
                close_reasons.append(exc.reason)
            return
        await trio.sleep_forever()

    url = await fake_relay(nursery, handler)
    with trio.fail_after(10):
        async with open_relay_client(url, ALICE, reconnect_min_s=0.05) as client:
            while client.registrations < 2:
                await trio.sleep(0.01)
            assert client.connected and client.lost_reason is None
    messages = [r.getMessage() for r in caplog.records]
    assert any(
        m.startswith("relay connection lost: relay sent a malformed message: ") for m in messages
    )
    assert any(m.startswith("reconnected to relay") for m in messages)
    assert close_reasons and close_reasons[0].startswith("relay sent a malformed message: ")


async def test_a_relay_pinged_client_answers_with_the_same_nonce(nursery: trio.Nursery) -> None:
    answered: list[wire.ControlMessage] = []

    async def handler(transport: WebSocketTransport, n: int) -> None:
        await register(transport)
        await transport.send(wire.encode_control(wire.Ping(424242)))
        answered.append(wire.decode_control_untrusted(await transport.receive()))
        await trio.sleep_forever()

    url = await fake_relay(nursery, handler)
    with trio.fail_after(10):
        async with open_relay_client(url, ALICE):
            while not answered:
                await trio.sleep(0.01)
    assert answered == [wire.Pong(424242)]


async def test_a_registration_that_never_completes_fails_the_first_attempt(
    nursery: trio.Nursery,
) -> None:
    async def handler(transport: WebSocketTransport, n: int) -> None:
        await transport.receive()  # Hello, and then silence
        await trio.sleep_forever()

    url = await fake_relay(nursery, handler)
    with trio.fail_after(10), pytest.raises(RelayError, match="did not complete registration"):
        async with open_relay_client(url, ALICE, timeout=0.3):
            pytest.fail("the client should not have registered")


async def test_a_registration_replaced_by_a_newer_one_ends_the_older_client(
    nursery: trio.Nursery,
) -> None:
    relay: RelayServer = await nursery.start(serve_relay, RelayConfig(port=0))
    with trio.fail_after(10):
        async with (
            open_relay_client(relay.url, ALICE) as old,
            open_relay_client(relay.url, ALICE) as new,
        ):
            with pytest.raises(RelayError, match="a newer connection registered"):
                await old.next_invitation()
            assert old.close_reason is not None and "newer connection" in old.close_reason
            # closed for good: reconnecting would evict the newer one in turn
            assert not old.connected and old.registrations == 1 and new.connected


async def test_a_cancelled_circuit_send_never_cuts_the_shared_relay_connection(
    nursery: trio.Nursery,
) -> None:
    # every circuit shares one WebSocket to the relay: a session whose sender is cancelled
    # mid-message (its link closing, the program shutting down) must not cut it for all
    bob = Identity.generate()
    relay: RelayServer = await nursery.start(serve_relay, RelayConfig(port=0))
    with trio.fail_after(20):
        async with (
            open_relay_client(relay.url, ALICE) as alice_client,
            open_relay_client(relay.url, bob) as bob_client,
        ):

            async def accept() -> None:
                await bob_client.accept(await bob_client.next_invitation())

            nursery.start_soon(accept)
            circuit = (await alice_client.connect(bob.peer_id)).circuit
            big = bytes(60 * 1024)
            for _ in range(20):
                with trio.move_on_after(0.001):
                    async with trio.open_nursery() as senders:
                        for _ in range(8):
                            senders.start_soon(circuit.send, big)
            await circuit.send(b"still here")
            assert alice_client.connected and alice_client.registrations == 1
            assert alice_client.lost_reason is None
