"""One relay connection of a `RelayNetwork` (trio): a `RelayClient` kept registered at one
relay, its first attempts retried with jittered backoff (the client retries later losses on
its own), its invitations handed to the network, and its state for displays.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import attrs
import trio

from meshcore._client import Invitation, RelayClient
from meshcore._nursery import open_hidden_nursery
from meshcore.errors import MeshError, RelayError, TransportClosed
from meshcore.proto.backoff import Backoff
from meshcore.proto.relaylist import RelayEntry
from meshcore.proto.relaynet import RelayRole

__all__ = ["ConnectionState", "RelayConnection", "RelayConnectionStatus"]

log = logging.getLogger("meshcore.network")

_NOT_CONNECTED: Final = "not connected"


class ConnectionState:
    """The states a relay connection shows (`RelayConnectionStatus.state`)."""

    CONNECTING: Final = "connecting"
    """The first registration is under way."""
    CONNECTED: Final = "connected"
    RECONNECTING: Final = "reconnecting"
    """Registered before; the connection was lost and is dialled again with backoff."""
    RETRYING: Final = "retrying"
    """No registration yet: the last attempt failed, the next one comes after a backoff."""
    CLOSED: Final = "closed"
    """Given up for good (left, or another registration with our peer id replaced ours)."""


@attrs.frozen
class RelayConnectionStatus:
    """A snapshot of one relay connection (`RelayNetwork.connections()`)."""

    url: str
    relay_id: str | None
    """The relay id of the list entry (None: an unverified entry)."""
    verified: bool
    """The relay proved that id on its current connection."""
    role: str
    """"home" (one of our rendezvous relays), "visitor" (opened to reach another peer) or
    "leaving" (no longer a rendezvous relay of ours; closes once no session uses it)."""
    state: str
    """A `ConnectionState`: connecting, connected, reconnecting, retrying, closed."""
    last_error: str | None
    """Why the connection was lost or could not be made (None while all is well)."""
    rtt_s: float | None
    """Round trip of the connection's heartbeat, when measured."""
    circuits: int
    registrations: int
    observed: str | None
    """Our address as this relay sees it."""
    region: str = ""


class RelayConnection:
    """Keeps one `RelayClient` registered at `entry` while `run` runs.

    `new_client` makes each attempt's client (the network gives them its shared port and
    listener); `on_change` is called whenever its state changes. A visitor connection
    whose first registration fails is given up (`on_ended`); a home one is retried with
    jittered backoff, as the client itself retries every later loss.
    """

    def __init__(
        self,
        entry: RelayEntry,
        role: RelayRole,
        *,
        new_client: Callable[[RelayEntry], RelayClient],
        backoff: Backoff,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.entry = entry
        self.role = role
        self.client: RelayClient | None = None
        self.attempting = True
        """An attempt to register is under way (or about to start)."""
        self.last_error: str | None = None
        self.ended: str | None = None
        """Why the connection ended for good (None while it lives)."""
        self.retry_at: float | None = None
        self._new_client = new_client
        self._backoff = backoff
        self._on_change = on_change
        self._scope = trio.CancelScope()
        self._changed = trio.Event()
        self._invitations: trio.MemorySendChannel[tuple[Invitation, RelayClient]] | None = None

    # ----------------------------------------------------------------- state
    @property
    def url(self) -> str:
        return self.entry.url

    @property
    def connected(self) -> bool:
        return self.client is not None and self.client.connected and self.ended is None

    @property
    def circuits(self) -> int:
        return self.client.circuits if self.client is not None else 0

    @property
    def state(self) -> str:
        client = self.client
        if self.ended is not None:
            return ConnectionState.CLOSED
        if client is not None and client.connected:
            return ConnectionState.CONNECTED
        if client is not None and client.registrations > 0:
            return ConnectionState.RECONNECTING
        return ConnectionState.CONNECTING if self.attempting else ConnectionState.RETRYING

    def status(self, role: RelayRole | None = None) -> RelayConnectionStatus:
        client = self.client
        observed = client.observed if client is not None and client.connected else None
        error = self.last_error
        if client is not None and client.registrations > 0 and not client.connected:
            error = client.lost_reason or error
        if self.ended is not None:
            error = self.ended
        return RelayConnectionStatus(
            url=self.url,
            relay_id=self.entry.relay_id.to_text() if self.entry.relay_id is not None else None,
            verified=client is not None and client.verified and self.connected,
            role=(role or self.role).value,
            state=self.state,
            last_error=error if self.state != ConnectionState.CONNECTED else None,
            rtt_s=client.rtt_s if client is not None and self.connected else None,
            circuits=self.circuits,
            registrations=client.registrations if client is not None else 0,
            observed=str(observed) if observed is not None else None,
            region=self.entry.region,
        )

    async def wait_registered(self) -> RelayClient:
        """The client once registered. Fails at once (`TransportClosed`, saying why) while
        the connection is lost or waiting to retry; waits while an attempt is under way.
        Cancelling it only stops the waiting."""
        while True:
            client = self.client
            if self.ended is not None and client is not None and not client.registrations:
                raise TransportClosed(self.last_error or self.ended)  # never registered
            if self.ended is not None:
                raise TransportClosed(f"relay connection closed: {self.ended}")
            if client is not None and client.connected:
                return client
            if client is not None and client.registrations > 0:
                why = client.lost_reason or "connection lost"
                raise TransportClosed(f"relay connection lost: {why}; reconnecting")
            if not self.attempting:
                retry = ""
                if self.retry_at is not None:
                    retry = f"; next try in {max(0.0, self.retry_at - trio.current_time()):.1f} s"
                raise TransportClosed(f"{self.last_error or _NOT_CONNECTED}{retry}")
            await self._changed.wait()

    # ----------------------------------------------------------------- running
    def close(self, reason: str) -> None:
        """Leave the relay: the client closes, and every circuit on it."""
        if self.ended is None:
            self.ended = reason
            self._notify()
        self._scope.cancel()

    async def run(
        self,
        invitations: trio.MemorySendChannel[tuple[Invitation, RelayClient]],
        on_ended: Callable[[RelayConnection], None],
    ) -> None:
        """Stay registered until `close` or cancellation (which closes the client and its
        circuits). Invitations go to `invitations` with the client they came on."""
        self._invitations = invitations
        try:
            with self._scope:
                await self._keep_registered()
        finally:
            self.attempting = False
            self._notify()
            on_ended(self)

    async def _keep_registered(self) -> None:
        while self.ended is None:
            client = self._new_client(self.entry)
            self.client = client
            self.attempting = True
            self._notify()
            try:
                async with open_hidden_nursery() as nursery:
                    await nursery.start(client.run)
                    self._registered()
                    await self._pump(client)  # returns once the client ended for good
                    nursery.cancel_scope.cancel()
                self.ended = client.close_reason or "closed"
                log.warning("relay connection to %s ended: %s", self.entry.label(), self.ended)
                return
            except (MeshError, OSError) as exc:
                why = str(exc) or type(exc).__name__
            self.attempting = False
            if self.role is not RelayRole.HOME:
                self.last_error = why
                self.ended = f"could not connect: {why}"
                log.info("relay %s: %s", self.entry.label(), why)
                return
            delay = self._backoff.next_delay()
            self.retry_at = trio.current_time() + delay
            level = logging.WARNING if why != self.last_error else logging.DEBUG
            log.log(level, "relay %s: %s; next try in %.1f s", self.entry.label(), why, delay)
            self.last_error = why
            self._notify()
            await trio.sleep(delay)
            self.retry_at = None

    def _registered(self) -> None:
        self.attempting = False
        self.last_error = None
        self.retry_at = None
        self._backoff.reset()
        self._notify()

    async def _pump(self, client: RelayClient) -> None:
        assert self._invitations is not None
        while True:
            try:
                invitation = await client.next_invitation()
            except RelayError:
                return
            await self._invitations.send((invitation, client))

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
        self._on_change()
