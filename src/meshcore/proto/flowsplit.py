"""Which tunnel frames may take the datagram path without overtaking their own flow
(docs/datagram.md, "Ordering inside the tunnel").

A small frame sent by UDP arrives before the large frames of its flow still queued for the
reliable session. TCP inside the tunnel takes that reordering for loss (duplicate acks, a
fast retransmit, a halved window): on a 30 ms path one bulk stream fell from 542 to 88
Mbit/s. So a flow that sent a frame too large for a datagram in the last `hold_s` keeps all
its frames on the session; a flow of only small frames (a ping, DNS, an interactive shell,
the acknowledgements of a stream going the other way) goes by UDP.

Flows are slots of a fixed table indexed by a hash of the inner 5-tuple
(`proto.fqcodel.flow_key`): two flows that share a slot only ever keep each other on the
session, the safe side. Sans-IO: the caller passes the time.
"""

from __future__ import annotations

from typing import Final

from meshcore.proto.fqcodel import flow_key

__all__ = ["FLOW_SPLIT_HOLD_S", "FLOW_SPLIT_SLOTS", "FlowSplit"]

FLOW_SPLIT_SLOTS: Final = 1024
"""Slots of the flow table (memory: one float each)."""
FLOW_SPLIT_HOLD_S: Final = 2.0
"""How long after its last large frame a flow's small frames still go by the session:
longer than a frame waits in the tunnel's queue and window on any path it uses."""


class FlowSplit:
    """Per peer: remembers which flows recently sent large frames (see the module)."""

    __slots__ = ("_hold_s", "_large_at", "_last_large", "_offset")

    def __init__(
        self, offset: int = 0, *, slots: int = FLOW_SPLIT_SLOTS, hold_s: float = FLOW_SPLIT_HOLD_S
    ) -> None:
        """`offset`: where the Ethernet frame starts in each frame (the virtio-net header)."""
        if slots < 1 or hold_s < 0:
            raise ValueError(
                f"a flow split needs slots >= 1 and hold_s >= 0, got {slots}, {hold_s}"
            )
        self._offset = offset
        self._hold_s = hold_s
        self._large_at = [float("-inf")] * slots
        self._last_large = float("-inf")
        """The latest of `_large_at`: while it is older than the hold, no flow is held back
        and a small frame needs no flow key (a lone ping's path)."""

    def _slot(self, frame: bytes) -> int:
        return hash(flow_key(frame, self._offset)) % len(self._large_at)

    def sent_large(self, frame: bytes, now: float) -> None:
        """`frame` goes by the session because it is too large for a datagram."""
        self._large_at[self._slot(frame)] = now
        if now > self._last_large:
            self._last_large = now

    def may_send_datagram(self, frame: bytes, now: float) -> bool:
        """Whether the small `frame` may go by UDP without overtaking its flow's large ones."""
        hold = self._hold_s
        if now - self._last_large > hold:
            return True
        return now - self._large_at[self._slot(frame)] > hold
