"""Direct paths on loopback through a real in-process relay: the race (shared port, staggered
dials, validation under the session keys, nomination), blackholed and failing candidates,
releasing the relay circuit, routing of accepted connections, pings, status and log lines."""

from __future__ import annotations

import functools
import itertools
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, closing

import attrs
import pytest
import trio
from freeports import free_port_outside_ephemeral_range

from meshcore import Identity, Session, connect, serve
from meshcore._client import Pairing, RelayClient, open_relay_client
from meshcore._direct import MAX_UNROUTED, FramedTransport, local_candidates
from meshcore._iothread import IoThread
from meshcore._migrator import Migrator, open_migrator
from meshcore._relay import RelayConfig, RelayServer, serve_relay
from meshcore._session import handshake_as_initiator, handshake_as_responder, open_session
from meshcore.errors import SessionClosed
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.handshake import Responder
from meshcore.proto.paths import DirectMode, PathSettings
from meshcore.proto.session import SessionSettings

ALICE = Identity.generate()
BOB = Identity.generate()
SESSION = SessionSettings(retransmit_timeout_s=0.2)
PATHS = PathSettings(race_deadline_s=2.0, retry_s=0.3, retry_max_s=0.6)


@attrs.define
class Side:
    client: RelayClient
    pairing: Pairing
    session: Session
    migrator: Migrator


@asynccontextmanager
async def blackhole() -> AsyncIterator[Endpoint]:
    """A listener on 127.0.0.127 whose accept queue is full: SYNs to it are dropped."""
    with closing(socket.socket()) as listener:
        listener.bind(("127.0.0.127", 0))
        listener.listen(0)
        host, port = listener.getsockname()
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex((host, port))
            await trio.sleep(0.05)  # let the kernel finish the fillers' handshakes
            yield Endpoint(host, port)
        finally:
            for filler in fillers:
                filler.close()


def free_port() -> int:
    return free_port_outside_ephemeral_range()


@asynccontextmanager
async def pair(
    relay: RelayServer,
    *,
    paths: PathSettings = PATHS,
    paths_b: PathSettings | None = None,
    dial_a: tuple[Endpoint, ...] | None = None,
    dial_b: tuple[Endpoint, ...] | None = None,
    port_b: int | None = None,
    delay_b: float = 0.0,
    settings: SessionSettings = SESSION,
    io: tuple[IoThread, IoThread] | None = None,
) -> AsyncIterator[tuple[Side, Side]]:
    """A session between ALICE (a) and BOB (b) through `relay`, each side with a migrator.

    `dial_a` replaces what a learns of b's addresses (observed address first, then
    candidates; b announces the same in its ENDPOINTS), likewise `dial_b`. With `io`, each
    side's direct connections are served by its own data path thread.
    """
    async with (
        open_relay_client(relay.url, ALICE, direct=True) as ca,
        open_relay_client(relay.url, BOB, direct=True, local_port=port_b) as cb,
    ):
        results: dict[str, object] = {}

        async def run_b() -> None:
            invitation = await cb.next_invitation()
            pairing = await cb.accept(invitation)
            responder = Responder(BOB, {ALICE.peer_id: ALICE.public}.get)
            results["pb"] = pairing
            results["rb"] = await handshake_as_responder(pairing.circuit, responder)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_b)
            pa = await ca.connect(BOB.peer_id)
            results["ra"] = await handshake_as_initiator(pa.circuit, ALICE, pa.peer)
        pb = results["pb"]
        assert isinstance(pb, Pairing)
        if dial_a is not None:
            pa = attrs.evolve(pa, peer_observed=dial_a[0], peer_candidates=dial_a[1:])
            cb.observed, cb.candidates = dial_a[0], dial_a[1:]
        if dial_b is not None:
            pb = attrs.evolve(pb, peer_observed=dial_b[0], peer_candidates=dial_b[1:])
            ca.observed, ca.candidates = dial_b[0], dial_b[1:]
        async with AsyncExitStack() as stack:
            ra, rb = results["ra"], results["rb"]
            sa = await stack.enter_async_context(open_session(pa.circuit, ra, settings=settings))  # type: ignore[arg-type]
            sb = await stack.enter_async_context(open_session(pb.circuit, rb, settings=settings))  # type: ignore[arg-type]
            if io is not None:
                sa.use_io_thread(io[0])
                sb.use_io_thread(io[1])
            ma = await stack.enter_async_context(
                open_migrator(sa, ca, peer_candidates=addresses(pa), settings=paths)
            )
            await trio.sleep(delay_b)
            mb = await stack.enter_async_context(
                open_migrator(sb, cb, peer_candidates=addresses(pb), settings=paths_b or paths)
            )
            yield Side(ca, pa, sa, ma), Side(cb, pb, sb, mb)


def addresses(pairing: Pairing) -> tuple[Endpoint, ...]:
    """The peer's addresses a pairing gave, in the order `meshcore.connect` dials them."""
    return (*pairing.peer_candidates, pairing.peer_observed)


@asynccontextmanager
async def running_relay(config: RelayConfig | None = None) -> AsyncIterator[RelayServer]:
    async with trio.open_nursery() as nursery:
        relay: RelayServer = await nursery.start(serve_relay, config or RelayConfig(port=0))
        yield relay
        nursery.cancel_scope.cancel()


async def wait_path(*sessions: Session, path: str) -> None:
    while any(s.path != path for s in sessions):
        await trio.sleep(0.002)


async def pump(session: Session, count: int, progress: list[int]) -> None:
    for i in range(count):
        await session.send(i.to_bytes(4, "big"))
        progress[0] = i + 1


async def drain(session: Session, count: int, paths_seen: list[str]) -> None:
    for i in range(count):
        assert await session.receive() == i.to_bytes(4, "big"), f"message {i} out of order"
        paths_seen.append(session.path)


# --- the race ---------------------------------------------------------------------------------


async def test_a_session_starts_on_the_relay_and_is_direct_within_a_second() -> None:
    count = 3000
    port_b = free_port()
    # a dials a blackhole first and b's real port 0.2 s later, and b knows only a blackhole
    # of a: no direct path can be up before the first messages crossed the relay
    slow = attrs.evolve(PATHS, stagger_s=0.2)
    with trio.fail_after(30):
        async with running_relay() as relay, blackhole() as hole_a, blackhole() as hole_b:
            dial_a = (Endpoint("127.0.0.1", port_b), hole_b)  # dialled as (hole_b, b)
            async with pair(
                relay, paths=slow, port_b=port_b, dial_a=dial_a, dial_b=(hole_a,)
            ) as (a, b):
                await _relay_then_direct(a, b, count)


async def _relay_then_direct(a: Side, b: Side, count: int) -> None:
    start = trio.current_time()
    seen: dict[str, list[str]] = {"a": [], "b": []}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(pump, a.session, count, [0])
        nursery.start_soon(pump, b.session, count, [0])
        nursery.start_soon(drain, b.session, count, seen["b"])
        nursery.start_soon(drain, a.session, count, seen["a"])
        with trio.fail_after(1.0):
            await wait_path(a.session, b.session, path="direct")
        took = trio.current_time() - start
    assert took < 1.0
    for side in "ab":  # traffic flowed both ways on the relay, then on the direct path
        assert seen[side][0] == "relay" and seen[side][-1] == "direct"
    assert a.migrator.migrations == b.migrator.migrations == 1


async def test_the_direct_path_leaves_from_the_relay_connections_port() -> None:
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay) as (a, b):
            with trio.fail_after(2):
                await wait_path(a.session, b.session, path="direct")
            for side in (a, b):
                assert side.client.direct is not None
                assert side.client.direct.port == side.client.local_port
                link = side.migrator.direct_link
                assert link is not None and link.transport.local_address is not None
                assert link.transport.local_address.port == side.client.local_port
            # both ends agree on the one connection
            la, lb = a.migrator.direct_link, b.migrator.direct_link
            assert la is not None and lb is not None
            assert la.transport.local_address == lb.transport.remote_address


async def test_the_race_leaves_one_connection_and_closes_the_losers() -> None:
    port_b = free_port()
    routes = (Endpoint("127.0.0.1", port_b), Endpoint("127.0.0.2", port_b))  # both reach b
    paths = attrs.evolve(PATHS, stagger_s=0.0)
    with trio.fail_after(30):
        async with (
            running_relay() as relay,
            pair(relay, paths=paths, port_b=port_b, dial_a=routes) as (a, b),
        ):
            with trio.fail_after(2):
                await wait_path(a.session, b.session, path="direct")
                # every connection but the winner is closed, on both sides
                while any(
                    sum(link.kind == "direct" for link in side.migrator._owned) != 1
                    for side in (a, b)
                ):
                    await trio.sleep(0.005)
            # a's dial to 127.0.0.2 is a connection of its own (b never dials that address),
            # so with one more connected dial on either side there was a loser to close
            assert routes[1] in a.migrator._connected
            assert len(a.migrator._connected) + len(b.migrator._connected) >= 2
            la, lb = a.migrator.direct_link, b.migrator.direct_link
            assert la is not None and lb is not None
            assert la.transport.local_address == lb.transport.remote_address


async def test_a_blackholed_candidate_does_not_delay_a_good_one() -> None:
    port_b = free_port()
    with trio.fail_after(30):
        async with running_relay() as relay, blackhole() as hole_a, blackhole() as hole_b:
            # a tries a blackhole first, b's real port second; b knows only a blackhole of a,
            # so the one way in is a's second dial
            dial_a = (Endpoint("127.0.0.1", port_b), hole_b)  # dialled as (hole_b, b)
            async with pair(relay, port_b=port_b, dial_a=dial_a, dial_b=(hole_a,)) as (a, b):
                start = trio.current_time()
                with trio.fail_after(1.0):
                    await wait_path(a.session, b.session, path="direct")
                assert trio.current_time() - start < 0.25  # the race deadline is 2 s
                link = a.migrator.direct_link
                assert link is not None
                assert link.transport.remote_address == Endpoint("127.0.0.1", port_b)


async def test_a_peer_whose_session_is_not_ready_yet_is_dialled_again() -> None:
    port_b = free_port()
    with trio.fail_after(30):
        async with running_relay() as relay, blackhole() as hole:
            # only a -> b works, and b takes connections for the session 0.3 s late: a's first
            # connections are refused by b's listener, and a dials again until one is taken
            dial_a = (Endpoint("127.0.0.1", port_b),)
            async with pair(relay, port_b=port_b, dial_a=dial_a, dial_b=(hole,), delay_b=0.3) as (
                a,
                b,
            ):
                with trio.fail_after(1.5):
                    await wait_path(a.session, b.session, path="direct")
                assert a.migrator.attempts == 1  # the same race, not a retry
                listener = b.client.direct
                assert listener is not None and listener.refused >= 1


async def test_when_every_candidate_fails_the_race_ends_in_time_and_relay_carries_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "meshcore.path")
    paths = attrs.evolve(PATHS, race_deadline_s=0.5, retry_s=0.4, retry_max_s=0.8)
    with trio.fail_after(30):
        async with (
            running_relay() as relay,
            blackhole() as hole_a,
            blackhole() as hole_b,
            pair(relay, paths=paths, dial_a=(hole_b,), dial_b=(hole_a,)) as (a, b),
        ):
            start = trio.current_time()  # the first race started just before
            while a.session.path_stats.racing or a.session.path_stats.attempts == 0:
                await a.session.send(b"during the race")
                assert await b.session.receive() == b"during the race"
                await trio.sleep(0.005)
            ended = trio.current_time()
            assert ended - start < paths.race_deadline_s + 0.1
            assert a.session.path == b.session.path == "relay"
            while a.session.path_stats.attempts < 2:  # and it tries again later
                await b.session.send(b"after the race")
                assert await a.session.receive() == b"after the race"
                await trio.sleep(0.005)
            assert trio.current_time() - ended >= paths.retry_s * (1 - paths.retry_jitter) - 0.01
            failures = [
                r.getMessage() for r in caplog.records if "direct attempt failed" in r.getMessage()
            ]
            assert all("no path validated within 0.5 s" in line for line in failures)
            # each side names the blackhole it tried (the dial never completed)
            for hole in (hole_a, hole_b):
                assert any(f"{hole} no answer" in line for line in failures), hole


async def test_a_race_that_fails_retries_with_backoff() -> None:
    paths = attrs.evolve(PATHS, race_deadline_s=0.2, retry_s=0.2, retry_max_s=3.2, retry_jitter=0)
    with trio.fail_after(30):
        async with (
            running_relay() as relay,
            blackhole() as hole_a,
            blackhole() as hole_b,
            pair(relay, paths=paths, dial_a=(hole_b,), dial_b=(hole_a,)) as (a, _b),
        ):
            starts: list[float] = []
            while len(starts) < 4:
                attempts = a.session.path_stats.attempts
                while a.session.path_stats.attempts == attempts:
                    await trio.sleep(0.005)
                starts.append(trio.current_time())
            gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
            # race 0.2 s, then waits of 0.2, 0.4, 0.8, 1.6 s (below the cap): the gaps grow; a
            # loaded machine may stretch one gap by a few ms, never shrink the sequence
            assert gaps[0] + 0.1 < gaps[1] and gaps[1] + 0.1 < gaps[2], gaps


def test_candidates_put_the_relay_facing_address_first_and_skip_loopback() -> None:
    lan = local_candidates(Endpoint("192.0.2.7", 50000), 4000)
    assert lan[0] == Endpoint("192.0.2.7", 4000)
    assert all(not c.ip.is_loopback and c.port == 4000 for c in lan)
    assert Endpoint("127.0.0.1", 4000) in local_candidates(Endpoint("127.0.0.1", 50000), 4000)
    assert local_candidates(None, 4000) == [c for c in lan if c.host != "192.0.2.7"]


async def test_each_side_announces_its_shared_port_to_the_relay() -> None:
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay) as (a, b):
            for side, other in ((a, b), (b, a)):
                port = side.client.local_port
                assert Endpoint("127.0.0.1", port) in other.pairing.peer_candidates
                assert other.pairing.peer_observed == Endpoint("127.0.0.1", port)
                assert side.client.observed == Endpoint("127.0.0.1", port)


def test_a_link_drops_frames_beyond_its_bounds_instead_of_growing() -> None:
    from meshcore._link import LINK_QUEUE_BYTES, Link
    from meshcore.testing.memory import memory_transport_pair

    link = Link(memory_transport_pair()[0], "direct")
    frame = bytes(64 * 1024)
    fits = LINK_QUEUE_BYTES // len(frame)
    for _ in range(fits + 10):
        link.push(frame)
    assert link.dropped == 10


# --- the relay circuit ------------------------------------------------------------------------


async def test_after_the_upgrade_the_relay_forwards_nothing_for_the_pair(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay) as (a, b):
            assert len(relay.circuit_stats()) == 1
            with trio.fail_after(2):
                await wait_path(a.session, b.session, path="direct")
                while relay.circuit_stats():
                    await trio.sleep(0.002)
            before = relay.stats()
            for i in range(2000):
                await a.session.send(i.to_bytes(4, "big") * 100)
                await b.session.send(i.to_bytes(4, "big") * 100)
                assert await b.session.receive() == i.to_bytes(4, "big") * 100
                assert await a.session.receive() == i.to_bytes(4, "big") * 100
            after = relay.stats()
            assert relay.circuit_stats() == []  # nothing forwarded for the pair any more
            assert after.circuits == before.circuits == 0
            assert after.connections == 2 and after.peers == 2  # the control connections stay
            closed = [r.getMessage() for r in caplog.records if "circuit closed" in r.getMessage()]
            assert len(closed) == 1 and "code=NONE" in closed[0]  # closed by a peer, on purpose


# --- accepted connections ---------------------------------------------------------------------


async def test_a_connection_with_an_unknown_receiver_index_is_refused() -> None:
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay) as (a, _b):
            listener = a.client.direct
            assert listener is not None
            stream = await trio.open_tcp_stream("127.0.0.1", listener.port)
            transport = FramedTransport(stream)
            bogus = bytes([4, 0, 0, 0]) + (0xDEADBEEF).to_bytes(4, "little") + bytes(40)
            await transport.send(bogus)
            with pytest.raises(Exception, match="closed"):
                await transport.receive()
            assert listener.refused >= 1


async def test_silent_connections_on_the_shared_port_are_capped() -> None:
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay) as (a, _b):
            listener = a.client.direct
            assert listener is not None
            silent = [
                await trio.open_tcp_stream("127.0.0.1", listener.port) for _ in range(MAX_UNROUTED)
            ]
            while listener.unrouted < MAX_UNROUTED:
                await trio.sleep(0.005)
            one_more = await trio.open_tcp_stream("127.0.0.1", listener.port)
            with trio.fail_after(1):  # closed at once instead of waiting for a first frame
                assert await one_more.receive_some(10) == b""
            for stream in [*silent, one_more]:
                await stream.aclose()


async def test_garbage_on_the_shared_port_is_refused() -> None:
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay) as (a, _b):
            listener = a.client.direct
            assert listener is not None
            stream = await trio.open_tcp_stream("127.0.0.1", listener.port)
            await stream.send_all(b"GET / HTTP/1.1\r\n\r\n")
            assert await stream.receive_some(100) == b""  # closed on us
            assert a.session.path in ("relay", "direct")


# --- modes, status, ping, close ---------------------------------------------------------------


async def test_ping_and_status_report_the_path() -> None:
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay) as (a, b):
            status = a.session.status()
            assert status.peer_id == BOB.peer_id.to_text()
            with trio.fail_after(2):
                await wait_path(a.session, b.session, path="direct")
            rtt, path = await a.session.ping(timeout=2)
            assert path == "direct" and 0 < rtt < 0.5
            status = a.session.status()
            assert status.path == "direct" and status.migrations == 1
            port_b = b.client.local_port
            assert status.remote_address == f"127.0.0.1:{port_b}"
            assert status.rtt_s == rtt
            assert status.frames_sent > 0 and status.frames_received > 0


async def test_ping_over_the_relay_names_the_relay() -> None:
    with trio.fail_after(30):
        async with (
            running_relay() as relay,
            blackhole() as hole,
            pair(relay, dial_a=(hole,), dial_b=(hole,)) as (a, _b),
        ):
            rtt, path = await a.session.ping(timeout=2)
            assert path == "relay" and rtt > 0
            assert a.session.status().remote_address == str(relay.endpoints[0])


async def test_only_mode_ends_the_session_without_a_direct_path() -> None:
    paths = attrs.evolve(PATHS, mode=DirectMode.ONLY, race_deadline_s=0.3)
    with trio.fail_after(30):
        async with (
            running_relay() as relay,
            blackhole() as hole,
            pair(relay, paths=paths, dial_a=(hole,), dial_b=(hole,)) as (a, _b),
        ):
            with pytest.raises(trio.BrokenResourceError) as info:
                while True:
                    await a.session.send(b"never crosses the relay")
                    await trio.sleep(0.01)
            assert isinstance(info.value.__cause__, SessionClosed)
            assert "direct='only'" in str(info.value)


async def test_only_mode_carries_data_once_direct() -> None:
    paths = attrs.evolve(PATHS, mode=DirectMode.ONLY)
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay, paths=paths) as (a, b):
            await a.session.send(b"waits for the direct path")
            assert await b.session.receive() == b"waits for the direct path"
            assert a.session.path == "direct"


async def test_closing_on_the_direct_path_ends_the_peer_cleanly() -> None:
    with trio.fail_after(30):
        async with running_relay() as relay, pair(relay) as (a, b):
            with trio.fail_after(2):
                await wait_path(a.session, b.session, path="direct")
            await a.session.send(b"last words")
            await a.session.wait_acknowledged()
            await a.session.aclose("done")
            assert await b.session.receive() == b"last words"
            with pytest.raises(trio.EndOfChannel):
                await b.session.receive()


async def test_connect_and_serve_go_direct_when_asked() -> None:
    got: list[bytes] = []
    done = trio.Event()

    async def echo(session: Session) -> None:
        async for message in session:
            got.append(message)
            await session.send(message)
        done.set()

    with trio.fail_after(30):
        async with running_relay() as relay, trio.open_nursery() as nursery:
            handler = functools.partial(
                serve, relay.url, BOB, [ALICE.peer_id], echo, direct="auto", path_settings=PATHS
            )
            await nursery.start(handler)
            async with connect(
                relay.url, ALICE, BOB.peer_id, direct="auto", path_settings=PATHS
            ) as session:
                for i in range(200):
                    await session.send(b"%d" % i)
                    assert await session.receive() == b"%d" % i
                with trio.fail_after(2):
                    await wait_path(session, path="direct")
                await session.send(b"on the direct path")
                assert await session.receive() == b"on the direct path"
            with trio.fail_after(5):
                await done.wait()
            nursery.cancel_scope.cancel()
    assert got[-1] == b"on the direct path"


async def test_never_mode_opens_no_listener_and_stays_on_the_relay() -> None:
    with trio.fail_after(30):
        async with running_relay() as relay, trio.open_nursery() as nursery:

            async def echo(session: Session) -> None:
                async for message in session:
                    await session.send(message)

            client: RelayClient = await nursery.start(
                functools.partial(serve, relay.url, BOB, [ALICE.peer_id], echo, direct="never")
            )
            assert client.direct is None
            async with connect(relay.url, ALICE, BOB.peer_id, direct="never") as session:
                for i in range(50):
                    await session.send(b"%d" % i)
                    assert await session.receive() == b"%d" % i
                assert session.path == "relay"
                assert session.path_stats.attempts == 0
            nursery.cancel_scope.cancel()
