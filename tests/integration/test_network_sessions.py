"""Sessions across several relays over loopback: a relayed session keeps a spare circuit on
another relay and moves there with nothing lost, duplicated or reordered when the relay
carrying it stops or goes silent (a proxy that stops forwarding, no RST); a direct session
does not notice every relay going away; `connect`/`serve` take the list."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

# the in-process relays live with the network tests
from relayharness import Relay, relays, wait_until

from meshcore import Identity, PathSettings, RelayEntry, Session, connect, rendezvous_relays, serve
from meshcore.errors import RelayError

RELAYED = PathSettings(mode="never", trust_s=1.0, dead_s=2.5, relay_probe_s=0.3)
DIRECT = PathSettings(mode="auto", trust_s=2.0, dead_s=5.0)


class Proxy:
    """A TCP forwarder in front of a relay that can go silent: `blackhole()` stops moving
    bytes either way without closing anything (what a drop rule does)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.silent = False
        self._resume = trio.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def blackhole(self) -> None:
        self.silent = True

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, downstream: trio.SocketStream) -> None:
        try:
            upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        except OSError:
            return
        async with downstream, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, downstream, upstream, nursery.cancel_scope)
            nursery.start_soon(self._pump, upstream, downstream, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while True:
                data = await source.receive_some(65536)
                if not data:
                    break
                if self.silent:
                    continue  # swallowed: the connection stays open and says nothing
                await sink.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


class Counter:
    """Sends numbered messages and checks those it receives: none lost, duplicated or
    reordered."""

    def __init__(self) -> None:
        self.sent = 0
        self.received = 0

    async def send_forever(self, session: Session, pause_s: float = 0.002) -> None:
        while True:
            await session.send(self.sent.to_bytes(4, "big") + bytes(100))
            self.sent += 1
            await trio.sleep(pause_s)

    async def receive_forever(self, session: Session) -> None:
        while True:
            data = await session.receive()
            number = int.from_bytes(data[:4], "big")
            assert number == self.received, f"expected {self.received}, got {number}"
            self.received += 1


@asynccontextmanager
async def relayed_pair(
    entries: list[RelayEntry], paths: PathSettings = RELAYED
) -> AsyncIterator[tuple[Session, list[Session]]]:
    """A session from alice to bob through the relay network: (alice's session, [bob's])."""
    alice, bob = Identity.generate(), Identity.generate()
    answered: list[Session] = []
    done = trio.Event()

    async def handler(session: Session) -> None:
        answered.append(session)
        await done.wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(
            functools.partial(
                serve,
                entries,
                bob,
                [alice.peer_id],
                handler,
                direct=paths.mode,
                path_settings=paths,
            )
        )
        async with connect(
            entries, alice, bob.peer_id, direct=paths.mode, path_settings=paths
        ) as session:
            await wait_until(lambda: bool(answered))
            yield session, answered
            done.set()
        nursery.cancel_scope.cancel()


def relay_at(rs: list[Relay], url: str | None) -> Relay:
    return next(r for r in rs if r.url == url)


async def until(condition: Callable[[], bool], timeout: float) -> None:
    with trio.fail_after(timeout):
        await wait_until(condition)


async def test_a_relayed_session_moves_to_its_spare_when_its_relay_stops() -> None:
    with trio.fail_after(40):
        async with relays(3) as rs, relayed_pair([r.entry for r in rs]) as (a, answered):
            b = answered[0]
            await until(lambda: a.path_stats.relay_circuits == 2, 10)
            carrying = relay_at(rs, a.status().relay)
            there = carrying.url
            up, down = Counter(), Counter()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(up.send_forever, a)
                nursery.start_soon(up.receive_forever, b)
                nursery.start_soon(down.send_forever, b)
                nursery.start_soon(down.receive_forever, a)
                await until(lambda: up.received > 200 and down.received > 200, 10)
                before = (up.received, down.received)
                stopped = trio.current_time()
                await carrying.stop()
                await until(lambda: a.status().relay not in (None, there), 5)
                await until(lambda: up.received > before[0] + 200, 5)
                await until(lambda: down.received > before[1] + 200, 5)
                moved_in = trio.current_time() - stopped
                nursery.cancel_scope.cancel()
            assert a.status().relay_moves >= 1 and b.status().relay_moves >= 1
            assert a.counters().relay_moves == a.status().relay_moves  # what metrics export
            assert b.status().relay != there
            assert moved_in < 5


async def test_a_silent_relay_is_left_for_the_spare_within_the_trust_time() -> None:
    with trio.fail_after(40):
        async with relays(3) as rs, trio.open_nursery() as nursery:
            proxies = [Proxy(r.port) for r in rs]
            for proxy in proxies:
                await nursery.start(proxy.serve)
            entries = [
                RelayEntry(p.url, r.identity.peer_id) for p, r in zip(proxies, rs, strict=True)
            ]
            async with relayed_pair(entries) as (a, answered):
                b = answered[0]
                await until(lambda: a.path_stats.relay_circuits == 2, 10)
                carrying = a.status().relay
                proxy = next(p for p in proxies if p.url == carrying)
                up = Counter()
                async with trio.open_nursery() as inner:
                    inner.start_soon(up.send_forever, a)
                    inner.start_soon(up.receive_forever, b)
                    await until(lambda: up.received > 100, 10)
                    proxy.blackhole()
                    silenced = trio.current_time()
                    await until(lambda: a.status().relay not in (None, carrying), 10)
                    noticed = trio.current_time() - silenced
                    count = up.received
                    await until(lambda: up.received > count + 100, 5)
                    inner.cancel_scope.cancel()
                # trust_s (1 s) plus a probe or two; never the relay connection's own timeout
                assert noticed < 3.5
            nursery.cancel_scope.cancel()


async def test_a_direct_session_carries_on_when_every_relay_stops() -> None:
    with trio.fail_after(40):
        async with relays(3) as rs, relayed_pair([r.entry for r in rs], DIRECT) as (a, answered):
            b = answered[0]
            await until(lambda: a.path == "direct" and b.path == "direct", 10)
            await until(lambda: a.path_stats.relay_circuits == 0, 15)  # released
            for relay in rs:
                await relay.stop()
            for i in range(50):
                await a.send(i.to_bytes(2, "big"))
                assert int.from_bytes(await b.receive(), "big") == i
            assert a.path == "direct" and a.status().relay is None


async def test_with_every_relay_down_a_new_session_fails_at_once_naming_each_tried() -> None:
    with trio.fail_after(40):
        async with relays(3) as rs:
            entries = [r.entry for r in rs]
            me, bob = Identity.generate(), Identity.generate()
            async with trio.open_nursery() as nursery:
                await nursery.start(
                    functools.partial(serve, entries, bob, [me.peer_id], _idle, direct="never")
                )
                async with connect(entries, me, bob.peer_id, direct="never"):
                    pass  # the network works
                nursery.cancel_scope.cancel()
            for relay in rs:
                await relay.stop()
            started = trio.current_time()
            with pytest.raises(RelayError) as info:
                async with connect(entries, me, bob.peer_id, direct="never"):
                    pass
            assert trio.current_time() - started < 2.0
            for entry in rendezvous_relays(bob.peer_id, entries, 2):
                assert f"{entry.label()}: " in str(info.value)


async def _idle(session: Session) -> None:
    await trio.sleep_forever()
