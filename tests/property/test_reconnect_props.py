"""The reconnect policy as a state machine: random losses (with and without an announced
window), failed attempts (the relay not listening, busy with a retry window, anything
else), registrations and time. Checked at every wait: it is never shorter than the shortest
backoff (so a peer's attempts are bounded in rate however the relay answers), never longer
than the backoff's cap plus the longest window honoured, a busy refusal is answered within
its window from the shortest wait and a relay not listening within its announced window
plus the margin at the shortest wait, and everything else with the plain doubled backoff.
"""

from __future__ import annotations

import errno
from random import Random

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from meshcore.errors import ConnectFailed, RelayError
from meshcore.proto.reconnect import ReconnectPolicy, busy_reason
from meshcore.proto.wire import ErrorCode

BASE_S, MAX_S, JITTER, MAX_WINDOW_S, MARGIN_S = 0.5, 30.0, 0.5, 120.0, 10.0
SHORTEST = BASE_S * (1 - JITTER)
EPS = 1e-9

windows = st.one_of(st.none(), st.floats(min_value=0.0, max_value=1e6))


def backoff_bounds(failures: int) -> tuple[float, float]:
    step = min(BASE_S * 2.0 ** min(failures - 1, 32), MAX_S)
    return step * (1 - JITTER), step * (1 + JITTER)


class ReconnectMachine(RuleBasedStateMachine):
    @initialize(seed=st.integers(min_value=0, max_value=2**32 - 1))
    def start(self, seed: int) -> None:
        self.policy = ReconnectPolicy(
            BASE_S, MAX_S, JITTER, max_window_s=MAX_WINDOW_S, random=Random(seed).random,
            restart_margin_s=MARGIN_S,
        )  # fmt: skip
        self.now = 0.0
        self.failures = 0  # the model: consecutive doubling steps since the last registration
        self.busy = 0
        self.until: float | None = None
        self.wait = SHORTEST

    @rule(dt=st.floats(min_value=0.0, max_value=60.0))
    def time_passes(self, dt: float) -> None:
        self.now += dt

    @rule(window=windows)
    def registered_connection_lost(self, window: float | None) -> None:
        self.wait = self.policy.after_loss(window, self.now)
        self.failures += 1
        self.busy = 0
        share = min(window or 0.0, MAX_WINDOW_S)
        low, high = backoff_bounds(self.failures)
        assert low - EPS <= self.wait <= high + share + EPS
        self.until = self.now + share + MARGIN_S if share > 0 else None

    @rule()
    def relay_not_listening(self) -> None:
        error = ConnectFailed("cannot connect: refused", errno=errno.ECONNREFUSED)
        self.wait = self.policy.after_failure(error, self.now)
        self.busy = 0
        if self.until is not None and self.now <= self.until:  # restarting: soon again
            assert SHORTEST - EPS <= self.wait <= BASE_S * (1 + JITTER) + EPS
            return
        self.failures += 1
        low, high = backoff_bounds(self.failures)
        assert low - EPS <= self.wait <= high + EPS

    @rule(window=st.floats(min_value=0.0, max_value=1e6), rate=st.booleans())
    def busy_relay_refused(self, window: float, rate: bool) -> None:
        code = ErrorCode.RATE_LIMITED if rate else ErrorCode.CAPACITY
        reason = busy_reason("too many connections are registering right now", window)
        error = RelayError(f"relay refused the registration: {reason}", code=int(code))
        self.wait = self.policy.after_failure(error, self.now)
        if window * 1000 <= 0:  # "reconnect later": no window, the plain backoff
            self.busy = 0
            self.failures += 1
            low, high = backoff_bounds(self.failures)
            assert low - EPS <= self.wait <= high + EPS
            return
        self.busy += 1
        read = -(-window * 1000 // 1) / 1000  # as announced: rounded up to the millisecond
        spread = min(read * 2.0 ** min(self.busy - 1, 32), MAX_WINDOW_S)
        assert SHORTEST - EPS <= self.wait <= BASE_S * (1 + JITTER) + spread + 1e-6

    @rule()
    def unreachable(self) -> None:
        self.wait = self.policy.after_failure(OSError(errno.EHOSTUNREACH, "no route"), self.now)
        self.busy = 0
        self.failures += 1
        low, high = backoff_bounds(self.failures)
        assert low - EPS <= self.wait <= high + EPS

    @rule()
    def registered(self) -> None:
        self.policy.reset()
        self.failures = self.busy = 0
        self.until = None

    @invariant()
    def never_sooner_than_the_shortest_nor_past_the_caps(self) -> None:
        assert SHORTEST - EPS <= self.wait <= MAX_S * (1 + JITTER) + MAX_WINDOW_S + 1e-6


TestReconnectPolicy = ReconnectMachine.TestCase
