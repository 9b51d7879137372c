"""The trio relay client against real relays over loopback: a client given the relay's id
registers only with the relay that proves it, a relay with another identity is refused
naming its URL and the id (and, on later attempts, logged when that changes), a relay
without an id is logged once per URL, and a relay that falls silent without a close or an
RST is noticed by the heartbeat."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import pytest
import trio
import trio.testing

from meshcore import open_meeting
from meshcore._client import RelayClient, open_relay_client
from meshcore._relay import RelayConfig, RelayServer, serve_relay
from meshcore.errors import RelayNotVerified
from meshcore.proto.identity import Identity
from meshcore.proto.relayclient import RelayClientState

ALICE = Identity.generate()
RELAY, OTHER_RELAY = Identity.generate(), Identity.generate()
WAIT_S = 10


class LogEvents(logging.Handler):
    """Records the client's log lines; `seen` is set by the `count`-th line with `text`."""

    def __init__(self, text: str, count: int = 1) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.count = count
        self.seen = trio.Event()
        self.matching: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.matching.append(record)
            if len(self.matching) >= self.count:
                self.seen.set()


Watch = Callable[..., LogEvents]


@pytest.fixture
def watch() -> Iterator[Watch]:
    """`watch(text, count=1)`: a LogEvents handler on the client's logger, for this test."""
    logger = logging.getLogger("meshcore.client")
    handlers: list[LogEvents] = []
    old_level = logger.level
    logger.setLevel(logging.DEBUG)

    def add(text: str, count: int = 1) -> LogEvents:
        handler = LogEvents(text, count)
        logger.addHandler(handler)
        handlers.append(handler)
        return handler

    try:
        yield add
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
        logger.setLevel(old_level)


class RunningRelay:
    """A relay in the test's nursery that can be stopped (and waited for) on its own."""

    def __init__(self) -> None:
        self.scope = trio.CancelScope()
        self.stopped = trio.Event()
        self.server: RelayServer | None = None

    async def stop(self) -> None:
        self.scope.cancel()
        await self.stopped.wait()


async def start_relay(
    nursery: trio.Nursery, identity: Identity | None, port: int = 0
) -> tuple[RelayServer, RunningRelay]:
    running = RunningRelay()

    async def run(task_status: trio.TaskStatus[RelayServer]) -> None:
        try:
            with running.scope:
                config = RelayConfig(port=port, identity=identity, shutdown_grace_s=0.5)
                await serve_relay(config, task_status=task_status)
        finally:
            running.stopped.set()

    server: RelayServer = await nursery.start(run)
    return server, running


# --- verification -----------------------------------------------------------------------------


async def test_a_client_given_the_relay_id_registers_and_knows_it_is_verified(
    nursery: trio.Nursery,
) -> None:
    relay, _ = await start_relay(nursery, RELAY)
    assert relay.relay_id == RELAY.peer_id
    with trio.fail_after(WAIT_S):
        async with open_relay_client(relay.url, ALICE, relay_id=RELAY.peer_id) as client:
            assert client.connected and client.verified
            assert client.relay_id == client.presented_relay_id == RELAY.peer_id
            assert client.state is RelayClientState.REGISTERED
            assert client.rtt_s is not None and 0 <= client.rtt_s < WAIT_S
            assert relay.stats().peers == 1


async def test_a_relay_with_another_identity_is_refused_naming_its_url_and_the_id(
    nursery: trio.Nursery,
) -> None:
    relay, _ = await start_relay(nursery, OTHER_RELAY)
    with trio.fail_after(WAIT_S), pytest.raises(RelayNotVerified) as caught:
        async with open_relay_client(relay.url, ALICE, relay_id=RELAY.peer_id):
            pytest.fail("registered with a relay that is not the one expected")
    message = str(caught.value)
    assert message.startswith(f"relay at {relay.url} is not relay {RELAY.peer_id}: ")
    assert f"it presented the keys of relay {OTHER_RELAY.peer_id}" in message
    assert "check the relay list entry" in message
    assert relay.stats().peers == 0 and relay.stats().pending == 0


async def test_one_relay_given_as_url_and_id_is_verified_by_connect_and_serve(
    nursery: trio.Nursery,
) -> None:
    relay, _ = await start_relay(nursery, RELAY)
    with trio.fail_after(WAIT_S):
        async with open_meeting(f"{relay.url}#{RELAY.peer_id}", ALICE) as meeting:
            assert isinstance(meeting, RelayClient) and meeting.verified
    other, _ = await start_relay(nursery, OTHER_RELAY)
    with trio.fail_after(WAIT_S), pytest.raises(RelayNotVerified):
        async with open_meeting(f"{other.url}#{RELAY.peer_id}", ALICE):
            pytest.fail("registered with a relay that is not the one its URL names")


async def test_an_unverified_relay_is_logged_once_per_url(
    nursery: trio.Nursery, watch: Watch
) -> None:
    relay, _ = await start_relay(nursery, RELAY)
    log = watch("is not verified")
    with trio.fail_after(WAIT_S):
        for _ in range(2):
            async with open_relay_client(relay.url, ALICE) as client:
                assert client.connected and not client.verified
                assert client.presented_relay_id == RELAY.peer_id
    assert len(log.matching) == 1 and log.matching[0].levelno == logging.WARNING
    line = log.matching[0].getMessage()
    assert relay.url in line and str(RELAY.peer_id) in line


async def test_a_relay_that_comes_back_with_another_identity_is_refused_and_logged_once(
    nursery: trio.Nursery, watch: Watch
) -> None:
    relay, running = await start_relay(nursery, RELAY)
    refused = watch("is not relay", count=4)
    with trio.fail_after(WAIT_S):
        async with open_relay_client(
            relay.url, ALICE, relay_id=RELAY.peer_id, reconnect_min_s=0.05, reconnect_max_s=0.1
        ) as client:
            await running.stop()  # the relay stops; another one takes its port
            impostor, impostor_running = await start_relay(nursery, OTHER_RELAY, relay.port)
            await refused.seen.wait()  # four attempts met the impostor
            assert not client.connected and client.presented_relay_id == OTHER_RELAY.peer_id
            assert impostor.stats().peers == 0
            await impostor_running.stop()
            back = watch("reconnected to relay")
            await start_relay(nursery, RELAY, relay.port)
            await back.seen.wait()
            assert client.connected and client.verified
    levels = [r.levelno for r in refused.matching]
    assert levels.count(logging.WARNING) == 1, levels  # the reason never changed
    assert "it presented the keys of relay" in refused.matching[0].getMessage()


# --- the heartbeat ----------------------------------------------------------------------------


class StallingProxy:
    """A TCP proxy to the relay that can stop forwarding without closing anything: the
    connections stay open, bytes are read and dropped, nothing is answered (a drop rule)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.stalled = False
        self.port = 0
        self.last_to_client = 0.0
        """When bytes from the relay were last passed on to the client."""

    async def serve(self, task_status: trio.TaskStatus[None]) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, downstream: trio.SocketStream) -> None:
        upstream = await trio.open_tcp_stream("127.0.0.1", self.target_port)
        async with downstream, upstream, trio.open_nursery() as nursery:
            nursery.start_soon(self.pump, downstream, upstream, False)
            nursery.start_soon(self.pump, upstream, downstream, True)

    async def pump(self, source: trio.SocketStream, sink: trio.SocketStream, down: bool) -> None:
        while data := await source.receive_some(65536):
            if not self.stalled:
                await sink.send_all(data)
                if down:
                    self.last_to_client = trio.current_time()
        await trio.sleep_forever()  # one side closed: keep the other open, as a drop rule does


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    # Time jumps only once every task has waited 20 ms of real time, so that loopback
    # traffic still flows between jumps.
    return trio.testing.MockClock(autojump_threshold=0.02)


async def test_a_relay_that_falls_silent_is_noticed_after_fifteen_seconds(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, watch: Watch
) -> None:
    relay, _ = await start_relay(nursery, RELAY)
    proxy = StallingProxy(relay.port)
    await nursery.start(proxy.serve)
    lost = watch("relay connection lost: no answer from the relay for 15 s; reconnecting in")
    url = f"ws://127.0.0.1:{proxy.port}/"
    with trio.fail_after(120):
        async with open_relay_client(url, ALICE, relay_id=RELAY.peer_id) as client:
            await trio.sleep(32)  # pings keep an idle connection alive meanwhile
            assert client.connected and client.registrations == 1
            proxy.stalled = True  # from now on, a drop rule: no close, no RST
            await lost.seen.wait()
            silent_for = trio.current_time() - proxy.last_to_client
            assert not client.connected
            proxy.stalled = False
            back = watch("reconnected to relay")
            await back.seen.wait()
            assert client.connected and client.registrations == 2 and client.verified
    assert 15.0 <= silent_for <= 15.1, silent_for
