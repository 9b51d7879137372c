"""What the relay client hands out (trio): a relayed circuit as a Transport, and the records
of a pairing and of an invitation. The client (`meshcore._client`) owns every circuit; a
circuit only asks it to send and to release, through `CircuitOwner`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import attrs
import trio

from meshcore._transport import Transport
from meshcore.errors import TransportClosed
from meshcore.proto import wire
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import PeerId, PublicBundle

__all__ = ["CircuitOwner", "CircuitTransport", "Invitation", "Pairing", "UdpRoute"]

_CIRCUIT_QUEUE = 512
_CREDIT_WAIT_S = 1.0
"""How long a send waits for credit before the relay counts as no longer granting it."""
_RELEASE_TIMEOUT_S = 1.0
"""How long closing a circuit may wait to tell the relay (shielded from cancellation)."""


class CircuitOwner(Protocol):
    """What a circuit needs from the relay client that owns it."""

    @property
    def transport(self) -> Transport:
        """The current relay connection."""
        ...

    @property
    def url(self) -> str:
        """The relay's URL."""
        ...

    def max_window(self, circuit_id: int) -> int:
        """The largest window a session may use on the circuit."""
        ...

    def udp_route(self, circuit_id: int) -> tuple[bytes, int] | None:
        """(token, the relay's UDP port) if the relay forwards the circuit's datagrams."""
        ...

    async def send_relayed(self, circuit_id: int, payload: bytes) -> None:
        """Send `payload` on the circuit; raises `TransportClosed` if it is gone."""
        ...

    async def send_relayed_many(self, circuit_id: int, payloads: Sequence[bytes]) -> None:
        """Send `payloads` on the circuit in order, written together where the credit allows."""
        ...

    async def release_circuit(self, circuit_id: int, reason: str) -> None:
        """Tell the relay (and so the peer) that the circuit is closed."""
        ...


@attrs.frozen
class UdpRoute:
    """Where a circuit's sealed datagrams go by UDP: the relay's `host` (the address its
    WebSocket connection reached) and UDP `port`, each prefixed by `token` (docs/datagram.md)."""

    host: str
    port: int
    token: bytes = attrs.field(repr=False)


class CircuitTransport(Transport):
    """One relayed circuit to a paired peer, as a message-oriented Transport.

    Frames travel inside `Relayed` control messages; the relay sees only opaque bytes. A
    circuit belongs to one relay connection: it closes when that connection is lost.
    """

    def __init__(
        self, client: CircuitOwner, circuit_id: int, peer_id: PeerId, first: bytes | None = None
    ) -> None:
        self._client = client
        self.circuit_id = circuit_id
        self.peer_id = peer_id
        self._send_q, self._recv_q = trio.open_memory_channel[bytes](_CIRCUIT_QUEUE)
        self._close_reason: str | None = None
        self._unread = first
        """A frame already taken from the circuit (to route it), still to be read."""
        self.dropped = 0
        """Frames lost because nobody read them fast enough (the session retransmits)."""
        self._credit = trio.lowlevel.ParkingLot()
        self._stalled = False  # a wait for credit timed out, and no grant came since

    @property
    def local_address(self) -> Endpoint | None:
        return self._client.transport.local_address

    @property
    def remote_address(self) -> Endpoint | None:
        return self._client.transport.remote_address

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    @property
    def relay_url(self) -> str | None:
        return self._client.url

    @property
    def max_window(self) -> int:
        """The largest window (bytes in flight) a session may use on this circuit: the
        credit window the relay grants it (CircuitWindow), or, from a relay without credits,
        the window that fits its drop-tail circuit queue (RELAY_UNCREDITED_WINDOW_BYTES).
        A session following the path's bandwidth-delay product stays at or under it."""
        return self._client.max_window(self.circuit_id)

    @property
    def udp_route(self) -> UdpRoute | None:
        """The circuit's UDP route through the relay (CircuitUdp), None if the relay does not
        forward its datagrams (an older relay, UDP off there, or a peer without it)."""
        route = self._client.udp_route(self.circuit_id)
        remote = self.remote_address
        if route is None or remote is None:
            return None
        return UdpRoute(remote.host, route[1], route[0])

    async def send(self, data: bytes) -> None:
        """Send one frame; on a credited circuit, waits for the relay's credit first.
        Cancelling the wait sends nothing."""
        if self._close_reason is not None:
            raise TransportClosed(self._close_reason)
        await self._client.send_relayed(self.circuit_id, data)

    async def send_many(self, messages: Sequence[bytes]) -> None:
        """Send frames in order, as many as the relay's credit covers in one write (a link's
        whole batch: one message to the relay's socket, not one per frame). Cancelled, the
        frames before the one waiting for credit have been sent."""
        if self._close_reason is not None:
            raise TransportClosed(self._close_reason)
        await self._client.send_relayed_many(self.circuit_id, messages)

    async def receive_batch(self) -> list[bytes]:
        """The next frame and every one already queued behind it. Cancel-safe."""
        batch = [await self.receive()]
        receive_nowait = self._recv_q.receive_nowait
        while len(batch) < _CIRCUIT_QUEUE:
            try:
                batch.append(receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        return batch

    async def receive(self) -> bytes:
        if self._unread is not None:
            data, self._unread = self._unread, None
            return data
        try:
            return await self._recv_q.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise TransportClosed(self._close_reason or "circuit closed") from None

    async def aclose(self, reason: str = "closed") -> None:
        """Close the circuit and tell the relay (which tells the peer); waits at most 1 s for
        that, shielded from cancellation."""
        if self._close_reason is not None:
            return
        self.mark_closed(reason)
        with trio.move_on_after(_RELEASE_TIMEOUT_S) as scope:
            scope.shield = True
            await self._client.release_circuit(self.circuit_id, reason)

    def deliver(self, payload: bytes) -> None:
        """A frame arrived (called by the client). A full queue drops it, like a lossy link:
        the session retransmits."""
        try:
            self._send_q.send_nowait(payload)
        except trio.WouldBlock:
            self.dropped += 1
        except trio.ClosedResourceError:
            pass

    async def wait_for_credit(self) -> bool:
        """Wait until the relay grants credit or the circuit closes (True), at most 1 s (called
        by the client). False if the relay stopped granting: the frame then goes without
        credit, as to a relay without credits, and so do the next ones, without waiting,
        until a grant comes (a dead relay must be noticed by sending, not hidden by waits)."""
        if self._stalled:
            return False
        if self._close_reason is None:
            with trio.move_on_after(_CREDIT_WAIT_S):
                await self._credit.park()
                return True
            self._stalled = True
            return False
        return True

    def credit_granted(self) -> None:
        """The relay granted credit (called by the client): wake the waiting senders."""
        self._stalled = False
        self._credit.unpark_all()

    def mark_closed(self, reason: str) -> None:
        """The circuit ended (called by the client, or by `aclose`): frames already queued
        can still be read, then `receive` raises `TransportClosed(reason)`."""
        if self._close_reason is None:
            self._close_reason = reason
            self._send_q.close()
            self._credit.unpark_all()


@attrs.frozen
class Pairing:
    """What the relay told us about a peer we were paired with, checked end to end."""

    circuit: CircuitTransport
    peer: PublicBundle
    peer_observed: Endpoint
    peer_candidates: tuple[Endpoint, ...]
    role: wire.Role

    @property
    def peer_id(self) -> PeerId:
        return self.peer.peer_id


@attrs.frozen
class Invitation:
    """A peer asked the relay to be paired with us; accept or reject it."""

    request_id: int
    initiator: PeerId
    bundle_x25519: bytes
    bundle_kem: bytes
    observed: Endpoint
    candidates: tuple[Endpoint, ...]
    connection: int = attrs.field(default=0, repr=False)
    """Which relay connection of ours it came on (`RelayClient.registrations`)."""
    accepted: Pairing | None = attrs.field(default=None, repr=False)
    """Set when the client already accepted it (a peer we have a session with paired again
    and opened a new session instead): `accept` returns this."""
