"""Settings of `meshcore-peer`: one attrs class, loaded from TOML < environment < flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import attrs

from meshcore import parse_metrics_address
from meshcore.config import load_toml
from meshcore_peer.chainsettings import ChainTable
from meshcore_peer.relaysettings import RELAY_FLAGS, RelayTable, check_rendezvous_k

__all__ = ["PeerConfig", "load_peer_config"]


def check_metrics(_inst: object, _attr: object, value: str | None) -> None:
    """A `metrics` setting is PORT or HOST:PORT (raises ValueError saying why not)."""
    if value is not None:
        parse_metrics_address(value)


@attrs.frozen
class PeerConfig:
    """Everything `meshcore-peer` can be told; every field has a flag and a TOML key."""

    relay: str | None = None
    """One relay: its WebSocket URL, e.g. ws://relay.example:7443 (`#RELAY_ID` verifies it)."""
    relays: list[RelayTable] = attrs.field(factory=list)
    """A relay list: `[[relays]]` tables with url, id and region."""
    relays_file: str | None = None
    """A relay-list file ([[relays]] tables), re-read when it changes."""
    registry: ChainTable = attrs.field(factory=ChainTable)
    """The on-chain relay registry (`[registry]`: chain_rpc, registry, chain_id, ens,
    refresh_s), instead of a list or file."""
    rendezvous_k: int = attrs.field(default=2, validator=check_rendezvous_k)
    """With several relays: how many rendezvous relays this peer registers at."""
    state_dir: str | None = None
    """Where the last good relay list is kept (default: $STATE_DIRECTORY,
    $XDG_STATE_HOME/meshcore or ~/.local/state/meshcore)."""
    identity: str | None = None
    """Identity key file (default: ~/.config/meshcore/identity.key)."""
    peer: str | None = None
    """The peer to connect to (connect)."""
    allow: list[str] = attrs.field(factory=list)
    """Peer ids allowed to connect (listen)."""
    exec: str | None = None
    """Command run per session (listen)."""
    direct: Literal["auto", "never", "only"] = "auto"
    """Direct paths: try them and fall back to the relay (auto), never, or only direct."""
    direct_retry_s: float = attrs.field(default=60.0, validator=attrs.validators.gt(0))
    """Seconds between direct-path attempts while on the relay (jittered, with backoff)."""
    metrics: str | None = attrs.field(default=None, validator=check_metrics)
    """Serve Prometheus metrics on PORT or HOST:PORT (a bare port: 127.0.0.1; listen)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"


def load_peer_config(path: Path | None, overrides: dict[str, object]) -> PeerConfig:
    """Load settings from `path` (optional), MESHCORE_PEER_* variables and `overrides`.

    Raises `ConfigError` naming every bad key and what is wrong with it.
    """
    return load_toml(
        PeerConfig,
        path,
        env_prefix="MESHCORE_PEER_",
        overrides=overrides,
        override_names=_FLAGS,
    )


_FLAGS = {
    **RELAY_FLAGS,
    "identity": "--identity",
    "peer": "PEER_ID",
    "allow": "--allow",
    "exec": "--exec",
    "direct": "--no-direct/--direct-only",
    "direct_retry_s": "--direct-retry",
    "metrics": "--metrics",
    "log_level": "--log-level",
    "log_format": "--log-format",
}
