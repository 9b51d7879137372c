"""Anti-replay window for transport frame counters (RFC 6479, as in wireguard-go `replay/`).

One window per receive key. It is consulted only after a frame has authenticated, so a forged
frame can never move it (docs/crypto-spec.md §3.7, pitfall 8).
"""

from __future__ import annotations

from typing import Final

from meshcore.proto.constants import (
    REJECT_AFTER_MESSAGES,
    REPLAY_WINDOW_BITS,
    REPLAY_WINDOW_USABLE,
)

__all__ = ["ReplayWindow"]

_BLOCK_BITS: Final = 64
_BLOCK_SHIFT: Final = 6
_RING_BLOCKS: Final = REPLAY_WINDOW_BITS // _BLOCK_BITS  # 128
_RING_MASK: Final = _RING_BLOCKS - 1
_BIT_MASK: Final = _BLOCK_BITS - 1


class ReplayWindow:
    """Remembers which counters were accepted; accepts each counter at most once.

    A counter is acceptable when it is below `REJECT_AFTER_MESSAGES`, has not been accepted
    before, and is either above the highest accepted counter or less than
    `REPLAY_WINDOW_USABLE` (8128) below it. The bitmap is a ring of 128 u64 blocks, so moving
    the window forward clears whole blocks and never shifts the whole bitmap.
    """

    __slots__ = ("_ring", "_top")

    def __init__(self) -> None:
        self._top = -1
        self._ring = [0] * _RING_BLOCKS

    @property
    def highest(self) -> int:
        """The highest accepted counter, or -1 before the first."""
        return self._top

    def check(self, counter: int) -> bool:
        """Whether `counter` would be accepted now. Changes nothing."""
        top = self._top
        if counter > top:
            return counter < REJECT_AFTER_MESSAGES
        if counter < 0 or top - counter >= REPLAY_WINDOW_USABLE:
            return False
        word = self._ring[(counter >> _BLOCK_SHIFT) & _RING_MASK]
        return not (word >> (counter & _BIT_MASK)) & 1

    def update(self, counter: int) -> None:
        """Record `counter` as accepted. Call only after the frame authenticated and `check`
        said yes; an unacceptable counter is ignored, so the window never moves backwards."""
        self.accept(counter)

    def accept(self, counter: int) -> bool:
        """`check` then `update` in one step (the receive hot path): True if accepted now."""
        top = self._top
        ring = self._ring
        if counter > top:
            if counter >= REJECT_AFTER_MESSAGES:
                return False
            block = counter >> _BLOCK_SHIFT
            current = top >> _BLOCK_SHIFT
            if block != current:
                if block - current >= _RING_BLOCKS:
                    ring[:] = [0] * _RING_BLOCKS
                else:
                    for i in range(current + 1, block + 1):
                        ring[i & _RING_MASK] = 0
            self._top = counter
        elif counter < 0 or top - counter >= REPLAY_WINDOW_USABLE:
            return False
        index = (counter >> _BLOCK_SHIFT) & _RING_MASK
        bit = 1 << (counter & _BIT_MASK)
        word = ring[index]
        if word & bit:
            return False
        ring[index] = word | bit
        return True

    def __repr__(self) -> str:
        return f"ReplayWindow(highest={self._top})"
