"""`proto.readpace`: a wakeup after a quiet spell reads one packet, wakeups while packets
keep coming read a batch, and the budget is always between one and the batch."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from meshcore.proto.constants import LONE_PACKET_GAP_S
from meshcore.proto.readpace import ReadPace


def test_the_first_wakeup_reads_one_packet() -> None:
    assert ReadPace(256).reads(0.0) == 1


def test_a_wakeup_soon_after_a_read_reads_a_batch_and_one_after_a_quiet_spell_reads_one() -> None:
    pace = ReadPace(256, gap_s=0.001)
    pace.reads(10.0)
    assert pace.reads(10.0005) == 256  # more were waiting: epoll reported it again at once
    assert pace.reads(10.001) == 256
    assert pace.reads(10.0030) == 1  # quiet for 2 ms: a lone packet
    assert pace.reads(10.0031) == 256


def test_an_infinite_gap_always_reads_a_batch_and_a_zero_gap_reads_one_at_a_time() -> None:
    batch, lone = ReadPace(8, gap_s=math.inf), ReadPace(8, gap_s=0.0)
    assert [batch.reads(t) for t in (0.0, 0.0, 5.0)] == [8, 8, 8]
    assert [lone.reads(t) for t in (0.0, 0.5, 5.0)] == [1, 1, 1]


def test_the_default_gap_is_the_constant() -> None:
    pace = ReadPace(4)
    pace.reads(1.0)
    assert pace.reads(1.0 + LONE_PACKET_GAP_S) == 4
    assert pace.reads(1.0 + 3 * LONE_PACKET_GAP_S + 1e-6) == 1


@pytest.mark.parametrize(("batch", "gap"), [(0, 0.001), (4, -1.0), (4, math.nan)])
def test_bad_settings_are_refused(batch: int, gap: float) -> None:
    with pytest.raises(ValueError, match="batch >= 1 and gap_s >= 0"):
        ReadPace(batch, gap)


@given(st.lists(st.floats(0, 0.01), max_size=50), st.integers(1, 300), st.floats(0, 0.005))
def test_a_wakeup_reads_one_exactly_when_the_last_read_is_older_than_the_gap(
    steps: list[float], batch: int, gap: float
) -> None:
    pace, now, last = ReadPace(batch, gap), 0.0, -math.inf
    for step in steps:
        now += step
        assert pace.reads(now) == (1 if now - last > gap else batch)
        last = now


class ReadPaceMachine(RuleBasedStateMachine):
    """Wakeups at moving times against a model of the last read."""

    def __init__(self) -> None:
        super().__init__()
        self.pace = ReadPace(16, gap_s=0.001)
        self.now = 0.0
        self.last = -math.inf
        self.budget = 1

    @rule(dt=st.floats(0, 0.003))
    def wait(self, dt: float) -> None:
        self.now += dt

    @rule()
    def wake(self) -> None:
        self.budget = self.pace.reads(self.now)
        assert self.budget == (1 if self.now - self.last > 0.001 else 16)
        self.last = self.now

    @invariant()
    def budget_is_one_or_the_batch(self) -> None:
        assert self.budget in (1, 16)


ReadPaceMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40)
TestReadPace = ReadPaceMachine.TestCase
