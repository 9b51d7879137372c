"""Sans-IO sizing of a session's send window from its path's bandwidth-delay product, so that
the reliable layer holds about what the path carries in one round trip and no more.

BBR's model (draft-cardwell-iccrg-bbr-congestion-control): the bottleneck bandwidth is the
largest delivery rate seen over the last rounds (rate samples as in
draft-cheng-iccrg-delivery-rate-estimation: bytes acknowledged over the longer of the send
and the ack interval, so that a burst of acks does not inflate them); the round-trip
propagation time is the smallest RTT seen over `min_rtt_window_s`. The window is `gain`
times their product, clamped to [`min_bytes`, the path's cap]. With gain 2, a path that can
carry more shows it within one round trip (the window doubles per round trip from its
minimum, like slow start), and at most one bandwidth-delay product waits in queues. When the
RTT minimum grows stale, the window drops to its minimum for `probe_s` (BBR's PROBE_RTT), so
that queues drain and a fresh minimum is measured instead of a queue being taken for the
path.

The RTT in the product is at least `rtt_floor_s` (1 ms). A session's RTT sample is the
time from sealing a message to its acknowledgement, which includes both peers' processing
of it; the minimum comes from small messages (keepalives, a lone ping), while a 64 KiB
message takes a good part of a millisecond to seal, write, read and open. A window of one
such message leaves the two peers taking turns instead of working at once, and the rate it
measures then holds the window where it is (BBR keeps an offload budget of a few send quanta
in its cwnd for the same reason). With the floor, what the window may add to a queue is
bounded in time: `gain` x `rtt_floor_s` at the rate measured, 2 ms.
"""

from __future__ import annotations

from collections import deque
from typing import Final

__all__ = ["CREDITED_WINDOW_FRAMES", "WindowSizer", "path_caps"]

_MIN_INTERVAL_S: Final = 1e-6
"""A rate sample needs at least this long (no clock resolves less)."""
_MIN_BANDWIDTH_WINDOW_S: Final = 0.05
"""The bandwidth maximum covers at least this long (and 10 round trips)."""


class WindowSizer:
    """Tracks rate and RTT samples of one session's messages and says how many bytes may be
    in flight. Feed it every message sent (`on_sent`) and acknowledged (`on_acked`)."""

    __slots__ = (
        "_bandwidth",
        "_delivered",
        "_delivered_time",
        "_first_sent_time",
        "_gain",
        "_min_bytes",
        "_min_rtt",
        "_min_rtt_at",
        "_min_rtt_window",
        "_probe_min",
        "_probe_s",
        "_probe_until",
        "_rtt_floor",
        "_sent",
    )

    def __init__(
        self,
        *,
        min_bytes: int,
        gain: float = 2.0,
        min_rtt_window_s: float = 10.0,
        probe_s: float = 0.2,
        rtt_floor_s: float = 0.001,
    ) -> None:
        if min_bytes < 1 or gain < 1.0 or min_rtt_window_s <= 0 or probe_s <= 0:
            raise ValueError("min_bytes >= 1, gain >= 1 and positive times required")
        if rtt_floor_s < 0:
            raise ValueError("rtt_floor_s must not be negative")
        self._rtt_floor = rtt_floor_s
        self._min_bytes = min_bytes
        self._gain = gain
        self._min_rtt_window = min_rtt_window_s
        self._probe_s = probe_s
        self._sent: dict[int, tuple[int, float, float, float]] = {}
        self._bandwidth: deque[tuple[float, float]] = deque()  # (time, bytes/s), decreasing
        self._min_rtt: float | None = None
        self._min_rtt_at = 0.0
        self._probe_until: float | None = None
        self._probe_min: float | None = None
        self._delivered = 0
        self._delivered_time = 0.0
        self._first_sent_time = 0.0

    # ------------------------------------------------------------------ queries
    @property
    def min_rtt(self) -> float | None:
        """The round-trip propagation time estimate (seconds), once measured."""
        return self._min_rtt

    @property
    def bandwidth(self) -> float | None:
        """The bottleneck bandwidth estimate (bytes per second), once measured."""
        return self._bandwidth[0][1] if self._bandwidth else None

    @property
    def probing(self) -> bool:
        """The window is held at its minimum to measure a fresh RTT minimum."""
        return self._probe_until is not None

    def window(self, cap: int) -> int:
        """Bytes that may be in flight: gain x bandwidth x min RTT (at least `rtt_floor_s`),
        within [min_bytes, cap]."""
        floor = min(self._min_bytes, cap)
        bandwidth = self.bandwidth
        if self._probe_until is not None or bandwidth is None or self._min_rtt is None:
            return floor
        product = self._gain * bandwidth * max(self._min_rtt, self._rtt_floor)
        return cap if product >= cap else max(floor, int(product))

    # ------------------------------------------------------------------ samples
    def reset(self) -> None:
        """Forget everything measured (the session moved to another path)."""
        self._sent.clear()
        self._bandwidth.clear()
        self._min_rtt = None
        self._probe_until = self._probe_min = None

    def on_sent(self, seq: int, now: float, *, idle: bool) -> None:
        """Message `seq` went out at `now`; `idle`: nothing else was unacknowledged."""
        if idle:
            self._first_sent_time = self._delivered_time = now
        self._sent[seq] = (self._delivered, self._delivered_time, self._first_sent_time, now)

    def forget(self, seq: int) -> None:
        """Message `seq` was sent again: its acknowledgement is no rate or RTT sample."""
        self._sent.pop(seq, None)

    def on_acked(self, seq: int, size: int, now: float) -> None:
        """Message `seq` of `size` bytes was acknowledged at `now` (in order)."""
        self._delivered += size
        self._delivered_time = now
        record = self._sent.pop(seq, None)
        if record is None:
            return
        prior_delivered, prior_time, first_sent, sent = record
        self._first_sent_time = sent
        self._rtt_sample(now - sent, now)
        interval = max(sent - first_sent, now - prior_time)
        min_rtt = self._min_rtt
        if interval < _MIN_INTERVAL_S or (min_rtt is not None and interval < min_rtt):
            return  # too short to tell a rate from a burst
        self._bandwidth_sample((self._delivered - prior_delivered) / interval, now)

    def _rtt_sample(self, rtt: float, now: float) -> None:
        if self._probe_until is not None:
            if self._probe_min is None or rtt < self._probe_min:
                self._probe_min = rtt
            if now >= self._probe_until:
                self._probe_until = None
                if self._probe_min is not None:
                    self._min_rtt = self._probe_min
                self._min_rtt_at = now
                self._probe_min = None
            return
        if self._min_rtt is None or rtt <= self._min_rtt:
            self._min_rtt, self._min_rtt_at = rtt, now
        elif now - self._min_rtt_at > self._min_rtt_window:
            # stale: drain the queues for a moment and measure again
            self._probe_until = now + max(self._probe_s, self._min_rtt)
            self._probe_min = rtt

    def _bandwidth_sample(self, rate: float, now: float) -> None:
        samples = self._bandwidth
        while samples and samples[-1][1] <= rate:
            samples.pop()
        samples.append((now, rate))
        span = max(_MIN_BANDWIDTH_WINDOW_S, 10 * (self._min_rtt or 0.0))
        while len(samples) > 1 and samples[0][0] < now - span:
            samples.popleft()


CREDITED_WINDOW_FRAMES: Final = 256
"""Most messages in flight on a relay circuit with credits: its bytes are bounded by the
credit window; this bounds small ones (the receiving peer queues 512 frames per circuit)."""


def path_caps(
    direct: bool,
    direct_caps: tuple[int, int],
    relay_caps: tuple[int, int],
    relay_cap: int | None = None,
) -> tuple[int, int]:
    """The (messages, bytes) a session may keep in flight on its active path: the direct
    path's caps; on the relay, `relay_cap` (a credited circuit's window) when it is wider
    than the drop-tail caps `relay_caps`, which otherwise hold (frames and bytes alike)."""
    if direct:
        return direct_caps
    frames, nbytes = relay_caps
    if relay_cap is not None and relay_cap > nbytes:
        return max(frames, CREDITED_WINDOW_FRAMES), relay_cap
    return relay_caps
