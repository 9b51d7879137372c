"""Sans-IO FQ-CoDel (RFC 8290 over RFC 8289, as Linux's sch_fq_codel): the queue of device
frames waiting for one peer's session, managed by how long they wait.

Frames are classified into flows by a hash of their inner IP 5-tuple (`flow_key`); each flow
is a FIFO with its own CoDel state; deficit round robin serves the flows, and a flow that had
nothing queued starts in the new-flow list, served first, so that a lone ping never waits
behind a bulk flow's backlog. CoDel looks at each frame as it leaves: once frames of a flow
have waited longer than `target_s` for a whole `interval_s`, it drops (or, for an
ECN-capable IP packet, marks Congestion Experienced) at the head, ever more often until the
waiting falls below target. This is where the tunnel tells the traffic inside it that the
path is full; the session below never drops a frame it was given.

Frames are whole device frames: `offset` bytes of virtio-net header, then Ethernet.
"""

from __future__ import annotations

import math
import struct
from collections import deque
from collections.abc import Callable, Hashable
from typing import Final

import attrs

__all__ = [
    "FqCodel",
    "FqCodelSettings",
    "FqCodelStats",
    "flow_key",
    "mark_congestion",
]

_ETH_HEADER: Final = 14
_VLAN_TAGS: Final = (0x8100, 0x88A8)
_IPV4: Final = 0x0800
_IPV6: Final = 0x86DD
_PORTS_PROTOCOLS: Final = frozenset({6, 17, 33, 132, 136})  # TCP UDP DCCP SCTP UDP-Lite
_ECN_MASK: Final = 0x03
_CE: Final = 0x03
_U16: Final = struct.Struct(">H")


@attrs.frozen
class FqCodelSettings:
    """Parameters of the queue; defaults are Linux's fq_codel's, except the quantum and the
    limits, sized for 64 KiB GSO frames (docs/tap.md)."""

    target_s: float = 0.005
    """Acceptable standing delay of a flow (RFC 8289 §4.4: 5 ms)."""
    interval_s: float = 0.1
    """How long the delay may stay above target before CoDel acts (§4.3: 100 ms, a
    worst-case RTT)."""
    ecn: bool = True
    """Mark ECN-capable IP packets (set CE) instead of dropping them."""
    quantum_bytes: int = 64 * 1024
    """Bytes a flow may send per round of deficit round robin: one GSO frame."""
    flows: int = 1024
    """Hash buckets; flows that collide share one queue (RFC 8290 §4.1.1)."""
    limit_frames: int = 10240
    """Most frames queued; beyond it, frames are dropped from the fattest flow."""
    limit_bytes: int = 4 * 1024 * 1024
    """Most bytes queued; beyond it, likewise."""
    drop_batch: int = 64
    """Frames dropped from the fattest flow at most per overflow (half its backlog)."""

    def __attrs_post_init__(self) -> None:
        if not (self.target_s > 0 and self.interval_s > 0):
            raise ValueError("target_s and interval_s must be positive")
        if self.quantum_bytes < 256 or self.flows < 1 or self.drop_batch < 1:
            raise ValueError("quantum_bytes >= 256, flows >= 1 and drop_batch >= 1 required")
        if self.limit_frames < 1 or self.limit_bytes < 1:
            raise ValueError("the limits must be positive")


@attrs.define
class FqCodelStats:
    """Counters since the queue was made."""

    enqueued: int = 0
    dequeued: int = 0
    codel_drops: int = 0
    """Frames CoDel dropped at the head (their flow's delay stayed above target)."""
    ecn_marks: int = 0
    """Frames CoDel marked CE instead of dropping them."""
    overlimit_drops: int = 0
    """Frames dropped because the queue was over a limit."""
    new_flows: int = 0
    """Times a flow with nothing queued got a frame (and joined the new-flow list)."""


_UNLISTED, _NEW, _OLD = 0, 1, 2


class _Flow:
    """One bucket: its FIFO of (frame, enqueue time), its deficit, its CoDel variables."""

    __slots__ = (
        "backlog",
        "count",
        "deficit",
        "drop_next",
        "dropping",
        "first_above",
        "frames",
        "lastcount",
        "listed",
    )

    def __init__(self) -> None:
        self.frames: deque[tuple[bytes, float]] = deque()
        self.backlog = 0
        self.deficit = 0
        self.listed = _UNLISTED
        self.count = 0
        self.lastcount = 0
        self.dropping = False
        self.first_above: float | None = None
        self.drop_next = 0.0


class FqCodel:
    """Flow-queued CoDel over device frames; feed it with `enqueue`, drain it with `dequeue`,
    passing the time in seconds (any monotonic clock)."""

    def __init__(
        self,
        settings: FqCodelSettings | None = None,
        *,
        offset: int = 0,
        classify: Callable[[bytes, int], Hashable] | None = None,
    ) -> None:
        self.settings = s = settings or FqCodelSettings()
        self._offset = offset
        self._classify = classify or flow_key
        self._flows: dict[int, _Flow] = {}
        self._new: deque[_Flow] = deque()
        self._old: deque[_Flow] = deque()
        self._frames = 0
        self._bytes = 0
        self._largest = 0
        self.stats = FqCodelStats()
        self._target = s.target_s
        self._interval = s.interval_s
        self._quantum = s.quantum_bytes

    def __len__(self) -> int:
        return self._frames

    @property
    def queued_bytes(self) -> int:
        """Bytes of the frames waiting."""
        return self._bytes

    def enqueue(self, frame: bytes, now: float) -> int:
        """Queue `frame` (arrived at `now`); returns how many frames an overflow dropped,
        which may include this one."""
        index = hash(self._classify(frame, self._offset)) % self.settings.flows
        flow = self._flows.get(index)
        if flow is None:
            flow = self._flows[index] = _Flow()
        size = len(frame)
        flow.frames.append((frame, now))
        flow.backlog += size
        self._frames += 1
        self._bytes += size
        if size > self._largest:
            self._largest = size
        self.stats.enqueued += 1
        if flow.listed == _UNLISTED:
            flow.listed = _NEW
            flow.deficit = self._quantum
            self._new.append(flow)
            self.stats.new_flows += 1
        s = self.settings
        if self._frames <= s.limit_frames and self._bytes <= s.limit_bytes:
            return 0
        return self._drop_from_fattest()

    def dequeue(self, now: float) -> bytes | None:
        """The next frame to send, or None when nothing is queued. CoDel may drop frames
        (counted in `stats`) or mark the one it returns."""
        new, old = self._new, self._old
        while True:
            if new:
                flows = new
            elif old:
                flows = old
            else:
                return None
            flow = flows[0]
            if flow.deficit <= 0:
                flow.deficit += self._quantum
                flows.popleft()
                flow.listed = _OLD
                old.append(flow)
                continue
            frame = self._codel_dequeue(flow, now)
            if frame is None:
                flows.popleft()
                if flows is new and old:  # a pass through the old flows: no starvation
                    flow.listed = _OLD
                    old.append(flow)
                else:
                    flow.listed = _UNLISTED
                continue
            flow.deficit -= len(frame)
            self.stats.dequeued += 1
            return frame

    def clear(self) -> None:
        """Forget every queued frame (not counted as drops)."""
        for flow in self._flows.values():
            flow.frames.clear()
            flow.backlog = 0
            flow.listed = _UNLISTED
        self._new.clear()
        self._old.clear()
        self._frames = self._bytes = 0

    # ------------------------------------------------------------------ CoDel
    def _take(self, flow: _Flow) -> tuple[bytes, float] | None:
        if not flow.frames:
            return None
        item = flow.frames.popleft()
        size = len(item[0])
        flow.backlog -= size
        self._frames -= 1
        self._bytes -= size
        return item

    def _should_drop(self, flow: _Flow, item: tuple[bytes, float] | None, now: float) -> bool:
        if item is None:
            flow.first_above = None
            return False
        if now - item[1] < self._target or self._bytes <= self._largest:
            flow.first_above = None  # below target (or less than a frame queued): stay there
            return False
        if flow.first_above is None:
            flow.first_above = now + self._interval
            return False
        return now > flow.first_above

    def _control_law(self, t: float, count: int) -> float:
        return t + self._interval / math.sqrt(count)

    def _codel_dequeue(self, flow: _Flow, now: float) -> bytes | None:
        item = self._take(flow)
        if item is None:
            flow.dropping = False
            return None
        drop = self._should_drop(flow, item, now)
        stats = self.stats
        if flow.dropping:
            if not drop:
                flow.dropping = False
            else:
                while flow.dropping and item is not None and now >= flow.drop_next:
                    flow.count += 1
                    marked = self._mark(item)
                    if marked is not None:
                        item = marked
                        stats.ecn_marks += 1
                        flow.drop_next = self._control_law(flow.drop_next, flow.count)
                        break
                    stats.codel_drops += 1
                    item = self._take(flow)
                    if not self._should_drop(flow, item, now):
                        flow.dropping = False
                    else:
                        flow.drop_next = self._control_law(flow.drop_next, flow.count)
        elif drop:
            marked = self._mark(item)
            if marked is not None:
                item = marked
                stats.ecn_marks += 1
            else:
                stats.codel_drops += 1
                item = self._take(flow)
                self._should_drop(flow, item, now)
            flow.dropping = True
            # back near the drop rate that last controlled the queue, if that was recent
            delta = flow.count - flow.lastcount
            if delta > 1 and now - flow.drop_next < 16 * self._interval:
                flow.count = delta
            else:
                flow.count = 1
            flow.lastcount = flow.count
            flow.drop_next = self._control_law(now, flow.count)
        return None if item is None else item[0]

    def _mark(self, item: tuple[bytes, float]) -> tuple[bytes, float] | None:
        if not self.settings.ecn:
            return None
        marked = mark_congestion(item[0], self._offset)
        return None if marked is None else (marked, item[1])

    def _drop_from_fattest(self) -> int:
        """Drop half the backlog of the flow holding most bytes (at most `drop_batch`)."""
        fattest = max(self._flows.values(), key=lambda f: f.backlog)
        threshold = fattest.backlog // 2
        dropped = dropped_bytes = 0
        while fattest.frames and dropped < self.settings.drop_batch:
            item = self._take(fattest)
            assert item is not None
            dropped += 1
            dropped_bytes += len(item[0])
            if dropped_bytes >= threshold:
                break
        fattest.count += dropped  # CoDel's signal strengthens with it
        self.stats.overlimit_drops += dropped
        return dropped


def _ip_header(frame: bytes, offset: int) -> tuple[int, int]:
    """(ethertype, offset of the IP header) of an Ethernet frame at `offset`, past VLAN tags;
    ethertype 0 if the frame is too short."""
    at = offset + 12
    end = len(frame)
    while at + 2 <= end:
        (ethertype,) = _U16.unpack_from(frame, at)
        if ethertype not in _VLAN_TAGS:
            return ethertype, at + 2
        at += 4
    return 0, end


def flow_key(frame: bytes, offset: int = 0) -> bytes:
    """The flow of a device frame (Ethernet at `offset`): its IP addresses, protocol and
    ports, or for anything else its Ethernet addresses and type. Never raises."""
    ethertype, ip = _ip_header(frame, offset)
    if ethertype == _IPV4 and len(frame) >= ip + 20:
        protocol = frame[ip + 9]
        key = frame[ip + 12 : ip + 20] + bytes((protocol,))
        fragment = _U16.unpack_from(frame, ip + 6)[0] & 0x1FFF
        if protocol in _PORTS_PROTOCOLS and not fragment:
            l4 = ip + (frame[ip] & 0x0F) * 4
            key += frame[l4 : l4 + 4]
        return key
    if ethertype == _IPV6 and len(frame) >= ip + 40:
        protocol = frame[ip + 6]
        key = frame[ip + 8 : ip + 40] + bytes((protocol,))
        if protocol in _PORTS_PROTOCOLS:
            key += frame[ip + 40 : ip + 44]
        return key
    return frame[offset : offset + 12] + ethertype.to_bytes(2, "big")


def mark_congestion(frame: bytes, offset: int = 0) -> bytes | None:
    """`frame` with its IP packet marked Congestion Experienced (RFC 3168), or None if it is
    not ECN-capable (not IP, or Not-ECT). The IPv4 header checksum is updated (RFC 1624);
    a packet already marked comes back as it was."""
    ethertype, ip = _ip_header(frame, offset)
    if ethertype == _IPV4 and len(frame) >= ip + 20:
        tos = frame[ip + 1]
        if tos & _ECN_MASK == 0:
            return None
        if tos & _ECN_MASK == _CE:
            return frame
        out = bytearray(frame)
        old_word = _U16.unpack_from(frame, ip)[0]
        out[ip + 1] = tos | _CE
        new_word = _U16.unpack_from(out, ip)[0]
        checksum = _U16.unpack_from(frame, ip + 10)[0]
        # HC' = ~(~HC + ~m + m')
        total = (~checksum & 0xFFFF) + (~old_word & 0xFFFF) + new_word
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        _U16.pack_into(out, ip + 10, ~total & 0xFFFF)
        return bytes(out)
    if ethertype == _IPV6 and len(frame) >= ip + 40:
        ecn = (frame[ip + 1] >> 4) & _ECN_MASK
        if ecn == 0:
            return None
        if ecn == _CE:
            return frame
        out = bytearray(frame)
        out[ip + 1] |= _CE << 4
        return bytes(out)
    return None
