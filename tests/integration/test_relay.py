"""The relay server on loopback with real WebSocket clients that speak the control protocol:
registration with the real KEM challenge, pairing only on the target's accept, forwarding
both ways with counters, circuit close, pings, log lines and graceful shutdown."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeVar

import pytest
import trio

from meshcore._relay import RelayConfig, RelayServer, serve_relay
from meshcore._transport import WebSocketTransport, open_transport
from meshcore.errors import ConfigError, TransportClosed
from meshcore.proto import wire
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity
from meshcore.proto.limits import RelayLimits
from meshcore.proto.relayauth import answer_challenge

M = TypeVar("M", bound=wire.ControlMessage)

ALICE, BOB, CAROL, MALLORY = (Identity.generate() for _ in range(4))
WAIT_S = 5.0
FAST = RelayConfig(host="127.0.0.1", port=0, shutdown_grace_s=1.0, close_flush_s=0.5)


class ControlClient:
    """A minimal peer that speaks the relay control protocol directly (test side only)."""

    def __init__(self, transport: WebSocketTransport) -> None:
        self.transport = transport
        self.answer_pings = True
        self.relay_keys: wire.RelayIdentity | None = None
        """The relay's keys, which it sends first on every connection (taken aside)."""

    async def send(self, msg: wire.ControlMessage) -> None:
        await self.transport.send(wire.encode_control(msg))

    async def receive(self) -> wire.ControlMessage:
        """The next message that is neither a Ping (answered unless told otherwise) nor the
        relay's keys (kept in `relay_keys`)."""
        while True:
            msg = wire.decode_control_untrusted(await self.transport.receive())
            if isinstance(msg, wire.Ping) and self.answer_pings:
                await self.send(wire.Pong(msg.nonce))
                continue
            if isinstance(msg, wire.RelayIdentity) and self.relay_keys is None:
                self.relay_keys = msg
                continue
            return msg

    async def expect(self, cls: type[M]) -> M:
        with trio.fail_after(WAIT_S):
            msg = await self.receive()
        assert isinstance(msg, cls), f"expected {cls.__name__}, got {msg!r}"
        return msg

    async def closed_reason(self) -> str:
        """Drain until the relay closes the connection; return the close reason."""
        with trio.fail_after(WAIT_S):
            try:
                while True:
                    await self.transport.receive()
            except TransportClosed as exc:
                return exc.reason

    async def hello(
        self, identity: Identity, candidates: tuple[Endpoint, ...] = ()
    ) -> wire.Challenge:
        bundle = identity.public
        await self.send(wire.Hello(bundle.x25519_public, bundle.kem_public, candidates))
        return await self.expect(wire.Challenge)

    async def register(
        self, identity: Identity, candidates: tuple[Endpoint, ...] = ()
    ) -> wire.Registered:
        challenge = await self.hello(identity, candidates)
        await self.send(answer_challenge(identity, challenge))
        return await self.expect(wire.Registered)


@asynccontextmanager
async def open_client(
    server: RelayServer, identity: Identity | None = None, candidates: tuple[Endpoint, ...] = ()
) -> AsyncIterator[ControlClient]:
    """Connect to `server` (and register as `identity`, if given)."""
    async with open_transport(server.url) as transport:
        client = ControlClient(transport)
        if identity is not None:
            await client.register(identity, candidates)
        yield client


async def pair(a: ControlClient, b: ControlClient, target: Identity, rid: int = 1) -> int:
    """A asks for `target` (B's identity), B accepts: the circuit id."""
    await a.send(wire.Connect(rid, target.peer_id.digest))
    invite = await b.expect(wire.Invite)
    await b.send(wire.Accept(invite.request_id))
    to_b = await b.expect(wire.Paired)
    to_a = await a.expect(wire.Paired)
    assert to_a.circuit_id == to_b.circuit_id
    return to_a.circuit_id


async def exchange(a: ControlClient, b: ControlClient, cid: int, payload: bytes) -> None:
    """A frame from A reaches B unchanged on the same circuit."""
    await a.send(wire.Relayed(cid, payload))
    assert await b.expect(wire.Relayed) == wire.Relayed(cid, payload)


async def start_relay(nursery: trio.Nursery, config: RelayConfig = FAST) -> RelayServer:
    server: RelayServer = await nursery.start(serve_relay, config)
    return server


@pytest.fixture
async def relay(nursery: trio.Nursery) -> RelayServer:
    return await start_relay(nursery)


# --- registration ---------------------------------------------------------------------------


async def test_peer_registers_with_the_real_challenge(relay: RelayServer) -> None:
    async with open_client(relay) as client:
        registered = await client.register(ALICE)
        assert registered.peer_id == ALICE.peer_id.digest
        assert registered.observed == client.transport.local_address
        assert relay.stats().peers == 1


async def test_wrong_answer_is_refused_and_the_connection_closed(relay: RelayServer) -> None:
    async with open_client(relay) as client:
        await client.hello(ALICE)
        await client.send(wire.Auth(bytes(32)))
        assert (await client.expect(wire.Error)).code is wire.ErrorCode.AUTH_FAILED
        await client.closed_reason()
    assert relay.stats().peers == 0


async def test_impostor_cannot_register_under_another_peers_id(relay: RelayServer) -> None:
    async with open_client(relay, ALICE) as alice, open_client(relay, BOB) as bob:
        async with open_client(relay) as mallory:
            challenge = await mallory.hello(ALICE)  # Alice's public keys, Mallory's secrets
            await mallory.send(answer_challenge(MALLORY, challenge))
            assert (await mallory.expect(wire.Error)).code is wire.ErrorCode.AUTH_FAILED
        # Alice is still the one registered under her id: Bob reaches her.
        await pair(bob, alice, ALICE)


async def test_reregistration_replaces_the_old_connection(relay: RelayServer) -> None:
    async with open_client(relay, ALICE) as old, open_client(relay, ALICE):
        close = await old.expect(wire.Close)
        assert close.code is wire.ErrorCode.REPLACED
        await old.closed_reason()
        assert relay.stats().peers == 1


# --- pairing --------------------------------------------------------------------------------


async def test_pairing_happens_only_when_the_target_accepts(relay: RelayServer) -> None:
    cands = (Endpoint("10.1.1.1", 7000),)
    async with open_client(relay, ALICE, cands) as alice, open_client(relay, BOB) as bob:
        await alice.send(wire.Connect(5, BOB.peer_id.digest))
        invite = await bob.expect(wire.Invite)
        assert invite.initiator == ALICE.peer_id.digest
        assert invite.observed == alice.transport.local_address
        assert invite.candidates == cands
        assert relay.stats().circuits == 0 and relay.stats().invites == 1
        await bob.send(wire.Accept(invite.request_id))
        paired = await alice.expect(wire.Paired)  # Alice's first message since Connect
        assert (paired.request_id, paired.peer_id) == (5, BOB.peer_id.digest)
        assert paired.observed == bob.transport.local_address
        assert relay.stats().circuits == 1


async def test_reject_reaches_the_initiator(relay: RelayServer) -> None:
    async with open_client(relay, ALICE) as alice, open_client(relay, BOB) as bob:
        await alice.send(wire.Connect(5, BOB.peer_id.digest))
        invite = await bob.expect(wire.Invite)
        await bob.send(wire.Reject(invite.request_id, wire.ErrorCode.NOT_ALLOWED, "not allowed"))
        reject = await alice.expect(wire.Reject)
        assert (reject.request_id, reject.code) == (5, wire.ErrorCode.NOT_ALLOWED)
        assert relay.stats().circuits == 0


async def test_connect_to_an_absent_peer_is_refused(relay: RelayServer) -> None:
    async with open_client(relay, ALICE) as alice:
        await alice.send(wire.Connect(5, BOB.peer_id.digest))
        assert (await alice.expect(wire.Reject)).code is wire.ErrorCode.PEER_UNKNOWN


# --- circuits -------------------------------------------------------------------------------


async def test_frames_flow_both_ways_with_counters(relay: RelayServer) -> None:
    async with open_client(relay, ALICE) as alice, open_client(relay, BOB) as bob:
        cid = await pair(alice, bob, BOB)
        for i in range(20):
            await exchange(alice, bob, cid, bytes([i]) * (100 + i))
        for _ in range(5):
            await exchange(bob, alice, cid, b"r" * 65536)
        (stats,) = relay.circuit_stats()
        assert (stats.frames_ab, stats.frames_ba) == (20, 5)
        assert stats.bytes_ab == sum(100 + i for i in range(20))
        assert stats.bytes_ba == 5 * 65536


async def test_two_circuits_between_the_same_peers_are_independent(relay: RelayServer) -> None:
    async with open_client(relay, ALICE) as alice, open_client(relay, BOB) as bob:
        first = await pair(alice, bob, BOB, 1)
        second = await pair(alice, bob, BOB, 2)
        await alice.send(wire.CircuitClose(first, wire.ErrorCode.NONE, "done"))
        assert (await alice.expect(wire.CircuitClose)).circuit_id == first
        assert (await bob.expect(wire.CircuitClose)).circuit_id == first
        await exchange(bob, alice, second, b"second still works")


async def test_peer_leaving_closes_its_circuits_for_the_other(relay: RelayServer) -> None:
    async with open_client(relay, BOB) as bob:
        async with open_client(relay, ALICE) as alice:
            cid = await pair(alice, bob, BOB)
        close = await bob.expect(wire.CircuitClose)
        assert (close.circuit_id, close.code) == (cid, wire.ErrorCode.PEER_OFFLINE)
        assert relay.stats().circuits == 0


# --- liveness, logs, shutdown ---------------------------------------------------------------


async def test_relay_pings_an_idle_peer_and_drops_a_silent_one(nursery: trio.Nursery) -> None:
    limits = RelayLimits(ping_interval_s=0.2, idle_timeout_s=0.6)
    server = await start_relay(nursery, RelayConfig(port=0, limits=limits, shutdown_grace_s=1))
    async with open_client(server, ALICE) as alice, open_client(server, BOB) as bob:
        pings = 0

        async def keep_alice_alive() -> None:
            nonlocal pings
            while True:  # answers every Ping; counts them
                msg = wire.decode_control_untrusted(await alice.transport.receive())
                assert isinstance(msg, wire.Ping)
                pings += 1
                await alice.send(wire.Pong(msg.nonce))

        async with trio.open_nursery() as inner:
            inner.start_soon(keep_alice_alive)
            bob.answer_pings = False
            assert isinstance(await bob.expect(wire.Ping), wire.Ping)
            assert (await bob.expect(wire.Error)).code is wire.ErrorCode.TIMEOUT
            await bob.closed_reason()
            inner.cancel_scope.cancel()
        assert pings >= 2  # Alice was pinged past Bob's idle timeout and is still here
        assert server.stats().peers == 1


async def test_events_are_logged_one_line_each(
    relay: RelayServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshcore.relay")
    async with open_client(relay, ALICE) as alice, open_client(relay, BOB) as bob:
        cid = await pair(alice, bob, BOB)
        await exchange(alice, bob, cid, b"12345")
        await alice.send(wire.CircuitClose(cid, wire.ErrorCode.NONE, "done"))
        await bob.expect(wire.CircuitClose)
    lines = [r.getMessage() for r in caplog.records if r.name == "meshcore.relay"]
    text = "\n".join(lines)
    assert f"registered peer={ALICE.peer_id.to_text()} addr=127.0.0.1:" in text
    assert (
        f"paired a={ALICE.peer_id.to_text()} b={BOB.peer_id.to_text()} circuit={cid:016x}" in text
    )
    assert f"circuit closed circuit={cid:016x}" in text
    assert "bytes_ab=5 bytes_ba=0 frames_ab=1 frames_ba=0" in text


async def test_shutdown_tells_peers_and_closes_circuits() -> None:
    async with trio.open_nursery() as nursery:
        server = await start_relay(nursery)
        async with open_client(server, ALICE) as alice, open_client(server, BOB) as bob:
            cid = await pair(alice, bob, BOB)
            nursery.cancel_scope.cancel()
            for client in (alice, bob):
                close = await client.expect(wire.CircuitClose)
                assert (close.circuit_id, close.code) == (cid, wire.ErrorCode.SHUTDOWN)
                assert (await client.expect(wire.Close)).code is wire.ErrorCode.SHUTDOWN
                await client.closed_reason()


async def test_the_library_relay_client_registers_and_pairs(relay: RelayServer) -> None:
    from meshcore._client import open_relay_client

    async with (
        open_relay_client(relay.url, ALICE) as alice,
        open_relay_client(relay.url, BOB) as bob,
        trio.open_nursery() as nursery,
    ):

        async def answer() -> None:
            invitation = await bob.next_invitation()
            pairing = await bob.accept(invitation)
            assert await pairing.circuit.receive() == b"hello"

        nursery.start_soon(answer)
        with trio.fail_after(WAIT_S):
            pairing = await alice.connect(BOB.peer_id)
            await pairing.circuit.send(b"hello")


async def test_serve_relay_raises_config_error_when_it_cannot_listen(nursery: trio.Nursery) -> None:
    first = await start_relay(nursery)
    taken = RelayConfig(host="127.0.0.1", port=first.port)
    with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{first.port}"):
        await start_relay(nursery, taken)
