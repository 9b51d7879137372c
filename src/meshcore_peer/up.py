"""`meshcore-peer up`: a layer-2 TAP tunnel to every configured peer (a small mesh VPN).

meshcore-peer up --config peer.toml          (as root, or with CAP_NET_ADMIN)

The device exists while the command runs: it goes away on exit, SIGTERM or SIGINT. Peers'
sessions that fail are retried with backoff; the device stays up meanwhile.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from meshcore import (
    ConfigError,
    FramePump,
    Identity,
    MeshError,
    PathSettings,
    PeerCollector,
    PeerId,
    RelayClient,
    RelayNetwork,
    SessionRegistry,
    TunnelConfig,
    check_tap_access,
    default_control_path,
    open_configured_tap,
    overlay_interface,
    run_tunnel,
    serve_control,
    serve_metrics,
    validate_device_name,
)
from meshcore.config import env_names, load_toml
from meshcore.logs import log_unexpected, setup_logging
from meshcore.proto.constants import (
    MAX_MESSAGE_BYTES,
    TAP_DEFAULT_MTU,
    TAP_VNET_HEADER_BYTES,
    TUNNEL_CHUNK_HEADER_BYTES,
)
from meshcore_peer.chainsettings import ChainTable
from meshcore_peer.config import check_metrics
from meshcore_peer.lifecycle import Stopping, leaf_error, run_until_signalled
from meshcore_peer.relays_cmd import relays_report
from meshcore_peer.relaysettings import (
    RELAY_FLAGS,
    RelayTable,
    add_relay_flags,
    check_rendezvous_k,
    open_relays,
    relay_overrides,
)

__all__ = ["PeerEntry", "UpConfig", "add_up_parser", "load_up_config", "main", "run_up"]

log = logging.getLogger("meshcore.peer.up")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
ENV_PREFIX = "MESHCORE_PEER_"

MIN_MTU = 68
"""The least MTU IPv4 allows (RFC 791); IPv6 needs 1280."""
MAX_MTU = MAX_MESSAGE_BYTES - TUNNEL_CHUNK_HEADER_BYTES - TAP_VNET_HEADER_BYTES - 18
"""A whole frame (Ethernet and VLAN header: 18 bytes) fits one session message."""

USERSPACE_HINT = (
    "without root, use the userspace commands instead: `meshcore-peer listen` and "
    "`meshcore-peer connect` carry a session over stdin/stdout (no TAP device needed)"
)


def _check_peer_id(_inst: object, _attr: object, value: str) -> None:
    try:
        PeerId.from_text(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _check_device(_inst: object, _attr: object, value: str) -> None:
    problem = validate_device_name(value)
    if problem:
        raise ValueError(f"device {value!r} {problem}")


def _check_address(_inst: object, _attr: object, value: str | None) -> None:
    if value is None:
        return
    if "/" not in value:
        raise ValueError(f"address {value!r} needs a prefix length, e.g. {value}/24")
    try:
        ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError(
            f"address {value!r} is not an IP address with a prefix length (e.g. 10.77.0.1/24)"
        ) from None


def _check_mtu(_inst: object, _attr: object, value: int) -> None:
    if not MIN_MTU <= value <= MAX_MTU:
        raise ValueError(f"mtu must be {MIN_MTU}..{MAX_MTU}, got {value}")


@attrs.frozen
class PeerEntry:
    """One peer of the mesh: `{ id = "...", name = "..." }`."""

    id: str = attrs.field(validator=_check_peer_id)
    """The peer's id (`meshcore-peer id` prints it)."""
    name: str | None = None
    """A label for logs."""


@attrs.frozen
class UpConfig:
    """Settings of `meshcore-peer up`; every field has a TOML key and most a flag."""

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
    device: str = attrs.field(default="mesh0", validator=_check_device)
    """Name of the TAP device."""
    address: str | None = attrs.field(default=None, validator=_check_address)
    """The device's address with prefix length, e.g. 10.77.0.1/24 (none: layer 2 only)."""
    mtu: int = attrs.field(default=TAP_DEFAULT_MTU, validator=_check_mtu)
    """The device's MTU; use the same on every peer."""
    peers: list[PeerEntry] = attrs.field(factory=list)
    """The other peers of the mesh."""
    direct_retry_s: float = attrs.field(
        default=PathSettings().retry_s, validator=attrs.validators.gt(0)
    )
    """Seconds between direct-path attempts while a session is on the relay (jittered,
    doubling after each failure)."""
    datagrams: bool = True
    """On direct paths, carry frames that fit one UDP datagram by UDP on the shared port
    number, past the reliable session (docs/datagram.md); false: every frame by TCP."""
    control: str | None = None
    """Control socket for `status` and `ping` (default: the per-user path they also use)."""
    metrics: str | None = attrs.field(default=None, validator=check_metrics)
    """Serve Prometheus metrics on PORT or HOST:PORT (a bare port: 127.0.0.1)."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["text", "json"] = "text"


_FLAGS = {
    **RELAY_FLAGS,
    "identity": "--identity",
    "device": "--device",
    "address": "--address",
    "mtu": "--mtu",
    "peers": "--peer",
    "direct_retry_s": "--direct-retry",
    "datagrams": "--datagrams",
    "control": "--control",
    "metrics": "--metrics",
    "log_level": "--log-level",
    "log_format": "--log-format",
}


def _reserved_env() -> set[str]:
    """Other subcommands' MESHCORE_PEER_* variables: set for them, not an error here."""
    try:
        from meshcore_peer.config import PeerConfig
    except ImportError:  # pragma: no cover - the package always has it
        return set()
    ours = env_names(UpConfig, ENV_PREFIX)
    return {name for name in env_names(PeerConfig, ENV_PREFIX) if name not in ours} | {
        ENV_PREFIX + "CONFIG"
    }


def load_up_config(path: Path | None, overrides: dict[str, object]) -> UpConfig:
    """Load settings from `path` (optional), MESHCORE_PEER_* variables and `overrides`.

    Raises `ConfigError` naming every bad key, where it came from and what is wrong.
    """
    config = load_toml(
        UpConfig,
        path,
        env_prefix=ENV_PREFIX,
        overrides=overrides,
        override_names=_FLAGS,
        reserved_env=_reserved_env(),
    )
    problems = []
    if not (config.relay or config.relays or config.relays_file or config.registry.given):
        problems.append(
            "relay: the relay is missing: pass --relay URL[#RELAY_ID] (repeat it for a list), "
            "--relays-file FILE or --registry-rpc URL --registry NAME --chain-id N, or set "
            "relay, [[relays]], relays_file or a [registry] table"
        )
    if not config.peers:
        problems.append('peers: no peer given: pass --peer PEER_ID or set peers = [{ id = "..." }]')
    seen: set[str] = set()
    for index, entry in enumerate(config.peers):
        text = PeerId.from_text(entry.id).to_text()
        if text in seen:
            problems.append(f"peers[{index}].id: {entry.id} is listed twice; remove one")
        seen.add(text)
    if problems:
        from meshcore.errors import ConfigProblems

        raise ConfigProblems(problems)
    return config


# --- the command ----------------------------------------------------------------------------


def add_up_parser(subparsers: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `up` subcommand to `subparsers` (from `add_subparsers`), with the `common`
    parent's options (--config, --identity, --log-level, --log-format)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "up",
        parents=[common],
        help="run a layer-2 TAP tunnel (mesh VPN) with the configured peers (needs root)",
        description=(
            "Create a TAP device and carry its Ethernet frames to every configured peer "
            "through end-to-end encrypted sessions; MAC learning switches frames between "
            "peers. Needs root or CAP_NET_ADMIN and /dev/net/tun. The device is removed on exit."
        ),
    )
    add_relay_flags(p)
    p.add_argument("--device", metavar="NAME", help="TAP device name (default: mesh0)")
    p.add_argument("--address", metavar="CIDR", help="device address, e.g. 10.77.0.1/24")
    p.add_argument("--mtu", metavar="BYTES", help=f"device MTU (default: {TAP_DEFAULT_MTU})")
    p.add_argument(
        "--peer",
        dest="up_peers",
        metavar="PEER_ID[,...]",
        action="append",
        help="a peer of the mesh (repeat or comma-separate; replaces the config file's peers)",
    )
    p.add_argument(
        "--direct-retry",
        dest="direct_retry_s",
        type=float,
        metavar="SECONDS",
        help="pause between direct-path attempts while on the relay (default 60, jittered)",
    )
    p.add_argument(
        "--datagrams",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="on direct paths, send frames that fit one UDP datagram by UDP on the shared "
        "port number (default: on; --no-datagrams: every frame by TCP)",
    )
    p.add_argument(
        "--control",
        metavar="PATH",
        help=f"control socket for status/ping (default: {default_control_path()})",
    )
    p.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (a bare port: 127.0.0.1)",
    )
    return p


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    out: dict[str, object] = relay_overrides(args)
    keys = ("identity", "device", "address", "mtu", "direct_retry_s", "datagrams", "control",
            "metrics")  # fmt: skip
    for key in (*keys, "log_level", "log_format"):
        value = getattr(args, key, None)
        if value is not None:
            out[key] = value
    peers = getattr(args, "up_peers", None)
    if peers:
        out["peers"] = [{"id": p.strip()} for item in peers for p in item.split(",") if p.strip()]
    return out


def tap_mac(peer_id: PeerId) -> bytes:
    """The device's MAC address: locally administered, from the peer id, so that it stays the
    same across restarts and other peers' ARP caches stay right."""
    return bytes([0x02]) + peer_id.digest[:5]


def run_up(args: argparse.Namespace) -> int:
    """Run `meshcore-peer up` with parsed `args`; returns the exit status.

    Fails at once (status 1) when the TAP device cannot be created here (no root or no
    /dev/net/tun), and with status 2 on bad settings.
    """
    problem = check_tap_access()
    if problem:
        print(f"meshcore-peer up: cannot create a TAP device: {problem}.", file=sys.stderr)
        print(f"meshcore-peer up: {USERSPACE_HINT}.", file=sys.stderr)
        return EXIT_FAILED
    try:
        config = load_up_config(Path(args.config) if args.config else None, _overrides(args))
        setup_logging(config.log_level, config.log_format)
        identity = Identity.load(_identity_path(config))
        ending = trio.run(partial(run_until_signalled, partial(_run, config, identity), name="up"))
        return EXIT_OK if ending.status is None else ending.status  # a signal: a clean stop
    except (Exception, KeyboardInterrupt) as exc:
        return _report(leaf_error(exc))


def _report(exc: BaseException) -> int:
    """Say what ended `up` in one line on stderr; returns the exit status (a traceback only
    for an unexpected error, with --log-level debug)."""
    if isinstance(exc, ConfigError):
        print(f"meshcore-peer up: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, KeyboardInterrupt):  # before the signal handler was installed
        print("meshcore-peer up: interrupted", file=sys.stderr)
        return 130
    if isinstance(exc, MeshError | OSError):
        print(f"meshcore-peer up: {exc}", file=sys.stderr)
        return EXIT_FAILED
    log_unexpected(log, "meshcore-peer up: unexpected error", exc)
    return EXIT_FAILED


def _identity_path(config: UpConfig) -> Path:
    if config.identity:
        return Path(config.identity)
    from meshcore_peer.cli import default_identity_path

    return default_identity_path()


async def _run(config: UpConfig, identity: Identity, stopping: Stopping) -> int:
    peers = tuple(PeerId.from_text(p.id) for p in config.peers)
    if identity.peer_id in peers:
        raise ConfigError(
            f"peers: {identity.peer_id} is this peer's own id; list only the other peers"
        )
    names = {PeerId.from_text(p.id): p.name for p in config.peers if p.name}
    registry = SessionRegistry({peer.to_text(): name for peer, name in names.items()})
    collector = PeerCollector(registry)
    retry = config.direct_retry_s
    paths = PathSettings(retry_s=retry, retry_max_s=max(retry, PathSettings().retry_max_s))
    async with open_relays(
        config.relay, config.relays, config.relays_file, config.state_dir, config.registry
    ) as relay:

        def on_meeting(meeting: RelayClient | RelayNetwork | None) -> None:
            registry.relays = None if meeting is None else partial(relays_report, meeting)
            collector.relay = meeting

        tunnel = TunnelConfig(
            relay,
            identity,
            peers,
            path_settings=paths,
            registry=registry,
            rendezvous_k=config.rendezvous_k,
            on_meeting=on_meeting,
            datagrams=config.datagrams,
        )
        return await _run_tunnel(config, identity, tunnel, collector, names, stopping)


async def _run_tunnel(
    config: UpConfig,
    identity: Identity,
    tunnel: TunnelConfig,
    collector: PeerCollector,
    names: dict[PeerId, str],
    stopping: Stopping,
) -> int:
    registry = collector.sessions
    peers = tunnel.peers
    address = ipaddress.ip_interface(config.address) if config.address else None
    control = Path(config.control) if config.control else default_control_path()
    async with open_configured_tap(
        config.device, mtu=config.mtu, address=address, mac=tap_mac(identity.peer_id)
    ) as device:
        pump: FramePump | None = None
        try:
            # direct paths must never run through the tunnel they carry
            with overlay_interface(device.name):
                async with trio.open_nursery() as nursery:
                    if config.metrics is not None:
                        await nursery.start(serve_metrics, config.metrics, [collector])
                    await nursery.start(
                        partial(
                            serve_control,
                            control,
                            registry,
                            required=config.control is not None,
                        )
                    )
                    pump = await nursery.start(
                        run_tunnel, device.fd, device.vnet_header_bytes, tunnel
                    )
                    collector.tunnel = pump
                    log.info(
                        "tunnel up on %s as %s: %d peer(s) via %s (dials %d, answers %d)",
                        device.name,
                        identity.peer_id.short(),
                        len(peers),
                        tunnel.relay_name,
                        len(tunnel.dials),
                        len(tunnel.answers),
                    )
                    await trio.sleep_forever()  # until a signal cancels it (lifecycle)
        finally:
            if stopping.reason is not None:
                log.info("%s: removing %s", stopping.reason, device.name)
            if pump is not None:
                _log_summary(pump, names)
    return EXIT_OK


def _log_summary(pump: FramePump, names: dict[PeerId, str]) -> None:
    for peer, stats in pump.stats.items():
        log.info(
            "peer %s: %d frames (%d B) out, %d frames (%d B) in, %d session(s), "
            "dropped %d (queue full) %d (late) %d (invalid) %d (device), %d ECN-marked",
            names.get(peer) or peer.short(),
            stats.frames_out,
            stats.bytes_out,
            stats.frames_in,
            stats.bytes_in,
            stats.sessions,
            stats.dropped_queue_full,
            stats.dropped_late,
            stats.dropped_invalid,
            stats.dropped_write,
            stats.ecn_marked,
        )


def _common_parent() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE.toml", help="read settings from a TOML file")
    common.add_argument("--identity", metavar="FILE", help="identity key file")
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    common.add_argument("--log-format", choices=["text", "json"])
    return common


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m meshcore_peer.up [options]`: the `up` subcommand on its own."""
    parser = argparse.ArgumentParser(prog="meshcore-peer")
    sub = parser.add_subparsers(dest="command", required=True)
    add_up_parser(sub, _common_parent())
    args = parser.parse_args(["up", *(sys.argv[1:] if argv is None else argv)])
    return run_up(args)


if __name__ == "__main__":
    # run the imported module, not this __main__ copy: the config classes' type hints are
    # resolved through their module, which must be meshcore_peer.up
    from meshcore_peer.up import main as _main

    sys.exit(_main())
