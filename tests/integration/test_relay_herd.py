"""A herd of peers reconnecting after a graceful relay restart: the relay announces its
reconnect window, the peers spread over it, and the restarted relay refuses none of them
(its admission here: the per-address rate limit, 10/s with a burst of 20, which 40 peers on
one address would overrun if they came back together, as a relay that announces no window
shows)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from meshcore import Identity
from meshcore._client import RelayClient, open_relay_client
from meshcore._relay import RelayConfig, RelayServer, serve_relay
from meshcore.proto.limits import RelayLimits

PEERS = 40
IDENTITIES = [Identity.generate() for _ in range(PEERS)]


class Relay:
    """An in-process relay that can be stopped gracefully and started again on its port."""

    def __init__(self, nursery: trio.Nursery, limits: RelayLimits) -> None:
        self._nursery = nursery
        self._limits = limits
        self._identity = Identity.generate()
        self.port = 0
        self.server: RelayServer | None = None
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()

    async def start(self) -> RelayServer:
        self._scope, self._stopped = trio.CancelScope(), trio.Event()
        config = RelayConfig(
            port=self.port, identity=self._identity, limits=self._limits, shutdown_grace_s=2.0
        )
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
