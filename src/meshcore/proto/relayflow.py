"""The relay's flow control (sans-IO): which circuits are credited, their first grants after
Paired/CircuitOpen, and the credit handed back as each circuit's queue drains.

It sits beside the `Matchmaker`: the driver passes the matchmaker's outputs through `watch`
(which adds CircuitWindow and the first CircuitCredit after a circuit opens on a credited
connection, and forgets the lanes of a circuit that closed), asks `arrived` before queueing a
relayed frame and reports `drained` once it is written. docs/relay.md ("Flow control").
"""

from __future__ import annotations

from meshcore.proto.circuitwatch import CircuitWatcher, Members
from meshcore.proto.constants import MAX_FRAME_BYTES, RELAY_INITIAL_CREDIT_BYTES
from meshcore.proto.credits import CreditGrant, CreditLedger, LaneKey
from meshcore.proto.limits import RelayLimits
from meshcore.proto.relayrecords import Output, Send
from meshcore.proto.wire import CircuitCredit, CircuitWindow

__all__ = ["CreditGrant", "RelayFlow"]


class RelayFlow(CircuitWatcher[CreditGrant]):
    """Per-circuit credits for the connections that agreed to them (the others keep the
    drop-tail queues); every credited byte is bounded by `limits.max_buffer_bytes`.
    `watch` (`CircuitWatcher`) adds the grants as circuits open and close."""

    def __init__(self, limits: RelayLimits, members: Members) -> None:
        super().__init__(members)
        self.ledger = CreditLedger(
            max_buffer_bytes=limits.max_buffer_bytes,
            window_bytes=limits.circuit_window_bytes,
            initial_bytes=RELAY_INITIAL_CREDIT_BYTES,
            min_grant_bytes=MAX_FRAME_BYTES,
        )
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

    def circuit_opened(
        self, conn_id: int, circuit_id: int, out: list[Output | CreditGrant]
    ) -> None:
        """A new circuit's CircuitWindow and first CircuitCredit, to a credited member."""
        if conn_id in self._credited:
            self._open(conn_id, circuit_id, out)

    def circuit_gone(self, circuit_id: int, out: list[Output | CreditGrant]) -> None:
        """A closed circuit's lanes are forgotten; the grants that frees for others."""
        for key in self._lanes.pop(circuit_id, ()):
            out += self.ledger.close(key)

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
