"""What `RelayClientCore` keeps about its requests and circuits (its own mutable records;
drivers only ever see the outputs in `relayclient_outputs`)."""

from __future__ import annotations

import enum

import attrs

from meshcore.errors import RelayError
from meshcore.proto import wire
from meshcore.proto.identity import PeerId
from meshcore.proto.relayclient_outputs import CreditGranted, Invited, Output, PairingCompleted

__all__ = ["ClientCircuit", "Request", "RequestKind"]


class RequestKind(enum.Enum):
    """What a request asks of the relay."""

    CONNECT = "connect"
    ACCEPT = "accept"
    OPEN = "open"


@attrs.define(eq=False)
class Request:
    """One request the driver waits on, under its ticket."""

    ticket: int
    kind: RequestKind
    peer: PeerId
    timeout: float
    deadline: float
    rid: int = 0
    """The wire request id: ours (Connect) or the invitation's (Accept)."""
    invited: Invited | None = None
    route: bool = False
    """Accepted on our own: the circuit is routed by its first frame, nobody waits on it."""
    fallback: bool = False
    """`reopen_circuit`: pair again if the relay does not open the circuit."""

    def open_timeout(self) -> RelayError:
        """The error of an open the relay did not answer in time."""
        return RelayError(
            f"the relay did not open a circuit to {self.peer} within {self.timeout:g} s"
        )
    cancelled: bool = False
    """The driver stopped waiting, but the open is in flight and holds the one slot."""


@attrs.define(eq=False)
class ClientCircuit:
    """A circuit the machine holds, and how it is still to be routed."""

    circuit_id: int
    peer: PeerId
    route_deadline: float | None = None
    """Set while a circuit the peer opened waits for the first frame that routes it."""
    pairing: PairingCompleted | None = None
    invited: Invited | None = None
    """Both set when we paired again on our own (`accept(..., route=True)`)."""
    credit: int = 0
    """Payload bytes the relay lets us send, on a credited connection (docs/relay.md)."""
    window: int = 0
    """The most credit the relay lets this circuit hold (0: not told)."""
    udp: tuple[bytes, int] | None = attrs.field(default=None, repr=False)
    """(token, UDP port) when the relay forwards the circuit's datagrams (CircuitUdp)."""

    def spend(self, size: int) -> bool:
        """Take `size` bytes of credit for a frame; False (nothing taken) if there is less."""
        if size > self.credit:
            return False
        self.credit -= size
        return True

    def granted(
        self, msg: wire.CircuitCredit | wire.CircuitWindow | wire.CircuitUdp
    ) -> list[Output]:
        """The relay's CircuitCredit (more credit: wake the senders), CircuitWindow or
        CircuitUdp."""
        if isinstance(msg, wire.CircuitWindow):
            self.window = msg.window
            return []
        if isinstance(msg, wire.CircuitUdp):
            self.udp = (msg.token, msg.port)
            return []
        self.credit += msg.credit
        return [CreditGranted(self.circuit_id)]
