"""docs/crypto-spec.md §4 row T2 (handshake storms) and T1 (expired keys) on the session core: for
random schedules of timer runs and sends against a peer that never answers a rekey, at most
one initiation per REKEY_TIMEOUT_S, at most MAX_TIMER_HANDSHAKES in all, and nothing is
sealed with a key older than REJECT_AFTER_S."""

from __future__ import annotations

import itertools
import os

from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto import constants as C
from meshcore.proto.framing import KeyRing, ReceiveKey, SendKey
from meshcore.proto.identity import Identity
from meshcore.proto.rekey import RekeyInitiator
from meshcore.proto.session import SessionCore, SessionSettings, SessionState

ALICE = Identity.generate()
BOB = Identity.generate()


def run_schedule(steps: list[tuple[float, bool]]) -> list[float]:
    """Run timers and sends from just before REKEY_AFTER_S; return when rekeys started."""
    ring = KeyRing()
    ring.install(SendKey(os.urandom(32), 1, 0.0), ReceiveKey(os.urandom(32), 2, 0.0), 0.0)
    core = SessionCore(ring, 0.0, SessionSettings(dead_after_s=None))
    starts: list[float] = []
    now = C.REKEY_AFTER_S - 1.0

    def factory() -> RekeyInitiator:
        starts.append(now)
        return RekeyInitiator(ALICE, BOB.public)

    core.enable_rekey(initiator=factory)
    sealed_at: list[float] = []
    for dt, send in steps:
        now += dt
        core.handle_timer(now)
        if send and core.can_send():
            core.send(b"x", now)
            sealed_at.append(now)
        core.outbox()  # the peer never answers
        if core.state is not SessionState.OPEN:
            break
    for earlier, later in itertools.pairwise(starts):
        # `later >= earlier + timeout` is what the core checks; the difference of two sums of
        # floats may come out a rounding error short of it.
        assert later - earlier >= C.REKEY_TIMEOUT_S - 1e-9
    assert len(starts) <= C.MAX_TIMER_HANDSHAKES
    assert all(t < C.REJECT_AFTER_S for t in sealed_at)
    if now >= C.REJECT_AFTER_S + C.PATH_HEARTBEAT_S:
        assert core.state is SessionState.CLOSED
    return starts


@given(st.lists(st.tuples(st.floats(0.01, 7.0), st.booleans()), min_size=1, max_size=120))
def test_rekey_initiations_are_rate_limited_and_bounded(steps: list[tuple[float, bool]]) -> None:
    run_schedule(steps)


def test_unanswered_rekey_is_retried_every_timeout_until_the_keys_expire() -> None:
    starts = run_schedule([(1.0, True)] * 90)
    assert starts[0] == C.REKEY_AFTER_S
    assert len(starts) == int((C.REJECT_AFTER_S - C.REKEY_AFTER_S) / C.REKEY_TIMEOUT_S)
