"""A session's datagram path on loopback (docs/datagram.md): probes find the direct peer's UDP
port, datagrams go by UDP while it answers, and nothing else is affected when it does not."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import attrs
import trio
from test_direct import PATHS, Side, pair, running_relay

from meshcore._datagramport import DatagramPort, open_datagram_port
from meshcore._iothread import open_io_thread
from meshcore._relay import RelayConfig
from meshcore.proto.datagram import DatagramSettings
from meshcore.proto.framing import DATAGRAM_TYPE
from meshcore.proto.paths import DirectMode

QUICK = DatagramSettings(probe_s=0.05, keepalive_s=0.1, trust_s=0.5)


async def wait_state(side: Side, state: str) -> None:
    while side.session.datagram_state != state:
        await trio.sleep(0.005)


@asynccontextmanager
async def ports(*sides: Side, threaded: bool = False) -> AsyncIterator[list[DatagramPort]]:
    """A datagram port on each side's shared local port, the side's session using it."""
    async with AsyncExitStack() as stack:
        opened = []
        for side in sides:
            io = await stack.enter_async_context(open_io_thread()) if threaded else None
            port = side.client.local_port
            assert port is not None
            dport = await stack.enter_async_context(open_datagram_port(port, io=io))
            side.session.use_datagram_port(dport, QUICK)
            opened.append(dport)
        yield opened


async def test_datagrams_go_by_udp_once_both_sides_answer_probes() -> None:
    got: list[bytes] = []
    with trio.fail_after(20):
        async with running_relay() as relay, pair(relay) as (a, b):
            with trio.fail_after(3):
                while a.session.path != "direct" or b.session.path != "direct":
                    await trio.sleep(0.005)
            b.session.attach_datagram_receiver(got.append)
            async with ports(a, b, threaded=True) as (pa, pb):
                with trio.fail_after(3):
                    await wait_state(a, "up")
                    await wait_state(b, "up")
                assert a.session.datagram_limit == 1500 - 20 - 8 - 32
                sent = [i.to_bytes(4, "big") * 100 for i in range(200)]
                for payload in sent:
                    assert a.session.send_datagram(payload)
                    await trio.sleep(0)
                with trio.fail_after(3):
                    while len(got) < len(sent):
                        await trio.sleep(0.005)
                assert sorted(got) == sorted(sent)  # each once (loopback loses nothing)
                assert a.session.datagram_stats.sent == 200
                assert b.session.datagram_stats.received == 200
                assert pb.stats.received >= 200 and pa.stats.sent >= 200
                # the reliable session is unaffected and still in order
                await a.session.send(b"reliable")
                assert await b.session.receive() == b"reliable"


async def test_a_datagram_too_large_for_the_path_is_refused_not_fragmented() -> None:
    with trio.fail_after(20):
        async with running_relay() as relay, pair(relay) as (a, b), ports(a, b):
            with trio.fail_after(5):
                await wait_state(a, "up")
            limit = a.session.datagram_limit
            assert not a.session.send_datagram(bytes(limit + 1))
            assert a.session.send_datagram(bytes(limit))


async def test_replayed_forged_and_stray_datagrams_are_dropped_and_harm_nothing() -> None:
    got: list[bytes] = []
    with trio.fail_after(20):
        async with running_relay() as relay, pair(relay) as (a, b):
            b.session.attach_datagram_receiver(got.append)
            async with ports(a, b) as (pa, pb):
                with trio.fail_after(5):
                    await wait_state(a, "up")
                # capture one genuine datagram on its way: a sends to a sniffer socket
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sniffer:
                    sniffer.bind(("127.0.0.1", 0))
                    to = a.session._dto  # the address b's datagrams go to
                    a.session._dto = pa.address_for(*sniffer.getsockname())
                    assert a.session.send_datagram(b"once")
                    a.session._dto = to
                    sniffer.settimeout(2)
                    genuine, _ = sniffer.recvfrom(2048)
                    assert genuine[0] == DATAGRAM_TYPE
                    target = ("127.0.0.1", pb.port)
                    for data in (
                        genuine,
                        genuine,  # a replay
                        genuine[:-1] + bytes([genuine[-1] ^ 1]),  # a forgery
                        b"\x07" + bytes(10),  # too short
                        b"\x04" + bytes(60),  # a transport frame, not a datagram
                        bytes([7, 0, 0, 0]) + bytes(60),  # nobody's receiver index
                    ):
                        sniffer.sendto(data, target)
                    with trio.fail_after(3):
                        while pb.stats.received < 6:
                            await trio.sleep(0.005)
                assert got == [b"once"]
                assert pb.stats.dropped_unroutable == 3
                assert b.session.datagram_stats.dropped == 2
                assert a.session.send_datagram(b"after")
                with trio.fail_after(3):
                    while len(got) < 2:
                        await trio.sleep(0.005)
                assert got == [b"once", b"after"]


async def test_on_a_relay_without_udp_there_is_no_datagram_path() -> None:
    relay_only = attrs.evolve(PATHS, mode=DirectMode.NEVER)
    with trio.fail_after(20):
        async with (
            running_relay(RelayConfig(port=0, udp=False)) as relay,
            pair(relay, paths=relay_only) as (a, b),
            ports(a, b) as (pa, pb),
        ):
            await trio.sleep(0.2)  # several probe intervals: nothing may start
            assert a.session.datagram_state == b.session.datagram_state == "off"
            assert a.session.datagram_limit == 0
            assert not a.session.send_datagram(b"x")
            assert pa.stats.sent == pb.stats.sent == 0  # not even a probe


async def test_a_peer_without_udp_is_probed_and_used_once_it_answers_then_dropped() -> None:
    with trio.fail_after(20):
        async with running_relay() as relay, pair(relay) as (a, b), ports(a):
            with trio.fail_after(3):
                await wait_state(a, "probing")
            await trio.sleep(0.3)  # probes go unanswered: b has no UDP port
            assert a.session.datagram_state == "probing"
            assert not a.session.send_datagram(b"x")
            async with ports(b):
                with trio.fail_after(3):
                    await wait_state(a, "up")
                assert a.session.send_datagram(b"x")
            # b's port closed: within the trust time a stops using the path
            with trio.fail_after(3):
                await wait_state(a, "probing")
            assert not a.session.send_datagram(b"x")
            await a.session.send(b"still fine")
            assert await b.session.receive() == b"still fine"


async def test_on_a_relay_with_udp_datagrams_cross_its_udp_port() -> None:
    relay_only = attrs.evolve(PATHS, mode=DirectMode.NEVER)
    got: list[bytes] = []
    with trio.fail_after(20):
        async with running_relay() as relay, pair(relay, paths=relay_only) as (a, b):
            b.session.attach_datagram_receiver(got.append)
            async with ports(a, b, threaded=True):
                with trio.fail_after(3):
                    await wait_state(a, "up")
                    await wait_state(b, "up")
                assert a.session.path == b.session.path == "relay"
                assert a.session.datagram_limit == 1500 - 20 - 8 - 32 - 17  # the token prefix
                assert not a.session.send_datagram(bytes(a.session.datagram_limit + 1))
                sent = [i.to_bytes(4, "big") * 100 for i in range(100)]
                for payload in sent:
                    assert a.session.send_datagram(payload)
                    await trio.sleep(0)
                with trio.fail_after(3):
                    while len(got) < len(sent):
                        await trio.sleep(0.005)
                assert sorted(got) == sorted(sent)
                udp = relay.counters().udp
                assert udp.forwarded >= 100 + 2  # the datagrams, and probes and replies
                assert relay.stats().udp_circuits == 1
                await a.session.send(b"reliable")
                assert await b.session.receive() == b"reliable"
            # b's port closed: a stops using the relay's UDP within the trust time
            with trio.fail_after(3):
                await wait_state(a, "probing")
            assert not a.session.send_datagram(b"x")
