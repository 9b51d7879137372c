"""How many packets a reader takes from a descriptor per wakeup: a batch while packets keep
coming, one after a quiet spell (docs/tap.md, "Where a lone packet waits").

Reading a descriptor until it is empty ends in a read that fails (EAGAIN), which costs a
system call and, in Python, an exception, on a cold cache: more than the packet's own work
when packets come one at a time. After `gap_s` without a read, the next wakeup reads one
packet and returns to epoll; if more were waiting, epoll reports the descriptor again at once
and they are read as a batch. Sans-IO: the caller passes the time.
"""

from __future__ import annotations

from meshcore.proto.constants import LONE_PACKET_GAP_S

__all__ = ["ReadPace"]


class ReadPace:
    """The read budget of one descriptor's wakeups (see the module)."""

    __slots__ = ("_batch", "_gap_s", "_last")

    def __init__(self, batch: int, gap_s: float = LONE_PACKET_GAP_S) -> None:
        """`batch`: the most packets per wakeup while they keep coming; `gap_s`: after how
        long without a read a wakeup reads one (math.inf: never, 0: always)."""
        if batch < 1 or not gap_s >= 0:
            raise ValueError(f"a read pace needs batch >= 1 and gap_s >= 0, got {batch}, {gap_s}")
        self._batch = batch
        self._gap_s = gap_s
        self._last = float("-inf")

    def reads(self, now: float) -> int:
        """The most packets to read in the wakeup at `now` (which then counts as a read)."""
        quiet = now - self._last > self._gap_s
        self._last = now
        return 1 if quiet else self._batch
