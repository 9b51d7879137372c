"""Cancelling the threaded data path while traffic flows: the data threads end, their
connections are closed, and nothing is left running in the background."""

from __future__ import annotations

import threading

import attrs
import trio
from test_direct import PATHS
from test_threadlink import Collector, threaded_pair, wait_threaded_direct
from test_tunnel import BROADCAST, IDS, MAC, FakeDevice, frame

from meshcore._relay import RelayConfig, RelayServer, serve_relay
from meshcore._threadlink import ThreadedLink
from meshcore._tunnel import FramePump, TunnelConfig, run_tunnel


def alive(*names: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name in names]


async def test_cancelling_sessions_on_threaded_links_mid_stream_ends_their_threads() -> None:
    links: list[ThreadedLink] = []
    with trio.fail_after(60):
        with trio.CancelScope() as scope:
            async with threaded_pair() as (a, b, _, io_b):
                await wait_threaded_direct(a, b)
                for side in (a, b):
                    assert isinstance(side.migrator.direct_link, ThreadedLink)
                    links.append(side.migrator.direct_link)
                got = Collector(io_b)
                got.expected = 200
                b.session.attach_receiver(got.deliver, got.window_open)
                assert alive("test-a", "test-b") == ["test-a", "test-b"]

                async def flood() -> None:
                    while True:  # until cancelled: the window fills, the thread drains it
                        await a.session.send(bytes(8192))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(flood)
                    assert await trio.to_thread.run_sync(got.arrived.wait, 30.0)
                    scope.cancel()  # while messages are in flight
        assert scope.cancelled_caught
    assert alive("test-a", "test-b") == []
    assert all(link.sock.fileno() == -1 for link in links)


async def test_cancelling_a_tunnel_with_a_direct_path_ends_its_data_thread() -> None:
    devices = [FakeDevice(), FakeDevice()]
    fast = attrs.evolve(PATHS, retry_s=0.05, retry_max_s=0.1, stable_s=0.01)
    try:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                relay: RelayServer = await nursery.start(serve_relay, RelayConfig(port=0))
                pumps: list[FramePump] = []
                for i in range(2):
                    config = TunnelConfig(
                        relay.url, IDS[i], (IDS[1 - i].peer_id,), path_settings=fast
                    )
                    pumps.append(await nursery.start(run_tunnel, devices[i].fd, 10, config))
                for i in range(2):
                    await pumps[i].wait_linked([IDS[1 - i].peer_id])
                assert len(alive("meshcore-data")) == 2
                for n in range(50):  # frames cross; the last ones are in flight at the cancel
                    devices[0].inject(frame(BROADCAST, MAC[0], size=1400, fill=n % 256))
                    if n == 0:
                        assert (await devices[1].read())[-1] == 0
                nursery.cancel_scope.cancel()
        assert alive("meshcore-data") == []
        for dev in devices:  # the devices are the caller's: still open
            assert dev.inner.fileno() != -1
    finally:
        for dev in devices:
            dev.close()
