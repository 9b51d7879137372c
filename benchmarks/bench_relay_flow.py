"""Relayed throughput with and without per-circuit credit, through a real relay process.

Two library peers (`open_relay_client`, in this process) pair through `python -m
meshcore_relay` on loopback and move 64 KiB messages over one `CircuitTransport`, A -> B.
Three ways, rounds interleaved on the same machine, medians of --repeat:

- "drop, 192 KiB": a relay with `--flow-control drop` (as before credits) and the sender
  holding at most 192 KiB in flight, the window a session keeps on such a path;
- "drop, unbounded": the same relay, the sender as fast as it can (what a larger window
  does to a drop-tail relay: the frames it drops are counted);
- "credit": the relay with credits (the default), the sender bounded only by the relay's
  credit and a window of `circuit.max_window` (what a session following the BDP may use).

B opens A's window directly (it lives in this process), so no acknowledgement crosses the
relay. Reported: goodput (MiB/s of messages B received), the relay's CPU seconds per GiB
relayed (/proc), and frames the relay dropped (its /metrics).

With --registrations: the relay's protocol CPU per registration (the Matchmaker alone, as in
bench_relay), with the ML-KEM public-key check as a coefficient loop (before) and a column at
a time (after), alternating in one run.

Writes benchmarks/results/relay-flow.json and prints a table.

    .venv/bin/python benchmarks/bench_relay_flow.py [--messages 3000] [--repeat 3]
    .venv/bin/python benchmarks/bench_relay_flow.py --registrations
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import trio

import bench_relay  # the script's own directory is on sys.path
from meshcore._client import open_relay_client
from meshcore.proto import identity
from meshcore.proto.constants import RELAY_UNCREDITED_WINDOW_BYTES
from meshcore.proto.identity import Identity
from relayprocs import UNLIMITED, RelayProcess

RESULTS = Path(__file__).resolve().parent / "results" / "relay-flow.json"
MESSAGE = 65536 - 1024  # a 64 KiB message, sealed, stays under one relayed frame
DROPPED = re.compile(r'^meshcore_relay_dropped_frames_total\{reason="([a-z_]+)"\} (\d+)', re.M)
MODES = ("drop, 192 KiB", "drop, unbounded", "credit")


def dropped_frames(port: int) -> int:
    """Frames the relay dropped so far, every reason together, from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(int(n) for _, n in DROPPED.findall(text))


async def one_round(url: str, n: int, mode: str) -> tuple[float, int]:
    """Seconds until B has what arrived of n messages from A, and how many arrived."""
    alice, bob = Identity.generate(), Identity.generate()
    async with open_relay_client(url, alice) as a, open_relay_client(url, bob) as b:
        async with trio.open_nursery() as nursery:
            accepted: list[Any] = []
            ready = trio.Event()

            async def accept() -> None:
                accepted.append((await b.accept(await b.next_invitation())).circuit)
                ready.set()

            nursery.start_soon(accept)
            sender = (await a.connect(bob.peer_id)).circuit
            await ready.wait()
        receiver = accepted[0]
        if mode == "credit":
            window = sender.max_window
        elif mode == "drop, 192 KiB":
            window = RELAY_UNCREDITED_WINDOW_BYTES
        else:
            window = n * MESSAGE
        room = trio.Semaphore(max(1, window // MESSAGE))
        payload = bytes(MESSAGE)
        received = 0
        last = time.perf_counter()

        async def b_reads() -> None:
            nonlocal received, last
            while received < n:
                await receiver.receive()
                received += 1
                last = time.perf_counter()
                room.release()

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b_reads)
            for _ in range(n):
                await room.acquire()
                await sender.send(payload)
            # Dropped frames never arrive: stop once B has heard nothing for a second.
            while received < n and time.perf_counter() - last < 1.0:
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        return last - start, received


async def run(n: int, repeat: int) -> dict[str, Any]:
    relays = {
        "drop": RelayProcess(*UNLIMITED, "--flow-control", "drop", "--metrics", "0"),
        "credit": RelayProcess(*UNLIMITED, "--metrics", "0"),
    }
    rows: dict[str, dict[str, list[float]]] = {
        m: {"mib_s": [], "cpu_s_gib": [], "dropped": []} for m in MODES
    }
    try:
        for relay in relays.values():
            await one_round(relay.url, max(n // 10, 20), "credit")  # warm-up
        for _ in range(repeat):
            for mode in MODES:
                relay = relays["credit" if mode == "credit" else "drop"]
                assert relay.metrics_port is not None
                cpu, drops = relay.cpu_s(), dropped_frames(relay.metrics_port)
                seconds, received = await one_round(relay.url, n, mode)
                gib = received * MESSAGE / 2**30
                rows[mode]["mib_s"].append(gib * 1024 / seconds)
                rows[mode]["cpu_s_gib"].append((relay.cpu_s() - cpu) / gib)
                rows[mode]["dropped"].append(dropped_frames(relay.metrics_port) - drops)
    finally:
        for relay in relays.values():
            relay.stop()
    out: dict[str, Any] = {"message_bytes": MESSAGE, "messages": n, "repeat": repeat}
    for mode, values in rows.items():
        out[mode] = {
            "mib_per_s": round(statistics.median(values["mib_s"]), 1),
            "mbit_per_s": round(statistics.median(values["mib_s"]) * 8 * 1.048576),
            "relay_cpu_s_per_gib": round(statistics.median(values["cpu_s_gib"]), 2),
            "dropped_frames": int(statistics.median(values["dropped"])),
            "all_mib_per_s": [round(v, 1) for v in values["mib_s"]],
        }
    base = out["drop, 192 KiB"]["mib_per_s"]
    for mode in MODES:
        out[mode]["vs_drop_192k"] = round(out[mode]["mib_per_s"] / base, 2)
    return out


def coefficient_loop(public: bytes) -> bool:
    """The ML-KEM modulus check as it was: one coefficient pair at a time, in Python."""
    if len(public) != 1184:
        return False
    for i in range(0, 1152, 3):
        d = public[i] | (public[i + 1] << 8) | (public[i + 2] << 16)
        if (d & 0xFFF) >= 3329 or (d >> 12) >= 3329:
            return False
    return True


def registration_cpu(repeat: int) -> dict[str, Any]:
    """Matchmaker CPU per registration, the key check before and after, rounds alternating."""
    fast = identity.mlkem_public_key_is_canonical
    runs: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(repeat):
        for mode, check in (("before", coefficient_loop), ("after", fast)):
            identity.mlkem_public_key_is_canonical = check  # what PublicBundle calls
            try:
                us = bench_relay._proof_cpu_us(200)["matchmaker_registration_us_plain"]
            finally:
                identity.mlkem_public_key_is_canonical = fast
            runs[mode].append(us)
    before, after = statistics.median(runs["before"]), statistics.median(runs["after"])
    return {
        "matchmaker_us_before": before,
        "matchmaker_us_after": after,
        "after_vs_before": round(after / before, 2),
        "all_before": runs["before"],
        "all_after": runs["after"],
    }


def table(result: dict[str, Any]) -> list[str]:
    if "matchmaker_us_before" in result:
        return [
            "| relay protocol CPU per registration (Matchmaker) | before | after | ratio |",
            "|---|---:|---:|---:|",
            f"| ML-KEM check loop -> columns | {result['matchmaker_us_before']} µs | "
            f"{result['matchmaker_us_after']} µs | {result['after_vs_before']}x |",
        ]
    rows = [
        "| relay, sender window | goodput | vs before | relay CPU per GiB | frames dropped |",
        "|---|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        r = result[mode]
        rows.append(
            f"| {mode} | {r['mib_per_s']} MiB/s ({r['mbit_per_s']} Mbit/s) | "
            f"{r['vs_drop_192k']}x | {r['relay_cpu_s_per_gib']} s | {r['dropped_frames']} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000, help="messages per round")
    parser.add_argument("--repeat", type=int, default=3, help="rounds per mode; medians")
    parser.add_argument(
        "--registrations", action="store_true", help="the registration CPU part instead"
    )
    args = parser.parse_args(argv)
    if args.registrations:
        result = registration_cpu(args.repeat)
    else:
        result = trio.run(run, args.messages, args.repeat)
    print("\n".join(table(result)))
    result.update(
        python=platform.python_version(),
        cpus=os.cpu_count(),
        load_average_1m=os.getloadavg()[0],
        setup="loopback; the relay is a subprocess; both peers in the bench process",
    )
    out = RESULTS.with_name("relay-flow-registrations.json") if args.registrations else RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
