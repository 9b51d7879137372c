"""The tunnel runtime: the frame pump between a device and peers' sessions (in process, with
a SOCK_SEQPACKET pair standing in for the TAP), several runtimes through a real relay, and
real TAP meshes of two and three peers in network namespaces (ping, ARP, GSO segments)."""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from tapmesh import Mesh, needs_tap

from meshcore import Identity
from meshcore._relay import RelayConfig, RelayServer, serve_relay
from meshcore._tunnel import FramePump, TunnelConfig, run_tunnel
from meshcore.proto.paths import DirectMode, PathSettings
from meshcore.proto.session import SessionSettings
from meshcore.proto.switch import FrameAssembler, FramePacker
from meshcore_peer.up import tap_mac

HDR = bytes(10)
BROADCAST = b"\xff" * 6
MAC = [bytes([2, 0, 0, 0, 0, i]) for i in range(1, 8)]
IDS = [Identity.generate() for _ in range(3)]
P, Q, R = (i.peer_id for i in IDS)
RELAY_ONLY = PathSettings(mode=DirectMode.NEVER)


def frame(dst: bytes, src: bytes, size: int = 60, fill: int = 0) -> bytes:
    """A frame as the device gives it: virtio-net header, Ethernet header, payload."""
    return HDR + dst + src + b"\x08\x00" + bytes([fill]) * (size - 14)


class MemoryChannel(trio.abc.Channel[bytes]):
    """One end of an in-memory duplex channel (stands in for a Session)."""

    def __init__(
        self, send: trio.MemorySendChannel[bytes], receive: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        self._send, self._receive = send, receive

    async def send(self, value: bytes) -> None:
        await self._send.send(value)

    async def receive(self) -> bytes:
        return await self._receive.receive()

    def receive_nowait(self) -> bytes:
        return self._receive.receive_nowait()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def channel_pair(buffer: float = 1000) -> tuple[MemoryChannel, MemoryChannel]:
    a_send, b_receive = trio.open_memory_channel[bytes](buffer)
    b_send, a_receive = trio.open_memory_channel[bytes](buffer)
    return MemoryChannel(a_send, a_receive), MemoryChannel(b_send, b_receive)


class FakeDevice:
    """A SOCK_SEQPACKET pair: the pump gets a non-blocking fd that keeps frame boundaries
    like a TAP device; the test writes and reads frames at the other end."""

    def __init__(self) -> None:
        self.inner, self.outer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for sock in (self.inner, self.outer):
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.fd = self.inner.fileno()

    def inject(self, data: bytes) -> None:
        """Hand the pump a frame, as if the kernel sent it (no checkpoint)."""
        self.outer.send(data)

    async def read(self) -> bytes:
        """The next frame the pump wrote into the device."""
        while True:
            try:
                return self.outer.recv(1 << 20)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.outer)

    def close(self) -> None:
        self.inner.close()
        self.outer.close()


@pytest.fixture
def device() -> Iterator[FakeDevice]:
    dev = FakeDevice()
    try:
        yield dev
    finally:
        dev.close()


def frames_in(message: bytes) -> list[bytes]:
    return [bytes(f) for f in FrameAssembler().decode_untrusted(message)]


def message_of(*frames: bytes) -> bytes:
    packer = FramePacker()
    for item in frames:
        packer.add(item)
    out = packer.take()
    assert out is not None and packer.take() is None
    return out


# --- the pump, in process --------------------------------------------------------------------


async def test_frames_read_in_one_wakeup_travel_in_one_message(device: FakeDevice) -> None:
    pump = FramePump(device.fd, 10, [P], lone_gap_s=math.inf)  # read as a busy device is
    near, far = channel_pair()
    sent = [frame(BROADCAST, MAC[0], fill=i) for i in range(5)]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run_device_reader)
            nursery.start_soon(pump.run_link, P, near)
            await pump.wait_linked([P])
            for item in sent:
                device.inject(item)
            message = await far.receive()
            nursery.cancel_scope.cancel()
    assert frames_in(message) == sent
    assert pump.stats[P].messages_out == 1
    assert pump.stats[P].frames_out == 5


async def test_frames_queued_behind_a_lone_frame_are_all_read_in_order(
    device: FakeDevice,
) -> None:
    pump = FramePump(device.fd, 10, [P], lone_gap_s=0.0)  # every wakeup reads one frame
    near, far = channel_pair()
    sent = [frame(BROADCAST, MAC[0], fill=i) for i in range(5)]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run_device_reader)
            nursery.start_soon(pump.run_link, P, near)
            await pump.wait_linked([P])
            for item in sent:
                device.inject(item)
            received: list[bytes] = []
            while len(received) < len(sent):  # none is left behind in the device
                received += frames_in(await far.receive())
            nursery.cancel_scope.cancel()
    assert received == sent
    assert pump.frames_read == pump.stats[P].frames_out == 5


async def test_broadcast_reaches_every_linked_peer_and_unicast_only_its_own(
    device: FakeDevice,
) -> None:
    pump = FramePump(device.fd, 10, [P, Q])
    p_near, p_far = channel_pair()
    q_near, q_far = channel_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run_device_reader)
            nursery.start_soon(pump.run_link, P, p_near)
            nursery.start_soon(pump.run_link, Q, q_near)
            await pump.wait_linked([P, Q])
            arp = frame(BROADCAST, MAC[0])
            device.inject(arp)
            assert frames_in(await p_far.receive()) == [arp]
            assert frames_in(await q_far.receive()) == [arp]
            # Q answers from MAC[2]: the switch learns it is behind Q
            reply = frame(MAC[0], MAC[2])
            await q_far.send(message_of(reply))
            assert await device.read() == reply
            unicast = frame(MAC[2], MAC[0], fill=9)
            device.inject(unicast)
            assert frames_in(await q_far.receive()) == [unicast]
            with pytest.raises(trio.WouldBlock):
                p_far.receive_nowait()
            nursery.cancel_scope.cancel()


async def test_frames_from_a_peer_go_to_the_device_and_never_to_other_peers(
    device: FakeDevice,
) -> None:
    pump = FramePump(device.fd, 10, [P, Q])
    p_near, p_far = channel_pair()
    q_near, q_far = channel_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run_device_reader)
            nursery.start_soon(pump.run_link, P, p_near)
            nursery.start_soon(pump.run_link, Q, q_near)
            await pump.wait_linked([P, Q])
            flood = frame(BROADCAST, MAC[1])
            await p_far.send(message_of(flood, flood))
            assert await device.read() == flood
            assert await device.read() == flood
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(trio.WouldBlock):
                q_far.receive_nowait()
            nursery.cancel_scope.cancel()
    assert pump.stats[P].frames_in == 2


async def test_frames_for_a_peer_without_session_are_dropped_and_counted(
    device: FakeDevice,
) -> None:
    pump = FramePump(device.fd, 10, [P, Q])
    near, far = channel_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run_device_reader)
            nursery.start_soon(pump.run_link, P, near)
            await pump.wait_linked([P])
            device.inject(frame(BROADCAST, MAC[0]))
            await far.receive()
            nursery.cancel_scope.cancel()
    assert pump.dropped_no_session == 1


async def test_a_stalled_peer_loses_frames_without_stalling_the_others(
    device: FakeDevice,
) -> None:
    pump = FramePump(device.fd, 10, [P, Q], queue_bytes=20_000)
    p_near, _p_far = channel_pair(buffer=0)  # nobody reads P's side: its send blocks
    q_near, q_far = channel_pair()
    got = 0
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run_device_reader)
            nursery.start_soon(pump.run_link, P, p_near)
            nursery.start_soon(pump.run_link, Q, q_near)
            await pump.wait_linked([P, Q])
            for i in range(100):
                device.inject(frame(BROADCAST, MAC[0], size=1000, fill=i))
                if i % 10 == 9:
                    while got < i + 1:
                        got += len(frames_in(await q_far.receive()))
            nursery.cancel_scope.cancel()
    assert got == 100
    assert pump.stats[Q].dropped_queue_full == 0
    assert pump.stats[P].dropped_queue_full > 0


async def test_a_newer_session_replaces_the_older_for_the_same_peer(device: FakeDevice) -> None:
    pump = FramePump(device.fd, 10, [P])
    old_near, _old_far = channel_pair()
    new_near, new_far = channel_pair()
    reasons: list[str] = []

    async def link(channel: MemoryChannel) -> None:
        reasons.append(await pump.run_link(P, channel))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run_device_reader)
            nursery.start_soon(link, old_near)
            await pump.wait_linked([P])
            nursery.start_soon(link, new_near)
            while not reasons:
                await trio.sleep(0)
            device.inject(frame(BROADCAST, MAC[0]))
            assert len(frames_in(await new_far.receive())) == 1
            nursery.cancel_scope.cancel()
    assert reasons[0] == "replaced by a newer session"
    assert pump.stats[P].sessions == 2


async def test_link_ends_when_the_peer_closes_and_its_addresses_are_forgotten(
    device: FakeDevice,
) -> None:
    pump = FramePump(device.fd, 10, [P])
    near, far = channel_pair()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run_device_reader)
            await far.send(message_of(frame(BROADCAST, MAC[3])))
            await far.aclose()
            reason = await pump.run_link(P, near)
            nursery.cancel_scope.cancel()
    assert reason == "closed by the peer"
    assert pump.linked == frozenset()
    assert pump.switch.lookup(MAC[3], trio.current_time()) is None


async def test_a_malformed_message_is_counted_and_the_link_stays_up(device: FakeDevice) -> None:
    pump = FramePump(device.fd, 10, [P])
    near, far = channel_pair()
    good = frame(BROADCAST, MAC[1])
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run_device_reader)
            nursery.start_soon(pump.run_link, P, near)
            await far.send(b"\x00\x00\x00\x09abc")
            await far.send(message_of(good))
            assert await device.read() == good
            nursery.cancel_scope.cancel()
    assert pump.stats[P].bad_messages == 1


async def test_frames_too_short_or_from_group_addresses_are_not_written(
    device: FakeDevice,
) -> None:
    pump = FramePump(device.fd, 10, [P])
    near, far = channel_pair()
    good = frame(BROADCAST, MAC[1])
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump.run_device_reader)
            nursery.start_soon(pump.run_link, P, near)
            await far.send(message_of(HDR + b"short", frame(MAC[0], BROADCAST), good))
            assert await device.read() == good
            nursery.cancel_scope.cancel()
    assert pump.stats[P].dropped_invalid == 2


async def test_a_frame_larger_than_a_message_crosses_split_and_whole() -> None:
    a_dev, b_dev = FakeDevice(), FakeDevice()
    try:
        a_pump = FramePump(a_dev.fd, 10, [Q])
        b_pump = FramePump(b_dev.fd, 10, [P])
        a_end, b_end = channel_pair()
        big = frame(BROADCAST, MAC[0], size=150_000, fill=7)
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                for pump, peer, end in ((a_pump, Q, a_end), (b_pump, P, b_end)):
                    nursery.start_soon(pump.run_device_reader)
                    nursery.start_soon(pump.run_link, peer, end)
                a_dev.inject(big)
                assert await b_dev.read() == big
                nursery.cancel_scope.cancel()
        assert a_pump.stats[Q].messages_out == 3
    finally:
        a_dev.close()
        b_dev.close()


async def test_link_for_an_unconfigured_peer_is_refused(device: FakeDevice) -> None:
    pump = FramePump(device.fd, 10, [P])
    near, _far = channel_pair()
    with pytest.raises(ValueError, match="not one of this tunnel's peers"):
        await pump.run_link(Q, near)


def test_tunnel_config_refuses_our_own_id_among_the_peers() -> None:
    with pytest.raises(ValueError, match="own id"):
        TunnelConfig("ws://127.0.0.1:1/", IDS[0], (P, Q))


def test_lower_id_dials_and_higher_id_answers() -> None:
    ordered = sorted(IDS, key=lambda i: i.peer_id.digest)
    low, mid, high = ordered
    config = TunnelConfig("ws://x/", mid, (low.peer_id, high.peer_id))
    assert config.dials == (high.peer_id,)
    assert config.answers == (low.peer_id,)


# --- runtimes through a real relay (in process) ----------------------------------------------


async def test_three_runtimes_link_pairwise_through_one_relay_and_reconnect() -> None:
    devices = [FakeDevice() for _ in IDS]
    peers = [tuple(j.peer_id for j in IDS if j is not i) for i in IDS]
    # the peer with the highest id answers both others: when it goes, they must notice (the
    # session's dead timer, short here) and dial it again when it is back
    last = max(range(3), key=lambda i: IDS[i].peer_id.digest)
    others = [i for i in range(3) if i != last]
    quick = SessionSettings(keepalive_s=0.3, dead_after_s=1.5)
    try:
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                relay: RelayServer = await nursery.start(serve_relay, RelayConfig(port=0))
                scopes: dict[int, trio.CancelScope] = {}
                pumps: dict[int, FramePump] = {}

                async def start(i: int) -> None:
                    scope = scopes[i] = trio.CancelScope()

                    async def runner(task_status: trio.TaskStatus[FramePump]) -> None:
                        with scope:
                            # relay only: this is about pairing and reconnection (the
                            # direct path's own tests live with it)
                            config = TunnelConfig(
                                relay.url, IDS[i], peers[i], quick, path_settings=RELAY_ONLY
                            )
                            await run_tunnel(devices[i].fd, 10, config, task_status=task_status)

                    pumps[i] = await nursery.start(runner)

                for i in range(3):
                    await start(i)
                for i in range(3):
                    await pumps[i].wait_linked(peers[i])
                assert relay.stats().circuits == 3  # one session per pair, not two

                arp = frame(BROADCAST, MAC[0])
                devices[others[0]].inject(arp)
                assert await devices[others[1]].read() == arp
                assert await devices[last].read() == arp

                scopes[last].cancel()  # the answering peer goes away ...
                gone = IDS[last].peer_id
                for i in others:
                    await pumps[i].wait_unlinked([gone])
                await start(last)  # ... and comes back: both others dial it again
                for i in range(3):
                    await pumps[i].wait_linked(peers[i])
                devices[others[1]].inject(frame(BROADCAST, MAC[1], fill=5))
                assert (await devices[last].read())[-1] == 5
                assert all(pumps[i].stats[gone].sessions == 2 for i in others)
                nursery.cancel_scope.cancel()
    finally:
        for dev in devices:
            dev.close()


# --- real TAP meshes in network namespaces (tapmesh.py) -------------------------------------


@pytest.fixture(scope="module")
def mesh2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Two peers running `meshcore-peer up`, both sessions up."""
    with Mesh(2, tmp_path_factory.mktemp("mesh2")) as mesh:
        mesh.start_all()
        yield mesh


@needs_tap
def test_two_peers_ping_each_other_and_resolve_arp(mesh2: Mesh) -> None:
    result = mesh2.ping(0, 1)
    assert result.returncode == 0, result.stdout + result.stderr
    neigh = json.loads(mesh2.run(0, "ip", "-j", "neigh", "show", "dev", "mesh0").stdout)
    macs = {n["dst"]: n.get("lladdr") for n in neigh}
    assert macs[mesh2.address(1)] == tap_mac(mesh2.ids[1]).hex(":")


@needs_tap
def test_three_peers_share_one_segment(tmp_path: Path) -> None:
    with Mesh(3, tmp_path) as mesh:
        mesh.start_all()
        for i in range(3):
            for j in range(3):
                if i != j:
                    result = mesh.ping(i, j, count=1)
                    assert result.returncode == 0, f"{i}->{j}: {result.stdout}{result.stderr}"
        # every peer learned both others' MACs behind mesh0
        for i in range(3):
            neigh = json.loads(mesh.run(i, "ip", "-j", "neigh", "show", "dev", "mesh0").stdout)
            assert {n["dst"] for n in neigh if n.get("lladdr")} == {
                mesh.address(j) for j in range(3) if j != i
            }


_SINK = """
import socket, sys
server = socket.create_server((sys.argv[1], 5201))
print("ready", flush=True)
conn, _ = server.accept()
total = 0
while chunk := conn.recv(1 << 20):
    total += len(chunk)
print(total, flush=True)
"""
_SOURCE = """
import socket, sys
sock = socket.create_connection((sys.argv[1], 5201))
sock.sendall(bytes(int(sys.argv[2])))
sock.shutdown(socket.SHUT_WR)
sock.recv(1)
"""


@needs_tap
def test_tcp_crosses_the_tunnel_as_large_gso_segments(mesh2: Mesh) -> None:
    size = 16 << 20
    sink = subprocess.Popen(
        ["ip", "netns", "exec", mesh2.ns(0), sys.executable, "-c", _SINK, mesh2.address(0)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None
        assert sink.stdout.readline().strip() == "ready"
        before = mesh2.link_stats(1)["tx"]
        source = mesh2.run(1, sys.executable, "-c", _SOURCE, mesh2.address(0), str(size))
        assert source.returncode == 0, source.stderr
        received = int(sink.stdout.readline())
    finally:
        sink.kill()
        sink.wait()
    after = mesh2.link_stats(1)["tx"]
    packets = after["packets"] - before["packets"]
    sent = after["bytes"] - before["bytes"]
    assert received == size
    assert sent > size
    # the device handed over segments far larger than the 1400-byte MTU
    assert sent / packets > 4 * 1400, (sent, packets)
