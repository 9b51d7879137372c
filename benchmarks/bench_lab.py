"""Tunnels in the network lab, side by side in one run: iperf3 TCP throughput (one stream),
idle ping RTT and ping RTT while the stream runs, through the bare path, meshcore's TAP
tunnel (direct, and through the relay) and the peers n2n, tinc, wireguard-go and nebula,
in each situation: the flat lab, a 50 Mbit/s uplink with a 20 ms queue, 2 % random loss,
the design's own geometry (30 ms between the hosts, the relay 40 ms from each) and a WAN
with 20 ms RTT per side (40 ms through the relay).

Every (situation, tunnel) cell runs in a fresh lab: no daemon, route or device of one
tunnel can help another. Each figure is the median of `--runs` runs and is also given as a
ratio to the best peer in the same situation; "+ms" is the tunnel's idle RTT over the bare
path it took (a relayed tunnel against a -> relay -> b). Writes benchmarks/results/lab.json
and PNG charts (with matplotlib: pip install -e '.[bench]'); a full default run also copies
the charts to docs/images/ for docs/performance.md. Missing Debian packages are installed
with apt-get. Needs root (it builds network namespaces).

    sudo .venv/bin/python benchmarks/bench_lab.py [--quick] [--runs 3] [--seconds 10]
        [--situations flat,bottleneck,...] [--tunnels bare,meshcore-direct,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench_lab_measure import Cell, Settings, measure_cell  # noqa: E402
from bench_lab_report import draw_charts, markdown_tables, ratios, tables  # noqa: E402
from bench_lab_tunnels import (  # noqa: E402
    TUNNELS,
    ensure_packages,
    unavailable_reason,
)
from lab.netlab import (  # noqa: E402
    Lab,
    LabError,
    Link,
    Topology,
    find_up_command,
    missing_prerequisites,
)

RESULTS = ROOT / "benchmarks" / "results"
DOCS_IMAGES = ROOT / "docs" / "images"


@dataclass(frozen=True)
class Situation:
    name: str
    description: str
    topology: Topology


SITUATIONS = {
    s.name: s
    for s in (
        Situation("flat", "flat lab, veth links, no shaping", Topology.flat()),
        Situation(
            "bottleneck",
            "a's uplink 50 Mbit/s, tbf queue 20 ms (burst 32 KiB)",
            Topology.flat(links={"a": Link(rate_mbit=50.0, queue_ms=20.0)}),
        ),
        Situation(
            "loss",
            "2 % random loss each way on a's link (nftables numgen)",
            Topology.flat(links={"a": Link(loss_pct=2.0)}),
        ),
        Situation(
            "geometry",
            "a-b 30 ms RTT, relay 40 ms RTT from each (80 ms via the relay)",
            Topology.flat(
                links={
                    "a": Link(delay_ms=7.5),
                    "b": Link(delay_ms=7.5),
                    "relay": Link(delay_ms=12.5),
                }
            ),
        ),
        Situation(
            "wan20",
            "5 ms per link: 20 ms RTT a-b and to the relay (40 ms via the relay)",
            Topology.flat(delay_ms=5.0),
        ),
    )
}
QUICK_SITUATIONS = ("flat", "bottleneck")
QUICK_TUNNELS = ("bare", "meshcore-direct", "meshcore-relay", "tinc")


def names(text: str, known: dict[str, object], what: str) -> list[str]:
    chosen = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in known]
    if unknown or not chosen:
        raise SystemExit(f"unknown {what} {unknown or text!r}; choose from {','.join(known)}")
    return chosen


def run_cell(situation: Situation, tunnel: str, settings: Settings, why_not: str) -> Cell:
    """One tunnel in one situation, in a fresh lab; a failure becomes an unavailable cell."""
    if why_not:
        return Cell(tunnel, situation.name, False, note=why_not)
    print(f"[{situation.name}] {tunnel}: setting up", flush=True)
    started = time.monotonic()
    with Lab(situation.topology) as lab:
        try:
            with TUNNELS[tunnel](lab) as target:
                cell = measure_cell(lab, tunnel, situation.name, target, settings)
        except (LabError, OSError, ValueError, KeyError, subprocess.CalledProcessError) as exc:
            # One cell failing (a daemon that would not start, a report that would not
            # parse) is recorded with its reason; the run goes on with the next cell.
            print(f"[{situation.name}] {tunnel}: FAILED: {exc}", file=sys.stderr)
            return Cell(tunnel, situation.name, False, note=f"failed: {str(exc)[:300]}")
    expected = "relay" if tunnel == "meshcore-relay" else "direct"
    if tunnel.startswith("meshcore") and cell.went != expected:
        cell.available = False
        cell.note = (
            f"went {cell.went}, not {expected} ({cell.direct_mb:.0f} MB direct, "
            f"{cell.relayed_mb:.0f} MB via the relay)"
        )
    print(
        f"[{situation.name}] {tunnel}: {cell.mbit_s:.0f} Mbit/s; idle {cell.idle_avg_ms:.3f} avg "
        f"{cell.idle_p99_ms:.3f} p99; loaded {cell.loaded_avg_ms:.2f} avg "
        f"{cell.loaded_p99_ms:.2f} p99 ms; went {cell.went} "
        f"({time.monotonic() - started:.0f} s)",
        flush=True,
    )
    return cell


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }


def default_congestion() -> str:
    """The congestion control a new namespace gives TCP sockets (the tunnels' own)."""
    with Lab(Topology.flat()) as lab:
        done = lab.run("a", ["cat", "/proc/sys/net/ipv4/tcp_congestion_control"])
    return done.stdout.decode().strip()


def versions() -> dict[str, str]:
    """Versions of the packaged peers, as dpkg knows them."""
    out = {}
    for package in ("n2n", "tinc", "wireguard-go", "nebula", "iperf3"):
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
        )
        out[package] = done.stdout.strip() or "not installed"
    return out


def replot(path: Path) -> int:
    """Tables and charts from an earlier run's JSON; a full run's also go to docs/images/."""
    report = json.loads(path.read_text())
    cells = [Cell(**c) for c in report["cells"]]
    settings = report["settings"]
    full = (
        not settings["quick"]
        and (settings["runs"], settings["seconds"]) == (3, 10.0)
        and set(report["situations"]) == set(SITUATIONS)
        and {c.tunnel for c in cells} == set(TUNNELS)
    )
    rel = ratios(cells)
    print(tables(cells, rel, report["situations"]))
    print("\n" + markdown_tables(cells, rel, report["situations"]))
    for chart in draw_charts(cells, RESULTS, DOCS_IMAGES if full else None):
        print(f"wrote {chart.relative_to(ROOT)}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="iperf3 runs per cell (median)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per iperf3 run")
    parser.add_argument("--pings", type=int, default=500, help="idle pings per cell")
    parser.add_argument(
        "--cc",
        default="cubic",
        help="congestion control of the iperf3 stream (Linux's usual default, cubic; "
        "'default' keeps the namespace's own)",
    )
    parser.add_argument(
        "--stream-rate",
        default="",
        metavar="RATE",
        help="iperf3 -b for the stream (e.g. 800M), the same for every tunnel: loaded RTTs at "
        "equal load; default: as fast as each tunnel goes",
    )
    parser.add_argument("--situations", help=f"comma-separated, of {','.join(SITUATIONS)}")
    parser.add_argument("--tunnels", help=f"comma-separated, of {','.join(TUNNELS)}")
    parser.add_argument(
        "--replot",
        type=Path,
        metavar="JSON",
        help="measure nothing: print the tables (text and Markdown) and redraw the charts from "
        "the lab.json of an earlier run",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"1 run of 3 s, 100 pings; situations {','.join(QUICK_SITUATIONS)} and tunnels "
        f"{','.join(QUICK_TUNNELS)} unless chosen",
    )
    args = parser.parse_args()
    if args.replot:
        return replot(args.replot)
    situations = names(args.situations, SITUATIONS, "situation") if args.situations else None
    tunnels = names(args.tunnels, TUNNELS, "tunnel") if args.tunnels else None
    if args.quick:
        args.runs, args.seconds, args.pings = 1, 3.0, 100
        situations = situations or list(QUICK_SITUATIONS)
        tunnels = tunnels or list(QUICK_TUNNELS)
    full = (
        situations is None
        and tunnels is None
        and (args.runs, args.seconds) == (3, 10.0)
        and not args.stream_rate
    )
    situations = situations or list(SITUATIONS)
    tunnels = tunnels or list(TUNNELS)
    if args.seconds < 3:
        parser.error("--seconds must be at least 3: loaded pings skip the first and last second")
    missing = missing_prerequisites()
    if missing:
        print("cannot build the lab: " + "; ".join(missing), file=sys.stderr)
        return 2
    unavailable = ensure_packages()
    up = find_up_command()
    no_up = "" if up else "`meshcore-peer up` (TAP mode) is missing"
    settings = Settings(args.runs, args.seconds, args.pings, args.cc, args.stream_rate)
    load_before = os.getloadavg()
    started = time.monotonic()
    cells = []
    for situation_name in situations:
        for tunnel in tunnels:
            why_not = (
                no_up if tunnel.startswith("meshcore") else unavailable_reason(tunnel, unavailable)
            )
            cells.append(run_cell(SITUATIONS[situation_name], tunnel, settings, why_not))
    rel = ratios(cells)
    descriptions = {name: SITUATIONS[name].description for name in situations}
    own_cc = default_congestion()
    load_after = os.getloadavg()
    print(
        f"\n{settings.runs} run(s) of {settings.seconds:g} s per cell, {settings.pings} idle "
        f"pings; iperf3 stream: {settings.congestion}"
        f"{f' at {settings.stream_rate}bit/s' if settings.stream_rate else ''}; "
        f"the tunnels' own TCP: {own_cc}; "
        f"load average {load_before[0]:.2f} before, {load_after[0]:.2f} after"
    )
    print(tables(cells, rel, descriptions))
    RESULTS.mkdir(parents=True, exist_ok=True)
    charts = draw_charts(cells, RESULTS, DOCS_IMAGES if full else None)
    report = {
        "benchmark": "lab",
        "meshcore_up": " ".join(up) if up else None,
        "settings": asdict(settings)
        | {"ping_interval_s": 0.01, "quick": args.quick, "namespace_default_cc": own_cc},
        "situations": descriptions,
        "machine": machine() | {"loadavg_before": load_before, "loadavg_after": load_after},
        "versions": versions(),
        "elapsed_s": round(time.monotonic() - started),
        "cells": [asdict(c) for c in cells],
        "ratios": rel,
    }
    (RESULTS / "lab.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {(RESULTS / 'lab.json').relative_to(ROOT)}")
    for path in charts:
        print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
