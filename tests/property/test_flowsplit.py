"""`proto.flowsplit`: a small frame never goes by datagram while its flow has sent a large
frame within the hold time; flows are independent (a shared slot only holds both back)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

from meshcore.proto.flowsplit import FlowSplit
from meshcore.proto.fqcodel import flow_key

HEADER = 10  # a virtio-net header before the Ethernet frame, as in the tunnel


def tcp_frame(sport: int, size: int, dport: int = 5201) -> bytes:
    """A virtio-net header and an Ethernet + IPv4 + TCP frame of `size` bytes in all."""
    eth = bytes(6) + bytes(6) + b"\x08\x00"
    ip = bytes([0x45, 0]) + struct.pack(">H", size - HEADER - 14) + bytes(4) + bytes([64, 6])
    ip += bytes(2) + bytes([10, 0, 0, 1, 10, 0, 0, 2])
    tcp = struct.pack(">HH", sport, dport) + bytes(16)
    frame = bytes(HEADER) + eth + ip + tcp
    return frame + bytes(size - len(frame))


def test_a_flow_that_sent_a_large_frame_keeps_its_small_ones_on_the_session() -> None:
    split = FlowSplit(HEADER, hold_s=2.0)
    bulk, ping = tcp_frame(40000, 1500), tcp_frame(40001, 100)
    assert split.may_send_datagram(tcp_frame(40000, 100), 0.0)
    split.sent_large(bulk, 1.0)
    assert not split.may_send_datagram(tcp_frame(40000, 100), 1.5)
    assert not split.may_send_datagram(tcp_frame(40000, 100), 3.0)  # still within the hold
    assert split.may_send_datagram(tcp_frame(40000, 100), 3.01)
    assert split.may_send_datagram(ping, 1.5)  # another flow is not held back


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="slots >= 1"):
        FlowSplit(slots=0)


class FlowSplitMachine(RuleBasedStateMachine):
    """Large and small frames of a few flows over time, against a per-flow model."""

    def __init__(self) -> None:
        super().__init__()
        self.split = FlowSplit(HEADER, slots=8, hold_s=1.0)
        self.now = 0.0
        self.large_at: dict[bytes, float] = {}

    @rule(dt=st.floats(0, 1.5))
    def wait(self, dt: float) -> None:
        self.now += dt

    @rule(port=st.integers(1, 12))
    def large(self, port: int) -> None:
        frame = tcp_frame(port, 1500)
        self.split.sent_large(frame, self.now)
        self.large_at[flow_key(frame, HEADER)] = self.now

    @rule(port=st.integers(1, 12))
    def small(self, port: int) -> None:
        frame = tcp_frame(port, 120)
        allowed = self.split.may_send_datagram(frame, self.now)
        last = self.large_at.get(flow_key(frame, HEADER))
        if last is not None and self.now - last <= 1.0:
            assert not allowed  # it would overtake its own flow's large frames
        if all(self.now - t > 1.0 for t in self.large_at.values()):
            assert allowed  # nothing held back: every flow's small frames go by UDP


FlowSplitMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40)
TestFlowSplit = FlowSplitMachine.TestCase
