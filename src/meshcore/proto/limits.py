"""Every limit the relay enforces (`RelayLimits`), and the attrs validators that bound them.

The validators raise ValueError naming the setting and its bound; configuration loading
reports that under the key's path (`limits.max_peers: ...`), so a bad limit is a clear error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal

import attrs

from meshcore.proto.constants import (
    MAX_CONTROL_BYTES,
    MAX_FRAME_BYTES,
    RELAY_CIRCUIT_QUEUE_BYTES,
    RELAY_CIRCUIT_QUEUE_FRAMES,
    RELAY_CIRCUIT_WINDOW_BYTES,
    RELAY_CONNECTION_QUEUE_BYTES,
    RELAY_CONNECTIONS_BURST_PER_IP,
    RELAY_CONNECTIONS_PER_S_PER_IP,
    RELAY_CONTROL_QUEUE_MESSAGES,
    RELAY_HELLO_DEADLINE_S,
    RELAY_IDLE_TIMEOUT_S,
    RELAY_INVITE_TIMEOUT_S,
    RELAY_MAX_BUFFER_BYTES,
    RELAY_MAX_CIRCUITS,
    RELAY_MAX_CIRCUITS_PER_PEER,
    RELAY_MAX_INVITES_PER_PEER,
    RELAY_MAX_PEERS,
    RELAY_MAX_PENDING_CONNECTIONS,
    RELAY_MAX_TRACKED_ADDRESSES,
    RELAY_PAIRINGS_BURST,
    RELAY_PAIRINGS_PER_S,
    RELAY_PING_INTERVAL_S,
    RELAY_RESTART_RATE_PER_S,
    RELAY_TOTAL_QUEUE_BYTES,
    RELAY_UDP_CIRCUIT_BYTES_PER_S,
    RELAY_UDP_CIRCUIT_PACKETS_PER_S,
    RELAY_UDP_MAX_PACKET_BYTES,
)

__all__ = [
    "ONE_OR_MORE",
    "POSITIVE",
    "RelayLimits",
    "above",
    "at_least",
    "at_most",
    "limit",
]

Check = Callable[[object, "attrs.Attribute[Any]", Any], None]


def at_least(minimum: float) -> Check:
    """A validator: the value is at least `minimum`."""

    def check(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value < minimum:
            raise ValueError(f"{attribute.name} must be at least {minimum}, got {value}")

    return check


def above(bound: float) -> Check:
    """A validator: the value is more than `bound`."""

    def check(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if not value > bound:
            raise ValueError(f"{attribute.name} must be more than {bound}, got {value}")

    return check


def at_most(maximum: float) -> Check:
    """A validator: the value is at most `maximum`."""

    def check(_inst: object, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value > maximum:
            raise ValueError(f"{attribute.name} must be at most {maximum}, got {value}")

    return check


def limit(default: Any, help: str, *checks: Check) -> Any:
    """A limits field: its default, what it bounds (`help`, shown by --help), its checks."""
    return attrs.field(default=default, validator=list(checks), metadata={"help": help})


POSITIVE: Final = above(0)
"""A validator: more than zero."""
ONE_OR_MORE: Final = at_least(1)
"""A validator: at least one."""


@attrs.frozen
class RelayLimits:
    """Every limit the relay enforces; each bounds a table, a rate or a wait.

    Defaults come from `meshcore.proto.constants` (with their sources there). The queue
    bounds are enforced by the trio driver, the credits by `meshcore.proto.relayflow`, the
    rest by the `Matchmaker`.
    """

    def __attrs_post_init__(self) -> None:
        if self.circuit_window_bytes > self.max_buffer_bytes:
            raise ValueError(
                f"circuit_window_bytes ({self.circuit_window_bytes}) must be at most "
                f"max_buffer_bytes ({self.max_buffer_bytes}); raise max_buffer_bytes"
            )

    hello_deadline_s: float = limit(
        RELAY_HELLO_DEADLINE_S,
        "seconds a new connection has to send HELLO and answer the challenge",
        POSITIVE,
    )
    max_message_bytes: int = limit(
        MAX_CONTROL_BYTES,
        "largest control message accepted, in bytes; a bigger one closes the connection",
        at_least(1024),
        at_most(MAX_CONTROL_BYTES),
    )
    connections_per_s_per_ip: float = limit(
        RELAY_CONNECTIONS_PER_S_PER_IP,
        "new connections per second from one IPv4 address or IPv6 /64",
        POSITIVE,
    )
    connections_burst_per_ip: int = limit(
        RELAY_CONNECTIONS_BURST_PER_IP, "burst of new connections from one address", ONE_OR_MORE
    )
    pairings_per_s: float = limit(
        RELAY_PAIRINGS_PER_S,
        "pairing requests (Connect, CircuitOpen) per second per peer",
        POSITIVE,
    )
    pairings_burst: int = limit(
        RELAY_PAIRINGS_BURST, "burst of pairing requests per peer", ONE_OR_MORE
    )
    restart_rate_per_s: float = limit(
        RELAY_RESTART_RATE_PER_S,
        "registrations per second the relay asks its peers to return at after it shut down "
        "(they spread over peers / this many seconds)",
        POSITIVE,
    )
    max_peers: int = limit(RELAY_MAX_PEERS, "registered peers at once", ONE_OR_MORE)
    max_pending_connections: int = limit(
        RELAY_MAX_PENDING_CONNECTIONS,
        "connections accepted and not yet registered at once (more wait in the listen backlog)",
        ONE_OR_MORE,
    )
    max_circuits: int = limit(RELAY_MAX_CIRCUITS, "open circuits at once", ONE_OR_MORE)
    max_circuits_per_peer: int = limit(
        RELAY_MAX_CIRCUITS_PER_PEER, "open circuits one peer may take part in", ONE_OR_MORE
    )
    max_invites_per_peer: int = limit(
        RELAY_MAX_INVITES_PER_PEER,
        "pending invitations per peer, as target and as initiator",
        ONE_OR_MORE,
    )
    invite_timeout_s: float = limit(
        RELAY_INVITE_TIMEOUT_S,
        "seconds the target of an invitation has to accept or reject it",
        POSITIVE,
    )
    circuit_queue_frames: int = limit(
        RELAY_CIRCUIT_QUEUE_FRAMES, "relayed frames queued per circuit and direction", ONE_OR_MORE
    )
    circuit_queue_bytes: int = limit(
        RELAY_CIRCUIT_QUEUE_BYTES, "relayed bytes queued per circuit and direction", ONE_OR_MORE
    )
    connection_queue_bytes: int = limit(
        RELAY_CONNECTION_QUEUE_BYTES,
        "relayed bytes queued towards one connection, all its circuits together",
        ONE_OR_MORE,
    )
    total_queue_bytes: int = limit(
        RELAY_TOTAL_QUEUE_BYTES, "relayed bytes queued in the whole relay", ONE_OR_MORE
    )
    flow_control: Literal["credit", "drop"] = limit(
        "credit",
        'relayed frames from peers that ask for it: "credit" (the relay grants each circuit '
        'credit as it drains; nothing is dropped) or "drop" (drop-tail queues only, as relays '
        "before credits)",
        attrs.validators.in_(("credit", "drop")),
    )
    max_buffer_bytes: int = limit(
        RELAY_MAX_BUFFER_BYTES,
        "relayed bytes held for credited circuits in the whole relay, granted or queued; "
        "shared fairly among them",
        at_least(MAX_FRAME_BYTES),
    )
    circuit_window_bytes: int = limit(
        RELAY_CIRCUIT_WINDOW_BYTES,
        "most credit one credited circuit direction may hold (its window on the relay path)",
        at_least(MAX_FRAME_BYTES),
        at_most(0xFFFF_FFFF),
    )
    control_queue_messages: int = limit(
        RELAY_CONTROL_QUEUE_MESSAGES,
        "control messages queued towards one connection before it is closed as stuck",
        at_least(4),
    )
    overflow: Literal["drop", "close"] = limit(
        "drop",
        'when a circuit queue is full: "drop" the frame (sessions retransmit) or "close" the '
        "circuit with QUEUE_OVERFLOW",
        attrs.validators.in_(("drop", "close")),
    )
    ping_interval_s: float = limit(
        RELAY_PING_INTERVAL_S, "seconds of silence from a peer before the relay pings it", POSITIVE
    )
    idle_timeout_s: float = limit(
        RELAY_IDLE_TIMEOUT_S,
        "seconds of silence (pings unanswered) before a peer is dropped",
        POSITIVE,
    )
    max_tracked_addresses: int = limit(
        RELAY_MAX_TRACKED_ADDRESSES,
        "source addresses with a connection-rate bucket (least recently seen evicted)",
        ONE_OR_MORE,
    )
    udp_max_packet_bytes: int = limit(
        RELAY_UDP_MAX_PACKET_BYTES,
        "largest packet the relay's UDP port forwards, in bytes (larger: counted, dropped)",
        at_least(49),
        at_most(65507),
    )
    udp_circuit_packets_per_s: float = limit(
        RELAY_UDP_CIRCUIT_PACKETS_PER_S,
        "datagrams per second one circuit side may send through the relay's UDP port",
        POSITIVE,
    )
    udp_circuit_bytes_per_s: float = limit(
        RELAY_UDP_CIRCUIT_BYTES_PER_S,
        "bytes per second one circuit side may send through the relay's UDP port",
        POSITIVE,
    )
