"""The programs `bench_relay_network.py` runs inside the lab's namespaces (each a role):

    python bench_relay_network_roles.py serve RELAYS_JSON KEY ALLOW_ID OUT [CIRCUITS]
    python bench_relay_network_roles.py send RELAYS_JSON KEY PEER_ID [CIRCUITS]
    python bench_relay_network_roles.py load RELAYS_JSON PEERS K

`serve` records the arrival time (CLOCK_MONOTONIC, shared by every process of the machine)
and sequence number of every message and checks they come exactly once and in order; at
`end` it writes them to OUT. `send` sends a numbered 64-byte message every millisecond on a
relayed session (direct paths off) and prints `status relay=URL circuits=N` whenever that
changes; a line `stop` on stdin ends it. `load` registers PEERS fresh peers at their K
rendezvous relays each (the full KEM challenge), prints the time each relay took, then holds
the registrations until stdin closes.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import trio

from meshcore import (
    Identity,
    PathSettings,
    PeerId,
    RelayEntry,
    RelayNetwork,
    Session,
    open_meeting,
    open_peer_session,
    serve,
)
from meshcore.proto.rendezvous import rendezvous_relays
from relayprocs import answer_pings, registered_peer  # the script's own directory is on sys.path

END = b"end"
PAUSE_S = 0.001


def _paths(circuits: int) -> PathSettings:
    return PathSettings(mode="never", relay_circuits=circuits)


async def report_homes(network: object) -> None:
    """Print `homes=N` whenever the number of registered rendezvous relays changes."""
    assert isinstance(network, RelayNetwork)
    shown = -1
    while True:
        up = sum(1 for c in network.connections() if c.role == "home" and c.state == "connected")
        if up != shown:
            shown = up
            print(f"homes={up}", flush=True)
        await trio.sleep(0.02)


async def role_serve(relays: list[str], key: str, allow: str, out: str, circuits: int) -> None:
    identity = Identity.load(key)
    seqs: list[int] = []
    times: list[float] = []
    errors: list[str] = []
    done = trio.Event()

    async def handler(session: Session) -> None:
        try:
            async for data in session:
                now = time.monotonic()
                if data == END:
                    break
                seq = int.from_bytes(data[:4], "big")
                if seqs and seq != seqs[-1] + 1:
                    errors.append(f"after {seqs[-1]} came {seq}")
                seqs.append(seq)
                times.append(now)
            first = seqs[0] if seqs else None
            report = {"first": first, "count": len(seqs), "times": times, "errors": errors[:20]}
            Path(out).write_text(json.dumps(report))
            await session.send(END)  # the sender leaves once it has this
            await session.wait_acknowledged()
        finally:
            done.set()

    async with trio.open_nursery() as nursery:
        network = await nursery.start(
            functools.partial(
                serve, relays, identity, [PeerId.from_text(allow)], handler,
                direct="never", path_settings=_paths(circuits),
            )
        )  # fmt: skip
        nursery.start_soon(report_homes, network)
        print("serving", flush=True)
        await done.wait()
        nursery.cancel_scope.cancel()


async def role_send(relays: list[str], key: str, peer: str, circuits: int) -> None:
    identity = Identity.load(key)
    stop = trio.Event()

    async def read_stdin() -> None:
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        if line.strip() == "stop" or not line:
            stop.set()

    async with (
        open_meeting(relays, identity, direct=False) as network,
        open_peer_session(
            network, PeerId.from_text(peer), path_settings=_paths(circuits)
        ) as session,
    ):
        print("connected", flush=True)
        shown: tuple[str | None, int] = (None, -1)
        seq = 0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_stdin)
            nursery.start_soon(report_homes, network)
            next_at = trio.current_time()
            while not stop.is_set():
                await session.send(seq.to_bytes(4, "big") + bytes(60))
                seq += 1
                now = (session.status().relay, session.path_stats.relay_circuits)
                if now != shown:
                    shown = now
                    print(f"status relay={now[0]} circuits={now[1]}", flush=True)
                next_at += PAUSE_S
                await trio.sleep_until(max(next_at, trio.current_time()))
            await session.send(END)
            assert await session.receive() == END
            print(f"sent {seq}", flush=True)
            nursery.cancel_scope.cancel()


# --- registrations --------------------------------------------------------------------------


async def role_load(relays: list[str], peers: int, k: int) -> None:
    entries = [RelayEntry(url) for url in relays]
    t0 = time.perf_counter()
    identities = [Identity.generate() for _ in range(peers)]
    keygen_s = time.perf_counter() - t0
    work: dict[str, list[Identity]] = {url: [] for url in relays}
    for identity in identities:
        for entry in rendezvous_relays(identity.peer_id, entries, k):
            work[entry.url].append(identity)
    took: dict[str, float] = {}
    failures = 0

    async def hold(url: str, identity: Identity, task_status: Any) -> None:
        nonlocal failures
        try:
            async with registered_peer(url, identity) as transport:
                task_status.started()
                await answer_pings(transport)
        except Exception:
            failures += 1
            task_status.started()

    async with trio.open_nursery() as holders:

        async def register_all(url: str, share: list[Identity]) -> None:
            start = time.perf_counter()

            async def starter(part: list[Identity]) -> None:
                for identity in part:
                    await holders.start(hold, url, identity)

            async with trio.open_nursery() as starters:
                for i in range(32):
                    starters.start_soon(starter, share[i::32])
            took[url] = time.perf_counter() - start

        async with trio.open_nursery() as nursery:
            for url, share in work.items():
                nursery.start_soon(register_all, url, share)
        print(json.dumps({"keygen_s": keygen_s, "failures": failures,
                          "registrations": {u: len(s) for u, s in work.items()},
                          "seconds": took}), flush=True)  # fmt: skip
        await trio.to_thread.run_sync(sys.stdin.read)
        holders.cancel_scope.cancel()


def main(argv: list[str]) -> None:
    if os.environ.get("BENCH_LOG"):
        logging.basicConfig(
            level=os.environ["BENCH_LOG"], format="%(created).3f %(name)s %(message)s"
        )
    role, relays = argv[0], json.loads(argv[1])
    if role == "serve":
        circuits = int(argv[5]) if len(argv) > 5 else 2
        trio.run(role_serve, relays, argv[2], argv[3], argv[4], circuits)
    elif role == "send":
        circuits = int(argv[4]) if len(argv) > 4 else 2
        trio.run(role_send, relays, argv[2], argv[3], circuits)
    elif role == "load":
        trio.run(role_load, relays, int(argv[2]), int(argv[3]))
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
