"""The on-chain relay registry: a Vyper contract, names for it, and a reader of its entries.

`read_registry` (and `read_registry_async` for trio) returns the relay list held by the
contract, in the shape of static relay-list entries; `meshcore.chain.transact` deploys,
names and changes it. Needs the `chain` extra (``pip install 'meshcore[chain]'``), which is
imported only when used. docs/registry-chain.md describes the contract and the reader.
"""

from __future__ import annotations

from meshcore.chain._rpc import DEFAULT_TIMEOUT_S, describe_rpc_url, web3_installed
from meshcore.chain.entries import (
    MAX_ENTRIES,
    MAX_REGION_BYTES,
    MAX_URL_BYTES,
    EntryProblem,
    entry_from_chain,
)
from meshcore.chain.names import ENS_MAINNET_REGISTRY
from meshcore.chain.reader import (
    DEFAULT_PAGE_SIZE,
    ChainListing,
    read_registry,
    read_registry_async,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_TIMEOUT_S",
    "ENS_MAINNET_REGISTRY",
    "MAX_ENTRIES",
    "MAX_REGION_BYTES",
    "MAX_URL_BYTES",
    "ChainListing",
    "EntryProblem",
    "describe_rpc_url",
    "entry_from_chain",
    "read_registry",
    "read_registry_async",
    "web3_installed",
]
