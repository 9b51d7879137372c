"""Validation and nomination of the candidate connections of one race (`PathValidator`).

Both sides send a PATH_CHALLENGE on every candidate connection. The *controlling* side (the
lower peer id, as in ICE) nominates the first connection whose PATH_RESPONSE matches; the
other side takes the connection on which the first fresh, authenticated, non-probing frame
arrives (RFC 9000 §9.3), which the controlling side sends only on the connection it
nominated. So both end up on the same connection (docs/direct.md, "The race").
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Callable, Hashable
from typing import Final

from meshcore.proto import constants as C
from meshcore.proto.inner import PathChallenge

__all__ = ["MAX_RACE_LINKS", "PathValidator"]

MAX_RACE_LINKS: Final = 2 * C.MAX_CANDIDATES
"""Candidate connections one race keeps at once (dialled and accepted); more are refused."""


class PathValidator:
    """Validation and nomination of the candidate connections of one race.

    Every candidate gets one PATH_CHALLENGE (16 unpredictable bytes); its PATH_RESPONSE is
    accepted only on the same link, once, compared in constant time. See the module
    docstring for who nominates which link.
    """

    def __init__(
        self,
        *,
        controlling: bool,
        deadline: float,
        margin_s: float = C.DIRECT_NOMINATE_MARGIN_S,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self.controlling = controlling
        self.deadline = deadline
        self._nominate_until = deadline - margin_s
        self._random_bytes = random_bytes
        self._challenges: dict[Hashable, tuple[bytes, float]] = {}
        self.links: dict[Hashable, None] = {}
        """Candidate links in the order they came up."""
        self.rtt: dict[Hashable, float] = {}
        self.winner: Hashable | None = None

    @property
    def full(self) -> bool:
        """True when no more candidate links may join this race."""
        return len(self.links) >= MAX_RACE_LINKS

    def add(self, link: Hashable, now: float) -> PathChallenge:
        """A candidate connection is up: returns the challenge to send on it."""
        if link in self.links:
            raise ValueError(f"link {link!r} is already in this race")
        if self.full:
            raise ValueError(f"a race keeps at most {MAX_RACE_LINKS} candidate links")
        data = self._random_bytes(C.PATH_CHALLENGE_BYTES)
        self.links[link] = None
        self._challenges[link] = (data, now)
        return PathChallenge(data)

    def remove(self, link: Hashable) -> None:
        """A candidate connection is gone."""
        self.links.pop(link, None)
        self._challenges.pop(link, None)

    def on_response(self, link: Hashable, data: bytes, now: float) -> bool:
        """A PATH_RESPONSE arrived on `link`; True if that nominates `link` (controlling side)."""
        entry = self._challenges.get(link)
        if entry is None or not hmac.compare_digest(entry[0], data):
            return False
        del self._challenges[link]  # single use
        self.rtt[link] = now - entry[1]
        if self.controlling and self.winner is None and now < self._nominate_until:
            self.winner = link
            return True
        return False

    def on_accepted(self, link: Hashable) -> bool:
        """A fresh non-probing frame arrived on `link`; True if that nominates it (the
        controlled side follows the controlling side's choice)."""
        if self.controlling or self.winner is not None or link not in self.links:
            return False
        self.winner = link
        return True
