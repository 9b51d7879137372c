"""Where `meshcore-peer` meets other peers: one relay, a list (`--relay URL[#ID]` repeated,
`[[relays]]` tables), a relay-list file that is re-read when it changes, or the on-chain
registry (`[registry]`, `chainsettings`); the
rendezvous setting and the state directory that keeps the last good list
(docs/relay-network.md).

Shared by every subcommand that talks to relays (connect, listen, up, relays).
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import attrs

from meshcore import (
    ConfigError,
    FileSource,
    Registry,
    RegistrySource,
    RelayListCache,
    StaticSource,
    open_registry,
    parse_relay_spec,
)
from meshcore_peer.chainsettings import (
    CHAIN_FLAGS,
    ChainTable,
    add_chain_flags,
    chain_overrides,
    chain_source,
)

__all__ = [
    "RELAY_FLAGS",
    "RelayTable",
    "add_relay_flags",
    "check_relay_source",
    "check_rendezvous_k",
    "default_state_dir",
    "open_relays",
    "relay_overrides",
]

RELAY_FLAGS = {
    "relay": "--relay",
    "relays": "--relay",
    "relays_file": "--relays-file",
    "rendezvous_k": "--rendezvous-k",
    "state_dir": "--state-dir",
    **CHAIN_FLAGS,
}
"""How each relay setting is spelled on the command line (for error messages)."""


@attrs.frozen
class RelayTable:
    """One `[[relays]]` table: `{ url = "ws://host:7443", id = "...", region = "eu" }`."""

    url: str
    id: str | None = None
    """The relay's id (`meshcore-relay id` prints it); without it the relay is unverified."""
    region: str = ""

    def to_mapping(self) -> dict[str, str]:
        out = {"url": self.url}
        if self.id:
            out["id"] = self.id
        if self.region:
            out["region"] = self.region
        return out


def check_rendezvous_k(_inst: object, _attr: object, value: int) -> None:
    """attrs validator of a `rendezvous_k` setting."""
    if value < 1:
        raise ValueError(f"rendezvous_k must be at least 1, got {value}")


def default_state_dir() -> Path:
    """Where the relay-list cache lives: `$STATE_DIRECTORY` (systemd), else
    `$XDG_STATE_HOME/meshcore`, else `~/.local/state/meshcore`."""
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / "meshcore"


def add_relay_flags(parser: argparse.ArgumentParser) -> None:
    """The relay flags of a subcommand: --relay (repeatable), --relays-file, --rendezvous-k,
    --state-dir."""
    parser.add_argument(
        "--relay",
        dest="relay_specs",
        metavar="URL[#ID]",
        action="append",
        help="a relay, e.g. ws://host:7443#RELAY_ID (repeat for a list; the id verifies it)",
    )
    parser.add_argument(
        "--relays-file",
        metavar="FILE",
        help="a relay list ([[relays]] tables with url, id, region), re-read when it changes",
    )
    parser.add_argument(
        "--rendezvous-k",
        type=int,
        metavar="K",
        help="with several relays: register at this many rendezvous relays (default 2)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"where the last good relay list is kept (default: {default_state_dir()})",
    )
    add_chain_flags(parser)


def relay_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The settings the relay flags give. Relays on the command line replace the config
    file's (`relay`, `relays`, `relays_file` and the `[registry]` all at once)."""
    out: dict[str, object] = {}
    specs: list[str] | None = getattr(args, "relay_specs", None)
    relays_file: str | None = getattr(args, "relays_file", None)
    chain = chain_overrides(args)
    if specs and relays_file:
        raise ConfigError("give either --relay or --relays-file, not both")
    if (specs or relays_file) and chain:
        flag = "--relay" if specs else "--relays-file"
        raise ConfigError(
            f"give either {flag} or the on-chain registry (--registry-rpc, --registry), not both"
        )
    if specs or relays_file:
        out.update({"registry.chain_rpc": None, "registry.registry": None})
    elif "registry.chain_rpc" in chain or "registry.registry" in chain:
        out.update(relay=None, relays=[], relays_file=None)
    out.update(chain)
    if specs:
        if len(specs) == 1 and "#" not in specs[0]:
            out.update(relay=specs[0], relays=[], relays_file=None)
        else:
            out.update(relay=None, relays=[parse_relay_spec(s) for s in specs], relays_file=None)
    elif relays_file:
        out.update(relay=None, relays=[], relays_file=relays_file)
    for key in ("rendezvous_k", "state_dir"):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    return out


def check_relay_source(
    relay: str | None,
    relays: Sequence[RelayTable],
    file: str | None,
    chain: ChainTable | None = None,
) -> None:
    """Raise `ConfigError` unless the relays are given exactly one way."""
    ways = (
        ("relay", relay),
        ("[[relays]]", relays),
        ("relays_file", file),
        ("[registry]", chain is not None and chain.given),
    )
    given = [name for name, value in ways if value]
    if not given:
        raise ConfigError(
            "the relay is missing: pass --relay URL[#RELAY_ID] (repeat it for a list), "
            "--relays-file FILE, or --registry-rpc URL --registry NAME --chain-id N; or set "
            "relay, [[relays]], relays_file or a [registry] table in the config file"
        )
    if len(given) > 1:
        raise ConfigError(
            f"{' and '.join(given)} are both set: give the relays one way (relay for one URL, "
            "[[relays]] tables for a list, relays_file for a file, or [registry] for the "
            "on-chain registry)"
        )


def _cache(state_dir: str | None, source: str) -> RelayListCache:
    base = Path(state_dir) if state_dir else default_state_dir()
    tag = hashlib.sha256(source.encode()).hexdigest()[:12]
    return RelayListCache(base / f"relays-{tag}.json")


@asynccontextmanager
async def open_relays(
    relay: str | None,
    relays: Sequence[RelayTable],
    relays_file: str | None,
    state_dir: str | None,
    chain: ChainTable | None = None,
) -> AsyncIterator[str | Registry]:
    """The relay settings as what `meshcore.connect`, `serve` and `TunnelConfig` take: one
    bare URL as itself, anything else as a `Registry` (a file is followed as it changes,
    and the last good list is cached in the state directory; so is the on-chain registry's,
    read again every `refresh_s`).

    Raises `ConfigError` (exit status 2) naming what is wrong: no relay, two ways of giving
    them, a bad `[registry]` setting (or web3 missing), or a list with no usable entry (every
    bad entry named), or a registry that cannot be read with nothing cached. Leaving the
    block stops following the file or the registry.
    """
    check_relay_source(relay, relays, relays_file, chain)
    if relay and "#" not in relay:
        yield relay
        return
    source: RegistrySource
    cache: RelayListCache | None
    if chain is not None and chain.given:
        source = chain_source(chain)
        cache = _cache(state_dir, source.description)
    elif relays_file:
        path = Path(relays_file).expanduser()
        source = FileSource(path)
        cache = _cache(state_dir, str(path.resolve()))
    else:
        tables = [parse_relay_spec(relay)] if relay else [t.to_mapping() for t in relays]
        name = "relay" if relay else "the config's [[relays]]"
        source = StaticSource(tables, name=name)
        cache = None  # the config itself is always there
    async with open_registry(source, cache=cache) as registry:
        yield registry
