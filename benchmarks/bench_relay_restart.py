"""The relay after a restart: N registered peers, the relay restarted (SIGTERM: graceful,
Close(SHUTDOWN) to every peer; SIGKILL: the connections just break), and the herd of
reconnects that follows.

A real `meshcore-relay` process on a fixed loopback port; the peers are the library's own
sans-IO `RelayClientCore` (so their backoff and jitter are the real ones) driven by the light
raw-socket generator in `relay_herd.py`, each from its own loopback address, with the
relay's default limits. Keys are made ahead. Per scenario it reports: the time from the
restarted relay listening (and from the signal) until all N registered again, the rate,
the refusals the peers met (by error code; `ConnectionRefusedError` is the relay not yet
listening), the relay's CPU per registration (idle load of N registered peers subtracted,
and not), and the peers' announced first waits (the spread).

Scenarios, interleaved per round (median of --repeat), each under SIGTERM and SIGKILL:
`base` runs the relay of `--baseline-src` (a source tree, e.g. from `git archive`), `nowindow`
this relay with peers that ignore its reconnect window, `new` this relay and its window (the
peers are always this tree's `RelayClientCore`). Writes benchmarks/results/relay-restart.json
and prints a table.

    .venv/bin/python benchmarks/bench_relay_restart.py [--peers 10000] [--repeat 3]
        [--baseline-src /tmp/meshcore-base/src] [--scenarios base/term,new/term,...]
        [--scenarios new/term,new@1200/term]  (@RATE: the relay's --restart-rate-per-s)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from meshcore.proto.identity import Identity
from relay_herd import Herd

RESULTS = Path(__file__).resolve().parent / "results" / "relay-restart.json"
LISTENING = re.compile(r"relay listening on ws://127\.0\.0\.1:\d+/")
FILL_CONCURRENCY = 64
SIGNALS = {"term": signal.SIGTERM, "kill": signal.SIGKILL}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Relay:
    """`python -m meshcore_relay` on a fixed port with a fixed identity, from `src`."""

    def __init__(self, port: int, key: Path, src: Path | None, flags: list[str]) -> None:
        fd, name = tempfile.mkstemp(prefix="bench-restart-", suffix=".log")
        self.log = Path(name)
        env = dict(os.environ)
        if src is not None:
            env["PYTHONPATH"] = str(src)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshcore_relay", "--listen", f"127.0.0.1:{port}",
             "--identity", str(key), *flags],
            stderr=fd, env=env,
        )  # fmt: skip
        os.close(fd)

    def wait_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while LISTENING.search(self.log.read_text()) is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.proc.kill()
                raise RuntimeError(f"relay did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.01)

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid)

    def refusals(self) -> int:
        """Connections the relay refused (rate, capacity, shutdown: logged one line each)."""
        return self.log.read_text().count(": refused addr=")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop the relay with `sig`; return how many connections it refused in its life."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(timeout=120)
        refused = self.refusals()
        self.log.unlink(missing_ok=True)
        return refused


def _start(port: int, key: Path, src: Path | None, flags: list[str]) -> Relay:
    relay = Relay(port, key, src, flags)
    relay.wait_listening()
    return relay


async def progress(herd: Herd) -> None:
    """Say every 10 s how many peers registered how often (stderr), until cancelled."""
    while True:
        await trio.sleep(10)
        counts = [herd.count_registered(k) for k in (1, 2)]
        print(f"  registered once {counts[0]}, twice {counts[1]}; {dict(herd.failures)}",
              file=sys.stderr, flush=True)  # fmt: skip


async def scenario(
    identities: list[Identity],
    key: Path,
    src: Path | None,
    sig: int,
    core_options: dict[str, Any],
    flags: list[str],
    timeout: float,
) -> dict[str, Any]:
    n = len(identities)
    port = free_port()
    relay = await trio.to_thread.run_sync(_start, port, key, src, flags)
    herd = Herd(identities, port, core_options=core_options)
    try:
        async with trio.open_nursery() as nursery:
            gate = trio.Semaphore(FILL_CONCURRENCY)
            t0, cpu0 = trio.current_time(), relay.cpu_s()
            for index in range(n):
                nursery.start_soon(herd.run, index, gate)
            nursery.start_soon(progress, herd)
            if not await herd.wait_registered(1, timeout=timeout):
                raise RuntimeError(f"only {herd.count_registered(1)} of {n} registered")
            fill_s, fill_cpu = trio.current_time() - t0, relay.cpu_s() - cpu0
            idle_t, idle_cpu = trio.current_time(), relay.cpu_s()
            await trio.sleep(3.0)  # N registered peers' own load (their pings)
            idle_load = (relay.cpu_s() - idle_cpu) / (trio.current_time() - idle_t)
            failures_before = sum(herd.failures.values())
            herd.first_waits.clear()
            herd.failures.clear()

            t_signal = trio.current_time()
            refused_before = relay.refusals()
            refused_old = await trio.to_thread.run_sync(relay.stop, sig) - refused_before
            t_exit = trio.current_time()
            relay = await trio.to_thread.run_sync(_start, port, key, src, flags)
            t_up, cpu_up = trio.current_time(), relay.cpu_s()
            done = await herd.wait_registered(2, timeout=timeout)
            t_done, cpu_done = trio.current_time(), relay.cpu_s()
            refused_new = relay.refusals()
            back = sorted(times[1] for times in herd.registered_at if len(times) >= 2)
            nursery.cancel_scope.cancel()
    finally:
        relay.stop()
    span = max(t_done - t_up, 1e-9)
    cpu = cpu_done - cpu_up
    bins = [0] * (int(span) + 2)
    for t in back:
        bins[max(int(t - t_up), 0)] += 1
    waits = sorted(herd.first_waits)
    return {
        "peers": n,
        "all_back": done,
        "back": len(back),
        "fill_per_s": round(n / fill_s),
        "fill_relay_cpu_ms": round(fill_cpu * 1e3 / n, 3),
        "fill_failures": failures_before,
        "idle_relay_load": round(idle_load, 3),
        "shutdown_s": round(t_exit - t_signal, 2),
        "restart_s": round(t_up - t_exit, 2),
        "all_back_after_up_s": round(span, 2),
        "all_back_after_signal_s": round(t_done - t_signal, 2),
        "half_back_after_up_s": round(back[len(back) // 2] - t_up, 2) if back else None,
        "per_s": round(len(back) / span),
        "peak_per_s": max(bins),
        "relay_cpu_ms": round(cpu * 1e3 / max(len(back), 1), 3),
        "relay_cpu_ms_less_idle": round(
            max(cpu - idle_load * span, 0.0) * 1e3 / max(len(back), 1), 3
        ),
        "failures": dict(herd.failures),
        "refused_by_relay": refused_new,
        "refused_while_shutting_down": refused_old,
        "first_wait_s": (
            [round(waits[0], 3), round(waits[len(waits) // 2], 3), round(waits[-1], 3)]
            if waits
            else None
        ),
    }


QUIET: Final = {"heartbeat_s": 30.0, "dead_after_s": 90.0}
"""The peers ping their relay after 30 s of silence instead of 5 s: with 10,000 peers the
default's 2,000 pings/s would saturate the generator (and load the relay) on this 2-core
machine, and what is measured here is registration. `--heartbeat-s 5` measures with them."""
MODES: dict[str, dict[str, Any]] = {
    "base": {"src": "baseline", "core": {}},
    "nowindow": {"src": None, "core": {"reconnect_window_max_s": 0.0}},
    "new": {"src": None, "core": {}},
}
"""`base`: the relay of --baseline-src (it announces no window); `nowindow`: this relay, the
peers ignoring its window (the relay's own speed alone); `new`: this relay and its window."""


async def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    identities = [Identity.generate() for _ in range(args.peers)]
    keygen_s = time.perf_counter() - t0
    key_dir = tempfile.TemporaryDirectory(prefix="bench-restart-")
    key = Path(key_dir.name) / "relay.key"
    Identity.generate().save(key)
    chosen = [tuple(name.split("/")) for name in args.scenarios.split(",")]
    runs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(args.repeat):
        for mode_rate, sig_name in chosen:
            mode, _, rate = mode_rate.partition("@")
            spec = MODES[mode]
            flags = ["--restart-rate-per-s", rate] if rate else []
            src = args.baseline_src if spec["src"] == "baseline" else None
            if spec["src"] == "baseline" and src is None:
                continue
            name = f"{mode_rate}/{sig_name}"
            beat = {"heartbeat_s": args.heartbeat_s, "dead_after_s": 3 * args.heartbeat_s}
            options = {**beat, **spec["core"]}
            result = await scenario(
                identities, key, src, SIGNALS[sig_name], options, flags, args.timeout
            )
            print(name, json.dumps(result), flush=True)
            runs.setdefault(name, []).append(result)
    key_dir.cleanup()
    return {"keygen_s": round(keygen_s, 1), "runs": runs, "summary": summarize(runs)}


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Medians per scenario of the numeric figures."""
    out: dict[str, dict[str, Any]] = {}
    for name, results in runs.items():
        med: dict[str, Any] = {}
        for field, value in results[0].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                med[field] = statistics.median(r[field] for r in results)
        med["all_back"] = all(r["all_back"] for r in results)
        failures: dict[str, list[int]] = {}
        for r in results:
            for k, v in r["failures"].items():
                failures.setdefault(k, []).append(v)
        med["failures"] = {k: statistics.median(v + [0] * (len(results) - len(v)))
                           for k, v in failures.items()}  # fmt: skip
        out[name] = med
    return out


def table(summary: dict[str, dict[str, Any]]) -> list[str]:
    rows = [
        "| scenario | all back after listening | after the signal | back/s | peak/s "
        "| refused by the new relay / the old | relay CPU/registration (less idle) | fill/s, CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in summary.items():
        rows.append(
            f"| {name} | {m['all_back_after_up_s']} s | {m['all_back_after_signal_s']} s | "
            f"{m['per_s']:,.0f} | {m['peak_per_s']:,.0f} | {m['refused_by_relay']:g} / "
            f"{m['refused_while_shutting_down']:g} | "
            f"{m['relay_cpu_ms']} ({m['relay_cpu_ms_less_idle']}) ms | "
            f"{m['fill_per_s']:,.0f}, {m['fill_relay_cpu_ms']} ms |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=10000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--scenarios",
        default="base/term,nowindow/term,new/term,base/kill,nowindow/kill,new/kill",
        help="MODE[@RATE]/SIGNAL,...: modes base, nowindow, new; signals term, kill; "
        "@RATE runs the relay with --restart-rate-per-s RATE",
    )
    parser.add_argument("--baseline-src", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument(
        "--heartbeat-s", type=float, default=QUIET["heartbeat_s"], help="the peers' ping interval"
    )
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the relay inherits it
    result = trio.run(run, args)
    print("\n".join(table(result["summary"])))
    result.update(
        python=platform.python_version(),
        cpus=os.cpu_count(),
        load_average_1m=os.getloadavg()[0],
        peers=args.peers,
        repeat=args.repeat,
        heartbeat_s=args.heartbeat_s,
        baseline_src=str(args.baseline_src) if args.baseline_src else None,
        setup="loopback; the relay a subprocess on one fixed port; every peer a "
        "RelayClientCore in the bench process over raw sockets, from its own 127.16.x.y",
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
