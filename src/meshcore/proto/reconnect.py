"""When a peer dials its relay again after losing it, and the relay's side of that: the
reconnect window a shutting-down relay announces, so that its peers spread their return.

A relay that restarts drops all its peers at once. The jittered backoff alone brings them
back within half a second of each other, far more at once than one relay can register
(docs/relay.md, "After a restart"). So the relay's `Close(SHUTDOWN)` reason ends with
`reconnect within S s`, S its peer count over the rate it can take
(`RelayLimits.restart_rate_per_s`), and each peer adds a uniform delay in [0, S] to its first
wait. A relay with few peers announces almost nothing: a lone peer is back as fast as
before. A busy relay says the same when it refuses a registration for load (`busy_reason`):
the peer spreads its next attempt over that window instead of doubling its backoff. And a
peer that was told a window and finds the relay not listening yet (it is restarting) tries
again at the shortest wait while that window lasts. The window travels in the reason text,
so relays and peers of earlier builds understand each other unchanged.
docs/relay-client.md has the client's rules.
"""

from __future__ import annotations

import errno
import math
import re
from collections.abc import Callable
from typing import Final

from meshcore.errors import ConnectFailed, RelayError
from meshcore.proto.backoff import Backoff
from meshcore.proto.constants import RELAY_RESTART_MARGIN_S
from meshcore.proto.wire import ErrorCode

__all__ = [
    "ReconnectPolicy",
    "announced_window",
    "busy_reason",
    "reconnect_window",
    "refusal_window",
    "relay_not_listening",
    "shutdown_reason",
]

_WINDOW: Final = re.compile(r"reconnect within (\d{1,6}(?:\.\d{1,3})?) s\Z")
_SHUTDOWN: Final = "the relay is shutting down"
_MAX_WINDOW_MS: Final = 999_999_999  # what the form can say: six digits of seconds
_BUSY: Final = frozenset((ErrorCode.CAPACITY, ErrorCode.RATE_LIMITED))
"""Refusals for load, whose reason may carry a retry window."""
_MAX_DOUBLINGS: Final = 32


def reconnect_window(peers: int, rate_per_s: float) -> float:
    """The window (seconds) a relay with `peers` asks them to spread their return over, to
    come back at about `rate_per_s` registrations a second; 0 without peers."""
    return max(peers, 0) / rate_per_s


def shutdown_reason(window_s: float) -> str:
    """The reason of a relay's Close(SHUTDOWN): what happens, and the reconnect window
    (rounded up to the millisecond, so a peer never comes back sooner than asked)."""
    return busy_reason(_SHUTDOWN, window_s)


def busy_reason(what: str, window_s: float) -> str:
    """`what` (why the relay refuses or closes) and the window to come back within, in the
    form `announced_window` reads ("reconnect later" without a window)."""
    window_ms = min(math.ceil(window_s * 1000), _MAX_WINDOW_MS)
    if window_ms <= 0:
        return f"{what}; reconnect later"
    text = f"{window_ms // 1000}.{window_ms % 1000:03d}".rstrip("0").rstrip(".")
    return f"{what}; reconnect within {text} s"


def announced_window(reason: str) -> float | None:
    """The reconnect window a Close reason announces (seconds), or None if it names none.

    The reason is the relay's untrusted text: only the exact form `shutdown_reason` writes
    counts, anything else is no announcement.
    """
    match = _WINDOW.search(reason)
    return float(match.group(1)) if match else None


def refusal_window(error: Exception) -> float | None:
    """The window a relay that refused us for load (CAPACITY, RATE_LIMITED) asked us to come
    back within, or None (another error, or a refusal that names none)."""
    if isinstance(error, RelayError) and error.code in _BUSY:
        return announced_window(str(error))
    return None


def relay_not_listening(error: Exception) -> bool:
    """Did the relay's host refuse the TCP connection (nothing listens on the port: a relay
    between its old process and its new one)?"""
    if isinstance(error, ConnectionRefusedError):
        return True
    return isinstance(error, ConnectFailed) and error.errno == errno.ECONNREFUSED


class ReconnectPolicy:
    """The wait before each reconnect: the jittered exponential backoff, plus, after a relay
    announced a reconnect window, a uniform share of that window (at most `max_window_s`).

    Two rules keep a herd's return short without hammering the relay. A busy relay's refusal
    with a window (`refusal_window`) is answered with the shortest wait plus a uniform share
    of that window, not a doubled backoff; each further such refusal in a row doubles the
    window taken (the relay's estimate was short), never past `max_window_s`. And after an
    announced window, a dial the relay's host refuses (`relay_not_listening`: the new relay
    is not up yet) within that window plus `restart_margin_s` is retried at the shortest
    wait, not a doubled one. Every wait is at least the backoff's shortest (`base_s` less
    the jitter), so a peer never tries more often than that.

    `after_loss(window, now)` when a registered connection ended (`window`: what the relay
    announced, None if nothing), `after_failure(error, now)` when an attempt failed,
    `reset()` once registered. `random` is a source in [0, 1).
    """

    __slots__ = ("_busy", "_random", "_returning_until", "backoff", "margin_s", "max_window_s")

    def __init__(
        self,
        base_s: float,
        max_s: float,
        jitter: float,
        *,
        max_window_s: float,
        random: Callable[[], float],
        restart_margin_s: float = RELAY_RESTART_MARGIN_S,
    ) -> None:
        if not max_window_s >= 0:
            raise ValueError(f"max_window_s must be at least 0, got {max_window_s}")
        if not restart_margin_s >= 0:
            raise ValueError(f"restart_margin_s must be at least 0, got {restart_margin_s}")
        self.backoff = Backoff(base_s, max_s, jitter, random=random)
        self.max_window_s = max_window_s
        """The longest announced window honoured; 0 ignores announcements."""
        self.margin_s = restart_margin_s
        """How long past an announced window a relay not listening is still taken for one
        that is restarting."""
        self._random = random
        self._returning_until: float | None = None  # the announced window's end, plus margin
        self._busy = 0  # busy refusals in a row

    def after_loss(self, window: float | None, now: float) -> float:
        """The wait after the registered connection ended at `now`; a relay's announced
        `window` spreads it (the herd of a restart), capped at `max_window_s`."""
        wait = self.backoff.next_delay()
        self._busy = 0
        self._returning_until = None
        share = min(window or 0.0, self.max_window_s)
        if share > 0:
            wait += self._random() * share
            self._returning_until = now + share + self.margin_s
        return wait

    def after_failure(self, error: Exception, now: float) -> float:
        """The wait after an attempt that did not register at `now`, failing with `error`:
        spread over a busy relay's window, the shortest while a restarting relay is not
        listening yet, else the doubled backoff."""
        window = refusal_window(error) if self.max_window_s > 0 else None
        if window is not None:
            self._busy += 1
            spread = window * 2.0 ** min(self._busy - 1, _MAX_DOUBLINGS)
            return self.backoff.shortest_delay() + self._random() * min(spread, self.max_window_s)
        self._busy = 0
        until = self._returning_until
        if until is not None and now <= until and relay_not_listening(error):
            return self.backoff.shortest_delay()
        return self.backoff.next_delay()

    def reset(self) -> None:
        """Registered: the next loss starts from the shortest wait again."""
        self.backoff.reset()
        self._busy = 0
        self._returning_until = None
