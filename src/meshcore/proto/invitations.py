"""The relay's pending pairings: who asked whom, the invitation ids, their deadlines, and the
rules that bound them (docs/relay.md, *Pairing*). Part of the `Matchmaker`, sans-IO.

A `Connect` from A becomes an invitation to B under an id the relay chose per target; B's
`Accept` pairs them on a new circuit, B's `Reject` (or its silence) refuses. Each table is
capped, and one initiator has at most one invitation pending per target.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Final

from meshcore.proto.admission import connect_refusal
from meshcore.proto.circuits import CircuitTable, circuit_text
from meshcore.proto.limits import RelayLimits
from meshcore.proto.relayrecords import ConnRecord, InviteRecord, LogEvent, Output, Send, TimerHeap
from meshcore.proto.wire import Accept, Connect, ErrorCode, Reject, Role, clip_reason

__all__ = ["TIMER_INVITE", "Invitations"]

TIMER_INVITE: Final = 1
"""The kind of an invitation's entries in the matchmaker's `TimerHeap`."""


class Invitations:
    """Every pending invitation of one relay, kept on the connection records of both sides.

    `live` counts the objects with a live deadline (for the timer heap's compaction); `random`
    supplies invitation ids; `refused` counts a refused pairing by its code and `paired` a
    pairing made (the relay's counters).
    """

    def __init__(
        self,
        limits: RelayLimits,
        circuits: CircuitTable,
        timers: TimerHeap,
        live: Callable[[], int],
        random: Callable[[int], bytes],
        refused: Callable[[ErrorCode], None],
        paired: Callable[[], None],
    ) -> None:
        self._refused = refused
        self._paired = paired
        self._limits = limits
        self._circuits = circuits
        self._timers = timers
        self._live = live
        self._random = random
        self.count = 0
        """Invitations pending now."""

    def is_live(self, seq: int, invite: InviteRecord) -> bool:
        """Is `seq` the current deadline of a still pending `invite`?"""
        return invite.timer_seq == seq and invite.target.invites_in.get(invite.invite_id) is invite

    def request(
        self,
        conn: ConnRecord,
        msg: Connect,
        target: ConnRecord | None,
        departed: Container[bytes],
        now: float,
    ) -> list[Output]:
        """`conn` asks to be paired with `target` (None: not registered here; `departed`: the
        peers that were, and left): invite the target, or refuse at once."""
        rid = msg.request_id
        limits = self._limits
        refusal = connect_refusal(
            conn,
            msg,
            target,
            departed=departed,
            circuits=self._circuits,
            limits=limits,
            now=now,
        )
        if refusal is not None:
            self._refused(refusal[0])
            return [Send(conn.conn_id, Reject(rid, *refusal))]
        assert target is not None
        invite_id = self._new_invite_id(target)
        invite = InviteRecord(invite_id, conn, rid, target, now + limits.invite_timeout_s)
        target.invites_in[invite_id] = invite
        conn.invites_out[rid] = invite
        self.count += 1
        invite.timer_seq = self._timers.push(invite.deadline, TIMER_INVITE, invite, self._live())
        return [
            Send(target.conn_id, conn.as_invite(invite_id)),
            LogEvent("invited", {"a": conn.peer_text, "b": target.peer_text}, "debug"),
        ]

    def accept(self, conn: ConnRecord, msg: Accept, now: float) -> list[Output]:
        """The target said yes: pair both on a new circuit (capacity permitting)."""
        invite = self._take(conn, msg.request_id)
        if invite is None:
            reason = "no pending invitation with this request id (expired or withdrawn)"
            return [Send(conn.conn_id, Reject(msg.request_id, ErrorCode.NOT_ALLOWED, reason))]
        a, b = invite.initiator, conn
        full = self._circuits.capacity(a, b)
        if full:
            self._refused(ErrorCode.CAPACITY)
            return [
                Send(a.conn_id, Reject(invite.request_id, ErrorCode.CAPACITY, full)),
                Send(b.conn_id, Reject(msg.request_id, ErrorCode.CAPACITY, full)),
            ]
        circuit = self._circuits.open(a, b, now)
        self._paired()
        cid = circuit.circuit_id
        for x, y in ((a, b), (b, a)):
            x.paired[y.peer] = None
            x.paired.move_to_end(y.peer)
            if len(x.paired) > self._limits.max_circuits_per_peer:
                x.paired.popitem(last=False)
        return [
            Send(a.conn_id, b.as_paired(invite.request_id, cid, Role.INITIATOR)),
            Send(b.conn_id, a.as_paired(msg.request_id, cid, Role.RESPONDER)),
            LogEvent("paired", {"a": a.peer_text, "b": b.peer_text, "circuit": circuit_text(cid)}),
        ]

    def reject(self, conn: ConnRecord, msg: Reject) -> list[Output]:
        """The target said no: tell the initiator why."""
        invite = self._take(conn, msg.request_id)
        if invite is None:
            return []  # already expired or withdrawn: nothing to tell anyone
        code = ErrorCode.REJECTED if msg.code is ErrorCode.NONE else msg.code
        self._refused(code)
        reason = clip_reason(f"the peer refused: {msg.reason or code.name}")
        return [
            Send(invite.initiator.conn_id, Reject(invite.request_id, code, reason)),
            LogEvent(
                "rejected",
                {
                    "a": invite.initiator.peer_text,
                    "b": conn.peer_text,
                    "code": code.name,
                    "reason": msg.reason,
                },
            ),
        ]

    def expire(self, invite: InviteRecord, out: list[Output]) -> None:
        """The target did not answer in time: both sides are told."""
        self._take(invite.target, invite.invite_id)
        self._refused(ErrorCode.TIMEOUT)
        out.append(
            Send(
                invite.initiator.conn_id,
                Reject(invite.request_id, ErrorCode.TIMEOUT, "the peer did not answer in time"),
            )
        )
        out.append(
            Send(
                invite.target.conn_id,
                Reject(invite.invite_id, ErrorCode.TIMEOUT, "invitation expired"),
            )
        )
        out.append(
            LogEvent(
                "invitation expired",
                {"a": invite.initiator.peer_text, "b": invite.target.peer_text},
            )
        )

    def withdraw(self, conn: ConnRecord, out: list[Output]) -> None:
        """`conn` is leaving: withdraw its invitations, both ways, telling the other sides."""
        for invite in list(conn.invites_out.values()):
            self._take(invite.target, invite.invite_id)
            reason = "the initiator disconnected"
            out.append(
                Send(
                    invite.target.conn_id, Reject(invite.invite_id, ErrorCode.PEER_OFFLINE, reason)
                )
            )
        for invite in list(conn.invites_in.values()):
            self._take(conn, invite.invite_id)
            reason = "the peer disconnected before answering"
            self._refused(ErrorCode.PEER_OFFLINE)
            out.append(
                Send(
                    invite.initiator.conn_id,
                    Reject(invite.request_id, ErrorCode.PEER_OFFLINE, reason),
                )
            )

    def _new_invite_id(self, target: ConnRecord) -> int:
        while True:
            invite_id = int.from_bytes(self._random(4), "big")
            if invite_id and invite_id not in target.invites_in:
                return invite_id

    def _take(self, target: ConnRecord, invite_id: int) -> InviteRecord | None:
        invite = target.invites_in.pop(invite_id, None)
        if invite is not None:
            del invite.initiator.invites_out[invite.request_id]
            self.count -= 1
            self._timers.bound(self._live())
        return invite
