"""What a session has counted since it started (`SessionCounters`): one snapshot of plain,
only-growing numbers that adds up over sessions, so that a peer's totals survive the sessions
that made them (the `SessionRegistry` keeps the sum of ended ones for the metrics).
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

__all__ = ["SessionCounters"]


@attrs.frozen
class SessionCounters:
    """Totals of one session (or the sum of several), each only growing.

    Frames are the sealed frames on each path (their bytes as sent, header and tag
    included); messages are the application's. docs/observability.md names the metric each
    one feeds.
    """

    relay_frames_sent: int = 0
    relay_bytes_sent: int = 0
    relay_frames_received: int = 0
    relay_bytes_received: int = 0
    direct_frames_sent: int = 0
    direct_bytes_sent: int = 0
    direct_frames_received: int = 0
    direct_bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    message_bytes_sent: int = 0
    message_bytes_received: int = 0
    retransmitted: int = 0
    """Messages sent again (timeouts, fast retransmit, a move to a new path)."""
    link_queue_drops: int = 0
    """Frames dropped because a link's send queue was full (then retransmitted)."""
    replayed: int = 0
    """Frames dropped by the replay window (copies of frames already received)."""
    rejected: int = 0
    """Frames that failed authentication or decryption (forged, corrupted, a dead key)."""
    rekeys: int = 0
    direct_attempts: int = 0
    """Races for a direct path started."""
    migrations: int = 0
    """Moves from the relay onto a direct path (races won)."""
    fallbacks: int = 0
    """Moves from a direct path back to the relay (both causes below)."""
    fallbacks_silent: int = 0
    """Fallbacks because nothing authenticated arrived on the direct path for its dead time
    (the others were transport errors: a reset, an EOF, a protocol error)."""
    relay_moves: int = 0
    """Moves from one relay's circuit to another's (the relay died, left the list, went
    silent, or another was clearly faster)."""

    def __add__(self, other: SessionCounters) -> SessionCounters:
        return SessionCounters(
            *(a + b for a, b in zip(attrs.astuple(self), attrs.astuple(other), strict=True))
        )

    @classmethod
    def total(cls, counters: Iterable[SessionCounters]) -> SessionCounters:
        """The sum of `counters` (all zeros for none)."""
        out = cls()
        for c in counters:
            out = out + c
        return out
