"""The data of a session core (`proto.session`): its settings, states, the events it reports
and its counters. The names are importable from `meshcore.proto.session` as well."""

from __future__ import annotations

import enum
from collections.abc import Hashable
from typing import Final

import attrs

from meshcore.proto import constants as C
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.inner import RekeyFragment

__all__ = [
    "RELAY_WINDOW_BYTES",
    "RELAY_WINDOW_FRAMES",
    "EndpointsReceived",
    "FrameResult",
    "MessageReceived",
    "PathChallengeReceived",
    "PathResponseReceived",
    "PeerClosed",
    "RekeyFragmentReceived",
    "SessionEvent",
    "SessionFailed",
    "SessionSettings",
    "SessionState",
    "SessionStats",
]

RELAY_WINDOW_FRAMES: Final = 48
"""Most unacknowledged messages in flight on the relay: below the relay's per-circuit queue
of `RELAY_CIRCUIT_QUEUE_FRAMES` (64) frames, the rest left for acks, keepalives and probes."""

_RELAY_FRAME_OVERHEAD_BYTES: Final = C.MAX_CONTROL_BYTES - C.MAX_MESSAGE_BYTES
"""Most bytes a relayed frame adds to its message in the relay's queue (header, padding,
tag and the relay's envelope)."""

RELAY_WINDOW_BYTES: Final = min(
    2 * 1024 * 1024,
    C.RELAY_CIRCUIT_QUEUE_BYTES
    - C.MAX_MESSAGE_BYTES
    - C.RELAY_CIRCUIT_QUEUE_FRAMES * _RELAY_FRAME_OVERHEAD_BYTES,
)
"""Cap of the session window on the relay, in bytes of messages: 160 KiB. The window follows
the path's bandwidth-delay product on the relay as on direct paths, and 2 MiB would let it
fill a 40 ms relay path at 200 Mbit/s; but the relay has no per-circuit flow control
(credits) yet: it queues at most `RELAY_CIRCUIT_QUEUE_BYTES` (256 KiB) per circuit and
direction and drops the rest, and a session that lost frames there waits a retransmission
timeout. So the cap is the smaller of 2 MiB and what always fits that queue: a full window,
plus the one message the window admits past its edge (`MAX_MESSAGE_BYTES`), plus the
overhead of every frame the queue holds."""


@attrs.frozen
class SessionSettings:
    """Timers and bounds of one session; every default comes from `constants`."""

    keepalive_s: float = C.PATH_HEARTBEAT_S
    """Send a keepalive after this long without sending anything."""
    dead_after_s: float | None = C.PATH_DEAD_S
    """Fail the session after this long without an authenticated frame (None: never)."""
    retransmit_timeout_s: float = 1.0
    """Initial retransmission timeout; doubles while no ack arrives, up to 8 s."""
    ack_delay_s: float = C.ACK_DELAY_S
    ack_every_frames: int = 8
    ack_every_bytes: int = 16 * 1024
    """Acknowledge at once after this many bytes: well below `min_window_bytes`, so that a
    small window never waits for the ack delay."""
    window_frames: int = RELAY_WINDOW_FRAMES
    """Most unacknowledged messages in flight on the relay (below its per-circuit queue)."""
    window_bytes: int = RELAY_WINDOW_BYTES
    """Most unacknowledged bytes in flight on the relay (the cap of the adaptive window; it
    must fit the relay's per-circuit queue, see `RELAY_WINDOW_BYTES`)."""
    direct_window_frames: int = 1024
    """Most unacknowledged messages in flight on a direct path (nothing in between drops)."""
    direct_window_bytes: int = 4 * 1024 * 1024
    """Most unacknowledged bytes in flight on a direct path (the cap of the adaptive window)."""
    adaptive_window: bool = True
    """Size the window to twice the path's bandwidth-delay product (`proto.window`), within
    [min_window_bytes, the path's cap], instead of always the cap: the reliable layer then
    holds about one round trip of data, not megabytes of queue."""
    min_window_bytes: int = 32 * 1024
    reorder_frames: int = C.REORDER_BUFFER_FRAMES
    pad_to: int = 16


class FrameResult(enum.IntEnum):
    """What `receive_frame` made of one frame (the path logic needs to tell them apart)."""

    DROPPED = 0
    """Forged, tampered, replayed, for a dead key, or the session is closed: nothing changed."""
    PROBE = 1
    """Authenticated PATH_CHALLENGE or PATH_RESPONSE: proves the path, moves no traffic."""
    ACCEPTED = 2
    """Any other authenticated, fresh frame (data, ack, keepalive, ...): the peer sends here
    on purpose (RFC 9000 §9.3: switch paths only on a non-probing frame)."""


class SessionState(enum.Enum):
    """Lifecycle of a session core."""

    OPEN = "open"
    """Messages flow both ways."""
    CLOSED = "closed"
    """We closed it, the peer closed it, or it failed; nothing more is sent or accepted."""


@attrs.frozen
class MessageReceived:
    """An application message arrived, in order, exactly once."""

    payload: bytes


@attrs.frozen
class PeerClosed:
    """The peer closed the session."""

    code: int
    reason: str


@attrs.frozen
class SessionFailed:
    """The session cannot go on (the peer went silent or broke the protocol)."""

    reason: str


@attrs.frozen
class PathChallengeReceived:
    """An authenticated PATH_CHALLENGE arrived on `path`; the core already queued the reply."""

    path: Hashable
    data: bytes


@attrs.frozen
class PathResponseReceived:
    """An authenticated PATH_RESPONSE arrived on `path`."""

    path: Hashable
    data: bytes


@attrs.frozen
class EndpointsReceived:
    """The peer announced its direct-path candidates."""

    endpoints: tuple[Endpoint, ...]


@attrs.frozen
class RekeyFragmentReceived:
    """An authenticated rekey handshake fragment, for the rekey machine."""

    fragment: RekeyFragment


SessionEvent = (
    MessageReceived
    | PeerClosed
    | SessionFailed
    | PathChallengeReceived
    | PathResponseReceived
    | EndpointsReceived
    | RekeyFragmentReceived
)


@attrs.define
class SessionStats:
    """Counters of one session, for status displays and tests."""

    messages_sent: int = 0
    messages_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    retransmitted: int = 0
    duplicates: int = 0
    rejected: int = 0
    rtt_s: float | None = None
    replayed: int = 0
    """Frames the replay window dropped (also counted in `duplicates`)."""
