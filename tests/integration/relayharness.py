"""In-process relays for the tests that stop a relay and start it again on its port, and poll
for what the relay or its clients report: one harness for the relay network's tests and the
relay restart tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from meshcore import Identity
from meshcore._relay import RelayConfig, RelayServer, serve_relay
from meshcore.proto.relaylist import RelayEntry


class Relay:
    """An in-process relay that can be stopped (gracefully: Close(SHUTDOWN) to every peer)
    and started again on the same port. Without `identity` each start makes a fresh one."""

    def __init__(
        self,
        nursery: trio.Nursery,
        identity: Identity | None = None,
        *,
        shutdown_grace_s: float = 0.2,
    ) -> None:
        self._nursery = nursery
        self.identity = identity
        self.shutdown_grace_s = shutdown_grace_s
        self.port = 0
        self.server: RelayServer | None = None
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    @property
    def entry(self) -> RelayEntry:
        assert self.identity is not None, "a relay list entry names the relay's identity"
        return RelayEntry(self.url, self.identity.peer_id)

    async def start(self) -> None:
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()
        config = RelayConfig(
            port=self.port, identity=self.identity, shutdown_grace_s=self.shutdown_grace_s
        )
        self.server = await self._nursery.start(self._run, config)
        self.port = self.server.port

    async def stop(self) -> None:
        self._scope.cancel()
        await self._stopped.wait()
        self.server = None

    async def _run(self, config: RelayConfig, task_status: trio.TaskStatus[RelayServer]) -> None:
        try:
            with self._scope:
                await serve_relay(config, task_status=task_status)
        finally:
            self._stopped.set()

    def peers(self) -> int:
        return self.server.stats().peers if self.server is not None else 0


@asynccontextmanager
async def relays(n: int) -> AsyncIterator[list[Relay]]:
    """`n` running relays, each with an identity of its own (kept across restarts)."""
    async with trio.open_nursery() as nursery:
        out = [Relay(nursery, Identity.generate()) for _ in range(n)]
        for relay in out:
            await relay.start()
        yield out
        nursery.cancel_scope.cancel()


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (callers bound the wait with trio.fail_after)."""
    while not condition():
        await trio.sleep(0.005)
