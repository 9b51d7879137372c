"""What serving metrics costs the TAP tunnel: iperf3 through meshcore's direct tunnel in the
flat lab, with both peers serving Prometheus metrics (scraped every --scrape-s seconds from
inside their namespaces) and without, rounds alternating.

Each round brings both tunnels up afresh (`meshcore-peer up`, with or without `metrics = ...`),
waits for the direct path, runs iperf3 a -> b for --seconds and stops them. The result is the
ratio of the medians (target: >= 0.97), and of the best runs; and, much less sensitive to
other load on the machine, the tunnel processes' CPU per byte carried (both peers' user +
system time during the iperf3 run). Needs root (namespaces).
Writes benchmarks/results/metrics-lab.json.

    sudo .venv/bin/python benchmarks/bench_metrics_lab.py [--runs 5] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from lab.netlab import Lab, LabError, Meshcore, Topology, missing_prerequisites  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "metrics-lab.json"
IPERF_PORT = 5201
METRICS_PORT = 9101
TUNNEL = "10.97.0.{}"
SCRAPER = """
import sys, time, urllib.request
url, interval = sys.argv[1], float(sys.argv[2])
while True:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            r.read()
        print("scraped", flush=True)
    except OSError as exc:
        print("scrape failed", exc, flush=True)
    time.sleep(interval)
"""


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def iperf(lab: Lab, target: str, seconds: float) -> tuple[float, float]:
    """One iperf3 TCP run a -> b: (megabits per second received, megabytes received)."""
    argv = ["iperf3", "-c", target, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
    report = json.loads(lab.run("a", argv, timeout=seconds + 30).stdout)
    received = report["end"]["sum_received"]
    return float(received["bits_per_second"]) / 1e6, float(received["bytes"]) / 1e6


def one_round(
    lab: Lab, mesh: Meshcore, metrics: bool, args: argparse.Namespace
) -> tuple[float, float]:
    """(Mbit/s, megabytes per CPU-second of both tunnel processes) of one round."""
    ids = {host: mesh.key(host).peer_id for host in ("a", "b")}
    ups, scrapers = [], []
    for index, (host, other) in enumerate((("a", "b"), ("b", "a")), start=1):
        extra = f'metrics = "127.0.0.1:{METRICS_PORT}"' if metrics else ""
        device = lab.ifname(f"m{index}")
        ups.append(
            mesh.up(host, [ids[other]], address=f"{TUNNEL.format(index)}/24", device=device,
                    extra_toml=extra)
        )  # fmt: skip
    try:
        for up in ups:
            up.wait_for("path relay -> direct", 30)
        if metrics:
            url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
            for host in ("a", "b"):
                scraper = lab.popen(host, [sys.executable, "-c", SCRAPER, url, str(args.scrape_s)])
                scraper.wait_for("scraped", 10)
                scrapers.append(scraper)
        server = lab.popen("b", ["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"])
        try:
            server.wait_for("Server listening", 10)
            cpu = sum(cpu_seconds(up.pid) for up in ups)
            mbit, megabytes = iperf(lab, TUNNEL.format(2), args.seconds)
            cpu = sum(cpu_seconds(up.pid) for up in ups) - cpu
            return mbit, megabytes / cpu
        finally:
            server.stop()
    finally:
        for process in (*scrapers, *ups):
            process.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="rounds per variant (median)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per iperf3 run")
    parser.add_argument("--scrape-s", type=float, default=1.0, help="scrape interval (1 s)")
    args = parser.parse_args()
    missing = missing_prerequisites()
    if missing:
        print("cannot build the lab here: " + "; ".join(missing), file=sys.stderr)
        return 1
    runs: dict[str, list[float]] = {"off": [], "on": []}
    efficiency: dict[str, list[float]] = {"off": [], "on": []}
    with Lab(Topology.flat()) as lab:
        mesh = Meshcore(lab)
        mesh.start_relay()
        for i in range(args.runs):
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            for name in order:
                try:
                    mbit, mb_per_cpu_s = one_round(lab, mesh, name == "on", args)
                except LabError as exc:
                    print(f"round {i} ({name}) failed: {exc}", file=sys.stderr)
                    raise
                runs[name].append(mbit)
                efficiency[name].append(mb_per_cpu_s)
                print(
                    f"round {i} metrics {name}: {mbit:.0f} Mbit/s, {mb_per_cpu_s:.0f} MB per "
                    "CPU-second",
                    flush=True,
                )
    median = {name: statistics.median(values) for name, values in runs.items()}
    best = {name: max(values) for name, values in runs.items()}
    cpu = {name: statistics.median(values) for name, values in efficiency.items()}
    result = {
        "runs": runs,
        "seconds": args.seconds,
        "scrape_interval_s": args.scrape_s,
        "median_mbit_s": median,
        "on_vs_off_median": round(median["on"] / median["off"], 3),
        "on_vs_off_best": round(best["on"] / best["off"], 3),
        "mb_per_cpu_s": efficiency,
        "on_vs_off_cpu_median": round(cpu["on"] / cpu["off"], 3),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0],
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print("| lab tunnel (direct, iperf3 a -> b) | metrics off | metrics on | on/off |")
    print("|---|---:|---:|---:|")
    print(
        f"| median of {args.runs} x {args.seconds:g} s | {median['off']:.0f} Mbit/s | "
        f"{median['on']:.0f} Mbit/s | {result['on_vs_off_median']}x |"
    )
    print(
        f"| best | {best['off']:.0f} Mbit/s | {best['on']:.0f} Mbit/s | "
        f"{result['on_vs_off_best']}x |"
    )
    print(
        f"| tunnel CPU efficiency (median) | {cpu['off']:.0f} MB/CPU-s | {cpu['on']:.0f} "
        f"MB/CPU-s | {result['on_vs_off_cpu_median']}x |"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
