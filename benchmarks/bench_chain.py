"""Loading the relay list from the on-chain registry: 256 entries, embedded EVM and anvil.

Fills a registry with 256 entries (typical URLs, and on anvil also URLs and regions of the
maximal size), then times `read_registry` (median and p90 of N reads after one warm-up) and
counts its JSON-RPC calls, for several page sizes. The baseline of each backend, in the same
run, is one `count()` call (an eth_call) through the same client; `x call` is a read in such
calls. Writes benchmarks/results/chain.json.

    .venv/bin/python benchmarks/bench_chain.py [-n 10]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from meshcore.chain import MAX_ENTRIES, MAX_REGION_BYTES, MAX_URL_BYTES, read_registry
from meshcore.chain._rpc import Rpc
from meshcore.chain.artifacts import load_artifact
from meshcore.chain.reader import READ_ABI
from meshcore.testing.chain import embedded_chain, find_anvil, running_anvil

RESULTS = Path(__file__).resolve().parent / "results" / "chain.json"
PAGE_SIZES = (64, 128, 256)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def spread(samples_ms: list[float]) -> dict[str, float]:
    """The median and p90 of timed runs, in ms, as the benchmarks' rows report them."""
    return {
        "median_ms": round(statistics.median(samples_ms), 2),
        "p90_ms": round(percentile(samples_ms, 0.9), 2),
    }


def write_report(path: Path, n: int, rows: list[dict[str, Any]]) -> None:
    """Write the rows with how they were measured (runs per row, clock, machine) as JSON."""
    report = {
        "n": n,
        "entries": MAX_ENTRIES,
        "clock": "time.perf_counter",
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "rows": rows,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")


def entry(n: int, size: str) -> tuple[str, bytes, str]:
    relay_id = hashlib.sha256(b"bench relay %d" % n).digest()
    if size == "maximal":
        url = f"wss://relay{n:03d}." + "x" * (MAX_URL_BYTES - 24) + ".net/"
        return url[:MAX_URL_BYTES], relay_id, "r" * MAX_REGION_BYTES
    return f"wss://relay{n:03d}.example.net:7443/", relay_id, "eu-west"


def fill(w3: Any, accounts: list[str], size: str) -> str:
    """Deploy a registry and register 256 entries from 256 unlocked accounts; its address."""
    artifact = load_artifact("RelayRegistry")
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    receipt = w3.eth.wait_for_transaction_receipt(
        factory.constructor().transact({"from": accounts[0]})
    )
    registry = w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)
    hashes = [
        registry.functions.register(*entry(n, size)).transact(
            {"from": accounts[n + 1], "gas": 1_000_000}
        )
        for n in range(MAX_ENTRIES)
    ]
    for tx_hash in hashes:
        assert w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)["status"] == 1
    assert registry.functions.count().call() == MAX_ENTRIES
    return str(registry.address)


def time_reads(
    rpc: Any, registry: str, chain_id: int, page_size: int, n: int
) -> dict[str, float | int]:
    read_registry(rpc, registry, chain_id=chain_id, page_size=page_size)  # warm-up
    samples, calls = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        listing = read_registry(rpc, registry, chain_id=chain_id, page_size=page_size)
        samples.append((time.perf_counter() - t0) * 1e3)
        assert len(listing.entries) == MAX_ENTRIES and not listing.problems
        calls = listing.rpc_calls
    return {**spread(samples), "rpc_calls": calls}


def one_call_ms(rpc: Any, registry: str, n: int) -> float:
    """The baseline: one `count()` call (an eth_call through the same client and EVM)."""
    conn = Rpc(rpc)
    count = conn.contract(registry, READ_ABI).functions.count()
    samples = []
    for _ in range(n + 1):
        t0 = time.perf_counter()
        conn.call(count, block="latest", what="count()", absent="no registry")
        samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples[1:])


def bench_embedded(n: int) -> list[dict[str, Any]]:
    chain = embedded_chain(accounts=MAX_ENTRIES + 1)
    registry = fill(chain.w3, [k.address for k in chain.keys], "typical")
    base = one_call_ms(chain.provider, registry, n)
    rows = []
    for page_size in PAGE_SIZES:
        row = time_reads(chain.provider, registry, chain.chain_id, page_size, n)
        rows.append({"backend": "embedded EVM", "entries": "typical", "page_size": page_size,
                     "call_ms": round(base, 3), **row})  # fmt: skip
    return rows


def bench_anvil(n: int) -> list[dict[str, Any]]:
    binary = find_anvil()
    if binary is None:
        print("anvil not found (npm ci --prefix .ci/node): skipping the anvil rows")
        return []
    rows = []
    for size in ("typical", "maximal"):
        with running_anvil(binary, accounts=MAX_ENTRIES + 1) as node:
            from web3 import Web3

            w3 = Web3(node.provider())
            registry = fill(w3, list(w3.eth.accounts), size)
            base = one_call_ms(node.url, registry, n)
            for page_size in PAGE_SIZES:
                row = time_reads(node.url, registry, node.chain_id, page_size, n)
                rows.append({"backend": "anvil (HTTP)", "entries": size, "page_size": page_size,
                             "call_ms": round(base, 3), **row})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="timed reads per row (median of n)")
    args = parser.parse_args(argv)
    n = max(3, args.n)
    rows = bench_embedded(n) + bench_anvil(n)
    print(f"read_registry, {MAX_ENTRIES} entries, median of {n} reads")
    header = (
        f"{'backend':<14} {'entries':<8} {'page':>5} {'median ms':>10} {'p90 ms':>8} "
        f"{'calls':>6} {'1 call ms':>9} {'x call':>7}"
    )
    print(header)
    for row in rows:
        ratio = row["median_ms"] / row["call_ms"] if row["call_ms"] else float("nan")
        row["x_call"] = round(ratio, 1)
        print(
            f"{row['backend']:<14} {row['entries']:<8} {row['page_size']:>5} "
            f"{row['median_ms']:>10.1f} {row['p90_ms']:>8.1f} {row['rpc_calls']:>6} "
            f"{row['call_ms']:>9.2f} {ratio:>7.1f}"
        )
    write_report(RESULTS, n, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
