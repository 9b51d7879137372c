"""The relay's circuit table: unguessable circuit ids, the two members of each circuit, their
counters, the caps on circuits, and forwarding a relayed frame to the other member.

Part of the `Matchmaker` (sans-IO): every method returns or appends the outputs to execute.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Final

import attrs

from meshcore.proto.relayrecords import (
    ConnRecord,
    Forward,
    LogEvent,
    Output,
    Send,
    reason_label,
)
from meshcore.proto.wire import CircuitClose, ErrorCode

__all__ = ["CircuitIds", "CircuitRecord", "CircuitStats", "CircuitTable", "circuit_text"]

_MAX_TOLD_UNKNOWN: Final = 16
"""Unknown circuit ids remembered as answered, per connection (the oldest is forgotten)."""


def circuit_text(circuit_id: int) -> str:
    """A circuit id as log lines show it (16 hex digits)."""
    return f"{circuit_id:016x}"


class CircuitIds:
    """Unpredictable, never-repeating 64-bit circuit ids: a keyed 4-round Feistel permutation
    of a counter (a bijection, so no id comes back until 2^64 circuits later). 0 is skipped:
    CircuitOpen uses it for "the relay assigns"."""

    __slots__ = ("_counter", "_key")

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._counter = 0

    def next(self) -> int:
        """The next circuit id."""
        while True:
            self._counter += 1
            left, right = self._counter >> 32, self._counter & 0xFFFF_FFFF
            for round_ in range(4):
                digest = hashlib.blake2b(
                    right.to_bytes(4, "big") + bytes((round_,)), key=self._key, digest_size=4
                ).digest()
                left, right = right, left ^ int.from_bytes(digest, "big")
            value = (left << 32) | right
            if value:
                return value


@attrs.define(slots=True, eq=False)
class CircuitRecord:
    """An open circuit: `a` asked, `b` accepted; bytes and frames relayed each way."""

    circuit_id: int
    a: ConnRecord
    b: ConnRecord
    opened_at: float
    bytes_ab: int = 0
    bytes_ba: int = 0
    frames_ab: int = 0
    frames_ba: int = 0


@attrs.frozen
class CircuitStats:
    """One open circuit: its members (a asked, b accepted) and its counters each way."""

    circuit_id: int
    a: str
    b: str
    opened_at: float
    bytes_ab: int
    bytes_ba: int
    frames_ab: int
    frames_ba: int


class CircuitTable:
    """Every open circuit, by id, within `max_circuits` in all and `max_per_peer` per peer."""

    def __init__(self, key: bytes, *, max_circuits: int, max_per_peer: int) -> None:
        """`key` (32 random bytes) keys the circuit ids."""
        self._ids = CircuitIds(key)
        self._circuits: dict[int, CircuitRecord] = {}
        self._max_circuits = max_circuits
        self._max_per_peer = max_per_peer
        # Counted where the event happens anyway (a close, a foreign frame): forwarding
        # itself only bumps the circuit's own counters, summed at scrape time.
        self._closed_bytes = 0
        self._closed_frames = 0
        self.unknown_frames = 0
        """Relayed frames dropped: the sender is not on that circuit (or it is closed)."""
        self.closes: Counter[str] = Counter()
        """Circuits closed, by reason (a lower-case ErrorCode name)."""

    def __len__(self) -> int:
        return len(self._circuits)

    def get(self, circuit_id: int) -> CircuitRecord | None:
        """The open circuit with this id, or None."""
        return self._circuits.get(circuit_id)

    def snapshot(self) -> list[CircuitRecord]:
        """Every open circuit, in the order they opened (a copy: safe to close them)."""
        return list(self._circuits.values())

    def stats(self) -> list[CircuitStats]:
        """A snapshot of every open circuit and its counters."""
        return [
            CircuitStats(
                c.circuit_id,
                c.a.peer_text,
                c.b.peer_text,
                c.opened_at,
                c.bytes_ab,
                c.bytes_ba,
                c.frames_ab,
                c.frames_ba,
            )
            for c in self._circuits.values()
        ]

    def forwarded(self) -> tuple[int, int]:
        """(payload bytes, frames) forwarded on every circuit so far, open or closed."""
        nbytes, frames = self._closed_bytes, self._closed_frames
        for c in self._circuits.values():
            nbytes += c.bytes_ab + c.bytes_ba
            frames += c.frames_ab + c.frames_ba
        return nbytes, frames

    def capacity(self, a: ConnRecord, b: ConnRecord) -> str:
        """Why a new circuit between a and b is impossible, or "" if it is possible."""
        if len(self._circuits) >= self._max_circuits:
            return f"the relay is at its limit of {self._max_circuits} circuits; retry later"
        for who, conn in (("you are", a), ("the peer is", b)):
            if len(conn.circuits) >= self._max_per_peer:
                return f"{who} already in {self._max_per_peer} circuits; close some first"
        return ""

    def open(self, a: ConnRecord, b: ConnRecord, now: float) -> CircuitRecord:
        """Open a circuit between a and b (check `capacity` first)."""
        cid = self._ids.next()
        circuit = CircuitRecord(cid, a, b, now)
        self._circuits[cid] = circuit
        a.circuits.add(cid)
        b.circuits.add(cid)
        return circuit

    def close(
        self,
        circuit: CircuitRecord,
        code: ErrorCode,
        reason: str,
        out: list[Output],
        *,
        tell: tuple[ConnRecord, ...],
    ) -> None:
        """Close `circuit`: tell the members in `tell` (CircuitClose) and log its counters."""
        cid = circuit.circuit_id
        del self._circuits[cid]
        self._closed_bytes += circuit.bytes_ab + circuit.bytes_ba
        self._closed_frames += circuit.frames_ab + circuit.frames_ba
        self.closes[reason_label(code)] += 1
        circuit.a.circuits.discard(cid)
        circuit.b.circuits.discard(cid)
        for conn in tell:
            out.append(Send(conn.conn_id, CircuitClose(cid, code, reason)))
        out.append(
            LogEvent(
                "circuit closed",
                {
                    "circuit": circuit_text(cid),
                    "a": circuit.a.peer_text,
                    "b": circuit.b.peer_text,
                    "code": code.name,
                    "bytes_ab": circuit.bytes_ab,
                    "bytes_ba": circuit.bytes_ba,
                    "frames_ab": circuit.frames_ab,
                    "frames_ba": circuit.frames_ba,
                },
            )
        )

    def forward(self, conn: ConnRecord, circuit_id: int, data: bytes, size: int) -> list[Output]:
        """Forward the Relayed message `data` (a `size`-byte payload) from `conn` to the other
        member of `circuit_id`; a circuit `conn` is not on gets one CircuitClose answer."""
        circuit = self._circuits.get(circuit_id)
        if circuit is not None:
            if circuit.a is conn:
                circuit.frames_ab += 1
                circuit.bytes_ab += size
                return [Forward(circuit.b.conn_id, circuit_id, data)]
            if circuit.b is conn:
                circuit.frames_ba += 1
                circuit.bytes_ba += size
                return [Forward(circuit.a.conn_id, circuit_id, data)]
        # Unknown, closed, or someone else's circuit: the same answer for all three (no
        # oracle), once per circuit id, and nobody else is touched. Frames still in flight
        # when a circuit closes land here, so this is not fatal.
        self.unknown_frames += 1
        told = conn.told_unknown
        if circuit_id in told:
            return []
        told[circuit_id] = None
        if len(told) > _MAX_TOLD_UNKNOWN:
            told.popitem(last=False)
        reason = "no such circuit on this connection; frame dropped"
        return [Send(conn.conn_id, CircuitClose(circuit_id, ErrorCode.CIRCUIT_UNKNOWN, reason))]
