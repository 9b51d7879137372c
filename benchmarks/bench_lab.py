"""Tunnels in the network lab: iperf3 TCP throughput and ping RTT between two hosts of the flat
lab, over the bare path and through each tunnel that is available, in one run.

Paths: (a) bare, (b) meshcore direct and (c) meshcore through the relay (TAP mode,
`meshcore-peer up`, or its module while the subcommand is not wired in; for (c) the router
drops a <-> b so that the relay is the only way; (b) counts only if the router's counters
show the traffic went direct), (d) n2n (edge + supernode, layer 2), (e) tinc (switch mode,
layer 2), (f) wireguard-go (layer 3, keys set with `wg`). The "went" column is the router's
verdict for every row.
Each throughput is the median of `--runs` iperf3 runs of `--seconds` s; RTT is the average
and 99th percentile of `--pings` pings 10 ms apart. Every figure is also given as a ratio to
the bare path and to the best of the other tunnels (n2n, tinc, wireguard-go). Missing
Debian packages are installed with apt-get. Needs root (it builds network namespaces).
Writes benchmarks/results/lab.json.

    sudo .venv/bin/python benchmarks/bench_lab.py [--quick] [--runs 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from lab.netlab import (  # noqa: E402
    Lab,
    LabError,
    Meshcore,
    Topology,
    find_up_command,
    missing_prerequisites,
)

RESULTS = ROOT / "benchmarks" / "results" / "lab.json"
PACKAGES = {  # command -> Debian package
    "iperf3": "iperf3",
    "ping": "iputils-ping",
    "supernode": "n2n",
    "edge": "n2n",
    "tincd": "tinc",
    "wireguard-go": "wireguard-go",
    "wg": "wireguard-tools",
}
PEERS = ("n2n", "tinc", "wireguard-go")  # the other tunnels meshcore is compared with
IPERF_PORT = 5201

# A tunnel setup brings the tunnel up between hosts a and b of a lab and yields the address
# of b inside the tunnel; leaving the context tears the tunnel down.
Setup = Callable[[Lab], AbstractContextManager[str]]


@dataclass
class Figures:
    path: str
    available: bool
    note: str = ""
    mbit_s: float | None = None
    mbit_s_runs: list[float] | None = None
    rtt_avg_ms: float | None = None
    rtt_p99_ms: float | None = None
    went: str | None = None  # "direct" or "relay", from the router's counters
    direct_mb: float | None = None  # megabytes a <-> b during the iperf3 runs
    relayed_mb: float | None = None  # megabytes a <-> relay <-> b (the lesser side)


def ensure_packages() -> dict[str, str]:
    """Install missing Debian packages (no recommends); return {command: why unavailable}."""
    missing = sorted({pkg for cmd, pkg in PACKAGES.items() if shutil.which(cmd) is None})
    if missing and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env=env, check=False, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return {
        cmd: f"`{cmd}` missing (apt-get install {pkg} failed)"
        for cmd, pkg in PACKAGES.items()
        if shutil.which(cmd) is None
    }


# -- measuring --------------------------------------------------------------------------------


def iperf(lab: Lab, target: str, seconds: float) -> float:
    """One iperf3 TCP run a -> b; megabits per second received."""
    done = lab.run(
        "a", ["iperf3", "-c", target, "-p", str(IPERF_PORT), "-t", str(seconds), "-J"],
        timeout=seconds + 30,
    )  # fmt: skip
    report = json.loads(done.stdout)
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6


def ping_stats(lab: Lab, target: str, count: int) -> tuple[float, float]:
    """Average and 99th percentile RTT in ms of `count` pings a -> b, 10 ms apart."""
    done = lab.run(
        "a", ["ping", "-n", "-c", str(count), "-i", "0.01", "-W", "1", target],
        timeout=count * 0.05 + 30,
    )  # fmt: skip
    times = sorted(float(t) for t in re.findall(r"time=([\d.]+) ms", done.stdout.decode()))
    if len(times) < count * 0.9:
        raise LabError(f"only {len(times)} of {count} pings to {target} were answered")
    p99 = times[min(len(times) - 1, round(0.99 * (len(times) - 1)))]
    return statistics.fmean(times), p99


def measure(lab: Lab, name: str, setup: Setup, args: argparse.Namespace) -> Figures:
    print(f"{name}: setting up", flush=True)
    with setup(lab) as target:
        wait_reachable(lab, target)
        server = lab.popen("b", ["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"])
        try:
            server.wait_for("Server listening", 10)
            ping(lab, target, 20)  # warm up ARP, peer discovery, crypto state
            lab.reset_counters()
            runs = [iperf(lab, target, args.seconds) for _ in range(args.runs)]
            counters = lab.counters()
            avg, p99 = ping_stats(lab, target, args.pings)
        finally:
            server.stop()
    direct = counters.between("a", "b").bytes / 1e6
    relayed = min(counters.between("a", "relay").bytes, counters.between("b", "relay").bytes) / 1e6
    figures = Figures(
        name, True, mbit_s=statistics.median(runs), mbit_s_runs=runs, rtt_avg_ms=avg,
        rtt_p99_ms=p99, went="direct" if direct > relayed else "relay", direct_mb=direct,
        relayed_mb=relayed,
    )  # fmt: skip
    print(
        f"{name}: {figures.mbit_s:.0f} Mbit/s, RTT {avg:.3f} ms avg, {p99:.3f} ms p99, went "
        f"{figures.went} ({direct:.0f} MB direct, {relayed:.0f} MB via the relay)"
    )
    return figures


def ping(lab: Lab, target: str, count: int) -> bool:
    done = lab.run("a", ["ping", "-n", "-c", str(count), "-i", "0.01", "-W", "1", target],
                   check=False, timeout=count + 10)  # fmt: skip
    return done.returncode == 0


def wait_reachable(lab: Lab, target: str, timeout: float = 30.0) -> None:
    """Ping until `target` answers: tunnels need a moment to register and exchange keys."""
    deadline = time.monotonic() + timeout
    while not ping(lab, target, 1):
        if time.monotonic() > deadline:
            raise LabError(f"{target} not reachable through the tunnel within {timeout} s")


# -- the tunnels ------------------------------------------------------------------------------

TUNNEL_NET = "10.99.0.{}"


@contextmanager
def bare(lab: Lab) -> Iterator[str]:
    yield lab.public("b")


@contextmanager
def n2n(lab: Lab) -> Iterator[str]:
    port = 7654
    supernode = lab.popen("relay", ["supernode", "-l", str(port), "-v"])
    for index, host in enumerate(("a", "b"), start=1):
        lab.popen(host, [
            "edge", "-d", lab.ifname("n2n"), "-a", TUNNEL_NET.format(index),
            "-s", "255.255.255.0", "-c", "meshlab", "-k", "lab-secret",
            "-l", f"{lab.public('relay')}:{port}",
        ])  # fmt: skip
    try:
        yield TUNNEL_NET.format(2)
    finally:
        supernode.stop()


@contextmanager
def tinc(lab: Lab) -> Iterator[str]:
    dirs = {host: lab.workdir / f"tinc-{host}" for host in ("a", "b")}
    for index, (host, conf) in enumerate(dirs.items(), start=1):
        (conf / "hosts").mkdir(parents=True)
        other = "b" if host == "a" else "a"
        (conf / "tinc.conf").write_text(
            f"Name = {host}\nMode = switch\nInterface = {lab.ifname('tinc')}\n"
            f"AddressFamily = ipv4\nConnectTo = {other}\n"
        )
        up = conf / "tinc-up"
        up.write_text(
            '#!/bin/sh\nip link set "$INTERFACE" up\n'
            f'ip addr add {TUNNEL_NET.format(index)}/24 dev "$INTERFACE"\n'
        )
        up.chmod(0o755)
        (conf / "hosts" / host).write_text(f"Address = {lab.public(host)}\nPort = 655\n")
        lab.run(host, ["tincd", "-c", str(conf), "-K2048"], input=b"\n\n")
    for host, conf in dirs.items():
        other = "b" if host == "a" else "a"
        shutil.copy(dirs[other] / "hosts" / other, conf / "hosts" / other)
    daemons = [
        lab.popen(host, ["tincd", "-c", str(conf), "-D", "-d1",
                         f"--pidfile={conf / 'pid'}", f"--logfile={conf / 'log'}"])
        for host, conf in dirs.items()
    ]  # fmt: skip
    try:
        yield TUNNEL_NET.format(2)
    finally:
        for daemon in daemons:
            daemon.stop()


@contextmanager
def wireguard_go(lab: Lab) -> Iterator[str]:
    # One name per host: wireguard-go's control socket /var/run/wireguard/NAME.sock lives
    # in the shared file system, not in the namespace.
    names = {host: lab.ifname(f"wg{host}") for host in ("a", "b")}
    env = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "error"}
    keys = {}
    for host in ("a", "b"):
        private = lab.run(host, ["wg", "genkey"]).stdout
        public = lab.run(host, ["wg", "pubkey"], input=private).stdout.decode().strip()
        key_file = lab.workdir / f"wg-{host}.key"
        key_file.write_bytes(private)
        key_file.chmod(0o600)
        keys[host] = (key_file, public)
    daemons = []
    for index, host in enumerate(("a", "b"), start=1):
        other = "b" if host == "a" else "a"
        name = names[host]
        daemon = lab.popen(host, ["wireguard-go", "-f", name], env=env)
        daemons.append(daemon)
        wait_for_device(lab, host, name)
        lab.run(host, [
            "wg", "set", name, "private-key", str(keys[host][0]), "listen-port", "51820",
            "peer", keys[other][1], "endpoint", f"{lab.public(other)}:51820",
            "allowed-ips", f"{TUNNEL_NET.format(3 - index)}/32",
        ])  # fmt: skip
        lab.run(host, ["ip", "addr", "add", f"{TUNNEL_NET.format(index)}/24", "dev", name])
        lab.run(host, ["ip", "link", "set", name, "up"])
    try:
        yield TUNNEL_NET.format(2)
    finally:
        for daemon in daemons:
            daemon.stop()


def meshcore_tap(via_relay: bool) -> Setup:
    """meshcore's TAP tunnel (`meshcore-peer up`) between a and b, with the relay in the relay
    namespace; `via_relay` cuts a <-> b on the router, so the relay is the only way."""

    @contextmanager
    def setup(lab: Lab) -> Iterator[str]:
        mesh = Meshcore(lab)
        mesh.start_relay()
        if via_relay:
            lab.block("a", "b")
        ids = {host: mesh.key(host).peer_id for host in ("a", "b")}
        for index, (host, other) in enumerate((("a", "b"), ("b", "a")), start=1):
            mesh.up(host, [ids[other]], address=f"{TUNNEL_NET.format(index)}/24")
        yield TUNNEL_NET.format(2)  # the lab stops the processes

    return setup


def wait_for_device(lab: Lab, host: str, name: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while lab.run(host, ["ip", "link", "show", name], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise LabError(f"{name} did not appear in {host} within {timeout} s")


# -- report -----------------------------------------------------------------------------------


def ratios(results: list[Figures]) -> dict[str, dict[str, float | None]]:
    """Each figure over the bare path's and over the best other tunnel's."""
    measured = {f.path: f for f in results if f.available}
    bare_f = measured.get("bare")
    peers = [measured[p] for p in PEERS if p in measured]
    best_mbit = max((p.mbit_s or 0.0 for p in peers), default=None)
    best_avg = min((p.rtt_avg_ms or 0.0 for p in peers), default=None)
    best_p99 = min((p.rtt_p99_ms or 0.0 for p in peers), default=None)

    def div(x: float | None, y: float | None) -> float | None:
        return None if x is None or not y else x / y

    out: dict[str, dict[str, float | None]] = {}
    for f in measured.values():
        out[f.path] = {
            "mbit_s_vs_bare": div(f.mbit_s, bare_f.mbit_s if bare_f else None),
            "mbit_s_vs_best_peer": div(f.mbit_s, best_mbit),
            "rtt_avg_vs_bare": div(f.rtt_avg_ms, bare_f.rtt_avg_ms if bare_f else None),
            "rtt_avg_vs_best_peer": div(f.rtt_avg_ms, best_avg),
            "rtt_p99_vs_bare": div(f.rtt_p99_ms, bare_f.rtt_p99_ms if bare_f else None),
            "rtt_p99_vs_best_peer": div(f.rtt_p99_ms, best_p99),
        }
    return out


def table(results: list[Figures], rel: dict[str, dict[str, float | None]]) -> str:
    def x(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}x"

    ratio_heads = f"{'/bare':>8}{'/best':>8}"
    head = (
        f"{'path':<16}{'went':<7}{'Mbit/s':>8}{ratio_heads}{'RTT avg ms':>11}{ratio_heads}"
        f"{'p99 ms':>8}{ratio_heads}"
    )
    lines = [head, "-" * len(head)]
    for f in results:
        if not f.available:
            lines.append(f"{f.path:<16}not measured: {f.note}")
            continue
        r = rel[f.path]
        lines.append(
            f"{f.path:<16}{f.went or '-':<7}{f.mbit_s:>8.0f}{x(r['mbit_s_vs_bare']):>8}"
            f"{x(r['mbit_s_vs_best_peer']):>8}{f.rtt_avg_ms:>11.3f}{x(r['rtt_avg_vs_bare']):>8}"
            f"{x(r['rtt_avg_vs_best_peer']):>8}{f.rtt_p99_ms:>8.3f}{x(r['rtt_p99_vs_bare']):>8}"
            f"{x(r['rtt_p99_vs_best_peer']):>8}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="iperf3 runs per path (median)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds per iperf3 run")
    parser.add_argument("--pings", type=int, default=500, help="pings per path")
    parser.add_argument("--quick", action="store_true", help="1 run of 2 s, 100 pings")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.seconds, args.pings = 1, 2.0, 100
    missing = missing_prerequisites()
    if missing:
        print("cannot build the lab: " + "; ".join(missing), file=sys.stderr)
        return 2
    unavailable = ensure_packages()
    up = find_up_command()
    no_up = "" if up else "`meshcore-peer up` (TAP mode) does not exist yet"
    plan: list[tuple[str, Setup | None, str]] = [
        ("bare", bare, ""),
        ("meshcore-direct", meshcore_tap(via_relay=False), no_up),
        ("meshcore-relay", meshcore_tap(via_relay=True), no_up),
        ("n2n", n2n, unavailable.get("edge", "") or unavailable.get("supernode", "")),
        ("tinc", tinc, unavailable.get("tincd", "")),
        ("wireguard-go", wireguard_go,
         unavailable.get("wireguard-go", "") or unavailable.get("wg", "")),
    ]  # fmt: skip
    results: list[Figures] = []
    for name, setup, why_not in plan:
        if setup is None or why_not:
            results.append(Figures(name, False, note=why_not or "no setup for this path yet"))
            continue
        # A fresh lab per path: no daemon, route or device of one tunnel can help another.
        with Lab(Topology.flat()) as lab:
            try:
                figures = measure(lab, name, setup, args)
                if name == "meshcore-direct" and figures.went != "direct":
                    figures = Figures(name, False, note=(
                        f"the tunnel stayed on the relay ({figures.relayed_mb:.0f} MB via the "
                        f"relay, {figures.direct_mb:.0f} MB direct; {figures.mbit_s:.0f} Mbit/s, "
                        f"RTT {figures.rtt_avg_ms:.2f} ms): no direct path in TAP mode"
                    ))  # fmt: skip
                results.append(figures)
            except LabError as exc:
                results.append(Figures(name, False, note=f"failed: {exc}"))
                print(f"{name}: FAILED: {exc}", file=sys.stderr)
    rel = ratios(results)
    print()
    print(table(results, rel))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "benchmark": "lab",
        "meshcore_up": " ".join(up) if up else None,
        "settings": {"runs": args.runs, "seconds": args.seconds, "pings": args.pings,
                     "topology": "flat: a and b public, one router between them"},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "results": [asdict(f) for f in results],
        "ratios": rel,
    }, indent=2) + "\n")  # fmt: skip
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
