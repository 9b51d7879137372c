"""The on-chain relay registry as a source of the relay network's list (docs/registry-chain.md).

`ChainSource` reads the registry contract with calls only (`meshcore.chain.read_registry_async`)
and hands its entries to the relay list's common checker, so a bad entry is named (by its
index on chain and the block read) and skipped like any other. `open_registry` does the rest:
a refresh every `refresh_s` (default 10 minutes), the last good list kept when the node is
unreachable or answers nonsense, and the on-disk cache at a start without the node.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from typing import TYPE_CHECKING, Final

from meshcore._registry import RegistryListing, RegistrySource
from meshcore.chain import DEFAULT_PAGE_SIZE, DEFAULT_TIMEOUT_S, describe_rpc_url
from meshcore.chain._rpc import require_web3
from meshcore.chain.names import parse_address, parse_contract_ref
from meshcore.chain.reader import ChainListing, read_registry_async
from meshcore.errors import ConfigError
from meshcore.proto.relaylist import RelayList, check_relay_entries

if TYPE_CHECKING:
    from web3.providers.base import BaseProvider

__all__ = ["CHAIN_REFRESH_S", "ChainSource"]

CHAIN_REFRESH_S: Final = 600.0
"""How often the registry is read again by default (10 minutes: a list changes rarely, and
each read is a handful of calls)."""
_MIN_REFRESH_S: Final = 1.0
_PLACEHOLDER: Final = "\x00chain"  # the checker's entry names, rewritten to on-chain indexes


class ChainSource(RegistrySource):
    """The relay list held by a registry contract, found by address or ENS name.

    Args:
        rpc: the node's http(s) JSON-RPC URL, or a web3 provider (the embedded EVM).
        registry: the contract's 0x address, or an ENS name such as ``chronara.eth``.
        chain_id: the chain it lives on; a node on any other chain is refused.
        ens_registry: the ENS registry that resolves names (default: the canonical one).
        refresh_s: seconds between reads (at least 1).

    Raises (from the constructor, before any request):
        ConfigError: web3 is not installed (naming the `chain` extra), or an argument is
            malformed: the URL, the address or name, the chain id, the refresh interval.
    """

    def __init__(
        self,
        rpc: str | BaseProvider,
        registry: str,
        *,
        chain_id: int,
        ens_registry: str | None = None,
        refresh_s: float = CHAIN_REFRESH_S,
        page_size: int = DEFAULT_PAGE_SIZE,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        require_web3()
        if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id < 1:
            raise ConfigError(
                f"chain id must be a positive integer (1 for Ethereum mainnet, 31337 for a "
                f"local anvil node), got {chain_id!r}"
            )
        if isinstance(refresh_s, bool) or not isinstance(refresh_s, int | float):
            raise ConfigError(f"the registry's refresh interval must be seconds, got {refresh_s!r}")
        if not refresh_s >= _MIN_REFRESH_S:
            raise ConfigError(
                f"the registry's refresh interval must be at least {_MIN_REFRESH_S:g} s, "
                f"got {refresh_s:g}"
            )
        if isinstance(rpc, str):
            if urllib.parse.urlsplit(rpc.strip()).scheme not in ("http", "https"):
                raise ConfigError(
                    f"RPC URL {describe_rpc_url(rpc)!r} must start with http:// or https:// "
                    "(e.g. http://127.0.0.1:8545)"
                )
            rpc = rpc.strip()
            self.rpc_label = describe_rpc_url(rpc)
        else:
            self.rpc_label = type(rpc).__name__
        self.ref = parse_contract_ref(registry)
        self.ens_registry = (
            parse_address(ens_registry, what="ENS registry") if ens_registry else None
        )
        self.chain_id = chain_id
        self._rpc = rpc
        self._refresh_s = float(refresh_s)
        self._page_size = page_size
        self._timeout_s = timeout_s
        self.last_read: ChainListing | None = None
        """The latest successful read (block, contract, requests made), if any."""

    @property
    def description(self) -> str:
        return f"chain {self.ref} at {self.rpc_label}, chain {self.chain_id}"

    @property
    def refresh_s(self) -> float:
        return self._refresh_s

    async def fetch(self) -> RegistryListing:
        """Read every entry at the latest block (calls only).

        Raises `RegistryError` naming the node and what failed (unreachable, wrong chain, no
        contract, a name that does not resolve, a malformed answer). Cancellation returns at
        once; the worker thread makes no further request.
        """
        read = await read_registry_async(
            self._rpc,
            self.ref.name or self.ref.address or "",
            chain_id=self.chain_id,
            ens_registry=self.ens_registry,
            page_size=self._page_size,
            timeout_s=self._timeout_s,
        )
        self.last_read = read
        return RegistryListing(
            _relay_list(read),
            self.description,
            time.time(),
            block_number=read.block_number,
        )


def _relay_list(read: ChainListing) -> RelayList:
    """The entries of one read through the common checker, every problem naming the entry's
    index on chain and the block (``on-chain entry 3 at block 12 (ws://…): …``)."""
    problems = {p.index: p for p in read.problems}
    indexes = [i for i in range(len(read.entries) + len(problems)) if i not in problems]
    checked = check_relay_entries(read.entries, name=_PLACEHOLDER)

    def rename(match: re.Match[str]) -> str:
        return f"on-chain entry {indexes[int(match.group(1))]} at block {read.block_number}"

    pattern = re.compile(re.escape(_PLACEHOLDER) + r"\[(\d+)\]")
    renamed = [pattern.sub(rename, line) for line in checked.problems]
    unreadable = [f"{p} at block {read.block_number}; skipped" for p in read.problems]
    return RelayList(checked.entries, (*unreadable, *renamed))
