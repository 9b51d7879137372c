"""Circuits opening and closing, as seen in the matchmaker's outputs (sans-IO): the one loop
that the relay's flow control (`relayflow.RelayFlow`) and its UDP tokens
(`relayudp.RelayUdpCircuits`) both run, each adding its own messages at those points.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from meshcore.proto.relayrecords import Output, Send
from meshcore.proto.wire import CircuitClose, CircuitOpen, Paired

__all__ = ["CircuitWatcher", "Members"]

Members = Callable[[int], "tuple[int, int] | None"]
"""circuit id -> (initiator conn id, responder conn id) of an open circuit, else None."""

Added = TypeVar("Added")


class CircuitWatcher(Generic[Added]):
    """Passes the matchmaker's outputs through `watch`, calling `circuit_opened` after each
    Paired or CircuitOpen sent to a connection and `circuit_gone` after each CircuitClose of
    a circuit the matchmaker no longer has; what those append follows the output in order."""

    def __init__(self, members: Members) -> None:
        self._members = members

    def watch(self, outputs: Iterable[Output]) -> list[Output | Added]:
        """The outputs, each followed by what opening or closing its circuit adds."""
        out: list[Output | Added] = []
        for item in outputs:
            out.append(item)
            if type(item) is not Send:
                continue
            assert isinstance(item, Send)
            msg = item.message
            kind = type(msg)
            if kind is Paired or kind is CircuitOpen:
                assert isinstance(msg, Paired | CircuitOpen)
                self.circuit_opened(item.conn_id, msg.circuit_id, out)
            elif kind is CircuitClose:
                assert isinstance(msg, CircuitClose)
                if self._members(msg.circuit_id) is None:
                    self.circuit_gone(msg.circuit_id, out)
        return out

    def circuit_opened(self, conn_id: int, circuit_id: int, out: list[Output | Added]) -> None:
        """Circuit `circuit_id` was announced to `conn_id`, one of its members."""

    def circuit_gone(self, circuit_id: int, out: list[Output | Added]) -> None:
        """Circuit `circuit_id` closed: the matchmaker no longer has it."""
