"""The relay under load: idle peers per GiB, pairings per second, and one circuit's throughput.

The relay runs as a subprocess (`python -m meshcore_relay`), its memory read from /proc; the
peers run in this process and speak the control protocol directly.

1. Idle peers: N peers register (full KEM challenge) and stay connected, answering pings.
   Relay RSS before and after. Target: >= 10,000 peers at RSS <= 1 GiB.
   Registrations/s with and without verifying the relay first (its keys, our challenge, its
   proof: one more round trip and a decapsulation at the relay), rounds alternating on one
   relay, medians; and the CPU of the proof itself on each side.
2. Pairings/s: fresh peer pairs connect, both register (full challenge), A asks for B, B
   accepts, both are told; 16 pairs at a time. Also pairings alone between registered peers.
3. Throughput of one relayed circuit, 64 KiB messages (A -> relay -> B, at most 4 messages in
   flight), against a bare trio-websocket echo server measured in the same run (client ->
   echo -> client: the same two hops through one server process, the same client code, the
   same window). Rounds alternate; the best of --repeat is kept. Target: >= 0.8x the echo.
   Also the servers' CPU per MiB, which depends far less on other load on the machine.
4. Metrics: the same circuit with the relay serving Prometheus metrics (`--metrics`) and a
   scraper asking every --scrape-s seconds, against the relay without metrics, rounds
   alternating. Target: >= 0.97x (the counters are read at scrape time, never on the path).

Writes benchmarks/results/relay.json and prints a table.

    .venv/bin/python benchmarks/bench_relay.py [--quick] [--peers 10000] [--repeat 3]
    .venv/bin/python benchmarks/bench_relay.py --part registrations [--registrations 2000]
    .venv/bin/python benchmarks/bench_relay.py --part metrics --repeat 9
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from meshcore._transport import open_transport
from meshcore.proto import wire
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity
from meshcore.proto.matchmaker import Matchmaker, RelayLimits, Send
from meshcore.proto.relayauth import answer_challenge, challenge_relay, prove_relay
from relayprocs import (
    UNLIMITED,
    RelayProcess,
    answer_pings,
    cpu_seconds,
    expect,
    pair,
    register,
    registered_peer,
    serve_echo,
)

RESULTS = Path(__file__).resolve().parent / "results" / "relay.json"
MESSAGE = 65536
SCRAPE_COST_S = 3.0  # scrape back to back this long to measure one scrape's relay CPU
WINDOW = 4  # messages in flight (256 KiB): within the relay's default circuit queue bound, so
# a burst never meets its drop-tail (the echo server has no such bound; TCP pushes back)


# --- 1. idle peers --------------------------------------------------------------------------


async def idle_peers(n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    identities = [Identity.generate() for _ in range(n)]
    keygen_s = time.perf_counter() - t0
    relay = RelayProcess(*UNLIMITED, "--max-peers", str(max(n, 20000)))
    try:
        rss_before, _ = relay.rss_mib()
        failures = 0

        async def peer(identity: Identity, task_status: trio.TaskStatus[None]) -> None:
            nonlocal failures
            try:
                async with registered_peer(relay.url, identity) as transport:
                    task_status.started()
                    await answer_pings(transport)
            except Exception:
                failures += 1
                raise

        async with trio.open_nursery() as nursery:
            start, cpu_start = time.perf_counter(), relay.cpu_s()

            async def starter(share: list[Identity]) -> None:
                for identity in share:
                    await nursery.start(peer, identity)

            async with trio.open_nursery() as starters:
                for k in range(64):
                    starters.start_soon(starter, identities[k::64])
            register_s = time.perf_counter() - start
            register_cpu_s = relay.cpu_s() - cpu_start
            await trio.sleep(2.0)  # let the relay settle (and collect)
            rss_after, rss_peak = relay.rss_mib()
            client_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            nursery.cancel_scope.cancel()
    finally:
        relay.stop()
    return {
        "peers": n,
        "failures": failures,
        "keygen_s": round(keygen_s, 2),
        "register_s": round(register_s, 2),
        "registrations_per_s": round(n / register_s),
        "relay_cpu_ms_per_registration": round(register_cpu_s * 1e3 / n, 2),
        "relay_rss_before_mib": round(rss_before, 1),
        "relay_rss_mib": round(rss_after, 1),
        "relay_rss_peak_mib": round(rss_peak, 1),
        "relay_kib_per_peer": round((rss_after - rss_before) * 1024 / n, 1),
        "client_process_peak_rss_mib": round(client_rss, 1),
    }


async def registrations(n: int, rounds: int) -> dict[str, Any]:
    """Registrations/s, 64 at a time, plain and verifying the relay, rounds alternating."""
    identities = [Identity.generate() for _ in range(n)]
    relay = RelayProcess(*UNLIMITED)
    rates: dict[str, list[float]] = {"plain": [], "verified": []}
    cpu: dict[str, list[float]] = {"plain": [], "verified": []}
    try:

        async def peer(
            identity: Identity, verify: bool, task_status: trio.TaskStatus[None]
        ) -> None:
            async with open_transport(relay.url) as transport:
                await register(transport, identity, relay.identity if verify else None)
                task_status.started()
                await trio.sleep_forever()  # stays registered until the round ends

        for k in range(2 * rounds + 1):
            mode = "verified" if k % 2 else "plain"  # round 0 warms up
            verify = mode == "verified"
            async with trio.open_nursery() as held:
                start, cpu_start = time.perf_counter(), relay.cpu_s()

                async def starter(share: list[Identity], verify: bool = verify) -> None:
                    for identity in share:
                        await held.start(peer, identity, verify)

                async with trio.open_nursery() as starters:
                    for j in range(64):
                        starters.start_soon(starter, identities[j::64])
                seconds, cpu_s = time.perf_counter() - start, relay.cpu_s() - cpu_start
                held.cancel_scope.cancel()
            if k:
                rates[mode].append(n / seconds)
                cpu[mode].append(cpu_s * 1e3 / n)
            await trio.sleep(1.0)  # the relay forgets the last round's peers (not timed)
    finally:
        relay.stop()
    plain, verified = statistics.median(rates["plain"]), statistics.median(rates["verified"])
    proof_cpu_us = _proof_cpu_us()
    return {
        "registrations": n,
        "rounds": rounds,
        "plain_per_s": round(plain),
        "verified_per_s": round(verified),
        "verified_vs_plain": round(verified / plain, 2),
        "plain_all_per_s": [round(r) for r in rates["plain"]],
        "verified_all_per_s": [round(r) for r in rates["verified"]],
        "relay_cpu_ms_plain": round(statistics.median(cpu["plain"]), 2),
        "relay_cpu_ms_verified": round(statistics.median(cpu["verified"]), 2),
        **proof_cpu_us,
    }


def _proof_cpu_us(n: int = 300) -> dict[str, float]:
    """CPU (process time, median of `n`) of the proof itself on each side, and of the relay's
    protocol work for one registration (the Matchmaker alone: no TCP, no WebSocket), without
    and with the relay's proof."""
    relay = Identity.generate()
    limits = RelayLimits(connections_burst_per_ip=10 * n, max_peers=10 * n)
    mm = Matchmaker(limits, identity=relay)
    peers = [Identity.generate() for _ in range(2 * n)]
    ask, answer = [], []
    core: dict[bool, list[float]] = {False: [], True: []}
    for k, peer in enumerate(peers):
        verify = bool(k % 2)
        if verify:
            t0 = time.process_time()
            challenge, _ = challenge_relay(relay.public)
            t1 = time.process_time()
            prove_relay(relay, challenge)
            ask.append(t1 - t0)
            answer.append(time.process_time() - t1)
        addr = Endpoint("10.0.0.1", 1024 + k)
        hello = wire.encode_control(
            wire.Hello(peer.public.x25519_public, peer.public.kem_public, ())
        )
        t0 = time.process_time()
        mm.connection_opened(k, addr, 0.0)
        if verify:
            mm.receive_data(k, wire.encode_control(challenge), 0.0)
        out = mm.receive_data(k, hello, 0.0)
        spent = time.process_time() - t0
        sent = [o.message for o in out if isinstance(o, Send)]
        assert isinstance(sent[0], wire.Challenge)
        auth = wire.encode_control(answer_challenge(peer, sent[0]))
        t0 = time.process_time()
        mm.receive_data(k, auth, 0.0)
        core[verify].append(spent + time.process_time() - t0)
    plain, verified = statistics.median(core[False]), statistics.median(core[True])
    return {
        "peer_challenge_us": round(statistics.median(ask) * 1e6),
        "relay_proof_us": round(statistics.median(answer) * 1e6),
        "matchmaker_registration_us_plain": round(plain * 1e6),
        "matchmaker_registration_us_verified": round(verified * 1e6),
    }


# --- 2. pairings ----------------------------------------------------------------------------


async def pairings(pairs: int, concurrency: int = 16) -> dict[str, Any]:
    identities = [(Identity.generate(), Identity.generate()) for _ in range(pairs)]
    relay = RelayProcess(*UNLIMITED)
    try:
        # (a) fresh pairs: two connections, two full challenges, one pairing each.
        queue = list(identities)

        async def full_cycles() -> None:
            while queue:
                alice, bob = queue.pop()
                async with (
                    registered_peer(relay.url, alice) as a,
                    registered_peer(relay.url, bob) as b,
                ):
                    await pair(a, b, bob, 1)

        start, cpu_start = time.perf_counter(), relay.cpu_s()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(full_cycles)
        full_s, full_cpu_s = time.perf_counter() - start, relay.cpu_s() - cpu_start

        # (b) pairings alone, between peers that stay registered (circuit closed after each).
        rounds = max(pairs // concurrency, 1)

        async def repeat_pairing(alice: Identity, bob: Identity) -> None:
            async with (
                registered_peer(relay.url, alice) as a,
                registered_peer(relay.url, bob) as b,
            ):
                for rid in range(rounds):
                    cid = await pair(a, b, bob, rid)
                    close = wire.CircuitClose(cid, wire.ErrorCode.NONE, "")
                    await a.send(wire.encode_control(close))
                    await expect(a, wire.CircuitClose)
                    await expect(b, wire.CircuitClose)

        async with trio.open_nursery() as nursery:
            ready = time.perf_counter()
            for alice, bob in identities[:concurrency]:
                nursery.start_soon(repeat_pairing, alice, bob)
        only_s = time.perf_counter() - ready
    finally:
        relay.stop()
    return {
        "full_cycles": pairs,
        "concurrency": concurrency,
        "full_cycle_s": round(full_s, 2),
        "full_cycles_per_s": round(pairs / full_s, 1),
        "relay_cpu_ms_per_full_cycle": round(full_cpu_s * 1e3 / pairs, 2),
        "pairings_between_registered": rounds * concurrency,
        "pairings_per_s_registered": round(rounds * concurrency / only_s, 1),
    }


# --- 3. throughput --------------------------------------------------------------------------


async def echo_round(url: str, n: int) -> float:
    payload = bytes(MESSAGE)
    async with open_transport(url, max_message=1 << 20) as ws:
        window = trio.Semaphore(WINDOW)

        async def receive() -> None:
            for _ in range(n):
                await ws.receive()
                window.release()

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for _ in range(n):
                await window.acquire()
                await ws.send(payload)
        return time.perf_counter() - start


async def relay_round(url: str, n: int, alice: Identity, bob: Identity) -> tuple[float, int]:
    """Seconds to move n messages A -> B through a circuit; and how many B missed."""
    async with registered_peer(url, alice) as a, registered_peer(url, bob) as b:
        cid = await pair(a, b, bob, 1)
        frame = wire.encode_relayed(cid, bytes(MESSAGE - wire.RELAYED_HEADER_BYTES))
        window = trio.Semaphore(WINDOW)
        received = 0

        async def bob_receives() -> None:
            nonlocal received
            while received < n:
                await expect(b, wire.Relayed)  # (answers the relay's pings, counts only frames)
                received += 1
                # B lives in this process: it opens A's window directly, so no acknowledgement
                # traffic crosses the relay (the echo's client learns of receipt the same way).
                window.release()

        start = time.perf_counter()
        with trio.move_on_after(60):  # a lost frame would stall the window for good
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bob_receives)
                for _ in range(n):
                    await window.acquire()
                    await a.send(frame)
        return time.perf_counter() - start, n - received


async def throughput(n: int, repeat: int, echo_url: str, echo_pid: int) -> dict[str, Any]:
    relay = RelayProcess()
    alice, bob = Identity.generate(), Identity.generate()
    try:
        await echo_round(echo_url, max(n // 10, 10))  # warm-up
        await relay_round(relay.url, max(n // 10, 10), alice, bob)
        echo_s, relay_s, echo_cpu, relay_cpu, missed = [], [], [], [], 0
        for _ in range(repeat):
            cpu = cpu_seconds(echo_pid)
            echo_s.append(await echo_round(echo_url, n))
            echo_cpu.append(cpu_seconds(echo_pid) - cpu)
            cpu = relay.cpu_s()
            seconds, lost = await relay_round(relay.url, n, alice, bob)
            relay_cpu.append(relay.cpu_s() - cpu)
            relay_s.append(seconds)
            missed += lost
    finally:
        relay.stop()
    mib = n * MESSAGE / 2**20
    echo_best, relay_best = mib / min(echo_s), mib / min(relay_s)
    # Server CPU per MiB moved: unlike wall-clock rates it hardly depends on other load.
    echo_cpu_mib, relay_cpu_mib = mib / min(echo_cpu), mib / min(relay_cpu)
    return {
        "message_bytes": MESSAGE,
        "messages": n,
        "window": WINDOW,
        "repeat": repeat,
        "echo_mib_per_s": round(echo_best, 1),
        "relay_mib_per_s": round(relay_best, 1),
        "relay_vs_echo": round(relay_best / echo_best, 2),
        "echo_all_mib_per_s": [round(mib / s, 1) for s in echo_s],
        "relay_all_mib_per_s": [round(mib / s, 1) for s in relay_s],
        "echo_server_mib_per_cpu_s": round(echo_cpu_mib, 1),
        "relay_server_mib_per_cpu_s": round(relay_cpu_mib, 1),
        "relay_vs_echo_cpu": round(relay_cpu_mib / echo_cpu_mib, 2),
        "frames_lost": missed,
    }


# --- 4. metrics on and off -------------------------------------------------------------------


async def scrape_every(port: int, interval: float, scrapes: list[int]) -> None:
    """GET /metrics every `interval` seconds until cancelled; counts the scrapes."""
    while True:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\n\r\n")
            body = b""
            while chunk := await stream.receive_some(65536):
                body += chunk
        assert body.startswith(b"HTTP/1.1 200 OK"), body[:100]
        scrapes[0] += 1
        await trio.sleep(interval)


async def metrics_round(
    relay: RelayProcess, n: int, alice: Identity, bob: Identity, interval: float
) -> tuple[float, float, int]:
    """(seconds, relay CPU seconds, scrapes) of one relay round, scraped if it serves metrics."""
    scrapes = [0]
    async with trio.open_nursery() as nursery:
        if relay.metrics_port is not None:
            nursery.start_soon(scrape_every, relay.metrics_port, interval, scrapes)
        cpu = relay.cpu_s()
        seconds, lost = await relay_round(relay.url, n, alice, bob)
        cpu = relay.cpu_s() - cpu
        nursery.cancel_scope.cancel()
    assert lost == 0, f"{lost} frames lost"
    return seconds, cpu, scrapes[0]


async def metrics_cost(n: int, repeat: int, interval: float) -> dict[str, Any]:
    off, on = RelayProcess(), RelayProcess("--metrics", "0")
    alice, bob = Identity.generate(), Identity.generate()
    try:
        for relay in (off, on):
            await metrics_round(relay, max(n // 10, 10), alice, bob, interval)  # warm-up
        runs: dict[str, list[tuple[float, float, int]]] = {"off": [], "on": []}
        for _ in range(repeat):
            for name, relay in (("off", off), ("on", on)):
                runs[name].append(await metrics_round(relay, n, alice, bob, interval))
        # what one scrape costs the relay, scrapes back to back (two peers registered)
        assert on.metrics_port is not None
        async with registered_peer(on.url, alice), registered_peer(on.url, bob):
            scrapes = [0]
            cpu = on.cpu_s()
            with trio.move_on_after(SCRAPE_COST_S):
                await scrape_every(on.metrics_port, 0.0, scrapes)
            scrape_cpu_ms = (on.cpu_s() - cpu) / scrapes[0] * 1e3
    finally:
        off.stop()
        on.stop()
    mib = n * MESSAGE / 2**20

    def rates(name: str) -> list[float]:
        return [mib / seconds for seconds, _, _ in runs[name]]

    def cpu(name: str) -> list[float]:
        return [mib / cpu_s for _, cpu_s, _ in runs[name]]

    best = {name: max(rates(name)) for name in runs}
    median = {name: statistics.median(rates(name)) for name in runs}
    cpu_median = {name: statistics.median(cpu(name)) for name in runs}
    return {
        "message_bytes": MESSAGE,
        "messages": n,
        "repeat": repeat,
        "scrape_interval_s": interval,
        "scrapes_per_round": [scrapes for _, _, scrapes in runs["on"]],
        "off_mib_per_s": [round(r, 1) for r in rates("off")],
        "on_mib_per_s": [round(r, 1) for r in rates("on")],
        "on_vs_off_best": round(best["on"] / best["off"], 3),
        "on_vs_off_median": round(median["on"] / median["off"], 3),
        "off_relay_mib_per_cpu_s": round(cpu_median["off"], 1),
        "on_relay_mib_per_cpu_s": round(cpu_median["on"], 1),
        "on_vs_off_cpu_median": round(cpu_median["on"] / cpu_median["off"], 3),
        "relay_cpu_ms_per_scrape": round(scrape_cpu_ms, 3),
    }


# --- main -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace, echo_url: str, echo_pid: int) -> dict[str, Any]:
    every = ("throughput", "pairings", "idle", "registrations", "metrics")
    parts = every if args.part == "all" else (args.part,)
    result: dict[str, Any] = {}
    if "throughput" in parts:
        result["throughput"] = await throughput(args.messages, args.repeat, echo_url, echo_pid)
    if "pairings" in parts:
        result["pairings"] = await pairings(args.pairs)
    if "idle" in parts:
        result["idle_peers"] = await idle_peers(args.peers)
    if "registrations" in parts:
        result["registrations"] = await registrations(args.registrations, args.rounds)
    if "metrics" in parts:
        result["metrics"] = await metrics_cost(args.messages, args.repeat, args.scrape_s)
    return result


def table(result: dict[str, Any]) -> list[str]:
    """The markdown table of whatever parts ran."""
    rows = ["| measurement | result | target |", "|---|---:|---|"]
    if (idle := result.get("idle_peers")) is not None:
        rows.append(
            f"| idle registered peers | {idle['peers']:,} ({idle['failures']} failed), relay RSS "
            f"{idle['relay_rss_mib']} MiB ({idle['relay_kib_per_peer']} KiB/peer) | >= 10,000 "
            "at <= 1024 MiB |"
        )
        rows.append(
            f"| registrations/s (64 at a time) | {idle['registrations_per_s']:,} "
            f"(relay CPU {idle['relay_cpu_ms_per_registration']} ms each) | |"
        )
    if (reg := result.get("registrations")) is not None:
        rows.append(
            f"| registrations/s, relay not verified / verified (64 at a time, median of "
            f"{reg['rounds']}) | {reg['plain_per_s']:,} / {reg['verified_per_s']:,} = "
            f"{reg['verified_vs_plain']}x (relay CPU {reg['relay_cpu_ms_plain']} / "
            f"{reg['relay_cpu_ms_verified']} ms each) | |"
        )
        rows.append(
            f"| the proof's CPU: peer's challenge / relay's answer | "
            f"{reg['peer_challenge_us']} / {reg['relay_proof_us']} µs | |"
        )
        rows.append(
            f"| the relay's protocol CPU per registration (Matchmaker alone), not verified / "
            f"verified | {reg['matchmaker_registration_us_plain']} / "
            f"{reg['matchmaker_registration_us_verified']} µs | |"
        )
    if (pairs := result.get("pairings")) is not None:
        rows.append(
            f"| fresh pairs/s (2 connects + 2 challenges + pairing, 16 at a time) | "
            f"{pairs['full_cycles_per_s']} "
            f"(relay CPU {pairs['relay_cpu_ms_per_full_cycle']} ms each) | |"
        )
        rows.append(
            f"| pairings/s between registered peers | {pairs['pairings_per_s_registered']} | |"
        )
    if (tput := result.get("throughput")) is not None:
        rows.append(
            f"| one circuit, 64 KiB messages | {tput['relay_mib_per_s']} MiB/s vs echo "
            f"{tput['echo_mib_per_s']} MiB/s = {tput['relay_vs_echo']}x "
            f"({tput['frames_lost']} lost) | >= 0.8x |"
        )
        rows.append(
            f"| server CPU efficiency, 64 KiB | relay {tput['relay_server_mib_per_cpu_s']} MiB "
            f"per CPU-second vs echo {tput['echo_server_mib_per_cpu_s']} = "
            f"{tput['relay_vs_echo_cpu']}x | |"
        )
    if (m := result.get("metrics")) is not None:
        rows.append(
            f"| one circuit with metrics on (scraped every {m['scrape_interval_s']:g} s) vs off | "
            f"median {m['on_vs_off_median']}x, best {m['on_vs_off_best']}x; relay CPU per MiB "
            f"{m['on_vs_off_cpu_median']}x | >= 0.97x |"
        )
        rows.append(f"| relay CPU per scrape | {m['relay_cpu_ms_per_scrape']} ms | |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small numbers (a smoke run)")
    parser.add_argument("--peers", type=int, default=10000, help="idle peers (default 10000)")
    parser.add_argument("--pairs", type=int, default=480, help="fresh pairs to pair")
    parser.add_argument("--messages", type=int, default=2000, help="64 KiB messages per round")
    parser.add_argument("--repeat", type=int, default=5, help="throughput rounds; best kept")
    parser.add_argument(
        "--registrations", type=int, default=2000, help="registrations per round (default 2000)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="registration rounds per mode")
    parser.add_argument(
        "--part",
        choices=["all", "throughput", "pairings", "idle", "registrations", "metrics"],
        default="all",
        help="run one part only (results go to relay-PART.json)",
    )
    parser.add_argument(
        "--scrape-s", type=float, default=1.0, help="scrape interval with metrics on (1 s)"
    )
    parser.add_argument("--serve-echo", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_echo:
        trio.run(serve_echo)
        return 0
    if args.quick:
        args.peers, args.pairs, args.messages, args.repeat = 500, 64, 300, 1
        args.registrations, args.rounds = 256, 1
    echo = subprocess.Popen(
        [sys.executable, __file__, "--serve-echo"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert echo.stdout is not None
        echo_url = f"ws://127.0.0.1:{int(echo.stdout.readline())}/"
        result = trio.run(run, args, echo_url, echo.pid)
    finally:
        echo.terminate()
        echo.wait(timeout=10)
    print("\n".join(table(result)))
    result.update(
        python=platform.python_version(),
        machine=platform.machine(),
        cpus=os.cpu_count(),
        trio_websocket=trio_websocket.__version__,
        load_average_1m=os.getloadavg()[0],
        quick=args.quick,
        setup="loopback; relay and echo server are subprocesses; all peers in the bench process",
    )
    out = RESULTS if args.part == "all" else RESULTS.with_name(f"relay-{args.part}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
