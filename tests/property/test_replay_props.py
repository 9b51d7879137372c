"""ReplayWindow against a set-plus-window reference model (docs/crypto-spec.md §4 row 7)."""

from __future__ import annotations

from hypothesis import given

from meshcore.proto.replay import ReplayWindow
from meshcore.testing._framing_strategies import ReferenceReplayWindow, counter_sequences


@given(counter_sequences())
def test_window_agrees_with_reference_model_on_every_arrival_order(counters: list[int]) -> None:
    window, model = ReplayWindow(), ReferenceReplayWindow()
    for counter in counters:
        assert window.check(counter) == model.check(counter), counter
        assert window.accept(counter) == model.accept(counter), counter
        assert window.highest == model.top


@given(counter_sequences())
def test_no_counter_is_ever_accepted_twice(counters: list[int]) -> None:
    window = ReplayWindow()
    accepted = [counter for counter in counters if window.accept(counter)]
    assert len(accepted) == len(set(accepted))


@given(counter_sequences())
def test_check_then_update_equals_accept(counters: list[int]) -> None:
    split, combined = ReplayWindow(), ReplayWindow()
    for counter in counters:
        expected = combined.accept(counter)
        if split.check(counter):
            split.update(counter)
            assert expected
        else:
            assert not expected
