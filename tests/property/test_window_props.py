"""The adaptive window for all sequences of sends and acknowledgements: always within its
bounds, and never fed a sample twice."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto.window import WindowSizer

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
