"""Reading the relay list from the on-chain registry: calls only, every page at one block.

`read_registry` checks the node's chain id, pins the latest block, finds the contract (by
address, or by ENS name at that block), reads `count()` and then `entries(offset, limit)`
page by page at that block, and returns the entries in the shape of a static relay-list
entry. Strings are decoded as raw bytes, so one entry with bytes that are not UTF-8 is
reported on its own instead of failing the page. `read_registry_async` runs it in a worker
thread for trio code. docs/registry-chain.md describes the calls it makes.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any, Final

import attrs

from meshcore.chain._rpc import DEFAULT_TIMEOUT_S, Rpc, require_web3
from meshcore.chain.entries import MAX_ENTRIES, EntryProblem, entry_from_chain
from meshcore.chain.names import ENS_MAINNET_REGISTRY, parse_address, parse_contract_ref, resolve
from meshcore.errors import ConfigError

if TYPE_CHECKING:
    from web3.providers.base import BaseProvider

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "READ_ABI",
    "ChainListing",
    "read_registry",
    "read_registry_async",
]

DEFAULT_PAGE_SIZE: Final = 128
"""Entries per `entries()` call: 128 entries of maximal size cost about 3.8 M gas, well under
the `eth_call` gas caps of common nodes (geth: 50 M), so 256 entries take two calls."""

_ENTRY_AS_BYTES: Final = [
    {"name": "account", "type": "address"},
    {"name": "relay_id", "type": "bytes32"},
    # `string` and `bytes` share one ABI encoding; reading bytes leaves UTF-8 checks to us.
    {"name": "url", "type": "bytes"},
    {"name": "region", "type": "bytes"},
]
READ_ABI: Final = [
    {
        "type": "function",
        "name": "count",
        "stateMutability": "view",
        "inputs": [],
        "outputs": [{"name": "", "type": "uint256"}],
    },
    {
        "type": "function",
        "name": "entries",
        "stateMutability": "view",
        "inputs": [
            {"name": "offset", "type": "uint256"},
            {"name": "limit", "type": "uint256"},
        ],
        "outputs": [{"name": "", "type": "tuple[]", "components": _ENTRY_AS_BYTES}],
    },
]
"""The registry's read functions as the reader decodes them (strings as bytes)."""


@attrs.frozen
class ChainListing:
    """The relay list as read from the chain, and where and how it was read.

    `entries` are plain mappings in the shape of a static relay-list entry, not yet
    validated; `problems` are the entries that could not be put into that shape.
    """

    entries: tuple[dict[str, str], ...]
    problems: tuple[EntryProblem, ...]
    block_number: int
    chain_id: int
    contract: str
    """The registry's checksummed address."""
    name: str | None
    """The ENS name it was found by, if any."""
    rpc_url: str
    """The node, as errors show it (no API key)."""
    rpc_calls: int
    """JSON-RPC requests made for this read."""

    @property
    def source(self) -> str:
        """Where the list came from, for status lines: ``chain:NAME@CHAIN_ID``."""
        return f"chain:{self.name or self.contract}@{self.chain_id}"


def read_registry(
    rpc: str | BaseProvider,
    registry: str,
    *,
    chain_id: int,
    ens_registry: str | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ChainListing:
    """Read every entry of the registry at `registry` (an address or an ENS name).

    Args:
        rpc: the node's HTTP(S) JSON-RPC URL, or a web3 provider (e.g. the embedded EVM).
        registry: the contract's 0x address, or an ENS name such as ``chronara.eth``.
        chain_id: the chain the registry lives on; any other chain is refused.
        ens_registry: the ENS registry that resolves names (default: the canonical one).
        page_size: entries per `entries()` call (1 to 256).
        timeout_s: how long each request may take.

    Raises:
        ConfigError: web3 is not installed (the `chain` extra), or an argument is malformed.
        RegistryError: the node is unreachable or on another chain, there is no contract at
            the address, the name does not resolve, or an answer is malformed.
    """
    return _read(
        rpc,
        registry,
        chain_id=chain_id,
        ens_registry=ens_registry,
        page_size=page_size,
        timeout_s=timeout_s,
        stop=None,
    )


async def read_registry_async(
    rpc: str | BaseProvider,
    registry: str,
    *,
    chain_id: int,
    ens_registry: str | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> ChainListing:
    """`read_registry` for trio code, run in a worker thread (web3 is synchronous).

    Cancellation: returns at once by raising `trio.Cancelled`. The worker thread is
    abandoned; it makes no request after that and ends when its current one does, within
    `timeout_s`. Its result is discarded.
    """
    import trio

    require_web3()  # before any thread starts, so that a missing extra fails at once
    stop = threading.Event()
    try:
        return await trio.to_thread.run_sync(
            functools.partial(
                _read,
                rpc,
                registry,
                chain_id=chain_id,
                ens_registry=ens_registry,
                page_size=page_size,
                timeout_s=timeout_s,
                stop=stop,
            ),
            abandon_on_cancel=True,
        )
    finally:
        stop.set()


def _read(
    rpc: str | BaseProvider,
    registry: str,
    *,
    chain_id: int,
    ens_registry: str | None,
    page_size: int,
    timeout_s: float,
    stop: threading.Event | None,
) -> ChainListing:
    require_web3()
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise ConfigError(f"page_size must be an integer, got {page_size!r}")
    if not 1 <= page_size <= MAX_ENTRIES:
        raise ConfigError(f"page_size must be between 1 and {MAX_ENTRIES}, got {page_size}")
    ref = parse_contract_ref(registry)
    ens = parse_address(ens_registry or ENS_MAINNET_REGISTRY, what="ENS registry")
    conn = Rpc(rpc, timeout_s=timeout_s, stop=stop)
    conn.check_chain_id(chain_id)
    block = conn.block_number()
    if ref.address is not None:
        address, found_by = ref.address, ""
    else:
        assert ref.name is not None
        address = resolve(conn, ref.name, ens, block)
        found_by = f" (where {ref.name} points)"
    contract = conn.contract(address, READ_ABI)
    count = conn.call(
        contract.functions.count(),
        block=block,
        what=f"reading count() of the registry at {address}",
        absent=f"no contract at {address}{found_by} on chain {chain_id} at block {block}: "
        "check the registry address",
    )
    if not isinstance(count, int) or not 0 <= count <= MAX_ENTRIES:
        raise conn.error(
            f"the contract at {address} reports {count!r} entries; a relay registry holds at "
            f"most {MAX_ENTRIES}: is it a meshcore relay registry?"
        )
    entries: list[dict[str, str]] = []
    problems: list[EntryProblem] = []
    for offset in range(0, count, page_size):
        expected = min(page_size, count - offset)
        rows = conn.call(
            contract.functions.entries(offset, page_size),
            block=block,
            what=f"reading entries({offset}, {page_size}) of the registry at {address}",
            absent=f"the registry at {address} vanished at block {block}",
        )
        if not isinstance(rows, list | tuple) or len(rows) != expected:
            got = len(rows) if isinstance(rows, list | tuple) else type(rows).__name__
            raise conn.error(
                f"malformed answer from the registry at {address}: entries({offset}, "
                f"{page_size}) returned {got} entries where count() said {expected}"
            )
        for k, row in enumerate(rows):
            result = _entry(offset + k, row)
            if isinstance(result, EntryProblem):
                problems.append(result)
            else:
                entries.append(result)
    return ChainListing(
        entries=tuple(entries),
        problems=tuple(problems),
        block_number=block,
        chain_id=chain_id,
        contract=address,
        name=ref.name,
        rpc_url=conn.label,
        rpc_calls=conn.calls,
    )


def _entry(index: int, row: Any) -> dict[str, str] | EntryProblem:
    account, relay_id, url, region = row  # the ABI decoder guarantees four fields
    return entry_from_chain(index, str(account), bytes(relay_id), bytes(url), bytes(region))
