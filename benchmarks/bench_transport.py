"""WebSocketTransport vs raw trio-websocket on loopback: messages/s at 1400 B, MiB/s at 64 KiB.

The receiving side runs in a second process (as a relay or peer would), so each side has its
own core and its own event loop. For each variant the client sends N messages one way and
stops the clock when the receiver confirms it has them all; the variants take turns and the
best of `--repeat` rounds is kept. Variants: trio-websocket with its defaults (4 KiB reads),
trio-websocket with the 64 KiB reads meshcore uses, and meshcore's WebSocketTransport.
Writes benchmarks/results/transport.json.

    .venv/bin/python benchmarks/bench_transport.py [--quick] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio_websocket

from meshcore._transport import (
    WebSocketTransport,
    open_transport,
    serve_transport,
)

RESULTS = Path(__file__).resolve().parent / "results" / "transport.json"
MAX_MESSAGE = 1 << 20
COUNT = struct.Struct(">Q")
READY, DONE = b"ready", b"done"

# --- receiving side (second process) -------------------------------------------------------


async def _raw_sink(request: trio_websocket.WebSocketRequest) -> None:
    ws = await request.accept()
    try:
        while True:
            (n,) = COUNT.unpack(await ws.get_message())
            await ws.send_message(READY)
            for _ in range(n):
                await ws.get_message()
            await ws.send_message(DONE)
    except trio_websocket.ConnectionClosed:
        pass


async def _transport_sink(transport: WebSocketTransport) -> None:
    while True:
        (n,) = COUNT.unpack(await transport.receive())
        await transport.send(READY)
        for _ in range(n):
            await transport.receive()
        await transport.send(DONE)


async def serve() -> None:
    """Serve the three sinks on free loopback ports; print the ports as one JSON line."""
    async with trio.open_nursery() as nursery:
        ports: dict[str, int] = {}
        for name, read_size in (("raw-4k", 4096), ("raw-64k", 65536)):
            server = await nursery.start(
                lambda task_status, r=read_size: trio_websocket.serve_websocket(
                    _raw_sink,
                    "127.0.0.1",
                    0,
                    None,
                    max_message_size=MAX_MESSAGE,
                    receive_buffer_size=r,
                    task_status=task_status,
                )
            )
            ports[name] = server.port
        endpoints = await nursery.start(
            lambda task_status: serve_transport(
                _transport_sink, "127.0.0.1", 0, max_message=MAX_MESSAGE, task_status=task_status
            )
        )
        ports["meshcore"] = endpoints[0].port
        print(json.dumps(ports), flush=True)


# --- sending side ----------------------------------------------------------------------------

Send = Callable[[bytes], Awaitable[None]]
Receive = Callable[[], Awaitable[Any]]


async def _timed(send: Send, receive: Receive, size: int, n: int) -> float:
    """Seconds to push `n` messages of `size` bytes and hear that all arrived."""
    payload = bytes(size)
    await send(COUNT.pack(n))
    assert await receive() == READY
    start = time.perf_counter()
    for _ in range(n):
        await send(payload)
    assert await receive() == DONE
    return time.perf_counter() - start


@asynccontextmanager
async def _connect(variant: str, port: int) -> AsyncIterator[tuple[Send, Receive]]:
    url = f"ws://127.0.0.1:{port}/"
    if variant == "meshcore":
        async with open_transport(url, max_message=MAX_MESSAGE) as transport:
            yield transport.send, transport.receive
    else:
        read_size = 4096 if variant == "raw-4k" else 65536
        async with trio_websocket.open_websocket_url(
            url, max_message_size=MAX_MESSAGE, receive_buffer_size=read_size
        ) as ws:
            yield ws.send_message, ws.get_message


async def run(ports: dict[str, int], quick: bool, repeat: int) -> list[dict[str, Any]]:
    """Rounds interleave the variants, so that load from elsewhere hits them alike."""
    cases = [(1400, 5000 if quick else 40000), (65536, 300 if quick else 3000)]
    rows = []
    async with AsyncExitStack() as stack:
        ends = {v: await stack.enter_async_context(_connect(v, p)) for v, p in ports.items()}
        for size, n in cases:
            best = dict.fromkeys(ends, float("inf"))
            for send, receive in ends.values():  # warm-up
                await _timed(send, receive, size, max(n // 10, 1))
            for _ in range(repeat):
                for variant, (send, receive) in ends.items():
                    best[variant] = min(best[variant], await _timed(send, receive, size, n))
            for variant, seconds in best.items():
                rows.append(
                    {
                        "variant": variant,
                        "message_bytes": size,
                        "messages": n,
                        "seconds": round(seconds, 4),
                        "messages_per_s": round(n / seconds),
                        "mib_per_s": round(n * size / seconds / 2**20, 1),
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages (a smoke run)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case; best kept")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        trio.run(serve)
        return 0
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        ports = json.loads(server.stdout.readline())
        rows = trio.run(run, ports, args.quick, args.repeat)
    finally:
        server.terminate()
        server.wait(timeout=10)
    reference = {r["message_bytes"]: r["seconds"] for r in rows if r["variant"] == "raw-64k"}
    print("| variant | message | msg/s | MiB/s | vs raw-64k |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        row["vs_raw_64k"] = round(reference[row["message_bytes"]] / row["seconds"], 2)
        print(
            f"| {row['variant']} | {row['message_bytes']} B | {row['messages_per_s']:,} "
            f"| {row['mib_per_s']} | {row['vs_raw_64k']:.2f} |"
        )
    result = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "trio_websocket": trio_websocket.__version__,
        "setup": "loopback TCP, receiver in a second process, one-way, best of --repeat",
        "load_average_1m": os.getloadavg()[0],
        "repeat": args.repeat,
        "quick": args.quick,
        "rows": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
