"""The receiving half of a session core (`meshcore.proto.session`): the next sequence number
due, the reorder buffer of messages that arrived ahead of a gap, where the peer ended its
stream (its Eof), and the acknowledgement owed for what arrived (docs/protocol.md).
"""

from __future__ import annotations

import enum
from collections.abc import Callable

__all__ = ["Arrival", "Inbound"]


class Arrival(enum.Enum):
    """What `Inbound.accept` made of one sequenced message."""

    DELIVERED = "delivered"
    """Next in order: delivered, with every buffered message it unblocked."""
    EARLY = "early"
    """Ahead of a gap: buffered (ack at once, so the sender learns of the loss)."""
    OLD = "old"
    """Delivered before: the sender missed our ack (ack again at once)."""
    REPEAT = "repeat"
    """Buffered already: dropped."""
    BEYOND = "beyond"
    """Further ahead than the reorder buffer holds: dropped unacknowledged."""


class Inbound:
    """Sequence numbers, reorder buffer and owed acknowledgements of one receiving side."""

    __slots__ = (
        "ack_sent",
        "buffered",
        "eof_delivered",
        "eof_seq",
        "held",
        "next_seq",
        "owed_bytes",
        "owed_frames",
        "owed_since",
        "reorder_frames",
    )

    def __init__(self, reorder_frames: int) -> None:
        self.reorder_frames = reorder_frames
        self.next_seq = 0
        """The next sequence number to deliver: what our acks say."""
        self.buffered: dict[int, bytes | None] = {}
        """Messages ahead of a gap (None: the peer's Eof)."""
        self.eof_seq: int | None = None
        """The peer's Eof's sequence number, once seen (maybe out of order)."""
        self.eof_delivered = False
        """The peer's Eof was delivered: every message it sent has arrived."""
        self.ack_sent = 0
        self.owed_since: float | None = None
        """When the oldest unacknowledged arrival came (None: nothing owed)."""
        self.owed_frames = 0
        self.owed_bytes = 0
        self.held = False
        """Acknowledgements withheld (the application is not reading)."""

    def end_at(self, seq: int) -> str | None:
        """The peer ended its stream at `seq`: None if that fits what it sent, else why it
        breaks the protocol."""
        if self.eof_seq is None:
            if seq < self.next_seq or any(k > seq for k in self.buffered):
                return f"peer ended its stream at message {seq}, before messages it sent"
            self.eof_seq = seq
        elif seq != self.eof_seq:
            return f"peer ended its stream twice, at messages {self.eof_seq} and {seq}"
        return None

    def accept(
        self, seq: int, payload: bytes | None, deliver: Callable[[bytes | None], None]
    ) -> Arrival:
        """Take message `seq` (None: the Eof); `deliver` gets every message now in order."""
        nxt = self.next_seq
        if seq < nxt:
            return Arrival.OLD
        if seq >= nxt + self.reorder_frames:
            return Arrival.BEYOND
        if seq != nxt:
            if seq in self.buffered:
                return Arrival.REPEAT
            self.buffered[seq] = payload
            return Arrival.EARLY
        self._step(payload, deliver)
        while self.next_seq in self.buffered:
            self._step(self.buffered.pop(self.next_seq), deliver)
        return Arrival.DELIVERED

    def _step(self, payload: bytes | None, deliver: Callable[[bytes | None], None]) -> None:
        self.next_seq += 1
        if payload is None:
            self.eof_delivered = True
        deliver(payload)

    @property
    def ack(self) -> int:
        """The ack to piggyback on what we send: everything delivered, unless withheld."""
        return self.ack_sent if self.held else self.next_seq

    def owe(self, now: float, nbytes: int) -> None:
        """One more arrival (of `nbytes`) is owed an acknowledgement."""
        self.owed_frames += 1
        self.owed_bytes += nbytes
        if self.owed_since is None:
            self.owed_since = now

    @property
    def ack_owed(self) -> bool:
        """Something arrived since our last ack, and acks are not withheld."""
        return self.owed_since is not None and not self.held

    def ack_due_at(self, delay_s: float) -> float | None:
        """When the delayed ack is due (None: nothing owed, or acks are withheld)."""
        if self.owed_since is None or self.held:
            return None
        return self.owed_since + delay_s

    def mark_acked(self) -> None:
        """Everything delivered so far was just acknowledged."""
        self.ack_sent = self.next_seq
        self.owed_since = None
        self.owed_frames = 0
        self.owed_bytes = 0
