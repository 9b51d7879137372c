"""A peer loading its relay list from the on-chain registry: 256 entries through `ChainSource`.

Fills a registry with 256 entries (bench_chain's typical entries) on the embedded EVM and on
anvil, then times what a peer does: the first load (`open_registry(ChainSource(...))`: the
read, the relay list's checks of every entry, the cache written to disk) and a refresh
(`Registry.refresh()` with nothing changed), median and p90 of N after one warm-up (the
steps take turns, so that a change in the machine's load falls on all of them), and the
JSON-RPC requests each makes. The baseline, in the same run and on the same node, is the bare
read (`read_registry_async` of the same registry), so `x read` is the cost of the source
around it. Writes benchmarks/results/chain_source.json.

    .venv/bin/python benchmarks/bench_chain_source.py [-n 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from bench_chain import fill, spread, write_report
from meshcore import ChainSource, RelayListCache, open_registry
from meshcore.chain import MAX_ENTRIES, read_registry_async
from meshcore.testing.chain import embedded_chain, find_anvil, running_anvil

RESULTS = Path(__file__).resolve().parent / "results" / "chain_source.json"


async def timed(
    steps: dict[str, Callable[[], Awaitable[int]]], n: int
) -> dict[str, dict[str, float | int]]:
    """Median and p90 of `n` runs of each step after one warm-up, the steps taking turns so
    that a change in the machine's load falls on all of them; each returns its requests."""
    samples: dict[str, list[float]] = {name: [] for name in steps}
    calls: dict[str, int] = {}
    for step in steps.values():
        await step()
    for _ in range(n):
        for name, step in steps.items():
            t0 = time.perf_counter()
            calls[name] = await step()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {name: {**spread(values), "rpc_calls": calls[name]} for name, values in samples.items()}


async def measure(rpc: Any, registry: str, chain_id: int, n: int) -> dict[str, dict[str, Any]]:
    async def bare_read() -> int:
        listing = await read_registry_async(rpc, registry, chain_id=chain_id)
        assert len(listing.entries) == MAX_ENTRIES
        return listing.rpc_calls

    source = ChainSource(rpc, registry, chain_id=chain_id)
    with tempfile.TemporaryDirectory() as state:
        cache = RelayListCache(Path(state) / "relays.json")

        async def first_load() -> int:
            async with open_registry(source, cache=cache) as reg:
                assert len(reg.entries) == MAX_ENTRIES and not reg.listing.relays.problems
            assert source.last_read is not None
            return source.last_read.rpc_calls

        async with open_registry(source, cache=cache) as registry_obj:

            async def refresh() -> int:
                assert await registry_obj.refresh() is False
                assert source.last_read is not None
                return source.last_read.rpc_calls

            steps = {"bare read (baseline)": bare_read, "first load": first_load}
            return await timed({**steps, "refresh": refresh}, n)


def rows_for(backend: str, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    base = results["bare read (baseline)"]["median_ms"]
    return [
        {"backend": backend, "step": step, **row, "x_read": round(row["median_ms"] / base, 2)}
        for step, row in results.items()
    ]


def bench_embedded(n: int) -> list[dict[str, Any]]:
    chain = embedded_chain(accounts=MAX_ENTRIES + 1)
    registry = fill(chain.w3, [k.address for k in chain.keys], "typical")
    return rows_for("embedded EVM", trio.run(measure, chain.provider, registry, chain.chain_id, n))


def bench_anvil(n: int) -> list[dict[str, Any]]:
    binary = find_anvil()
    if binary is None:
        print("anvil not found (npm ci --prefix .ci/node): skipping the anvil rows")
        return []
    with running_anvil(binary, accounts=MAX_ENTRIES + 1) as node:
        from web3 import Web3

        w3 = Web3(node.provider())
        registry = fill(w3, list(w3.eth.accounts), "typical")
        return rows_for("anvil (HTTP)", trio.run(measure, node.url, registry, node.chain_id, n))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="timed runs per row (median of n)")
    args = parser.parse_args(argv)
    n = max(3, args.n)
    rows = bench_embedded(n) + bench_anvil(n)
    print(f"ChainSource, {MAX_ENTRIES} entries, page 128, median of {n}")
    print(
        f"{'backend':<14} {'step':<22} {'median ms':>10} {'p90 ms':>8} {'calls':>6} {'x read':>7}"
    )
    for row in rows:
        print(
            f"{row['backend']:<14} {row['step']:<22} {row['median_ms']:>10.1f} "
            f"{row['p90_ms']:>8.1f} {row['rpc_calls']:>6} {row['x_read']:>7.2f}"
        )
    write_report(RESULTS, n, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
