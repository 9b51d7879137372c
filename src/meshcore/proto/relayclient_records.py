"""What `RelayClientCore` keeps about its requests and circuits (its own mutable records;
drivers only ever see the outputs in `relayclient_outputs`)."""

from __future__ import annotations

import enum

import attrs

from meshcore.proto.identity import PeerId
from meshcore.proto.relayclient_outputs import Invited, PairingCompleted

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
