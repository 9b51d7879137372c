"""TAP tunnel sanity figure: two `meshcore-peer up` peers in network namespaces, their
sessions through a relay in a third namespace, iperf3 (TCP, one stream) across the tunnel.

    sudo .venv/bin/python benchmarks/bench_tap.py [--seconds 5] [--repeat 3] [--profile DIR]

Prints a table and writes benchmarks/results/tap.json: throughput each way, idle ping RTT,
the average segment the device handed over (GSO at work), and the CPU seconds the relay and
each peer used per GiB carried. `--profile DIR` runs the peers under cProfile and prints
where their time went. Needs root, /dev/net/tun, iperf3 and ping; touches nothing outside
the namespaces it creates.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from tapmesh import Mesh  # type: ignore[import-not-found]  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "tap.json"
_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def ping(mesh: Mesh, count: int) -> dict[str, float]:
    out = mesh.run(0, "ping", "-c", str(count), "-i", "0.05", "-W", "2", mesh.address(1)).stdout
    times = [float(t) for t in re.findall(r"time=([\d.]+) ms", out)]
    if not times:
        raise RuntimeError(f"no ping replies across the tunnel:\n{out}")
    return {
        "rtt_avg_ms": round(statistics.fmean(times), 3),
        "rtt_p50_ms": round(statistics.median(times), 3),
        "rtt_max_ms": round(max(times), 3),
        "lost": count - len(times),
    }


def iperf(mesh: Mesh, seconds: float, reverse: bool) -> dict[str, Any]:
    """One iperf3 run, client in peer 1, server in peer 0 (reverse: server sends)."""
    server = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            mesh.ns(0),
            "iperf3",
            "-s",
            "-1",
            "--forceflush",
            "-B",
            mesh.address(0),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        seen = ""
        while "listening" not in seen:  # "Server listening on 5201" once it listens
            line = server.stdout.readline()
            if not line:
                raise RuntimeError(f"iperf3 server did not start: {seen}")
            seen += line
        sender = 0 if reverse else 1
        tx0 = mesh.link_stats(sender)["tx"]
        pids = {"relay": mesh.relay.pid if mesh.relay else 0, "peer0": mesh.peers[0].pid,
                "peer1": mesh.peers[1].pid}  # fmt: skip
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        command = ["iperf3", "-c", mesh.address(0), "-t", str(seconds), "-J"]
        result = mesh.run(1, *command, *(["-R"] if reverse else []), timeout=seconds + 30)
        cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
        tx1 = mesh.link_stats(sender)["tx"]
    finally:
        server.kill()
        server.wait()
    if result.returncode:
        raise RuntimeError(f"iperf3 failed: {result.stdout[-1500:]}{result.stderr}")
    end = json.loads(result.stdout)["end"]
    received = end["sum_received"]
    gib = received["bytes"] / (1 << 30)
    packets = tx1["packets"] - tx0["packets"]
    return {
        "direction": "peer0 -> peer1" if reverse else "peer1 -> peer0",
        "mbit_s": round(received["bits_per_second"] / 1e6, 1),
        "retransmits": end["sum_sent"].get("retransmits"),
        "avg_segment_bytes": round((tx1["bytes"] - tx0["bytes"]) / packets) if packets else 0,
        "cpu_s_per_gib": {k: round((cpu1[k] - cpu0[k]) / gib, 2) for k in pids} if gib else {},
        "cpu_share": {k: round((cpu1[k] - cpu0[k]) / seconds, 2) for k in pids},
    }


async def _pump_pipeline(size: int, count: int, window: int) -> dict[str, Any]:
    """Device -> pump -> in-memory channel -> pump -> device, all in this process."""
    from test_tunnel import IDS, FakeDevice, channel_pair

    from meshcore._tunnel import FramePump

    p, q = IDS[0].peer_id, IDS[1].peer_id
    a, b = FakeDevice(), FakeDevice()
    pump_a, pump_b = FramePump(a.fd, 10, [q]), FramePump(b.fd, 10, [p])
    end_a, end_b = channel_pair(16)
    frame = bytes(10) + bytes.fromhex("020000000002020000000001") + b"\x08\x00" + bytes(size - 14)
    got = 0
    progress = trio.Event()

    async def feed() -> None:  # at most `window` frames in flight, like a TCP sender
        nonlocal progress
        for sent in range(count):
            while sent - got >= window:
                await progress.wait()
                progress = trio.Event()
            while True:
                try:
                    a.outer.send(frame)
                    break
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(a.outer)

    try:
        async with trio.open_nursery() as nursery:
            for pump, peer, end in ((pump_a, q, end_a), (pump_b, p, end_b)):
                nursery.start_soon(pump.run_device_reader)
                nursery.start_soon(pump.run_link, peer, end)
            started = time.perf_counter()
            nursery.start_soon(feed)
            while got < count:
                try:
                    b.outer.recv(1 << 20)
                    got += 1
                    if got % 8 == 0:
                        progress.set()
                except BlockingIOError:
                    progress.set()
                    await trio.lowlevel.wait_readable(b.outer)
            seconds = time.perf_counter() - started
            nursery.cancel_scope.cancel()
    finally:
        a.close()
        b.close()
    return {
        "frame_bytes": size,
        "kframes_s": round(count / seconds / 1e3, 1),
        "gbit_s": round(count * size * 8 / seconds / 1e9, 2),
        "messages": pump_a.stats[q].messages_out,
        "dropped": pump_a.stats[q].dropped_queue_full,
    }


def pump_ceiling() -> list[dict[str, Any]]:
    """What the frame pump alone moves (two pumps, one thread, no session, no relay)."""
    return [
        trio.run(_pump_pipeline, 64000, 20000, 32),
        trio.run(_pump_pipeline, 1400, 100000, 256),
    ]


def print_profiles(directory: Path) -> None:
    for path in sorted(directory.glob("peer*.prof")):
        print(f"\n--- {path.name}: top functions by own time")
        stats = pstats.Stats(str(path))
        stats.sort_stats("tottime").print_stats(18)


def run_mode(routed: bool, args: argparse.Namespace) -> dict[str, Any]:
    """One mesh: `routed` lets the peers reach each other (direct paths), else relay only."""
    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-tap-") as tmp,
        Mesh(2, Path(tmp), routed=routed) as mesh,
    ):
        for i in range(2):
            python: list[str] = []
            if args.profile:
                out = Path(args.profile) / f"{'direct' if routed else 'relay'}-peer{i}.prof"
                python = ["-m", "cProfile", "-o", str(out)]
            mesh.start_peer(i, python=python)
        for i in range(2):
            mesh.wait_log(i, " up (", 1)
        if routed:
            time.sleep(args.settle)  # the direct race runs in the background
        idle = ping(mesh, 40)
        for _ in range(args.repeat):
            for reverse in (False, True):
                rows.append(iperf(mesh, args.seconds, reverse))
        loaded = ping(mesh, 20)
        for i in (0, 1):
            mesh.stop_peer(i)
    best: dict[str, float] = {}
    for row in rows:
        best[row["direction"]] = max(best.get(row["direction"], 0.0), row["mbit_s"])
    return {
        "underlay": "routed: direct paths possible" if routed else "relay only: no route",
        "best_mbit_s": best,
        "idle_ping": idle,
        "ping_after_runs": loaded,
        "runs": rows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per iperf3 run (5)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per direction (3)")
    parser.add_argument(
        "--paths", default="relay,direct", help="relay, direct or both (default relay,direct)"
    )
    parser.add_argument("--settle", type=float, default=3.0, help="seconds for the direct race (3)")
    parser.add_argument("--profile", metavar="DIR", help="run the peers under cProfile")
    parser.add_argument("--no-save", action="store_true", help="do not write tap.json")
    args = parser.parse_args()
    # cleanup (namespaces, processes) runs on SIGTERM too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        print("bench_tap: needs root and /dev/net/tun", file=sys.stderr)
        return 2
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    ceiling = pump_ceiling()
    modes = {name: run_mode(name == "direct", args) for name in args.paths.split(",")}
    print(f"{'path':<7} {'direction':<16} {'Mbit/s':>8} {'retr':>6} {'avg seg B':>10}  CPU s/GiB")
    for name, mode in modes.items():
        for row in mode["runs"]:
            cpu = " ".join(f"{k}={v}" for k, v in row["cpu_s_per_gib"].items())
            print(
                f"{name:<7} {row['direction']:<16} {row['mbit_s']:>8} "
                f"{row['retransmits']!s:>6} {row['avg_segment_bytes']:>10}  {cpu}"
            )
        print(f"{name:<7} idle ping {mode['idle_ping']}; after the runs {mode['ping_after_runs']}")
    for row in ceiling:
        print(
            f"pump alone, {row['frame_bytes']}-byte frames: {row['gbit_s']} Gbit/s, "
            f"{row['kframes_s']} kframes/s"
        )
    result = {
        "benchmark": "tap",
        "setup": "two `meshcore-peer up` peers in namespaces joined by veth links to a relay "
        "namespace (relay: no route between the peers; direct: the relay namespace routes); "
        "iperf3 TCP, one stream, each way; MTU 1400, GSO cap 64000",
        "seconds": args.seconds,
        "repeat": args.repeat,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        "paths": modes,
        "pump_alone": ceiling,
        "profiled": bool(args.profile),
    }
    if not args.no_save and not args.profile:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}")
    if args.profile:
        print_profiles(Path(args.profile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
