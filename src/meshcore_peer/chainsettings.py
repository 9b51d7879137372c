"""The on-chain relay registry as `meshcore-peer`'s relay source: the `[registry]` table, its
flags, and the `ChainSource` they make (docs/registry-chain.md, docs/relay-network.md).

    [registry]
    chain_rpc = "https://rpc.example/"    # --registry-rpc
    registry = "chronara.eth"             # --registry (or the contract's 0x address)
    chain_id = 1                          # --chain-id
    ens = "0x..."                         # --ens (default: the canonical ENS registry)
    refresh_s = 600                       # --registry-refresh
"""

from __future__ import annotations

import argparse
import urllib.parse

import attrs

from meshcore import ChainSource, ConfigError
from meshcore.errors import ConfigProblems

__all__ = [
    "CHAIN_FLAGS",
    "ChainTable",
    "add_chain_flags",
    "chain_overrides",
    "chain_source",
]

CHAIN_FLAGS = {
    "registry.chain_rpc": "--registry-rpc",
    "registry.registry": "--registry",
    "registry.chain_id": "--chain-id",
    "registry.ens": "--ens",
    "registry.refresh_s": "--registry-refresh",
}
"""How each `[registry]` setting is spelled on the command line (for error messages)."""

_DEFAULT_REFRESH_S = 600.0


def _check_rpc(_inst: object, _attr: object, value: str | None) -> None:
    if value is not None and urllib.parse.urlsplit(value.strip()).scheme not in ("http", "https"):
        raise ValueError(
            "must be the node's JSON-RPC URL starting with http:// or https:// "
            "(e.g. http://127.0.0.1:8545)"
        )


def _check_chain_id(_inst: object, _attr: object, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(
            f"must be the chain's id, a positive integer (1 for Ethereum mainnet, 31337 for "
            f"a local anvil node), got {value}"
        )


def _check_refresh(_inst: object, _attr: object, value: float) -> None:
    if not value >= 1:
        raise ValueError(
            f"must be at least 1 second (default {_DEFAULT_REFRESH_S:g}), got {value:g}"
        )


@attrs.frozen
class ChainTable:
    """The `[registry]` table: read the relay list from the on-chain registry."""

    chain_rpc: str | None = attrs.field(default=None, validator=_check_rpc)
    """The node's JSON-RPC URL (http or https)."""
    registry: str | None = None
    """The registry contract: its 0x address or its ENS name (e.g. chronara.eth)."""
    chain_id: int | None = attrs.field(default=None, validator=_check_chain_id)
    """The chain the registry lives on; a node on another chain is refused."""
    ens: str | None = None
    """The ENS registry that resolves the name (default: the canonical one)."""
    refresh_s: float = attrs.field(default=_DEFAULT_REFRESH_S, validator=_check_refresh)
    """Seconds between reads of the registry."""

    @property
    def given(self) -> bool:
        """Whether the relays are to come from the chain."""
        return bool(self.chain_rpc or self.registry)


def add_chain_flags(parser: argparse.ArgumentParser) -> None:
    """The `[registry]` flags of a subcommand."""
    group = parser.add_argument_group(
        "on-chain relay registry", "read the relay list from a registry contract (chain extra)"
    )
    group.add_argument("--registry-rpc", dest="chain_rpc", metavar="URL", help="node JSON-RPC URL")
    group.add_argument(
        "--registry", dest="chain_registry", metavar="ADDRESS|NAME", help="e.g. chronara.eth"
    )
    group.add_argument("--chain-id", dest="chain_id", metavar="N", help="the registry's chain")
    group.add_argument("--ens", dest="chain_ens", metavar="ADDRESS", help="ENS registry address")
    group.add_argument(
        "--registry-refresh",
        dest="chain_refresh_s",
        metavar="SECONDS",
        help=f"how often the registry is read (default {_DEFAULT_REFRESH_S:g})",
    )


def chain_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The settings the `[registry]` flags give (dotted keys for `load_toml`)."""
    out: dict[str, object] = {}
    for dest, key in (
        ("chain_rpc", "registry.chain_rpc"),
        ("chain_registry", "registry.registry"),
        ("chain_id", "registry.chain_id"),
        ("chain_ens", "registry.ens"),
        ("chain_refresh_s", "registry.refresh_s"),
    ):
        value = getattr(args, dest, None)
        if value is not None:
            out[key] = value
    return out


def chain_source(table: ChainTable) -> ChainSource:
    """The source the table describes.

    Raises `ConfigError` at once when web3 is missing (naming the `chain` extra), and
    `ConfigProblems` naming each missing or malformed setting with its fix.
    """
    problems = []
    if not table.chain_rpc:
        problems.append(
            "registry.chain_rpc: the node is missing: pass --registry-rpc URL or set chain_rpc "
            "in [registry]"
        )
    if not table.registry:
        problems.append(
            "registry.registry: the registry is missing: pass --registry ADDRESS|NAME (e.g. "
            "chronara.eth) or set registry in [registry]"
        )
    if table.chain_id is None:
        problems.append(
            "registry.chain_id: the chain id is missing: pass --chain-id N (1 for Ethereum "
            "mainnet, 31337 for a local anvil node) or set chain_id in [registry]"
        )
    if problems:
        raise ConfigProblems(problems)
    assert table.chain_rpc and table.registry and table.chain_id is not None
    try:
        return ChainSource(
            table.chain_rpc,
            table.registry,
            chain_id=table.chain_id,
            ens_registry=table.ens,
            refresh_s=table.refresh_s,
        )
    except ConfigProblems:
        raise
    except ConfigError as exc:
        text = str(exc)
        if text.startswith("ENS registry"):
            raise ConfigError(f"registry.ens (--ens): {text}") from None
        if text.startswith("registry"):
            raise ConfigError(f"registry.registry (--registry): {text}") from None
        raise
