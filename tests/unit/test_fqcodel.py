"""FQ-CoDel over device frames: flows, fair service, sojourn-time drops and ECN marks."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Hashable

import pytest

from meshcore.proto.fqcodel import FqCodel, FqCodelSettings, flow_key, mark_congestion

VNET = 10


def distinct_flows() -> Callable[[bytes, int], int]:
    """`flow_key`, numbered in order of first sight: each flow its own bucket (the hash of a
    small int is itself), so a test of flow isolation does not depend on the process's hash
    seed making two flows share one of the 1024 buckets, as FQ-CoDel allows."""
    seen: dict[Hashable, int] = {}

    def classify(frame: bytes, offset: int) -> int:
        return seen.setdefault(flow_key(frame, offset), len(seen))

    return classify
MAC_A = bytes([2, 0, 0, 0, 0, 1])
MAC_B = bytes([2, 0, 0, 0, 0, 2])


def ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f">{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(
    sport: int = 1000,
    dport: int = 2000,
    *,
    protocol: int = 6,
    ecn: int = 0,
    size: int = 100,
    src: bytes = bytes([10, 0, 0, 1]),
    dst: bytes = bytes([10, 0, 0, 2]),
    vlan: bool = False,
) -> bytes:
    """virtio-net header + Ethernet (+ VLAN tag) + IPv4 with a valid checksum + ports."""
    ip = bytearray(20)
    ip[0] = 0x45
    ip[1] = 0xB8 | ecn  # DSCP EF, to see that marking keeps the DSCP
    struct.pack_into(">H", ip, 2, 20 + 4 + size)
    ip[8], ip[9] = 64, protocol
    ip[12:16], ip[16:20] = src, dst
    struct.pack_into(">H", ip, 10, ipv4_checksum(bytes(ip)))
    tag = struct.pack(">HH", 0x8100, 7) if vlan else b""
    ethernet = MAC_B + MAC_A + tag + b"\x08\x00"
    return bytes(VNET) + ethernet + bytes(ip) + struct.pack(">HH", sport, dport) + bytes(size)


def ipv6(sport: int = 1000, dport: int = 2000, *, ecn: int = 0) -> bytes:
    ip = bytearray(40)
    ip[0] = 0x60
    ip[1] = ecn << 4
    struct.pack_into(">H", ip, 4, 4 + 20)
    ip[6], ip[7] = 17, 64
    ip[8:24], ip[24:40] = bytes(15) + b"\x01", bytes(15) + b"\x02"
    return bytes(VNET) + MAC_B + MAC_A + b"\x86\xdd" + bytes(ip) + struct.pack(">HH", sport, dport)


def arp() -> bytes:
    return bytes(VNET) + b"\xff" * 6 + MAC_A + b"\x08\x06" + bytes(28)


def drain(queue: FqCodel, now: float) -> list[bytes]:
    out = []
    while (frame := queue.dequeue(now)) is not None:
        out.append(frame)
    return out


def drain_n(queue: FqCodel, count: int, now: float = 0.0) -> list[bytes | None]:
    return [queue.dequeue(now) for _ in range(count)]


# --- flows -------------------------------------------------------------------------------------


def test_flows_are_told_apart_by_addresses_protocol_and_ports() -> None:
    base = flow_key(ipv4(), VNET)
    assert flow_key(ipv4(size=900), VNET) == base  # the same flow, whatever the size
    assert flow_key(ipv4(sport=1001), VNET) != base
    assert flow_key(ipv4(dport=2001), VNET) != base
    assert flow_key(ipv4(protocol=17), VNET) != base
    assert flow_key(ipv4(src=bytes([10, 0, 0, 9])), VNET) != base
    assert flow_key(ipv4(vlan=True), VNET) == base  # a VLAN tag does not hide the flow
    assert flow_key(ipv6(), VNET) != flow_key(ipv6(sport=5), VNET)
    assert flow_key(arp(), VNET) != base


def test_icmp_has_no_ports_and_short_frames_still_get_a_flow() -> None:
    one = ipv4(protocol=1, sport=1, dport=1)
    two = ipv4(protocol=1, sport=9, dport=9)
    assert flow_key(one, VNET) == flow_key(two, VNET)  # bytes after the header are not ports
    for length in range(0, 60):
        flow_key(ipv4()[:length], VNET)  # never raises


# --- ECN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ecn", [1, 2])
def test_marking_sets_ce_and_keeps_the_ipv4_checksum_valid(ecn: int) -> None:
    frame = ipv4(ecn=ecn)
    marked = mark_congestion(frame, VNET)
    assert marked is not None
    ip = marked[VNET + 14 : VNET + 34]
    assert ip[1] == 0xB8 | 3  # DSCP kept, CE set
    assert ipv4_checksum(ip) == 0  # a valid header sums to 0xffff
    assert marked[: VNET + 15] == frame[: VNET + 15]
    assert marked[VNET + 16 : VNET + 24] == frame[VNET + 16 : VNET + 24]
    assert marked[VNET + 26 :] == frame[VNET + 26 :]


def test_marking_ipv6_sets_ce_in_the_traffic_class() -> None:
    marked = mark_congestion(ipv6(ecn=2), VNET)
    assert marked is not None and (marked[VNET + 15] >> 4) & 3 == 3


def test_not_ect_and_non_ip_cannot_be_marked_and_ce_stays_as_it_is() -> None:
    assert mark_congestion(ipv4(ecn=0), VNET) is None
    assert mark_congestion(ipv6(ecn=0), VNET) is None
    assert mark_congestion(arp(), VNET) is None
    already = ipv4(ecn=3)
    assert mark_congestion(already, VNET) == already


# --- fair queueing -----------------------------------------------------------------------------


def test_frames_of_one_flow_leave_in_order() -> None:
    queue = FqCodel(offset=VNET)
    frames = [ipv4(size=100 + i) for i in range(20)]
    for frame in frames:
        queue.enqueue(frame, 0.0)
    assert drain(queue, 0.0) == frames
    assert len(queue) == 0 and queue.queued_bytes == 0


def test_a_lone_ping_overtakes_a_bulk_backlog() -> None:
    queue = FqCodel(FqCodelSettings(quantum_bytes=1500), offset=VNET, classify=distinct_flows())
    bulk = [ipv4(sport=5001, size=1400) for _ in range(50)]
    for frame in bulk:
        queue.enqueue(frame, 0.0)
    assert drain_n(queue, 2) == bulk[:2]  # the bulk flow uses up its quantum: an old flow
    ping = ipv4(protocol=1, size=56)
    queue.enqueue(ping, 0.001)
    assert queue.dequeue(0.001) == ping  # a new flow goes first
    assert queue.stats.new_flows == 2


def test_backlogged_flows_share_by_bytes() -> None:
    queue = FqCodel(FqCodelSettings(quantum_bytes=3000), offset=VNET, classify=distinct_flows())
    for _ in range(30):
        queue.enqueue(ipv4(sport=1, size=1400), 0.0)
        queue.enqueue(ipv4(sport=2, size=400), 0.0)
    sent = {1: 0, 2: 0}
    for _ in range(30):
        frame = queue.dequeue(0.0)
        assert frame is not None
        sent[struct.unpack_from(">H", frame, VNET + 34)[0]] += len(frame)
    assert abs(sent[1] - sent[2]) <= 3000 + 1448  # DRR: within a quantum and a frame


def test_overflow_drops_from_the_fattest_flow_not_from_the_small_one() -> None:
    queue = FqCodel(FqCodelSettings(limit_bytes=20_000), offset=VNET, classify=distinct_flows())
    small = ipv4(sport=7, size=50)
    queue.enqueue(small, 0.0)
    dropped = sum(queue.enqueue(ipv4(sport=9, size=1000), 0.0) for _ in range(25))
    assert dropped > 0 and queue.stats.overlimit_drops == dropped
    assert queue.queued_bytes <= 20_000
    assert small in drain(queue, 0.0)


# --- CoDel -------------------------------------------------------------------------------------


def test_no_drop_while_frames_wait_less_than_target() -> None:
    queue = FqCodel(offset=VNET)
    now = 0.0
    for _ in range(2000):  # a standing queue of 3 frames, each waiting 3 ms
        for _ in range(3):
            queue.enqueue(ipv4(size=1400), now)
        now += 0.003
        for _ in range(3):
            assert queue.dequeue(now) is not None
    assert queue.stats.codel_drops == 0


def standing_queue(queue: FqCodel, *, ecn: int, seconds: float) -> float:
    """Keep 50 ms of frames queued (one in, one out each ms) for `seconds`; returns now."""
    now = 0.0
    for _ in range(50):
        queue.enqueue(ipv4(size=1400, ecn=ecn), now)
    while now < seconds:
        now += 0.001
        queue.enqueue(ipv4(size=1400, ecn=ecn), now)
        queue.dequeue(now)
    return now


def test_a_standing_delay_above_target_for_an_interval_starts_dropping() -> None:
    queue = FqCodel(offset=VNET)
    standing_queue(queue, ecn=0, seconds=0.095)
    assert queue.stats.codel_drops == 0  # not yet a whole interval above target
    standing_queue(queue := FqCodel(offset=VNET), ecn=0, seconds=1.0)
    assert queue.stats.codel_drops >= 3
    assert queue.stats.ecn_marks == 0


def test_drops_come_faster_while_the_delay_stays_high() -> None:
    queue = FqCodel(offset=VNET)
    times = []
    now = 0.0
    for _ in range(50):
        queue.enqueue(ipv4(size=1400), now)
    while now < 2.0:
        now += 0.001
        queue.enqueue(ipv4(size=1400), now)
        queue.enqueue(ipv4(size=1400), now)  # twice as fast in as out: it keeps growing
        before = queue.stats.codel_drops
        queue.dequeue(now)
        if queue.stats.codel_drops > before:
            times.append(now)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) > 4
    assert gaps[-1] < gaps[0]  # interval / sqrt(count)


def test_ect_frames_are_marked_instead_of_dropped() -> None:
    queue = FqCodel(offset=VNET)
    standing_queue(queue, ecn=2, seconds=1.0)
    assert queue.stats.ecn_marks >= 3 and queue.stats.codel_drops == 0
    marked = [f for f in drain(queue, 2.0) if f[VNET + 15] & 3 == 3]
    assert marked  # the draining ones are still above target


def test_with_ecn_off_ect_frames_are_dropped() -> None:
    queue = FqCodel(FqCodelSettings(ecn=False), offset=VNET)
    standing_queue(queue, ecn=2, seconds=1.0)
    assert queue.stats.codel_drops >= 3 and queue.stats.ecn_marks == 0


def test_the_delay_falling_below_target_ends_dropping() -> None:
    queue = FqCodel(offset=VNET)
    now = standing_queue(queue, ecn=0, seconds=1.0)
    drain(queue, now)
    drops = queue.stats.codel_drops
    for _ in range(100):  # now frames leave at once
        now += 0.001
        queue.enqueue(ipv4(size=1400), now)
        assert queue.dequeue(now) is not None
    assert queue.stats.codel_drops == drops


def test_clear_forgets_everything_without_counting_drops() -> None:
    queue = FqCodel(offset=VNET)
    for sport in range(5):
        queue.enqueue(ipv4(sport=sport), 0.0)
    queue.clear()
    assert len(queue) == 0 and queue.queued_bytes == 0 and queue.dequeue(1.0) is None
    assert queue.stats.codel_drops == queue.stats.overlimit_drops == 0


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        FqCodelSettings(target_s=0)
    with pytest.raises(ValueError):
        FqCodelSettings(quantum_bytes=10)
    with pytest.raises(ValueError):
        FqCodelSettings(limit_bytes=0)
