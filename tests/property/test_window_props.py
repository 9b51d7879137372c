"""The adaptive window for all sequences of sends and acknowledgements: always within its
bounds, and never fed a sample twice."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto.constants import (
    MAX_MESSAGE_BYTES,
    RELAY_CIRCUIT_QUEUE_BYTES,
    RELAY_CIRCUIT_QUEUE_FRAMES,
)
from meshcore.proto.framing import KeyRing, ReceiveKey, SendKey
from meshcore.proto.session import SessionCore, SessionSettings
from meshcore.proto.sessiontypes import RELAY_WINDOW_BYTES
from meshcore.proto.window import WindowSizer
from meshcore.proto.wire import encode_relayed

events = st.lists(
    st.tuples(
        st.sampled_from(["send", "ack", "forget", "reset"]),
        st.floats(0.0, 0.5),  # time step
        st.integers(1, 70_000),  # message size
    ),
    max_size=200,
)


@given(events, st.integers(1, 200_000), st.integers(1, 10_000_000))
def test_the_window_stays_within_its_minimum_and_its_cap(
    steps: list[tuple[str, float, int]], minimum: int, cap: int
) -> None:
    sizer = WindowSizer(min_bytes=minimum, min_rtt_window_s=1.0)
    now = 0.0
    sent: list[tuple[int, int]] = []
    next_seq = 0
    for kind, step, size in steps:
        now += step
        if kind == "send":
            sizer.on_sent(next_seq, now, idle=not sent)
            sent.append((next_seq, size))
            next_seq += 1
        elif kind == "ack" and sent:
            seq, size = sent.pop(0)
            sizer.on_acked(seq, size, now)
        elif kind == "forget" and sent:
            sizer.forget(sent[0][0])
        elif kind == "reset":
            sizer.reset()
        window = sizer.window(cap)
        assert min(minimum, cap) <= window <= max(min(minimum, cap), cap)
        assert sizer.min_rtt is None or sizer.min_rtt >= 0
        assert sizer.bandwidth is None or sizer.bandwidth > 0


@given(st.lists(st.integers(1, MAX_MESSAGE_BYTES), min_size=1, max_size=80))
def test_a_full_relay_window_fits_the_relays_circuit_queue(sizes: list[int]) -> None:
    """Until the relay grants credits, everything a session has in flight on the relay must
    fit one circuit's queue there, or the relay drops frames and the session waits an RTO."""
    k1, k2 = os.urandom(32), os.urandom(32)
    ring = KeyRing()
    ring.install(SendKey(k1, 2, 0.0), ReceiveKey(k2, 1, 0.0), 0.0)
    core = SessionCore(ring, 0.0, SessionSettings(adaptive_window=False, dead_after_s=None))
    for size in sizes:
        if not core.can_send():
            break
        core.send(b"x" * size, 0.0)
    queued = [len(encode_relayed(1, frame)) for _, frame in core.outbox()]
    assert len(queued) <= RELAY_CIRCUIT_QUEUE_FRAMES
    assert sum(queued) <= RELAY_CIRCUIT_QUEUE_BYTES
    assert RELAY_WINDOW_BYTES == SessionSettings().window_bytes <= 2 * 1024 * 1024
