"""Handshake CPU cost per side (docs/crypto-spec.md §1 measured ~0.52 ms initiator, ~0.45 ms
responder).

Runs N full handshakes between two fixed identities, timing each side's calls with
`time.process_time` (CPU, not wall clock), and prints median and p99 per side. Writes the
figures to benchmarks/results/handshake.json. Target: ≤ 1.5 ms CPU per side.

    .venv/bin/python benchmarks/bench_handshake.py [-n 500]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

from meshcore.proto.handshake import Initiator, Responder
from meshcore.proto.identity import Identity

TARGET_MS = 1.5
RESULTS = Path(__file__).resolve().parent / "results" / "handshake.json"


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run(n: int) -> tuple[dict[str, list[float]], list[int]]:
    """Time `n` handshakes; returns per-side CPU milliseconds and the three message sizes."""
    alice, bob = Identity.generate(), Identity.generate()
    responder = Responder(bob, {alice.peer_id: alice.public}.get)
    clock = time.process_time
    samples: dict[str, list[float]] = {"initiator": [], "responder": []}
    for k in range(n + 20):  # the first 20 are warm-up
        now = float(k)
        t0 = clock()
        initiator = Initiator(alice, bob.public)
        msg1 = initiator.start(now)
        t1 = clock()
        msg2 = responder.respond(msg1, now)
        t2 = clock()
        msg3, _ = initiator.receive_response(msg2, now, b"")
        t3 = clock()
        responder.confirm(msg3, now)
        t4 = clock()
        if k >= 20:
            samples["initiator"].append(((t1 - t0) + (t3 - t2)) * 1e3)
            samples["responder"].append(((t2 - t1) + (t4 - t3)) * 1e3)
    return samples, [len(msg1), len(msg2), len(msg3)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="handshakes to time (>= 200)")
    args = parser.parse_args(argv)
    n = max(200, args.n)
    samples, sizes = run(n)
    report: dict[str, object] = {
        "n": n,
        "clock": "time.process_time",
        "target_ms_per_side": TARGET_MS,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "message_bytes": sizes,
    }
    print(f"handshake CPU per side, n = {n} (ms)")
    print(f"{'side':<10} {'median':>8} {'p99':>8} {'mean':>8} {'min':>8}  target")
    ok = True
    for side in ("initiator", "responder"):
        values = samples[side]
        median, p99 = statistics.median(values), percentile(values, 0.99)
        report[side] = {
            "median_ms": round(median, 4),
            "p99_ms": round(p99, 4),
            "mean_ms": round(statistics.fmean(values), 4),
            "min_ms": round(min(values), 4),
        }
        verdict = "ok" if median <= TARGET_MS else "OVER"
        ok = ok and median <= TARGET_MS
        print(
            f"{side:<10} {median:8.3f} {p99:8.3f} {statistics.fmean(values):8.3f} "
            f"{min(values):8.3f}  <= {TARGET_MS} {verdict}"
        )
    print("message sizes (B):", " / ".join(str(x) for x in sizes))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
