"""The send side of a relay client's connection (`ClientLink`): the transport, the lock its
senders share, and the reader's cancel scope. Every circuit and request of the client
writes through it, so a sender cancelled mid-write must not cut the connection for all the
others (a session's writer is cancelled whenever its circuit is released).
"""

from __future__ import annotations

from typing import Final

import trio

from meshcore._transport import Transport
from meshcore.errors import TransportClosed

__all__ = ["ClientLink", "send_quietly"]

_SEND_SHIELD_S: Final = 5.0
"""A write may go on this long after its sender was cancelled."""


class ClientLink:
    """One connection to the relay: its transport, the lock its senders share, and the
    reader's cancel scope, cancelled to close it."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.lock = trio.Lock()
        self.scope = trio.CancelScope()
        self.close_reason: str | None = None

    async def send(self, data: bytes) -> None:
        """Send one message. Cancelled while waiting for the lock, nothing was sent; once
        writing, it finishes (within `_SEND_SHIELD_S`): a half-written message would cut the
        connection every circuit shares (a circuit's writer is cancelled on its release)."""
        async with self.lock:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(_SEND_SHIELD_S) as bound:
                    await self.transport.send(data)
        if bound.cancelled_caught:  # the transport has cut itself: the relay stopped reading
            raise TransportClosed(f"the relay took no message for {_SEND_SHIELD_S:g} s")

    async def send_many(self, messages: list[bytes]) -> None:
        """Send `messages` in order, written together; on cancellation as `send`."""
        async with self.lock:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(_SEND_SHIELD_S) as bound:
                    await self.transport.send_many(messages)
        if bound.cancelled_caught:
            raise TransportClosed(f"the relay took no message for {_SEND_SHIELD_S:g} s")

    def close(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            self.scope.cancel()


async def send_quietly(link: ClientLink, sends: list[bytes]) -> None:
    """Send `sends` in order; a connection that is gone is the reader's to notice."""
    try:
        for data in sends:
            await link.send(data)
    except TransportClosed:
        pass  # the reader sees the connection end
