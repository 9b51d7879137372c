"""The relay's flow control (sans-IO): which circuits are credited, their first grants after
Paired/CircuitOpen, and the credit handed back as each circuit's queue drains.

It sits beside the `Matchmaker`: the driver passes the matchmaker's outputs through `watch`
(which adds CircuitWindow and the first CircuitCredit after a circuit opens on a credited
connection, and forgets the lanes of a circuit that closed), asks `arrived` before queueing a
relayed frame and reports `drained` once it is written. docs/relay.md ("Flow control").
"""

from __future__ import annotations

from collections.abc import Callable

from meshcore.proto.constants import MAX_FRAME_BYTES, RELAY_INITIAL_CREDIT_BYTES
from meshcore.proto.credits import CreditGrant, CreditLedger, LaneKey
from meshcore.proto.limits import RelayLimits
from meshcore.proto.relayrecords import Output, Send
from meshcore.proto.wire import CircuitClose, CircuitCredit, CircuitOpen, CircuitWindow, Paired

__all__ = ["CreditGrant", "RelayFlow"]

Members = Callable[[int], "tuple[int, int] | None"]
"""circuit id -> (initiator conn id, responder conn id) of an open circuit, else None."""


class RelayFlow:
    """Per-circuit credits for the connections that agreed to them (the others keep the
    drop-tail queues); every credited byte is bounded by `limits.max_buffer_bytes`."""

    def __init__(self, limits: RelayLimits, members: Members) -> None:
        self.ledger = CreditLedger(
            max_buffer_bytes=limits.max_buffer_bytes,
            window_bytes=limits.circuit_window_bytes,
            initial_bytes=RELAY_INITIAL_CREDIT_BYTES,
            min_grant_bytes=MAX_FRAME_BYTES,
        )
        self._members = members
        self._credited: set[int] = set()
        self._lanes: dict[int, list[LaneKey]] = {}  # circuit id -> its credited lanes

    def connection_opened(self, conn_id: int, *, credited: bool) -> None:
        """A connection arrived; `credited` if it agreed to credits in the upgrade."""
        if credited:
            self._credited.add(conn_id)

    def credited(self, conn_id: int) -> bool:
        """Whether connection `conn_id` sends under credit."""
        return conn_id in self._credited

    def connection_closed(self, conn_id: int) -> list[CreditGrant]:
        """The connection is gone: its lanes (both ways) are forgotten; grants for others."""
        self._credited.discard(conn_id)
        out: list[CreditGrant] = []
        for key in self.ledger.lanes_of(conn_id):
            self._forget(key[0], key)
            out += self.ledger.close(key)
        return out

    def watch(self, outputs: list[Output]) -> list[Output | CreditGrant]:
        """The matchmaker's `outputs`, with what flow control adds after each: a new
        circuit's CircuitWindow and first CircuitCredit to each credited member, and the
        grants freed when a circuit closes."""
        out: list[Output | CreditGrant] = []
        for item in outputs:
            out.append(item)
            if type(item) is not Send:
                continue
            assert isinstance(item, Send)
            msg = item.message
            kind = type(msg)
            if kind is Paired or kind is CircuitOpen:
                assert isinstance(msg, Paired | CircuitOpen)
                if item.conn_id in self._credited:
                    self._open(item.conn_id, msg.circuit_id, out)
            elif kind is CircuitClose:
                assert isinstance(msg, CircuitClose)
                cid = msg.circuit_id
                if cid in self._lanes and self._members(cid) is None:
                    for key in self._lanes.pop(cid):
                        out += self.ledger.close(key)
        return out

    def arrived(self, receiver: int, circuit_id: int, size: int) -> bool | None:
        """A relayed payload of `size` bytes is to be queued for `receiver`: None if its lane
        is not credited (the drop-tail bounds apply), False if the sender overdrew its
        credit (drop it), True if it fits (queue it; `drained` when written)."""
        return self.ledger.arrived((circuit_id, receiver), size)

    def drained(self, receiver: int, circuit_id: int, size: int) -> list[CreditGrant]:
        """`size` payload bytes of the circuit were written to `receiver`: credit back."""
        return self.ledger.drained((circuit_id, receiver), size)

    def _open(self, sender: int, circuit_id: int, out: list[Output | CreditGrant]) -> None:
        members = self._members(circuit_id)
        if members is None or sender not in members:
            return
        receiver = members[1] if members[0] == sender else members[0]
        key = (circuit_id, receiver)
        if key in self.ledger:
            return
        lanes = self._lanes.setdefault(circuit_id, [])
        lanes.append(key)
        window = self.ledger.fair_window()
        out.append(Send(sender, CircuitWindow(circuit_id, window)))
        # The first grant is an ordinary control message, queued behind Paired/CircuitOpen:
        # the peer knows the circuit before it hears of its credit.
        for grant in self.ledger.open(key, sender):
            out.append(Send(grant.sender, CircuitCredit(grant.circuit_id, grant.credit)))

    def _forget(self, circuit_id: int, key: LaneKey) -> None:
        lanes = self._lanes.get(circuit_id)
        if lanes is not None and key in lanes:
            lanes.remove(key)
            if not lanes:
                del self._lanes[circuit_id]
