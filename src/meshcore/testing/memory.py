"""In-memory Transport pairs for fast tests of sessions, with a hook for a hostile middle,
and `LossyNetwork`, a middle that loses, duplicates and reorders frames.

They follow the Transport rules exactly (`meshcore.Transport`): bounded queues that push
back on the sender, `TransportClosed(reason)` after a close, queued messages still delivered
after the *remote* closed, nothing more after a *local* close.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable

import trio

from meshcore._transport import Transport
from meshcore.errors import TransportClosed
from meshcore.proto.constants import MAX_CONTROL_BYTES, TRANSPORT_RECEIVE_QUEUE_MESSAGES
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.packet import PacketType, packet_type_of

__all__ = [
    "Direction",
    "LossyNetwork",
    "MemoryTransport",
    "MessageFilter",
    "memory_transport_pair",
]


class Direction(enum.Enum):
    """Which way a message is travelling between the two ends of a pair."""

    A_TO_B = "a->b"
    B_TO_A = "b->a"


MessageFilter = Callable[[Direction, bytes], Iterable[bytes]]
"""Called for every message in flight; yields what arrives instead: nothing (drop), one
message (pass or alter), several (duplicate). A stateful filter can hold a message back and
release it with a later one, which reorders."""


class LossyNetwork:
    """A `MessageFilter` that loses, duplicates and reorders a session's sealed frames: the
    bad network a protocol on top of a Session has to survive.

    Each frame is lost with probability `loss`, else sent twice with `duplicate`, else held
    back with `reorder` until the next frame in the same direction overtakes it. Choices come
    from `rng`: give it hypothesis's `st.randoms()` so that a failing run shrinks and replays.
    Handshake messages pass untouched (the handshake resends msg1 but a lost msg3 would cost
    a whole handshake timeout); the counters say what the network did.
    """

    def __init__(
        self,
        rng: random.Random,
        *,
        loss: float = 0.05,
        duplicate: float = 0.02,
        reorder: float = 0.05,
    ) -> None:
        for name, value in (("loss", loss), ("duplicate", duplicate), ("reorder", reorder)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if loss + duplicate + reorder >= 1:
            raise ValueError("loss + duplicate + reorder must stay below 1: some frames must pass")
        self._rng = rng
        self._loss = loss
        self._duplicate = loss + duplicate
        self._reorder = loss + duplicate + reorder
        self._held: dict[Direction, bytes] = {}
        self.passed = 0
        self.lost = 0
        self.duplicated = 0
        self.reordered = 0

    def __call__(self, direction: Direction, data: bytes) -> list[bytes]:
        if packet_type_of(data) is not PacketType.FRAME:
            return [data]
        roll = self._rng.random()
        if roll < self._loss:
            self.lost += 1
            return []
        if roll < self._duplicate:
            self.duplicated += 1
            out = [data, data]
        elif roll < self._reorder and direction not in self._held:
            self.reordered += 1
            self._held[direction] = data
            return []
        else:
            out = [data]
        self.passed += 1
        held = self._held.pop(direction, None)
        if held is not None:
            out.append(held)  # overtaken by `data`
        return out


class MemoryTransport(Transport):
    """One end of `memory_transport_pair`."""

    def __init__(
        self,
        direction: Direction,
        outgoing: trio.MemorySendChannel[bytes],
        incoming: trio.MemoryReceiveChannel[bytes],
        *,
        filter: MessageFilter | None,
        max_message: int,
        local_address: Endpoint | None,
        remote_address: Endpoint | None,
    ) -> None:
        self._direction = direction
        self._outgoing = outgoing
        self._incoming = incoming
        self._filter = filter
        self._max_message = max_message
        self._local_address = local_address
        self._remote_address = remote_address
        self._close_reason: str | None = None
        self.peer: MemoryTransport | None = None
        """The other end (set by `memory_transport_pair`)."""

    @property
    def local_address(self) -> Endpoint | None:
        return self._local_address

    @property
    def remote_address(self) -> Endpoint | None:
        return self._remote_address

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    async def send(self, data: bytes) -> None:
        """Send through the filter; blocks while the other end's queue is full.

        Raises TransportClosed once either end closed, ValueError over `max_message`.
        """
        if self._close_reason is not None:
            raise TransportClosed(self._close_reason)
        if len(data) > self._max_message:
            raise ValueError(f"message of {len(data)} bytes is over the {self._max_message} limit")
        delivered = [data] if self._filter is None else self._filter(self._direction, data)
        try:
            for message in delivered:
                await self._outgoing.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise TransportClosed(self._close_reason or "closed") from None

    async def receive(self) -> bytes:
        """Return the next message; raises TransportClosed once closed (and drained)."""
        try:
            return await self._incoming.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise TransportClosed(self._close_reason or "closed") from None

    async def aclose(self, reason: str = "closed") -> None:
        """Close both directions; the other end sees `reason` after draining its queue."""
        if self._close_reason is None:
            self._close_reason = reason
            if self.peer is not None and self.peer._close_reason is None:
                self.peer._close_reason = reason
        self._incoming.close()
        self._outgoing.close()
        await trio.lowlevel.checkpoint()


def memory_transport_pair(
    capacity: int = TRANSPORT_RECEIVE_QUEUE_MESSAGES,
    *,
    filter: MessageFilter | None = None,
    max_message: int = MAX_CONTROL_BYTES,
    addresses: tuple[Endpoint, Endpoint] | None = None,
) -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected in-memory Transports (a, b); each direction queues `capacity` messages.

    `filter` sees every message in flight (see `MessageFilter`). `addresses`, if given, are
    a's and b's addresses as the other end reports them. No tasks: nothing to clean up
    beyond `aclose()`.
    """
    a_to_b_send, a_to_b_receive = trio.open_memory_channel[bytes](capacity)
    b_to_a_send, b_to_a_receive = trio.open_memory_channel[bytes](capacity)
    a_address, b_address = addresses if addresses is not None else (None, None)
    a = MemoryTransport(
        Direction.A_TO_B,
        a_to_b_send,
        b_to_a_receive,
        local_address=a_address,
        remote_address=b_address,
        filter=filter,
        max_message=max_message,
    )
    b = MemoryTransport(
        Direction.B_TO_A,
        b_to_a_send,
        a_to_b_receive,
        local_address=b_address,
        remote_address=a_address,
        filter=filter,
        max_message=max_message,
    )
    a.peer, b.peer = b, a
    return a, b
