"""The relay's credit ledger (sans-IO): how many relayed bytes each credited circuit direction
may send, so that the relay's memory stays under one bound shared fairly by the circuits.

A lane is one direction of one circuit, named by (circuit id, receiving connection). Its
sender holds `credit` (bytes it may still send) and the relay holds `queued` (bytes that
arrived and are not yet written to the receiver). The ledger keeps, at every moment,

    sum over lanes of (credit + queued) <= max_buffer_bytes     and
    credit + queued <= window_bytes for every lane,

so a sender that stays within its credit can never make the relay drop or grow. Credit comes
back as the receiver's queue drains; docs/relay.md ("Flow control") has the rules.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import attrs

__all__ = ["CreditGrant", "CreditLedger", "LaneKey"]

LaneKey = tuple[int, int]
"""(circuit id, receiving connection id): one direction of one circuit."""

_BATCH_DIVISOR: Final = 4
"""Credit is handed back in pieces of at least a quarter of the lane's limit (or, once the
lane's queue is empty, all of it to a sender left with less than one frame), so neither a
stream of small frames nor a sender that waits for every byte costs a grant per frame."""


@attrs.frozen
class CreditGrant:
    """Tell `sender` (a connection id) it may send `credit` more bytes on `circuit_id`."""

    sender: int
    circuit_id: int
    credit: int


@attrs.define(slots=True, eq=False)
class _Lane:
    sender: int
    limit: int
    """What this lane may hold now (credit + queued): grows with the traffic it carries, up
    to the fair window."""
    credit: int = 0
    queued: int = 0


class CreditLedger:
    """Credit accounting for every credited lane of one relay.

    `window_bytes` caps one lane; `max_buffer_bytes` caps all of them together; a lane's
    fair window is `min(window_bytes, max(min_grant_bytes, max_buffer_bytes // lanes))`.
    A new lane starts with `initial_bytes` (at most its fair window) and grows by what it
    drains, so an idle circuit holds only its first grant.
    `min_grant_bytes` (the largest payload) is the least a lane is ever limited to, so
    every frame can eventually be sent.
    """

    def __init__(
        self,
        *,
        max_buffer_bytes: int,
        window_bytes: int,
        initial_bytes: int,
        min_grant_bytes: int,
    ) -> None:
        if not 0 < min_grant_bytes <= window_bytes <= max_buffer_bytes:
            raise ValueError(
                "need 0 < min_grant_bytes <= window_bytes <= max_buffer_bytes, got "
                f"{min_grant_bytes}, {window_bytes}, {max_buffer_bytes}"
            )
        self.max_buffer_bytes = max_buffer_bytes
        self.window_bytes = window_bytes
        self.initial_bytes = max(min_grant_bytes, min(initial_bytes, window_bytes))
        self.min_grant_bytes = min_grant_bytes
        self._lanes: dict[LaneKey, _Lane] = {}
        self._starved: OrderedDict[LaneKey, None] = OrderedDict()
        """Lanes the budget could not serve, in the order they waited: served first."""
        self.held = 0
        """Bytes granted or queued over every lane (never above `max_buffer_bytes`)."""
        self.overdrawn = 0
        """Frames that arrived without enough credit (a sender breaking the rules)."""

    def __len__(self) -> int:
        return len(self._lanes)

    def __contains__(self, key: LaneKey) -> bool:
        return key in self._lanes

    @property
    def queued(self) -> int:
        """Bytes that arrived on credited lanes and are not yet written to their receiver."""
        return sum(lane.queued for lane in self._lanes.values())

    def fair_window(self) -> int:
        """The most one lane may hold now: its share of the bound, within the caps."""
        share = self.max_buffer_bytes // max(1, len(self._lanes))
        return min(self.window_bytes, max(self.min_grant_bytes, share))

    def lane(self, key: LaneKey) -> tuple[int, int, int] | None:
        """(credit, queued, limit) of a lane, None if it is not credited."""
        lane = self._lanes.get(key)
        return None if lane is None else (lane.credit, lane.queued, lane.limit)

    def open(self, key: LaneKey, sender: int) -> list[CreditGrant]:
        """Credit a new lane whose sender is connection `sender`; returns its first grant
        (none if the budget is spent: the lane waits for others to drain). Opening a lane
        that is already open changes nothing."""
        if key in self._lanes:
            return []
        self._lanes[key] = _Lane(sender, min(self.initial_bytes, self.fair_window()))
        out: list[CreditGrant] = []
        self._top_up(key, self._lanes[key], out, eager=True)
        return out

    def arrived(self, key: LaneKey, size: int) -> bool | None:
        """A `size`-byte payload arrived on lane `key`: None if the lane is not credited,
        False if it exceeds the sender's credit (drop it; nothing changes), else True and
        the bytes count as queued until `drained`."""
        lane = self._lanes.get(key)
        if lane is None:
            return None
        if size > lane.credit:
            self.overdrawn += 1
            return False
        lane.credit -= size
        lane.queued += size
        return True

    def drained(self, key: LaneKey, size: int) -> list[CreditGrant]:
        """`size` queued bytes of lane `key` were written to its receiver: the credit to
        hand back (to this lane, and to lanes that waited for the budget)."""
        lane = self._lanes.get(key)
        if lane is None:
            return []
        size = min(size, lane.queued)
        lane.queued -= size
        self.held -= size
        # A lane that carries traffic grows by what it carried (slow start by bytes), up to
        # its fair window. (Whether the sender waits cannot be seen from here: its credit in
        # the ledger still counts the bytes in flight towards the relay.)
        lane.limit = min(self.fair_window(), lane.limit + size)
        out: list[CreditGrant] = []
        self._serve_starved(out)
        # Hand back in batches; the rest once the queue is empty if the sender may be waiting
        # (it holds less than the largest frame), which keeps every lane live.
        eager = lane.queued == 0 and lane.credit < self.min_grant_bytes
        self._top_up(key, lane, out, eager=eager)
        return out

    def close(self, key: LaneKey) -> list[CreditGrant]:
        """Forget lane `key` (its circuit closed), giving its credit and queue back to the
        budget: grants for lanes that waited for it."""
        lane = self._lanes.pop(key, None)
        if lane is None:
            return []
        self._starved.pop(key, None)
        self.held -= lane.credit + lane.queued
        out: list[CreditGrant] = []
        self._serve_starved(out)
        return out

    def lanes_of(self, conn_id: int) -> list[LaneKey]:
        """Every lane connection `conn_id` sends or receives on."""
        return [k for k, lane in self._lanes.items() if k[1] == conn_id or lane.sender == conn_id]

    # --- granting ----------------------------------------------------------------------------

    def _top_up(self, key: LaneKey, lane: _Lane, out: list[CreditGrant], *, eager: bool) -> None:
        want = lane.limit - lane.credit - lane.queued
        if want <= 0 or (not eager and want < lane.limit // _BATCH_DIVISOR):
            return
        grant = min(want, self.max_buffer_bytes - self.held)
        if grant < want and grant < self.min_grant_bytes:
            # Too little left to be useful: wait for the budget, first in line.
            self._starved[key] = None
            return
        lane.credit += grant
        self.held += grant
        out.append(CreditGrant(lane.sender, key[0], grant))
        if grant < want:
            self._starved[key] = None

    def _serve_starved(self, out: list[CreditGrant]) -> None:
        while self._starved and self.max_buffer_bytes - self.held >= self.min_grant_bytes:
            key, _ = self._starved.popitem(last=False)
            lane = self._lanes.get(key)
            if lane is not None:
                lane.limit = min(lane.limit, self.fair_window())
                self._top_up(key, lane, out, eager=True)
