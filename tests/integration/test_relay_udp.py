"""The relay's UDP port on loopback (docs/datagram.md, "Through the relay"): circuits between
peers that agreed to UDP get a token per side (CircuitUdp), sealed datagrams prefixed by one
are forwarded to the other side's last address, and everything else (unknown or closed
tokens, short, oversized or malformed packets, a side over its rate) is counted and dropped.
Peers that did not agree get no token and keep their circuits as before."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio
from test_relay import ALICE, BOB, WAIT_S, ControlClient, exchange, pair, start_relay

from meshcore import _trace
from meshcore._metrics_relay import RelayCollector
from meshcore._relay import RelayConfig, RelayServer
from meshcore._transport import open_transport
from meshcore.proto import wire
from meshcore.proto.constants import (
    RELAY_CLIENT_SUBPROTOCOLS,
    RELAY_CREDIT_SUBPROTOCOL,
    RELAY_CREDIT_UDP_SUBPROTOCOL,
)
from meshcore.proto.identity import Identity
from meshcore.proto.limits import RelayLimits
from meshcore.proto.relayudp import relay_datagram_prefix

SEALED = b"\x07" + bytes(15) + os.urandom(48)  # the relay never opens it: any type-7 bytes


def config(udp: bool = True, **limits: object) -> RelayConfig:
    relay_limits = RelayLimits(**limits)  # type: ignore[arg-type]
    return RelayConfig(
        port=0, limits=relay_limits, shutdown_grace_s=1.0, close_flush_s=0.5, udp=udp
    )


@asynccontextmanager
async def client(
    server: RelayServer, identity: Identity, offer: tuple[str, ...] = RELAY_CLIENT_SUBPROTOCOLS
) -> AsyncIterator[ControlClient]:
    """A raw control client offering `offer` in the upgrade, registered as `identity`."""
    async with open_transport(server.url, subprotocols=offer) as transport:
        control = ControlClient(transport)
        await control.register(identity)
        yield control


async def circuit_udp(peer: ControlClient) -> wire.CircuitUdp:
    """The next CircuitUdp (the credit messages before it are skipped)."""
    with trio.fail_after(WAIT_S):
        while True:
            msg = await peer.receive()
            if isinstance(msg, wire.CircuitUdp):
                return msg
            assert isinstance(msg, wire.CircuitCredit | wire.CircuitWindow), msg


async def no_udp(*peers: ControlClient) -> None:
    """Each peer hears its circuit's credits, and no CircuitUdp is queued behind them."""
    for peer in peers:
        assert await peer.expect(wire.CircuitWindow)
        assert await peer.expect(wire.CircuitCredit)


@contextmanager
def udp_socket() -> Iterator[socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        yield sock


@asynccontextmanager
async def udp_circuit(
    server: RelayServer,
) -> AsyncIterator[tuple[socket.socket, socket.socket, Callable[[socket.socket], None]]]:
    """Alice and Bob paired with UDP, each on a socket of its own, Bob's address already
    known to the relay: (a's socket, b's socket, send(sock): one sealed datagram from it)."""
    async with client(server, ALICE) as alice, client(server, BOB) as bob:
        await pair(alice, bob, BOB)
        to_a, to_b = await circuit_udp(alice), await circuit_udp(bob)
        relay_at = ("127.0.0.1", to_a.port)
        with udp_socket() as sa, udp_socket() as sb:
            tokens = {sa: to_a.token, sb: to_b.token}

            def send(sock: socket.socket) -> None:
                sock.sendto(relay_datagram_prefix(tokens[sock]) + SEALED, relay_at)

            send(sb)
            await settle(server, 1)  # b's address learned; nothing to forward to yet
            yield sa, sb, send


async def receive(sock: socket.socket) -> bytes:
    with trio.fail_after(WAIT_S):
        await trio.lowlevel.wait_readable(sock)
    return sock.recv(65536)


async def settle(server: RelayServer, received: int) -> None:
    """Wait until the relay's UDP port has taken `received` packets in all."""
    with trio.fail_after(WAIT_S):
        while server.counters().udp.received < received:
            await trio.sleep(0.002)


def nothing_arrives(sock: socket.socket) -> bool:
    try:
        sock.recv(65536)
    except BlockingIOError:
        return True
    return False


async def test_a_circuit_of_two_udp_peers_forwards_datagrams_both_ways(
    nursery: trio.Nursery,
) -> None:
    server = await start_relay(nursery, config())
    assert server.udp_port == server.port
    async with client(server, ALICE) as alice, client(server, BOB) as bob:
        assert alice.transport.subprotocol == RELAY_CREDIT_UDP_SUBPROTOCOL
        cid = await pair(alice, bob, BOB)
        to_a, to_b = await circuit_udp(alice), await circuit_udp(bob)
        assert to_a.circuit_id == to_b.circuit_id == cid
        assert to_a.port == to_b.port == server.udp_port
        assert to_a.token != to_b.token and len(to_a.token) == 16
        relay_at = ("127.0.0.1", to_a.port)
        with udp_socket() as sa, udp_socket() as sb, udp_socket() as sb2:
            sa.sendto(relay_datagram_prefix(to_a.token) + SEALED, relay_at)
            await settle(server, 1)  # b has not sent yet: nowhere to forward to
            assert server.counters().udp.dropped["no_peer_address"] == 1
            sb.sendto(relay_datagram_prefix(to_b.token) + SEALED[::-1][:1] + SEALED, relay_at)
            await settle(server, 2)  # malformed (its sealed part is not type 7), not learned
            sb.sendto(relay_datagram_prefix(to_b.token) + SEALED, relay_at)
            assert await receive(sa) == SEALED  # the sealed datagram alone, no prefix
            sa.sendto(relay_datagram_prefix(to_a.token) + SEALED[:40], relay_at)
            assert await receive(sb) == SEALED[:40]
            # b's NAT rebinds: the next packet from a new port moves b's address there
            sb2.sendto(relay_datagram_prefix(to_b.token) + SEALED, relay_at)
            assert await receive(sa) == SEALED
            sa.sendto(relay_datagram_prefix(to_a.token) + SEALED, relay_at)
            assert await receive(sb2) == SEALED
            assert nothing_arrives(sb)
        counters = server.counters().udp
        assert counters.forwarded == 4 and counters.dropped["malformed"] == 1
        assert server.stats().udp_circuits == 1
        await exchange(alice, bob, cid, b"the circuit still carries frames")


async def test_spoofed_short_oversized_and_closed_tokens_are_dropped_and_counted(
    nursery: trio.Nursery,
) -> None:
    server = await start_relay(nursery, config(udp_max_packet_bytes=200))
    async with client(server, ALICE) as alice, client(server, BOB) as bob:
        cid = await pair(alice, bob, BOB)
        to_a, to_b = await circuit_udp(alice), await circuit_udp(bob)
        relay_at = ("127.0.0.1", to_a.port)
        with udp_socket() as sa, udp_socket() as sb, udp_socket() as attacker:
            sb.sendto(relay_datagram_prefix(to_b.token) + SEALED, relay_at)  # b is learned
            await settle(server, 1)
            spoofed = bytearray(to_a.token)
            spoofed[-1] ^= 1  # one bit off the real token
            attacker.sendto(relay_datagram_prefix(bytes(spoofed)) + SEALED, relay_at)
            attacker.sendto(relay_datagram_prefix(os.urandom(16)) + SEALED, relay_at)
            attacker.sendto(relay_datagram_prefix(to_a.token)[:10], relay_at)  # short
            attacker.sendto(relay_datagram_prefix(to_a.token) + SEALED * 4, relay_at)  # 273 B
            attacker.sendto(b"\x04" + to_a.token + SEALED, relay_at)  # not a relay datagram
            await settle(server, 6)
            dropped = server.counters().udp.dropped
            assert dropped["unknown_token"] == 2
            assert dropped["malformed"] == 2 and dropped["oversized"] == 1
            assert nothing_arrives(sb) and nothing_arrives(attacker)
            # closed: the tokens are freed, nothing is forwarded with them any more
            await alice.send(wire.CircuitClose(cid, wire.ErrorCode.NONE, "done"))
            assert (await bob.expect(wire.CircuitClose)).circuit_id == cid
            with trio.fail_after(WAIT_S):
                while server.stats().udp_circuits:
                    await trio.sleep(0.002)
            sa.sendto(relay_datagram_prefix(to_a.token) + SEALED, relay_at)
            sb.sendto(relay_datagram_prefix(to_b.token) + SEALED, relay_at)
            await settle(server, 8)
            assert server.counters().udp.dropped["unknown_token"] == 4
            assert nothing_arrives(sa) and nothing_arrives(sb)
            assert server.counters().udp.forwarded == 0
        metrics = {
            (s.name, tuple(s.labels.items())): s.value
            for family in RelayCollector(server).collect()
            for s in family.samples
        }
        assert metrics["meshcore_relay_udp_dropped_packets_total", (("reason", "oversized"),)] == 1
        assert metrics["meshcore_relay_udp_dropped_packets_total", (("reason", "rate"),)] == 0
        assert metrics["meshcore_relay_udp_received_packets_total", ()] == 8
        assert metrics["meshcore_relay_udp_circuits", ()] == 0


async def test_a_side_over_its_packet_rate_is_dropped_and_counted(nursery: trio.Nursery) -> None:
    server = await start_relay(nursery, config(udp_circuit_packets_per_s=100.0))
    async with udp_circuit(server) as (sa, _sb, send):
        for _ in range(50):  # a burst of 50 against 100/s (a bucket of 5)
            send(sa)
        await settle(server, 51)
        counters = server.counters().udp
        assert counters.dropped["rate"] >= 40
        assert counters.forwarded == 50 - counters.dropped["rate"]


async def test_a_circuit_with_a_peer_that_did_not_agree_to_udp_gets_no_token(
    nursery: trio.Nursery,
) -> None:
    server = await start_relay(nursery, config())
    async with (
        client(server, ALICE) as alice,
        client(server, BOB, offer=(RELAY_CREDIT_SUBPROTOCOL,)) as bob,
    ):
        assert bob.transport.subprotocol == RELAY_CREDIT_SUBPROTOCOL
        cid = await pair(alice, bob, BOB)
        await no_udp(alice, bob)
        await exchange(alice, bob, cid, b"frames go by WebSocket as before")
        await exchange(bob, alice, cid, b"both ways")
        assert server.stats().udp_circuits == 0


async def test_a_relay_without_udp_agrees_to_credits_only(nursery: trio.Nursery) -> None:
    server = await start_relay(nursery, config(udp=False))
    assert server.udp_port is None
    async with client(server, ALICE) as alice, client(server, BOB) as bob:
        assert alice.transport.subprotocol == RELAY_CREDIT_SUBPROTOCOL
        cid = await pair(alice, bob, BOB)
        await no_udp(alice, bob)
        await exchange(alice, bob, cid, b"no UDP here")
        assert server.stats().udp_circuits == 0


def _udp_port_with_free_tcp_twin() -> socket.socket:
    """A UDP socket on a loopback port whose TCP number is free too (the relay listens on
    it): an ephemeral port may be some outgoing TCP connection's local port."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                udp.close()
                continue
        return udp
    raise AssertionError("no loopback port free for both UDP and TCP in 50 tries")


async def test_a_relay_whose_udp_port_is_taken_runs_without_it(nursery: trio.Nursery) -> None:
    with _udp_port_with_free_tcp_twin() as taken:
        port = taken.getsockname()[1]
        cfg = config()
        server = await start_relay(
            nursery,
            RelayConfig(port=port, limits=cfg.limits, shutdown_grace_s=1.0, close_flush_s=0.5),
        )
        assert server.port == port and server.udp_port is None
        async with client(server, ALICE) as alice, client(server, BOB) as bob:
            cid = await pair(alice, bob, BOB)
            await no_udp(alice, bob)
            await exchange(alice, bob, cid, b"works without UDP")
            assert server.stats().udp_circuits == 0


async def test_a_traced_relay_marks_each_forwarded_datagram_by_its_sealed_bytes(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With MESHCORE_TRACE on, the relay's UDP thread marks `relay.read` and `relay.sent`
    keyed like the peers' `dgram.sent` and `dgram.read` (bench_trace joins them)."""
    server = await start_relay(nursery, config())
    async with udp_circuit(server) as (sa, sb, send):
        monkeypatch.setattr(_trace, "ENABLED", True)
        monkeypatch.setattr(_trace, "_marks", [])
        send(sa)
        assert await receive(sb) == SEALED
        with trio.fail_after(WAIT_S):  # marked in the relay's thread after its sendto
            while len(_trace._marks) < 2:
                await trio.sleep(0.002)
    (read_at, read, key_r, *_), (sent_at, sent, key_s, *_) = _trace._marks
    assert (read, sent) == ("relay.read", "relay.sent")
    assert key_r == key_s == _trace.key(SEALED)
    assert read_at <= sent_at
