"""The liveness of one control connection, judged by what arrives on it: a Ping after a quiet
interval, and death after a longer silence. Sans-IO, times in and decisions out.

A relay that vanished without a close or an RST (a drop rule, a frozen process, a cut cable)
leaves a TCP connection that still accepts writes; only silence gives it away. Any message
counts as a sign of life, so a busy connection sends no pings.
"""

from __future__ import annotations

import math

from meshcore.proto.constants import RELAY_DEAD_AFTER_S, RELAY_HEARTBEAT_S

__all__ = ["Heartbeat"]

_U64_MASK = 0xFFFF_FFFF_FFFF_FFFF


class Heartbeat:
    """When to ping and when to give up on one connection.

    After `interval_s` without receiving anything, `ping_due` says to send a Ping (and again
    each further `interval_s`); after `dead_after_s` of silence, `is_dead` is true. A Pong
    answering the latest Ping gives `rtt_s`.
    """

    __slots__ = (
        "_nonce",
        "_ping_nonce",
        "_pinged_at",
        "_pinged_for",
        "_pings",
        "dead_after_s",
        "interval_s",
        "last_rx",
        "rtt_s",
    )

    def __init__(
        self, interval_s: float = RELAY_HEARTBEAT_S, dead_after_s: float = RELAY_DEAD_AFTER_S
    ) -> None:
        if not 0 < interval_s < dead_after_s:
            raise ValueError(
                "the relay heartbeat needs 0 < interval < dead-after, got "
                f"{interval_s:g} s and {dead_after_s:g} s"
            )
        self.interval_s = interval_s
        self.dead_after_s = dead_after_s
        self.last_rx = -math.inf
        """When something last arrived (`start` counts as an arrival)."""
        self.rtt_s: float | None = None
        """The round trip of the latest answered Ping (or what `start` was given)."""
        self._pinged_at = -math.inf
        self._pinged_for = -math.inf
        """The `last_rx` that the `_pings` sent since were counted from."""
        self._pings = 0
        self._ping_nonce: int | None = None
        self._nonce = 0

    def start(self, now: float, rtt_s: float | None = None) -> None:
        """A new connection is up at `now` (its registration measured `rtt_s`, if given)."""
        self.last_rx = now
        self._pinged_at = self._pinged_for = -math.inf
        self._ping_nonce = None
        if rtt_s is not None:
            self.rtt_s = rtt_s

    def received(self, now: float) -> None:
        """Something arrived: the connection lives. (Setting `last_rx` does the same.)"""
        self.last_rx = now

    def pong(self, nonce: int, now: float) -> None:
        """A Pong arrived (after `received`): it answers our latest Ping if the nonce is its."""
        if nonce == self._ping_nonce:
            self._ping_nonce = None
            self.rtt_s = now - self._pinged_at

    def is_dead(self, now: float) -> bool:
        """Nothing arrived for `dead_after_s`."""
        return now >= self.last_rx + self.dead_after_s

    def ping_due(self, now: float) -> int | None:
        """The nonce of a Ping to send now, or None (not quiet long enough, or just pinged)."""
        if now < self._next_ping() or self.is_dead(now):
            return None
        self._pings = self._pings + 1 if self._pinged_for == self.last_rx else 1
        self._pinged_for = self.last_rx
        self._nonce = (self._nonce + 1) & _U64_MASK
        self._ping_nonce = self._nonce
        self._pinged_at = now
        return self._nonce

    def next_check(self) -> float:
        """When `ping_due` or `is_dead` next may change its answer."""
        return min(self._next_ping(), self.last_rx + self.dead_after_s)

    def _next_ping(self) -> float:
        # Counted from the last arrival (not from the last ping), so that the pings of one
        # silence fall at exact multiples of the interval, however late the timer ran.
        sent = self._pings if self._pinged_for == self.last_rx else 0
        return self.last_rx + (sent + 1) * self.interval_s
