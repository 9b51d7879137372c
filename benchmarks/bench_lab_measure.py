"""What bench_lab.py measures through one tunnel in one lab: idle ping RTT, then iperf3 TCP
runs (one stream) with pings 10 ms apart running beside each, so every run gives a
throughput and the RTT under that load; the router's counters say which way it went.
"""

from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass, field

from lab.netlab import Lab, LabError

__all__ = ["Cell", "Settings", "measure_cell", "ping_times", "rtt_summary"]

IPERF_PORT = 5201
PING_INTERVAL_S = 0.01
LOADED_START_S = 1.0
"""Pings under load start this long into each iperf3 run (past slow start) and stop this
long before its end."""


@dataclass(frozen=True)
class Settings:
    runs: int
    seconds: float
    pings: int
    congestion: str
    """TCP congestion control of the iperf3 stream inside the tunnel ("default": the
    namespace's own)."""
    stream_rate: str = ""
    """iperf3's `-b` for the stream (e.g. "800M"); empty: as fast as it goes. The same rate
    for every tunnel compares loaded RTTs at equal load rather than at each one's fastest."""


@dataclass
class Cell:
    """The figures of one tunnel in one situation (medians over the runs)."""

    tunnel: str
    situation: str
    available: bool
    note: str = ""
    went: str | None = None  # "direct" or "relay", from the router's counters
    mbit_s: float | None = None
    idle_avg_ms: float | None = None
    idle_p99_ms: float | None = None
    idle_lost: float | None = None  # fraction of idle pings unanswered
    loaded_avg_ms: float | None = None
    loaded_p99_ms: float | None = None
    loaded_lost: float | None = None
    relay_path_idle_avg_ms: float | None = None  # bare only: a -> relay + relay -> b
    relay_path_idle_p99_ms: float | None = None
    direct_mb: float | None = None  # megabytes a <-> b during the iperf3 runs
    relayed_mb: float | None = None  # megabytes a <-> relay <-> b (the lesser leg)
    runs: list[dict[str, float]] = field(default_factory=list)


def ping_times(lab: Lab, node: str, target: str, count: int) -> list[float]:
    """RTTs in ms of the answered echoes among `count` sent 10 ms apart from `node`."""
    argv = ["ping", "-n", "-c", str(count), "-i", str(PING_INTERVAL_S), "-W", "3", target]
    done = lab.run(node, argv, check=False, timeout=count * 0.05 + 30)
    return [float(t) for t in re.findall(r"time=([\d.]+) ms", done.stdout.decode())]


def rtt_summary(times: list[float], sent: int) -> tuple[float, float, float]:
    """Average, 99th percentile (nearest rank) and the fraction lost."""
    if not times:
        raise LabError(f"none of {sent} pings was answered")
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, max(0, round(0.99 * len(ordered)) - 1))]
    return statistics.fmean(ordered), p99, 1 - len(times) / sent


def wait_reachable(lab: Lab, target: str, timeout: float = 60.0) -> None:
    """Ping until `target` answers: tunnels need a moment to register and exchange keys."""
    deadline = time.monotonic() + timeout
    argv = ["ping", "-n", "-c", "1", "-W", "1", target]
    while lab.run("a", argv, check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise LabError(f"{target} not reachable through the tunnel within {timeout} s")


def iperf3_client(target: str, seconds: float, *, congestion: str = "default",
                  stream_rate: str = "") -> list[str]:  # fmt: skip
    """The iperf3 client of one stream a -> `target` (JSON report), with `Settings`'
    congestion control and rate."""
    cc = [] if congestion == "default" else ["-C", congestion]
    rate = ["-b", stream_rate] if stream_rate else []
    return ["iperf3", "-c", target, "-p", str(IPERF_PORT), "-t", f"{seconds:g}", "-J", *cc, *rate]


def loaded_run(lab: Lab, target: str, settings: Settings) -> dict[str, float]:
    """One iperf3 run a -> b, pings 10 ms apart beside it: Mbit/s and RTTs."""
    seconds = settings.seconds
    client = lab.popen("a", iperf3_client(
        target, seconds, congestion=settings.congestion, stream_rate=settings.stream_rate
    ))  # fmt: skip
    time.sleep(LOADED_START_S)  # let the stream leave slow start; iperf3 has no event for it
    count = max(10, round((seconds - 2 * LOADED_START_S) / PING_INTERVAL_S))
    times = ping_times(lab, "a", target, count)
    if client.wait(seconds + 60) != 0:
        raise LabError(f"iperf3 failed:\n{client.output}")
    report = json.loads(client.output)
    avg, p99, lost = rtt_summary(times, count)
    mbit = float(report["end"]["sum_received"]["bits_per_second"]) / 1e6
    return {"mbit_s": mbit, "loaded_avg_ms": avg, "loaded_p99_ms": p99, "loaded_lost": lost}


def measure_cell(lab: Lab, tunnel: str, situation: str, target: str, settings: Settings) -> Cell:
    """Idle RTT, then `settings.runs` loaded runs through the tunnel to `target` (b)."""
    wait_reachable(lab, target)
    ping_times(lab, "a", target, 20)  # warm up ARP, peer discovery, crypto state
    cell = Cell(tunnel, situation, True)
    cell.idle_avg_ms, cell.idle_p99_ms, cell.idle_lost = rtt_summary(
        ping_times(lab, "a", target, settings.pings), settings.pings
    )
    if tunnel == "bare":
        # The relay path's bare RTT: a -> relay plus relay -> b, each measured alone.
        legs = [
            rtt_summary(ping_times(lab, host, lab.public("relay"), settings.pings), settings.pings)
            for host in ("a", "b")
        ]
        cell.relay_path_idle_avg_ms = legs[0][0] + legs[1][0]
        cell.relay_path_idle_p99_ms = legs[0][1] + legs[1][1]
    server = lab.popen("b", ["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"])
    try:
        server.wait_for("Server listening", 10)
        lab.reset_counters()
        cell.runs = [loaded_run(lab, target, settings) for _ in range(settings.runs)]
        counters = lab.counters()
    finally:
        server.stop()
    for key in ("mbit_s", "loaded_avg_ms", "loaded_p99_ms", "loaded_lost"):
        setattr(cell, key, statistics.median(run[key] for run in cell.runs))
    cell.direct_mb = counters.between("a", "b").bytes / 1e6
    cell.relayed_mb = (
        min(counters.between("a", "relay").bytes, counters.between("b", "relay").bytes) / 1e6
    )
    cell.went = "direct" if cell.direct_mb > cell.relayed_mb else "relay"
    return cell
