"""Direct paths on loopback: how soon a session is direct, the delivery gap while it migrates,
and ping round trips via the relay and via the direct path.

Each run makes two fresh identities, registers both with one in-process relay (shared-port
listeners), pairs them, runs the handshake and opens the sessions and migrators; a paced
stream (one 64-byte message per millisecond, stamped with the sender's path) flows from the
initiator to the responder throughout. Per run:

* **direct**: time from the sessions being up to the arrival of the first message sent on
  the direct path;
* **planned gap**: the longest gap between arrivals from just before the relay -> direct
  switch until just after both sides moved (a paced stream has 1 ms gaps anyway);
* **forced gap**: the direct connection is cut with a TCP reset; the longest gap between
  arrivals until the stream runs on the re-opened relay circuit (includes detecting the
  reset, re-opening the circuit and resending what the reset lost);
* **ping**: `Session.ping()` round trips on the direct path, then on the relay.

Relay and both peers share one process and one core's event loop, so each number includes
the other side's work. Writes benchmarks/results/direct.json.

    .venv/bin/python benchmarks/bench_direct.py [--runs 50] [--pings 20]
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import trio

from meshcore._client import open_relay_client
from meshcore._migrator import open_migrator
from meshcore._relay import RelayConfig, RelayServer, serve_relay
from meshcore._session import Session, handshake_as_initiator, handshake_as_responder, open_session
from meshcore.proto.handshake import Responder
from meshcore.proto.identity import Identity
from meshcore.proto.limits import RelayLimits
from meshcore.proto.paths import PathManager, PathSettings

RESULTS = Path(__file__).resolve().parent / "results" / "direct.json"
PACE_S = 0.001
SETTLE_S = 0.05
# stay on the relay after the forced fallback, so that relay pings measure the relay
PATHS = PathSettings(retry_s=30.0, retry_max_s=30.0)
LIMITS = RelayLimits(connections_per_s_per_ip=10_000, connections_burst_per_ip=10_000)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def largest_gap(arrivals: list[float], start: float, end: float) -> float:
    inside = [t for t in arrivals if start <= t <= end]
    before = [t for t in arrivals if t < start]
    if before:
        inside.insert(0, before[-1])
    return max((b - a for a, b in itertools.pairwise(inside)), default=end - start)


def _record(manager: PathManager, name: str, into: dict[str, float]) -> None:
    """Note when `manager` (one side's path policy) goes direct and when it falls back."""
    won: Callable[..., None] = manager.race_won
    down: Callable[..., None] = manager.direct_down

    def race_won(*args: Any) -> None:
        into.setdefault(f"{name}_direct", trio.current_time())
        won(*args)

    def direct_down(*args: Any) -> None:
        into.setdefault(f"{name}_fallback", trio.current_time())
        down(*args)

    manager.race_won = race_won  # type: ignore[method-assign,assignment]
    manager.direct_down = direct_down  # type: ignore[method-assign,assignment]


async def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.0005)


async def one_run(relay: RelayServer, pings: int) -> dict[str, Any]:
    alice, bob = Identity.generate(), Identity.generate()
    async with (
        open_relay_client(relay.url, alice, direct=True) as ca,
        open_relay_client(relay.url, bob, direct=True) as cb,
    ):
        results: dict[str, Any] = {}

        async def run_bob() -> None:
            pairing = await cb.accept(await cb.next_invitation())
            responder = Responder(bob, {alice.peer_id: alice.public}.get)
            results["pb"] = pairing
            results["rb"] = await handshake_as_responder(pairing.circuit, responder)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_bob)
            pa = await ca.connect(bob.peer_id)
            results["ra"] = await handshake_as_initiator(pa.circuit, alice, pa.peer)
        pb = results["pb"]
        async with (
            open_session(pa.circuit, results["ra"]) as a,
            open_session(pb.circuit, results["rb"]) as b,
        ):
            up = trio.current_time()
            marks: dict[str, float] = {}
            arrivals: list[float] = []
            first_direct: list[float] = []
            stop = trio.Event()

            async def stream() -> None:
                seq = 0
                while not stop.is_set():
                    flag = b"D" if a.path == "direct" else b"R"
                    await a.send(seq.to_bytes(8, "big") + flag + bytes(55))
                    seq += 1
                    await trio.sleep(PACE_S)

            async def sink(session: Session) -> None:
                expected = 0
                while True:
                    message = await session.receive()
                    now = trio.current_time()
                    assert int.from_bytes(message[:8], "big") == expected
                    expected += 1
                    arrivals.append(now)
                    if message[8:9] == b"D" and not first_direct:
                        first_direct.append(now)

            async with (
                open_migrator(a, ca, pa, settings=PATHS) as ma,
                open_migrator(b, cb, pb, settings=PATHS),
                trio.open_nursery() as nursery,
            ):
                _record(a.paths.manager, "a", marks)  # the migrators made these managers
                _record(b.paths.manager, "b", marks)
                nursery.start_soon(stream)
                nursery.start_soon(sink, b)
                await wait_until(lambda: bool(first_direct) and b.path == "direct")
                await trio.sleep(SETTLE_S)
                switched = min(marks["a_direct"], marks["b_direct"])
                both = max(marks["a_direct"], marks["b_direct"])
                planned_gap = largest_gap(arrivals, switched - 0.01, both + 0.02)
                direct_rtts = [(await a.ping(2.0))[0] for _ in range(pings)]
                kill = trio.current_time()
                ma.abort_direct("cut by the benchmark")
                await wait_until(lambda: a.path == b.path == "relay")
                resumed = len(arrivals)
                await wait_until(lambda: len(arrivals) > resumed + 20)
                forced_gap = largest_gap(arrivals, kill, trio.current_time())
                relay_rtts = []
                for _ in range(pings):
                    rtt, path = await a.ping(2.0)
                    assert path == "relay"
                    relay_rtts.append(rtt)
                stop.set()
                nursery.cancel_scope.cancel()
    return {
        "direct_s": first_direct[0] - up,
        "planned_gap_s": planned_gap,
        "forced_gap_s": forced_gap,
        "ping_direct_s": direct_rtts,
        "ping_relay_s": relay_rtts,
    }


async def bench(runs: int, pings: int) -> list[dict[str, Any]]:
    out = []
    async with trio.open_nursery() as nursery:
        config = RelayConfig(port=0, limits=LIMITS)
        relay: RelayServer = await nursery.start(serve_relay, config)
        await one_run(relay, 2)  # warm up (imports, first connections)
        for i in range(runs):
            out.append(await one_run(relay, pings))
            print(f"\rrun {i + 1}/{runs}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        nursery.cancel_scope.cancel()
    return out


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def row(name: str, values: list[float], target: str) -> dict[str, Any]:
        return {
            "metric": name,
            "n": len(values),
            "median_ms": round(statistics.median(values) * 1e3, 3),
            "p99_ms": round(percentile(values, 99) * 1e3, 3),
            "max_ms": round(max(values) * 1e3, 3),
            "target": target,
        }

    return [
        row("session up -> first message on direct", [r["direct_s"] for r in runs], "median 250"),
        row("delivery gap, relay -> direct", [r["planned_gap_s"] for r in runs], "p99 20"),
        row("delivery gap, direct cut -> relay", [r["forced_gap_s"] for r in runs], "-"),
        row("ping via direct", [x for r in runs for x in r["ping_direct_s"]], "-"),
        row("ping via relay", [x for r in runs for x in r["ping_relay_s"]], "-"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--pings", type=int, default=20)
    args = parser.parse_args(argv)
    logging.getLogger("meshcore").setLevel(logging.ERROR)  # the fallbacks are on purpose
    started = time.perf_counter()
    runs = trio.run(bench, args.runs, args.pings)
    rows = summarize(runs)
    print(f"{'metric':40} {'n':>5} {'median ms':>10} {'p99 ms':>9} {'max ms':>9}  target")
    for r in rows:
        print(
            f"{r['metric']:40} {r['n']:5} {r['median_ms']:10.3f} {r['p99_ms']:9.3f} "
            f"{r['max_ms']:9.3f}  {r['target']}"
        )
    result = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "setup": "loopback; relay and both peers in one process; paced stream 1 msg/ms",
        "load_average_1m": os.getloadavg()[0],
        "runs": args.runs,
        "pings_per_path_per_run": args.pings,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "settings": attrs.asdict(PATHS, value_serializer=lambda _i, _a, v: getattr(v, "value", v)),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
