"""Lone packets through meshcore's TAP tunnel, and the CPU they cost: idle pings 10 ms apart
through `meshcore-peer up` in a fresh flat lab (direct, or through the relay), with the CPU
time each thread of the relay and the two peers spent per ping (from
/proc/<pid>/task/<tid>/schedstat); with --bulk, one iperf3 stream instead, and the CPU
seconds per GiB of each peer. Variants of the code run interleaved in the same sitting
(`name=PATH`: the peers and the relay import meshcore from PATH, e.g. another tree's `src`;
an empty PATH is this tree), each round in a fresh lab; the figures are the medians of the
rounds. Needs root (it builds network namespaces).

    sudo .venv/bin/python benchmarks/bench_lone.py [--path direct|relay] [--rounds 3]
        [--pings 300] [--bulk] before=/path/to/main/src after=

Threads are named by process and start order: relay0 / a0 / b0 are trio's threads, a3 / b3
the peers' device threads (a1 / b1 a trio worker, a2 / b2 the data threads). Writes
benchmarks/results/lone.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_lab import SITUATIONS  # noqa: E402
from bench_lab_measure import IPERF_PORT, ping_times, rtt_summary, wait_reachable  # noqa: E402
from bench_lab_tunnels import TUNNEL_NET, start_meshcore_pair  # noqa: E402
from lab.netlab import Lab, missing_prerequisites  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "lone.json"
ROLES = ("relay", "a", "b")
"""The lab's first three processes, in the order `start_meshcore_pair` starts them."""


def thread_cpu_ns(lab: Lab) -> dict[str, int]:
    """CPU time so far of every thread of the relay and the peers, by role and start order."""
    out: dict[str, int] = {}
    for role, process in zip(ROLES, lab.processes, strict=False):
        tasks = Path(f"/proc/{process.proc.pid}/task")
        for order, tid in enumerate(sorted(os.listdir(tasks), key=int)):
            try:
                out[f"{role}{order}"] = int((tasks / tid / "schedstat").read_text().split()[0])
            except OSError:
                pass  # the thread ended meanwhile
    return out


@contextmanager
def variant_env(path: str) -> Iterator[None]:
    """`PYTHONPATH=path` for the processes the lab starts (nothing: this tree)."""
    saved = os.environ.get("PYTHONPATH")
    if path:
        os.environ["PYTHONPATH"] = path
    else:
        os.environ.pop("PYTHONPATH", None)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def idle_round(via_relay: bool, pings: int) -> dict[str, float]:
    """One fresh lab: the pings' avg / median / p99 (ms) and each thread's CPU µs per ping
    (`cpu_us.<thread>`)."""
    with Lab(SITUATIONS["flat"].topology) as lab:
        start_meshcore_pair(lab, via_relay)
        target = TUNNEL_NET.format(2)
        wait_reachable(lab, target)
        ping_times(lab, "a", target, 30)  # the neighbours learnt, the datagram path warm
        before = thread_cpu_ns(lab)
        times = ping_times(lab, "a", target, pings)
        after = thread_cpu_ns(lab)
    avg, p99, lost = rtt_summary(times, pings)
    figures = {"avg_ms": avg, "median_ms": statistics.median(times), "p99_ms": p99, "lost": lost}
    for thread, ns in after.items():
        figures[f"cpu_us.{thread}"] = round((ns - before.get(thread, 0)) / 1000 / pings, 1)
    return figures


def bulk_round(seconds: float) -> dict[str, float]:
    """One fresh lab, one iperf3 stream a -> b on the direct path: Mbit/s, CPU s per GiB."""
    with Lab(SITUATIONS["flat"].topology) as lab:
        start_meshcore_pair(lab, False)
        target = TUNNEL_NET.format(2)
        wait_reachable(lab, target)
        server = ["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"]
        lab.popen("b", server).wait_for("Server listening", 10)
        before = thread_cpu_ns(lab)
        argv = ["iperf3", "-c", target, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"]
        out = lab.run("a", argv, timeout=seconds + 60).stdout
        after = thread_cpu_ns(lab)
    received: dict[str, float] = json.loads(out)["end"]["sum_received"]
    gib = received["bytes"] / 2**30

    def per_gib(role: str) -> float:
        spent = sum(after[k] - before.get(k, 0) for k in after if k.startswith(role))
        return round(spent / 1e9 / gib, 2)

    mbit_s: float = received["bits_per_second"] / 1e6
    return {"mbit_s": mbit_s, "cpu_s_per_gib.a": per_gib("a"), "cpu_s_per_gib.b": per_gib("b")}


def medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    """The median of each figure over the rounds that have it."""
    keys = dict.fromkeys(k for r in rounds for k in r)
    return {k: round(statistics.median(r[k] for r in rounds if k in r), 3) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", default="direct", choices=("direct", "relay"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--bulk", action="store_true", help="one iperf3 stream, direct")
    parser.add_argument("--seconds", type=float, default=5.0, help="of each iperf3 stream")
    parser.add_argument("variants", nargs="+", help="name=PATH (PATH empty: this tree)")
    args = parser.parse_args()
    variants = [v.partition("=")[::2] for v in args.variants]
    if any(not name for name, _ in variants):
        parser.error("each variant is name=PATH, e.g. before=/src/of/main after=")
    missing = missing_prerequisites()
    if missing:
        print("cannot build the lab: " + "; ".join(missing), file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name, _ in variants}
    for index in range(args.rounds):
        for name, path in variants:
            with variant_env(path):
                if args.bulk:
                    result = bulk_round(args.seconds)
                else:
                    result = idle_round(args.path == "relay", args.pings)
            rounds[name].append(result)
            print(f"round {index} {name}: {json.dumps(result)} (load {os.getloadavg()[0]:.2f})",
                  flush=True)  # fmt: skip
    summary = {name: medians(results) for name, results in rounds.items()}
    for name, figures in summary.items():
        print(f"{name}: {json.dumps(figures)}")
    load_after = os.getloadavg()
    print(f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "lone", "path": "direct" if args.bulk else args.path, "bulk": args.bulk,
        "pings": args.pings, "rounds": args.rounds, "variants": dict(variants),
        "loadavg_before": load_before, "loadavg_after": load_after,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "medians": summary, "runs": rounds,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
