"""The adaptive send window: about twice the path's bandwidth-delay product, grown like slow
start, not fooled by ack bursts, refreshed when its RTT minimum grows stale."""

from __future__ import annotations

import os

import pytest

from meshcore.proto.framing import KeyRing, ReceiveKey, SendKey
from meshcore.proto.session import SessionCore, SessionSettings
from meshcore.proto.window import WindowSizer

MESSAGE = 16 * 1024
CAP = 8 * 1024 * 1024


class Path:
    """A bottleneck of `rate` bytes/s with propagation RTT `rtt`, driven by a sender that
    keeps `sizer.window()` bytes in flight: returns the window after `seconds`."""

    def __init__(self, sizer: WindowSizer, rate: float, rtt: float) -> None:
        self.sizer, self.rate, self.rtt = sizer, rate, rtt
        self.now = 0.0
        self.seq = 0
        self.link_free = 0.0  # when the bottleneck has sent what it holds
        self.in_flight: list[tuple[float, int, int]] = []  # (ack time, seq, size)
        self.windows: list[int] = []

    def run(self, seconds: float, message: int = MESSAGE) -> int:
        end = self.now + seconds
        while self.now < end:
            window = self.sizer.window(CAP)
            self.windows.append(window)
            while sum(size for _, _, size in self.in_flight) < window:
                start = max(self.now, self.link_free)
                self.link_free = start + message / self.rate
                self.sizer.on_sent(self.seq, self.now, idle=not self.in_flight)
                self.in_flight.append((self.link_free + self.rtt, self.seq, message))
                self.seq += 1
            acked_at, seq, size = self.in_flight.pop(0)
            self.now = max(self.now, acked_at)
            self.sizer.on_acked(seq, size, self.now)
        return self.sizer.window(CAP)


def test_the_window_settles_near_twice_the_bandwidth_delay_product() -> None:
    rate, rtt = 50e6 / 8, 0.02  # 50 Mbit/s, 20 ms: 125 kB
    path = Path(WindowSizer(min_bytes=32 * 1024), rate, rtt)
    window = path.run(3.0)
    bdp = rate * rtt
    assert 1.6 * bdp <= window <= 2.6 * bdp
    assert path.sizer.min_rtt == pytest.approx(rtt + MESSAGE / rate, rel=0.05)
    bandwidth = path.sizer.bandwidth
    assert bandwidth is not None and bandwidth == pytest.approx(rate, rel=0.1)


def test_a_fast_path_is_found_within_a_few_round_trips() -> None:
    rate, rtt = 3e9 / 8, 0.001  # 3 Gbit/s, 1 ms
    path = Path(WindowSizer(min_bytes=32 * 1024), rate, rtt)
    path.run(0.02)  # 20 round trips
    assert path.sizer.window(CAP) >= 1.5 * rate * rtt
    # it doubled, round trip after round trip, from its minimum
    growth = [b / a for a, b in zip(path.windows, path.windows[1:], strict=False) if b > a]
    assert max(growth) <= 2.5


def test_a_slow_path_keeps_the_minimum_and_the_cap_is_respected() -> None:
    sizer = WindowSizer(min_bytes=32 * 1024)
    Path(sizer, rate=1e5, rtt=0.01).run(2.0, message=1000)
    assert sizer.window(CAP) == 32 * 1024
    assert sizer.window(4096) == 4096  # a cap below the minimum wins


def test_a_burst_of_acks_is_not_taken_for_bandwidth() -> None:
    sizer = WindowSizer(min_bytes=1024)
    now = 0.0
    for seq in range(10):  # ten messages sent 10 ms apart: 1 kB per 10 ms
        sizer.on_sent(seq, now, idle=seq == 0)
        now += 0.01
    now += 0.05
    for seq in range(10):  # ... acknowledged all at once
        sizer.on_acked(seq, 1000, now)
    bandwidth = sizer.bandwidth
    assert bandwidth is not None and bandwidth <= 1000 / 0.01 * 1.1


def test_resent_messages_give_no_samples_and_reset_forgets_the_path() -> None:
    sizer = WindowSizer(min_bytes=1024)
    sizer.on_sent(0, 0.0, idle=True)
    sizer.forget(0)
    sizer.on_acked(0, 1000, 5.0)
    assert sizer.min_rtt is None and sizer.bandwidth is None
    sizer.on_sent(1, 5.0, idle=True)
    sizer.on_acked(1, 1000, 5.1)
    assert sizer.min_rtt == pytest.approx(0.1)
    sizer.reset()
    assert sizer.min_rtt is None and sizer.bandwidth is None and sizer.window(CAP) == 1024


def test_a_stale_minimum_drains_the_window_and_measures_again() -> None:
    sizer = WindowSizer(min_bytes=32 * 1024, min_rtt_window_s=1.0, probe_s=0.2)
    path = Path(sizer, rate=100e6 / 8, rtt=0.01)
    path.run(0.5)
    big = sizer.window(CAP)
    assert big > 32 * 1024
    path.rtt = 0.03  # the route got longer: the old minimum is gone for good
    path.run(1.0)
    assert any(w == 32 * 1024 for w in path.windows[-200:])  # it probed ...
    path.run(1.0)
    assert sizer.min_rtt is not None and sizer.min_rtt > 0.025  # ... and found the new RTT
    assert not sizer.probing


def test_a_minimum_rtt_of_small_messages_does_not_starve_large_ones() -> None:
    """The RTT minimum comes from a lone small message (50 us); bulk messages of 64 KiB take
    half a millisecond each to get through: the window still holds 1 ms at the rate seen."""
    for floor, enough in ((0.001, True), (0.0, False)):
        sizer = WindowSizer(min_bytes=32 * 1024, rtt_floor_s=floor)
        sizer.on_sent(0, 0.0, idle=True)
        sizer.on_acked(0, 100, 50e-6)
        path = Path(sizer, rate=1e9 / 8, rtt=50e-6)
        path.seq = 1
        path.run(0.05, message=64 * 1024)
        bandwidth = sizer.bandwidth
        assert sizer.min_rtt == pytest.approx(50e-6) and bandwidth is not None
        window = sizer.window(CAP)
        assert (window >= 1.9 * bandwidth * 0.001) is enough
        assert (window >= 2 * 64 * 1024) is enough  # two messages in flight: both peers busy


def test_settings_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        WindowSizer(min_bytes=0)
    with pytest.raises(ValueError):
        WindowSizer(min_bytes=1, gain=0.5)
    with pytest.raises(ValueError):
        WindowSizer(min_bytes=1, rtt_floor_s=-1.0)


def cores(settings: SessionSettings) -> tuple[SessionCore, SessionCore]:
    k1, k2 = os.urandom(32), os.urandom(32)
    ra, rb = KeyRing(), KeyRing()
    ra.install(SendKey(k1, 2, 0.0), ReceiveKey(k2, 1, 0.0), 0.0)
    rb.install(SendKey(k2, 1, 0.0), ReceiveKey(k1, 2, 0.0), 0.0)
    return SessionCore(ra, 0.0, settings), SessionCore(rb, 0.0, settings)


def test_a_session_core_sizes_its_window_to_the_path() -> None:
    a, b = cores(SessionSettings(dead_after_s=None))
    assert a.window_bytes == 32 * 1024  # before anything is measured: the minimum
    now, rtt = 0.0, 0.01
    flights: list[tuple[float, bytes]] = []
    while now < 1.0:
        while a.can_send():
            a.send(b"x" * 8000, now)
        flights += [(now + rtt / 2, f) for _, f in a.outbox()]
        arrive, frame = flights.pop(0)
        now = max(now, arrive)
        b.receive_frame(frame, now)
        b.events()
        for _, ack in b.outbox():
            a.receive_frame(ack, now + rtt / 2)
    sizer = a.window_sizer
    assert sizer is not None and sizer.min_rtt is not None
    assert a.window_bytes > 32 * 1024  # it grew past the minimum
    a.use_direct_window(True, now)
    assert a.window_bytes == 32 * 1024  # a new path starts afresh


def test_with_the_adaptive_window_off_the_cap_is_the_window() -> None:
    a, _ = cores(SessionSettings(adaptive_window=False))
    assert a.window_bytes == SessionSettings().window_bytes and a.window_sizer is None
    a.use_direct_window(True, 0.0)
    assert a.window_bytes == SessionSettings().direct_window_bytes


def test_a_credited_relay_circuit_sets_the_relay_window_and_its_growth_keeps_the_measure() -> None:
    a, _ = cores(SessionSettings(adaptive_window=False))
    s = SessionSettings()
    a.use_direct_window(False, 0.0, relay_cap=4 * 1024 * 1024)  # the relay grants 4 MiB
    assert a.window_bytes == 4 * 1024 * 1024
    a.use_direct_window(False, 0.0, relay_cap=s.window_bytes)  # a relay without credits
    assert a.window_bytes == s.window_bytes
    a.use_direct_window(False, 0.0, relay_cap=64 * 1024)  # never below the drop-tail window
    assert a.window_bytes == s.window_bytes
    b, _ = cores(SessionSettings(dead_after_s=None))
    b.use_direct_window(False, 0.0, relay_cap=1024 * 1024)
    sizer = b.window_sizer
    assert sizer is not None
    sizer.on_sent(0, 0.0, idle=True)
    sizer.on_acked(0, 8000, 0.01)
    measured = sizer.min_rtt
    b.use_direct_window(False, 0.02, relay_cap=2 * 1024 * 1024)  # the credit window grew
    assert sizer.min_rtt == measured  # the same path: not measured afresh


def test_the_session_paths_ask_the_driver_for_the_carrying_circuits_window() -> None:
    from meshcore.proto.paths import SessionPaths

    a, _ = cores(SessionSettings(adaptive_window=False))
    paths = SessionPaths(a, 0.0)
    asked: list[object] = []

    def window(link: object) -> int | None:
        asked.append(link)
        return 3 * 1024 * 1024

    paths.relay_window = window
    paths.relay_up("circuit", 0.0)
    paths.refresh_window(0.0)
    assert asked and asked[-1] == "circuit"
    assert a.window_bytes == 3 * 1024 * 1024
