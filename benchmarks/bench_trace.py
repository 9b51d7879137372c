"""Where a lone packet waits in meshcore's TAP tunnel: pings through `meshcore-peer up` in the
network lab with per-stage timestamps on (MESHCORE_TRACE, src/meshcore/_trace.py), and the
time between consecutive stages, each way, as median / p90 / p99 over the pings.

    sudo .venv/bin/python benchmarks/bench_trace.py [--path direct,relay] [--pings 300]
        [--interval 0.02] [--situation flat|bottleneck|...] [--load [--stream-rate 100M]]

Stages of one echo request from a to b (the reply takes the same stages from b to a):
a tap.wake (the device reader woke) > tap.read > pump.take (the peer's sender took the
message) > session.sealed (sealed and routed to a link) > link.take (the link's writer took
it) > sock.sent (written) > b sock.read (read off the connection) > session.opened >
session.deliver (in order, to the inbox) > pump.receive (the tunnel took it) > tap.write;
then b's kernel answers: b tap.write > b tap.wake of the reply. Every clock is the machine's
CLOCK_MONOTONIC, shared by the namespaces. Writes benchmarks/results/trace.json. Needs root.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_lab import SITUATIONS  # noqa: E402
from bench_lab_measure import (  # noqa: E402
    IPERF_PORT,
    iperf3_client,
    ping_times,
    rtt_summary,
    wait_reachable,
)
from bench_lab_tunnels import TUNNEL_NET, start_meshcore_pair  # noqa: E402
from lab.netlab import Lab, LabError, missing_prerequisites  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "trace.json"
TRACE_ENV = "MESHCORE_TRACE"

SENDER = ("tap.wake", "tap.read", "pump.take", "session.sealed", "link.take", "sock.sent")
RECEIVER = ("sock.read", "session.opened", "session.deliver", "pump.receive", "tap.write")
STAGES = SENDER + RECEIVER
DATAGRAM_STAGES = ("tap.wake", "tap.read", "dgram.sealed", "dgram.sent", "dgram.read",
                   "dgram.opened", "tap.write")  # fmt: skip
"""A frame that went by the datagram path (UDP) instead of the session's messages."""
RELAYED_DATAGRAM_STAGES = (*DATAGRAM_STAGES[:4], "relay.read", "relay.sent",
                           *DATAGRAM_STAGES[4:])  # fmt: skip
"""The same through the relay's UDP port, with the relay's own marks (read, forwarded)."""


@dataclass(frozen=True)
class Mark:
    t_ns: int
    stage: str
    key: int
    parent: int
    label: str


class Trace:
    """The marks of one process, by stage and key."""

    def __init__(self, path: Path) -> None:
        self.by_stage: dict[str, list[Mark]] = defaultdict(list)
        for line in path.read_text().splitlines():
            t, stage, key, parent, label, _thread = line.split("\t")
            mark = Mark(int(t), stage, int(key), int(parent), label)
            self.by_stage[stage].append(mark)
        for marks in self.by_stage.values():
            marks.sort(key=lambda m: m.t_ns)
        self._times = {stage: [m.t_ns for m in marks] for stage, marks in self.by_stage.items()}

    def labelled(self, stage: str, label: str) -> Mark | None:
        return next((m for m in self.by_stage[stage] if m.label == label), None)

    def first(
        self, stage: str, after: int, *, key: int | None = None, parent: int | None = None
    ) -> Mark | None:
        """The first mark of `stage` at or after `after` ns with that key or parent."""
        marks = self.by_stage.get(stage, [])
        for i in range(bisect.bisect_left(self._times.get(stage, []), after), len(marks)):
            m = marks[i]
            if (key is None or m.key == key) and (parent is None or m.parent == parent):
                return m
        return None

    @property
    def labels(self) -> set[str]:
        return {m.label for m in self.by_stage["tap.read"] if m.label}


def one_way(src: Trace, dst: Trace, label: str, relay: Trace | None = None) -> list[int] | None:
    """The stage times (ns) of the frame labelled `label` from `src` to `dst`, or None."""
    wake = src.labelled("tap.wake", label)
    read = src.labelled("tap.read", label)
    if wake is None or read is None:
        return None
    frame = read.key
    sealed_dgram = src.first("dgram.sealed", read.t_ns, parent=frame)
    if sealed_dgram is not None and sealed_dgram.t_ns - read.t_ns < 50_000_000:
        return by_datagram(src, dst, [wake, read, sealed_dgram], frame, relay)
    take = src.first("pump.take", read.t_ns, parent=frame)
    if take is None:
        return None
    message = take.key
    sealed = src.first("session.sealed", take.t_ns, parent=message)
    if sealed is None:
        return None
    sealed_key = sealed.key
    return follow([wake, read, take, sealed], (
        ("link.take", src, sealed_key),
        ("sock.sent", src, sealed_key),
        ("sock.read", dst, sealed_key),
        ("session.opened", dst, sealed_key),
        ("session.deliver", dst, message),
        ("pump.receive", dst, message),
        ("tap.write", dst, frame),
    ))  # fmt: skip


def by_datagram(
    src: Trace, dst: Trace, marks: list[Mark], frame: int, relay: Trace | None = None
) -> list[int] | None:
    """The rest of `one_way` for a frame that went by UDP (through `relay`'s UDP port, if
    it traced)."""
    sealed = marks[-1].key
    via = (("relay.read", relay, sealed), ("relay.sent", relay, sealed)) if relay else ()
    return follow(marks, (
        ("dgram.sent", src, sealed),
        *via,
        ("dgram.read", dst, sealed),
        ("dgram.opened", dst, frame),
        ("tap.write", dst, frame),
    ))  # fmt: skip


def follow(marks: list[Mark], stages: tuple[tuple[str, Trace, int], ...]) -> list[int] | None:
    """`marks` extended by the first mark of each (stage, trace, key) after the last one, as
    times (ns); None if one is missing."""
    for stage, trace, key in stages:
        found = trace.first(stage, marks[-1].t_ns, key=key)
        if found is None:
            return None
        marks.append(found)
    return [m.t_ns for m in marks]


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]

    return {
        "median": round(statistics.median(ordered), 1),
        "p90": round(rank(0.90), 1),
        "p99": round(rank(0.99), 1),
    }


def breakdown(a: Trace, b: Trace, relay: Trace | None = None) -> dict[str, object]:
    """Per-stage deltas (µs) of every echo that both traces (and the relay's, if given) saw
    whole, each way."""
    requests = sorted(lb for lb in a.labels if lb.startswith("req:"))
    forward: list[list[int]] = []
    back: list[list[int]] = []
    turn: list[float] = []
    for label in requests:
        there = one_way(a, b, label, relay)
        reply = "rep:" + label[4:]
        home = one_way(b, a, reply, relay)
        if there is None or home is None:
            continue
        forward.append(there)
        back.append(home)
        turn.append((home[0] - there[-1]) / 1000)
    udp_stages = RELAYED_DATAGRAM_STAGES if relay else DATAGRAM_STAGES
    by_udp = sum(len(c) == len(udp_stages) for c in forward) * 2 > len(forward)
    names = udp_stages if by_udp else STAGES  # the way most echoes went
    kept = [(f, h) for f, h in zip(forward, back, strict=True) if len(f) == len(h) == len(names)]
    forward, back = [f for f, _ in kept], [h for _, h in kept]
    hops = [f"{names[i]} > {names[i + 1]}" for i in range(len(names) - 1)]

    def table(chains: list[list[int]]) -> dict[str, dict[str, float]]:
        out = {}
        for i, hop in enumerate(hops):
            out[hop] = percentiles([(c[i + 1] - c[i]) / 1000 for c in chains])
        out["total (tap.wake > tap.write)"] = percentiles([(c[-1] - c[0]) / 1000 for c in chains])
        return out

    if not forward:
        raise LabError("no echo was traced whole through both peers")
    inside = [(h[-1] - f[0]) / 1000 for f, h in zip(forward, back, strict=True)]
    return {
        "echoes": len(forward),
        "way": "datagram (UDP)" if by_udp else "session messages",
        "a_to_b": table(forward),
        "b_kernel_turnaround (b tap.write > b tap.wake of the reply)": percentiles(turn),
        "b_to_a": table(back),
        "inside_tunnel_rtt (a tap.wake > a tap.write of the reply)": percentiles(inside),
    }


def trace_path(
    situation: str,
    via_relay: bool,
    pings: int,
    interval: float,
    load: bool = False,
    stream_rate: str = "",
) -> dict[str, object]:
    """One lab: meshcore up on a and b with tracing on, pings a -> b, the breakdown."""
    with tempfile.TemporaryDirectory(prefix="meshcore-trace-") as tmp:
        os.environ[TRACE_ENV] = tmp
        try:
            with Lab(SITUATIONS[situation].topology) as lab:
                ups = start_meshcore_pair(lab, via_relay)
                target = TUNNEL_NET.format(2)
                wait_reachable(lab, target)
                ping_times(lab, "a", target, 20)
                if load:  # one iperf3 stream a -> b for the whole ping run
                    server = ["iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"]
                    lab.popen("b", server).wait_for("Server listening", 10)
                    seconds = round(pings * interval + 10)
                    lab.popen("a", iperf3_client(target, seconds, stream_rate=stream_rate))
                    time.sleep(2.0)  # past slow start; iperf3 has no event for it
                argv = ["ping", "-n", "-c", str(pings), "-i", str(interval), "-W", "3", target]
                done = lab.run("a", argv, check=False, timeout=pings * interval * 3 + 30)
                times = [
                    float(part.split("=")[1])
                    for part in done.stdout.decode().split()
                    if part.startswith("time=")
                ]
                for up in ups:
                    up.stop()
        finally:
            os.environ.pop(TRACE_ENV, None)
        traces = [Trace(p) for p in Path(tmp).glob("trace-*.tsv")]
    senders = [t for t in traces if any(lb.startswith("req:") for lb in t.labels)]
    receivers = [t for t in traces if any(lb.startswith("rep:") for lb in t.labels)]
    relays = [t for t in traces if t.by_stage.get("relay.read")]
    if len(senders) != 1 or len(receivers) != 1 or len(relays) > 1:
        raise LabError(f"expected one trace per peer and at most one relay's, found {len(traces)}")
    avg, p99, lost = rtt_summary(times, pings)
    result = breakdown(senders[0], receivers[0], relays[0] if relays else None)
    result["ping_rtt_ms"] = {"avg": round(avg, 3), "p99": round(p99, 3), "lost": lost}
    return result


def print_result(name: str, result: dict[str, object]) -> None:
    ping = result["ping_rtt_ms"]
    assert isinstance(ping, dict)
    print(f"\n== {name}: {result['echoes']} echoes; ping RTT {ping['avg']} ms avg, "
          f"{ping['p99']} ms p99")  # fmt: skip
    print(f"{'stage (µs)':58} {'median':>8} {'p90':>8} {'p99':>8}")
    for part in ("a_to_b", None, "b_to_a", None):
        if part is None:
            continue
        print(f"-- {part.replace('_', ' ')}")
        rows = result[part]
        assert isinstance(rows, dict)
        for hop, p in rows.items():
            print(f"   {hop:55} {p['median']:8.1f} {p['p90']:8.1f} {p['p99']:8.1f}")
        if part == "a_to_b":
            key = next(k for k in result if k.startswith("b_kernel"))
            p = result[key]
            assert isinstance(p, dict)
            print(f"-- {key:55} {p['median']:8.1f} {p['p90']:8.1f} {p['p99']:8.1f}")
    key = next(k for k in result if k.startswith("inside_tunnel"))
    p = result[key]
    assert isinstance(p, dict)
    print(f"-- {key:55} {p['median']:8.1f} {p['p90']:8.1f} {p['p99']:8.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--path", default="direct,relay", help="direct, relay or both")
    parser.add_argument("--pings", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between pings")
    parser.add_argument("--situation", default="flat", choices=sorted(SITUATIONS))
    parser.add_argument("--load", action="store_true", help="ping while one iperf3 stream runs")
    parser.add_argument(
        "--stream-rate", default="", metavar="RATE", help="with --load: iperf3 -b (e.g. 100M)"
    )
    args = parser.parse_args()
    paths = [p.strip() for p in args.path.split(",") if p.strip()]
    if not paths or any(p not in ("direct", "relay") for p in paths):
        parser.error("--path takes direct, relay or direct,relay")
    missing = missing_prerequisites()
    if missing:
        print("cannot build the lab: " + "; ".join(missing), file=sys.stderr)
        return 2
    load_before = os.getloadavg()
    results = {}
    for path in paths:
        results[path] = trace_path(
            args.situation, path == "relay", args.pings, args.interval, args.load,
            args.stream_rate,
        )  # fmt: skip
        print_result(f"{args.situation}, {path}", results[path])
    load_after = os.getloadavg()
    print(f"\nload average {load_before[0]:.2f} before, {load_after[0]:.2f} after")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "trace",
        "situation": args.situation,
        "pings": args.pings,
        "interval_s": args.interval,
        "load": args.load,
        "stream_rate": args.stream_rate,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": results,
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
