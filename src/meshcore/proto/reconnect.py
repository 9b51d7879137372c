"""When a peer dials its relay again after losing it, and the relay's side of that: the
reconnect window a shutting-down relay announces, so that its peers spread their return.

A relay that restarts drops all its peers at once. The jittered backoff alone brings them
back within half a second of each other, far more at once than one relay can register
(docs/relay.md, "After a restart"). So the relay's `Close(SHUTDOWN)` reason ends with
`reconnect within S s`, S its peer count over the rate it can take
(`RelayLimits.restart_rate_per_s`), and each peer adds a uniform delay in [0, S] to its first
wait. A relay with few peers announces almost nothing: a lone peer is back as fast as
before. The window travels in the reason text, so relays and peers of earlier builds
understand each other unchanged. docs/relay-client.md has the client's rules.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Final

from meshcore.proto.backoff import Backoff

__all__ = ["ReconnectPolicy", "announced_window", "reconnect_window", "shutdown_reason"]

_WINDOW: Final = re.compile(r"reconnect within (\d{1,6}(?:\.\d{1,3})?) s\Z")
_SHUTDOWN: Final = "the relay is shutting down"
_MAX_WINDOW_MS: Final = 999_999_999  # what the form can say: six digits of seconds


def reconnect_window(peers: int, rate_per_s: float) -> float:
    """The window (seconds) a relay with `peers` asks them to spread their return over, to
    come back at about `rate_per_s` registrations a second; 0 without peers."""
    return max(peers, 0) / rate_per_s


def shutdown_reason(window_s: float) -> str:
    """The reason of a relay's Close(SHUTDOWN): what happens, and the reconnect window
    (rounded up to the millisecond, so a peer never comes back sooner than asked)."""
    window_ms = min(math.ceil(window_s * 1000), _MAX_WINDOW_MS)
    if window_ms <= 0:
        return f"{_SHUTDOWN}; reconnect later"
    text = f"{window_ms // 1000}.{window_ms % 1000:03d}".rstrip("0").rstrip(".")
    return f"{_SHUTDOWN}; reconnect within {text} s"


def announced_window(reason: str) -> float | None:
    """The reconnect window a Close reason announces (seconds), or None if it names none.

    The reason is the relay's untrusted text: only the exact form `shutdown_reason` writes
    counts, anything else is no announcement.
    """
    match = _WINDOW.search(reason)
    return float(match.group(1)) if match else None


class ReconnectPolicy:
    """The wait before each reconnect: the jittered exponential backoff, plus, after a relay
    announced a reconnect window, a uniform share of that window (at most `max_window_s`).

    `after_loss(window)` when a registered connection ended (`window`: what the relay
    announced, None if nothing), `after_failure()` when an attempt failed, `reset()` once
    registered. `random` is a source in [0, 1).
    """

    __slots__ = ("_random", "backoff", "max_window_s")

    def __init__(
        self,
        base_s: float,
        max_s: float,
        jitter: float,
        *,
        max_window_s: float,
        random: Callable[[], float],
    ) -> None:
        if not max_window_s >= 0:
            raise ValueError(f"max_window_s must be at least 0, got {max_window_s}")
        self.backoff = Backoff(base_s, max_s, jitter, random=random)
        self.max_window_s = max_window_s
        """The longest announced window honoured; 0 ignores announcements."""
        self._random = random

    def after_loss(self, window: float | None) -> float:
        """The wait after the registered connection ended; a relay's announced `window`
        spreads it (the herd of a restart), capped at `max_window_s`."""
        wait = self.backoff.next_delay()
        if window:
            wait += self._random() * min(window, self.max_window_s)
        return wait

    def after_failure(self) -> float:
        """The wait after an attempt that did not register (refused, unreachable)."""
        return self.backoff.next_delay()

    def reset(self) -> None:
        """Registered: the next loss starts from the shortest wait again."""
        self.backoff.reset()
