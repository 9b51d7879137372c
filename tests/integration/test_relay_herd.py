"""A herd of peers reconnecting after a graceful relay restart: the relay announces its
reconnect window, the peers spread over it, and the restarted relay refuses none of them
(its admission here: the per-address rate limit, 10/s with a burst of 20, which 40 peers on
one address would overrun if they came back together, as a relay that announces no window
shows). A relay that does refuse one for load says when to come back, and the peer does;
and a relay with hundreds of connections that never answer its Close still stops at once,
each of them told why before it is cut off."""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio

from meshcore import Identity
from meshcore._client import RelayClient, open_relay_client
from meshcore._relay import RelayConfig, RelayServer, serve_relay
from meshcore.proto import wire
from meshcore.proto.limits import RelayLimits
from meshcore.proto.reconnect import announced_window

PEERS = 40
IDENTITIES = [Identity.generate() for _ in range(PEERS)]


class Relay:
    """An in-process relay that can be stopped gracefully and started again on its port."""

    def __init__(
        self, nursery: trio.Nursery, limits: RelayLimits, shutdown_grace_s: float = 2.0
    ) -> None:
        self._nursery = nursery
        self._grace_s = shutdown_grace_s
        self._limits = limits
        self._identity = Identity.generate()
        self.port = 0
        self.server: RelayServer | None = None
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()

    async def start(self) -> RelayServer:
        self._scope, self._stopped = trio.CancelScope(), trio.Event()
        config = RelayConfig(
            port=self.port, identity=self._identity, limits=self._limits,
            shutdown_grace_s=self._grace_s,
        )  # fmt: skip
        self.server = await self._nursery.start(self._run, config)
        self.port = self.server.port
        return self.server

    async def stop(self) -> None:
        self._scope.cancel()
        await self._stopped.wait()

    async def _run(self, config: RelayConfig, task_status: trio.TaskStatus[RelayServer]) -> None:
        try:
            with self._scope:
                await serve_relay(config, task_status=task_status)
        finally:
            self._stopped.set()


@asynccontextmanager
async def herd(url: str) -> AsyncIterator[list[RelayClient]]:
    async with AsyncExitStack() as stack:
        clients = []
        for identity in IDENTITIES:  # one by one: the first registration is not the herd
            clients.append(await stack.enter_async_context(open_relay_client(url, identity)))
            await trio.sleep(0.11)  # within the per-address rate (10/s)
        yield clients


async def restart_with_a_herd(restart_rate_per_s: float) -> tuple[dict[str, int], float]:
    """Register the herd, restart the relay gracefully; return the restarted relay's
    connection refusals by reason once all are back, and how long that took."""
    limits = RelayLimits(restart_rate_per_s=restart_rate_per_s)
    async with trio.open_nursery() as nursery:
        relay = Relay(nursery, limits)
        await relay.start()
        async with herd(f"ws://127.0.0.1:{relay.port}/") as clients:
            await relay.stop()
            with trio.fail_after(10):
                while any(c.connected for c in clients):
                    await trio.sleep(0.01)
            server = await relay.start()
            started = trio.current_time()
            with trio.fail_after(60):
                while not all(c.registrations == 2 for c in clients):
                    await trio.sleep(0.02)
            took = trio.current_time() - started
            counts = server.counters().matchmaker
            refused = {r: n for (req, r), n in counts.refusals.items() if req == "connection"}
            assert counts.registrations == PEERS
        nursery.cancel_scope.cancel()
    return refused, took


async def test_a_herd_spread_by_the_announced_window_is_not_refused_and_all_come_back() -> None:
    # 40 peers at 8/s: a window of 5 s, within the address's 10/s
    refused, took = await restart_with_a_herd(restart_rate_per_s=8.0)
    assert refused == {}
    assert took < 5.0 + 0.75 + 2.0  # the window, the first backoff, and some slack


async def test_without_a_window_the_same_herd_overruns_the_admission_limit() -> None:
    # the same herd from a relay that announces (almost) no window: back within ~0.5 s
    refused, _ = await restart_with_a_herd(restart_rate_per_s=1e9)
    assert refused.get("rate_limited", 0) > 0  # and yet they all came back, after backing off


RETRY = re.compile(r"reconnect within 2 s; next try in (\d+\.\d) s")


async def test_a_peer_refused_for_load_is_told_when_to_come_back_and_comes_back_then(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # one connection per 2 s from an address (burst 1): two peers behind it that come back
    # together after a restart, and one of them is refused, "reconnect within 2 s"
    limits = RelayLimits(
        connections_per_s_per_ip=0.5, connections_burst_per_ip=1, restart_rate_per_s=1e9
    )
    caplog.set_level(logging.WARNING, logger="meshcore.client")
    async with trio.open_nursery() as nursery:
        relay = Relay(nursery, limits)
        await relay.start()
        url = f"ws://127.0.0.1:{relay.port}/"
        async with AsyncExitStack() as stack:
            first = await stack.enter_async_context(open_relay_client(url, IDENTITIES[0]))
            await trio.sleep(2.1)  # the address's next token
            second = await stack.enter_async_context(open_relay_client(url, IDENTITIES[1]))
            await relay.stop()
            server = await relay.start()
            with trio.fail_after(15):
                while not (first.registrations == second.registrations == 2):
                    await trio.sleep(0.02)
            refusals = server.counters().matchmaker.refusals
            assert refusals[("connection", "rate_limited")] >= 1
        nursery.cancel_scope.cancel()
    waits = [float(m.group(1)) for r in caplog.records if (m := RETRY.search(r.getMessage()))]
    assert waits, "the refusal named no window"
    # the shortest wait (0.25-0.75 s) plus a share of the window (2 s, then 4 s in a row)
    assert all(0.2 <= wait <= 0.75 + 4.0 for wait in waits[:2])


def frames_of(data: bytes) -> list[tuple[int, bytes]]:
    """The server frames (opcode, payload) in `data` (short ones: the relay's control)."""
    frames, at = [], 0
    while at < len(data):
        opcode, size, at = data[at] & 0x0F, data[at + 1] & 0x7F, at + 2
        if size == 126:
            size, at = struct.unpack_from(">H", data, at)[0], at + 2
        frames.append((opcode, data[at : at + size]))
        at += size
    return frames


async def test_a_relay_with_many_silent_connections_tells_each_and_stops_promptly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    silent = 300  # upgraded, never a Hello, never an answer to the close
    limits = RelayLimits(
        connections_per_s_per_ip=1e6, connections_burst_per_ip=100_000, hello_deadline_s=60,
        restart_rate_per_s=10.0,
    )  # fmt: skip
    caplog.set_level(logging.INFO, logger="meshcore.relay")
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    async with trio.open_nursery() as nursery:
        relay = Relay(nursery, limits, shutdown_grace_s=0.5)
        server = await relay.start()
        url = f"ws://127.0.0.1:{relay.port}/"
        async with AsyncExitStack() as stack:
            for identity in IDENTITIES[:5]:  # 5 peers: a window of 0.5 s at 10/s
                await stack.enter_async_context(open_relay_client(url, identity))
            streams = []
            with trio.fail_after(30):
                for _ in range(silent):
                    stream = await trio.open_tcp_stream("127.0.0.1", relay.port)
                    await stream.send_all(upgrade)
                    streams.append(stream)
                while server.stats().pending < silent:  # all upgraded and admitted
                    await trio.sleep(0.01)
            with trio.fail_after(0.5 + 10):  # the grace, and then no waiting one by one
                await relay.stop()
            for stream in streams:
                data = b""
                with trio.fail_after(5):  # the relay is gone: what it wrote, then EOF
                    while chunk := await stream.receive_some(65536):
                        data += chunk
                await stream.aclose()
                head, _, rest = data.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101 ")
                messages = [p for op, p in frames_of(rest) if op == 0x2]
                close = [p for op, p in frames_of(rest) if op == 0x8]
                assert len(messages) == 2 and len(close) == 1
                msg = wire.decode_control_untrusted(messages[1])
                assert isinstance(msg, wire.Close) and msg.code is wire.ErrorCode.SHUTDOWN
                assert announced_window(msg.reason) == 0.5
        nursery.cancel_scope.cancel()
    (stopped,) = [r for r in caplog.records if r.getMessage().startswith("relay stopped")]
    assert getattr(stopped, "cut_off", None) == silent  # they never answered: cut, not awaited
