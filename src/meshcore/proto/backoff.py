"""Jittered exponential backoff, the one used everywhere something is retried: direct-path
races, relay reconnects and tunnel sessions.

Pure: the caller passes `random` (a source in [0, 1)) and does its own sleeping.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable

__all__ = ["Backoff", "backoff_delay"]

_MAX_DOUBLINGS = 32  # 2**32 times any base is past every cap; keeps the float finite


def backoff_delay(
    failures: int,
    *,
    base_s: float,
    max_s: float,
    jitter: float,
    random: Callable[[], float] = _random.random,
) -> float:
    """The wait after `failures` consecutive failures (1 = the first): `base_s` doubling
    per failure up to `max_s`, then scaled by a uniform factor in [1 - jitter, 1 + jitter).

    `failures` <= 1 gives the base. Jitter spreads the retries of many clients that failed
    at the same moment (a relay restart) so they do not come back in step.
    """
    doublings = min(max(failures - 1, 0), _MAX_DOUBLINGS)
    base = min(base_s * 2.0**doublings, max_s)
    return base * (1 + jitter * (2 * random() - 1))


class Backoff:
    """Counts consecutive failures and says how long to wait before the next try.

    `next_delay()` after each failure, `reset()` after a success.
    """

    __slots__ = ("_random", "base_s", "failures", "jitter", "max_s")

    def __init__(
        self,
        base_s: float,
        max_s: float,
        jitter: float,
        *,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if not 0 < base_s <= max_s:
            raise ValueError(f"backoff needs 0 < base_s <= max_s, got {base_s} and {max_s}")
        if not 0 <= jitter < 1:
            raise ValueError(f"backoff jitter must be in [0, 1), got {jitter}")
        self.base_s = base_s
        self.max_s = max_s
        self.jitter = jitter
        self.failures = 0
        """Consecutive failures since the last `reset`."""
        self._random = random

    def next_delay(self) -> float:
        """Count one more failure and return the wait before the next try."""
        self.failures += 1
        return backoff_delay(
            self.failures,
            base_s=self.base_s,
            max_s=self.max_s,
            jitter=self.jitter,
            random=self._random,
        )

    def shortest_delay(self) -> float:
        """The wait of a first failure (`base_s`, jittered), without counting a failure."""
        return backoff_delay(
            1, base_s=self.base_s, max_s=self.max_s, jitter=self.jitter, random=self._random
        )

    def reset(self) -> None:
        """A try succeeded: the next failure waits `base_s` again."""
        self.failures = 0
