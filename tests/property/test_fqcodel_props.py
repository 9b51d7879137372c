"""FQ-CoDel for all inputs: nothing is lost or duplicated without being counted, every flow
stays in order, the limits hold, and frames that wait less than target are never dropped."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from meshcore.proto.fqcodel import FqCodel, FqCodelSettings, flow_key, mark_congestion

VNET = 10
FLOWS = range(6)


def ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(flow: int, ident: int, size: int, ecn: int) -> bytes:
    """A UDP-over-IPv4 frame of flow `flow` (its source port) carrying `ident`."""
    ip = bytearray(20)
    ip[0], ip[1], ip[8], ip[9] = 0x45, ecn, 64, 17
    struct.pack_into(">H", ip, 2, 20 + 8 + size)
    ip[12:20] = bytes([10, 0, 0, 1, 10, 0, 0, 2])
    struct.pack_into(">H", ip, 10, ipv4_checksum(bytes(ip)))
    udp = struct.pack(">HHHHI", 4000 + flow, 53, 8 + size, 0, ident)
    return bytes(VNET) + bytes(12) + b"\x08\x00" + bytes(ip) + udp + bytes(size)


def identify(data: bytes) -> tuple[int, int]:
    """(flow, ident) of a frame made by `frame`."""
    sport, _dport, _len, _sum, ident = struct.unpack_from(">HHHHI", data, VNET + 34)
    return sport - 4000, ident


class FqCodelModel(RuleBasedStateMachine):
    """Random arrivals, departures and clock steps against per-flow FIFO lists."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = FqCodel(
            FqCodelSettings(limit_frames=40, limit_bytes=30_000, quantum_bytes=1500),
            offset=VNET,
        )
        self.now = 0.0
        self.next_id = 0
        self.waiting: dict[int, list[int]] = {f: [] for f in FLOWS}
        self.accounted_drops = 0

    @rule(
        flow=st.sampled_from(list(FLOWS)),
        size=st.integers(0, 3000),
        ecn=st.sampled_from([0, 1, 2, 3]),
    )
    def arrive(self, flow: int, size: int, ecn: int) -> None:
        self.queue.enqueue(frame(flow, self.next_id, size, ecn), self.now)
        self.waiting[flow].append(self.next_id)
        self.next_id += 1
        s = self.queue.settings
        assert len(self.queue) <= s.limit_frames
        assert self.queue.queued_bytes <= s.limit_bytes

    @rule()
    def depart(self) -> None:
        out = self.queue.dequeue(self.now)
        if out is None:
            assert len(self.queue) == 0
            return
        flow, ident = identify(out)
        waiting = self.waiting[flow]
        assert ident in waiting  # never a frame twice, never an unknown one
        position = waiting.index(ident)
        self.accounted_drops += position  # everything before it left as a head drop
        del waiting[: position + 1]
        stats = self.queue.stats
        assert self.accounted_drops <= stats.codel_drops + stats.overlimit_drops

    @rule(seconds=st.floats(0.0, 0.2))
    def tick(self, seconds: float) -> None:
        self.now += seconds

    @invariant()
    def conserves_frames(self) -> None:
        s = self.queue.stats
        assert s.enqueued == s.dequeued + s.codel_drops + s.overlimit_drops + len(self.queue)
        assert (self.queue.queued_bytes == 0) == (len(self.queue) == 0)


TestFqCodelModel = FqCodelModel.TestCase
TestFqCodelModel.settings = settings(max_examples=150, stateful_step_count=80, deadline=None)


@given(
    arrivals=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 1500), st.floats(0.0, 0.004)),
        max_size=120,
    )
)
def test_frames_that_wait_less_than_target_are_never_dropped(
    arrivals: list[tuple[int, int, float]],
) -> None:
    queue = FqCodel(offset=VNET)
    now = 0.0
    for ident, (flow, size, wait) in enumerate(arrivals):
        queue.enqueue(frame(flow, ident, size, 0), now)
        now += wait
        assert queue.dequeue(now) is not None  # one in, one out: each waits < 5 ms
    assert queue.stats.codel_drops == 0


@given(st.binary(max_size=120), st.integers(0, 20))
def test_classifying_and_marking_any_bytes_never_raises(data: bytes, offset: int) -> None:
    flow_key(data, offset)
    marked = mark_congestion(data, offset)
    assert marked is None or len(marked) == len(data)


@given(st.integers(0, 5), st.integers(0, 400), st.sampled_from([1, 2, 3]))
def test_a_marked_ipv4_packet_keeps_a_valid_checksum(flow: int, size: int, ecn: int) -> None:
    marked = mark_congestion(frame(flow, 1, size, ecn), VNET)
    assert marked is not None
    header = marked[VNET + 14 : VNET + 34]
    assert header[1] & 3 == 3 and ipv4_checksum(header) == 0
