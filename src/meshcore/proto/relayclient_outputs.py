"""What `RelayClientCore` asks its driver to do (commands) and tells it (past-tense events).

Small frozen classes, one per kind; docs/relay-client.md says when each comes. Requests are
named by the driver's `ticket` (an int it chose when it made the request), which every
answer carries back, the way the relay's driver names connections for the `Matchmaker`.
"""

from __future__ import annotations

import attrs

from meshcore.proto import wire
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import PeerId, PublicBundle
from meshcore.proto.wire import Role

__all__ = [
    "CircuitClosed",
    "CircuitOpenFailed",
    "CircuitOpened",
    "CircuitReopened",
    "CloseConnection",
    "Closed",
    "ConnectionLost",
    "CreditGranted",
    "InvitationAccepted",
    "Invited",
    "Output",
    "PairingCompleted",
    "PairingFailed",
    "Reconnect",
    "Registered",
    "RegistrationFailed",
    "RelayedReceived",
    "SendBytes",
    "send_control",
]

# --- commands -------------------------------------------------------------------------------


@attrs.frozen
class SendBytes:
    """Send `data` (one encoded control message) on the current relay connection."""

    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")


@attrs.frozen
class CloseConnection:
    """Close the current relay connection with `reason`.

    The machine already counts the connection as gone; reporting its loss later is a no-op.
    """

    reason: str


@attrs.frozen
class Reconnect:
    """The backoff wait is over: dial the relay again now, then report `connection_opened`
    (or `connection_failed`)."""


# --- the connection -------------------------------------------------------------------------


@attrs.frozen
class Registered:
    """The relay accepted our answer to its challenge: we are reachable under our peer id."""

    observed: Endpoint
    """Our address as the relay sees it."""
    candidates: tuple[Endpoint, ...]
    """The direct-connection candidates we announced in Hello."""
    registrations: int
    """1 after the first connection, +1 per reconnect."""


@attrs.frozen
class RegistrationFailed:
    """A connection attempt failed before registering (refused, broken, too slow).

    `retry_in_s` is the backoff wait before `Reconnect`; None for the first attempt, which
    is not retried: the machine is closed and the driver raises `error` to its caller.
    """

    error: Exception
    retry_in_s: float | None


@attrs.frozen
class ConnectionLost:
    """The registered connection ended; its circuits and requests ended with it (reported
    just before this), and `Reconnect` comes after `retry_in_s` seconds."""

    reason: str
    retry_in_s: float
    graceful: bool = False
    """The relay said it is shutting down (a restart, expected): not a fault of the path."""


@attrs.frozen
class Closed:
    """The machine ended for good (another registration with our peer id replaced ours, or
    the driver called `close`). Nothing is retried."""

    reason: str


# --- pairing --------------------------------------------------------------------------------


@attrs.frozen
class Invited:
    """A peer asks the relay to be paired with us; answer with `accept` or `reject`."""

    request_id: int
    initiator: PeerId
    x25519_public: bytes = attrs.field(repr=False)
    kem_public: bytes = attrs.field(repr=False)
    observed: Endpoint
    candidates: tuple[Endpoint, ...]
    connection: int
    """The registration it came on (`registrations` then): only that one can accept it."""


@attrs.frozen
class PairingCompleted:
    """`connect` or `accept` succeeded: a circuit to the peer, whose keys hash to the id
    we pinned (checked end to end)."""

    ticket: int
    circuit_id: int
    peer: PublicBundle
    peer_observed: Endpoint
    peer_candidates: tuple[Endpoint, ...]
    role: Role


@attrs.frozen
class PairingFailed:
    """`connect` or `accept` failed: refused, withdrawn, timed out, the connection was
    lost, or the relay served keys that are not the peer's (`HandshakeError`)."""

    ticket: int
    peer_id: PeerId
    error: Exception


@attrs.frozen
class InvitationAccepted:
    """We accepted `invitation` on our own (`accept(..., route=True)`: the peer has a live
    session with us), but its first frame opens a new session: hand it on as an invitation
    already accepted, with `first_frame` still to be read."""

    invitation: Invited
    pairing: PairingCompleted
    first_frame: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")


# --- circuits -------------------------------------------------------------------------------


@attrs.frozen
class CircuitOpened:
    """`open_circuit` (or `reopen_circuit` without pairing again) succeeded."""

    ticket: int
    circuit_id: int
    peer_id: PeerId


@attrs.frozen
class CircuitOpenFailed:
    """`open_circuit` or `reopen_circuit` failed: refused, timed out, or connection lost."""

    ticket: int
    peer_id: PeerId
    error: Exception


@attrs.frozen
class CircuitReopened:
    """The peer opened a circuit for one of our live sessions (a re-opened circuit, or one
    we paired again for on our own) and its first frame arrived: route the circuit by the
    receiver index in that sealed frame, or close it (`close_circuit`)."""

    circuit_id: int
    peer_id: PeerId
    first_frame: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")


@attrs.frozen
class CircuitClosed:
    """A circuit ended (by us, the relay, the peer, or with the connection)."""

    circuit_id: int
    reason: str


@attrs.frozen
class RelayedReceived:
    """A frame from the peer on an open circuit."""

    circuit_id: int
    payload: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")


@attrs.frozen
class CreditGranted:
    """The relay granted credit on a credited circuit: senders waiting for it may go on."""

    circuit_id: int


Output = (
    SendBytes
    | CloseConnection
    | Reconnect
    | Registered
    | RegistrationFailed
    | ConnectionLost
    | Closed
    | Invited
    | PairingCompleted
    | PairingFailed
    | InvitationAccepted
    | CircuitOpened
    | CircuitOpenFailed
    | CircuitReopened
    | CircuitClosed
    | RelayedReceived
    | CreditGranted
)
"""What the driver has to do or know, in order."""


def send_control(msg: wire.ControlMessage) -> SendBytes:
    """The output that sends control message `msg` on the relay connection."""
    return SendBytes(wire.encode_control(msg))
