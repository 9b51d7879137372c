"""What a session reports about itself: a snapshot for status displays (`SessionStatus`) and
its counters for metrics (`SessionCounters`), made from its core, its paths and what its
links counted. `Session.status()` and `Session.counters()` call these under the session's
lock; they only read.
"""

from __future__ import annotations

import attrs

from meshcore._counters import SessionCounters
from meshcore._link import Link, LinkTraffic
from meshcore.proto.paths import DirectMode, SessionPaths
from meshcore.proto.session import SessionCore

__all__ = ["SessionStatus", "session_counters", "session_status"]


@attrs.frozen
class SessionStatus:
    """A snapshot of one session for status displays (`Session.status()`)."""

    peer_id: str
    path: str
    """"relay" or "direct": where the session's traffic goes now."""
    remote_address: str | None
    """The other end of the active path: the relay for "relay", the peer for "direct"."""
    rtt_s: float | None
    """Latest round trip on the active path (ping or validation), else the data RTT."""
    bytes_sent: int
    bytes_received: int
    frames_sent: int
    frames_received: int
    migrations: int
    """Moves from the relay onto a direct path."""
    last_error: str | None
    """The latest path failure (failed race, fallback), or why the session ended."""
    age_s: float = 0.0
    """Seconds since the session opened."""
    relay: str | None = None
    """The URL of the relay whose circuit carries the session (None while it is direct, or if
    unknown)."""
    relay_moves: int = 0
    """Moves from one relay's circuit to another's (a relay died, left the list, was slower)."""
    not_direct_reason: str | None = None
    """Why the session is not on a direct path now (None while it is)."""
    datagram_path: str = "off"
    """The datagram path (docs/datagram.md): "off" (not direct), "probing" or "up"."""
    datagrams_sent: int = 0
    datagrams_received: int = 0


def session_status(
    peer_id: str,
    core: SessionCore,
    paths: SessionPaths,
    *,
    path: str,
    driven: bool,
    age_s: float,
    opened_on: str | None,
    now: float,
) -> SessionStatus:
    """The status of a session with `core` and `paths`, on `path`; `driven`: a path driver
    (a `Migrator`) is attached; `opened_on`: the relay the session opened on."""
    link = paths.active_link
    remote: str | None = None
    stats = core.stats
    rtt = stats.rtt_s
    if isinstance(link, Link):
        address = link.transport.remote_address
        remote = str(address) if address is not None else None
        rtt = paths.rtt.get(link, rtt)
    relay = paths.relay
    if relay is None and path == "relay":
        relay = opened_on  # a session without a path driver: the relay it opened on
    return SessionStatus(
        peer_id=peer_id,
        path=path,
        remote_address=remote,
        rtt_s=rtt,
        bytes_sent=stats.bytes_sent,
        bytes_received=stats.bytes_received,
        frames_sent=stats.frames_sent,
        frames_received=stats.frames_received,
        migrations=paths.manager.migrations,
        last_error=core.close_reason or paths.manager.last_error,
        age_s=age_s,
        relay=relay if isinstance(relay, str) else None,
        relay_moves=paths.manager.relay_moves,
        not_direct_reason=None if path == "direct" else _not_direct(paths, driven, now),
    )


def _not_direct(paths: SessionPaths, driven: bool, now: float) -> str:
    """Why a session is not on a direct path, for status displays."""
    manager = paths.manager
    if not driven:
        return "no path driver: this session stays on the transport it opened on"
    if manager.mode is DirectMode.NEVER:
        return "direct paths are off (direct='never')"
    if manager.racing:
        return "a direct attempt is running" + (
            f" (the last one failed: {manager.last_error})" if manager.last_error else ""
        )
    reason = manager.last_error or "no direct attempt yet"
    if manager.next_race is not None:
        reason += f"; next attempt in {max(0.0, manager.next_race - now):.0f} s"
    return reason


def session_counters(
    core: SessionCore, paths: SessionPaths, traffic: LinkTraffic
) -> SessionCounters:
    """Everything a session counted since it opened (frames and bytes by path and direction,
    messages, retransmissions, drops, rekeys, races, moves)."""
    stats, manager = core.stats, paths.manager
    return SessionCounters(
        relay_frames_sent=traffic.relay_sent[0],
        relay_bytes_sent=traffic.relay_sent[1],
        relay_frames_received=traffic.relay_received[0],
        relay_bytes_received=traffic.relay_received[1],
        direct_frames_sent=traffic.direct_sent[0],
        direct_bytes_sent=traffic.direct_sent[1],
        direct_frames_received=traffic.direct_received[0],
        direct_bytes_received=traffic.direct_received[1],
        messages_sent=stats.messages_sent,
        messages_received=stats.messages_received,
        message_bytes_sent=stats.bytes_sent,
        message_bytes_received=stats.bytes_received,
        retransmitted=stats.retransmitted,
        link_queue_drops=traffic.dropped,
        replayed=stats.replayed,
        rejected=stats.rejected,
        rekeys=core.rekeys,
        direct_attempts=manager.attempts,
        migrations=manager.migrations,
        fallbacks=manager.fallbacks,
        fallbacks_silent=manager.fallbacks_silent,
        relay_moves=manager.relay_moves,
    )
