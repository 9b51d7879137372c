"""`meshcore-relay`: accept peers, check who they are, pair them on the target's consent, and
forward their encrypted circuits. Runs until SIGTERM or SIGINT, then shuts down gracefully.

    meshcore-relay [--listen HOST:PORT] [--identity FILE] [--config FILE.toml] [--LIMIT VALUE]
    meshcore-relay genkey|id ...                      (the relay's identity: identity.py)
    meshcore-relay registry|register|deregister ...   (the on-chain registry: chain_cli.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import attrs
import trio

import meshcore
from meshcore import (
    ConfigError,
    Identity,
    MeshError,
    RelayCollector,
    RelayLimits,
    RelayServer,
    open_hidden_nursery,
    serve_metrics,
    serve_relay,
)
from meshcore.logs import setup_logging
from meshcore_relay import chain_cli, identity
from meshcore_relay.config import (
    CONFIG_ENV,
    DEFAULT_LISTEN,
    RelaySettings,
    load_relay_settings,
)

__all__ = ["main"]

log = logging.getLogger("meshcore.relay")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_EPILOG = f"""\
examples:
  meshcore-relay                                  # {DEFAULT_LISTEN}: peers on this host only
  meshcore-relay --listen 0.0.0.0:7443            # reachable from other hosts (IPv4)
  meshcore-relay --listen [::]:7443 --log-format json
  meshcore-relay --config relay.toml --max-peers 50000
  meshcore-relay --identity /etc/meshcore/relay.key
  meshcore-relay --metrics 127.0.0.1:9090         # Prometheus metrics at /metrics
  meshcore-relay --no-udp                         # no UDP port: datagrams by WebSocket
  meshcore-relay --print-config > relay.toml      # every setting with its value, as TOML

commands (each with --help):
  meshcore-relay genkey [--identity FILE]         # create the relay's identity (mode 0600)
  meshcore-relay id [--identity FILE]             # print the relay id, for peers' relay lists
  meshcore-relay registry deploy|list|remove      # the on-chain relay registry
  meshcore-relay register --url wss://HOST/ ...    # put this relay's entry in it
  meshcore-relay deregister ...                   # take it out

The relay's identity (its relay id, which peers check) is in --identity FILE, by default
{identity.default_identity_path()}
(systemd's $STATE_DIRECTORY, else $XDG_STATE_HOME/meshcore); it is created on the first
start. The relay logs its id at start.

settings, later ones win: defaults < --config FILE.toml (or {CONFIG_ENV}) <
MESHCORE_RELAY_* environment variables < flags. Every setting has all three forms:
  --listen 0.0.0.0:7443    MESHCORE_RELAY_LISTEN=0.0.0.0:7443     listen = "0.0.0.0:7443"
  --max-peers 50000        MESHCORE_RELAY_LIMITS_MAX_PEERS=50000  [limits] max_peers = 50000

Peers connect to ws://HOST:PORT/ (meshcore-peer --relay ws://HOST:PORT); given the relay id
as well, they check it on every connection. SIGTERM or SIGINT tells every peer the relay is
shutting down, closes every circuit and exits 0. A bad flag or setting exits 2 with a
message naming it. docs/relay.md explains every limit, docs/registry-chain.md the registry.
"""


def _metavar(name: str, tp: Any) -> str:
    if name == "overflow":
        return "{drop,close}"
    if "per_s" in name:
        return "PER_SECOND"
    if name.endswith("_s"):
        return "SECONDS"
    if name.endswith("_bytes"):
        return "BYTES"
    return "N"


def _limit_flags() -> list[tuple[str, str, attrs.Attribute[Any]]]:
    """(flag, settings key, field) for every limit."""
    return [
        (f"--{field.name.replace('_', '-')}", f"limits.{field.name}", field)
        for field in attrs.fields(RelayLimits)
    ]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshcore-relay",
        usage="%(prog)s [--listen HOST:PORT] [--identity FILE] [--config FILE.toml] [options]\n"
        "       %(prog)s {genkey,id,registry,register,deregister} ...",
        description="The meshcore relay: peers register with a post-quantum key challenge, "
        "pair only when the target accepts, and talk through opaque end-to-end encrypted "
        "circuits until they go direct.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # --max-peer must not silently mean --max-peers
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"meshcore-relay (meshcore {meshcore.__version__})",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help=f"address to accept peers on (default {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--identity",
        metavar="FILE",
        help="the relay's identity file, created on the first start (default: "
        f"{identity.default_identity_path()})",
    )
    parser.add_argument(
        "--config", metavar="FILE.toml", help=f"read settings from a TOML file (or ${CONFIG_ENV})"
    )
    parser.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default: info"
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], help="one line per event; default: text"
    )
    parser.add_argument(
        "--shutdown-grace-s",
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long peers get to take their Close (default "
        f"{RelaySettings().shutdown_grace_s:g})",
    )
    parser.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (a bare port: 127.0.0.1; "
        "default: off)",
    )
    parser.add_argument(
        "--udp",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="forward circuits' sealed datagrams by UDP on the listen port's number "
        "(default: on; --no-udp: everything by WebSocket)",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the effective settings as TOML and exit",
    )
    limits = parser.add_argument_group(
        "limits", "every table, rate and queue of the relay is bounded; these set the bounds"
    )
    defaults = RelayLimits()
    for flag, key, field in _limit_flags():
        limits.add_argument(
            flag,
            dest=key,
            metavar=_metavar(field.name, field.type),
            help=f"{field.metadata['help']} (default {getattr(defaults, field.name)})",
        )
    return parser


def _load(args: argparse.Namespace) -> RelaySettings:
    overrides: dict[str, object] = {}
    names: dict[str, str] = {}
    for key, flag in (
        ("listen", "--listen"),
        ("identity", "--identity"),
        ("log_level", "--log-level"),
        ("log_format", "--log-format"),
        ("shutdown_grace_s", "--shutdown-grace-s"),
        ("metrics", "--metrics"),
        ("udp", "--udp/--no-udp"),
    ):
        value = getattr(args, key)
        if value is not None:
            overrides[key], names[key] = value, flag
    for flag, key, _ in _limit_flags():
        value = getattr(args, key)
        if value is not None:
            overrides[key], names[key] = value, flag
    path = args.config or os.environ.get(CONFIG_ENV) or None
    return load_relay_settings(path, overrides, names)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def settings_as_toml(settings: RelaySettings) -> str:
    """The settings as a TOML file that `--config` reads back (limits commented)."""
    lines = ["# meshcore-relay settings (meshcore-relay --print-config)"]
    for field in attrs.fields(RelaySettings):
        value = getattr(settings, field.name)
        if field.name == "metrics" and value is None:
            lines.append('# metrics = "127.0.0.1:9090"  (off unless set)')
        elif field.name != "limits":
            lines.append(f"{field.name} = {_toml_value(value)}")
    lines.append("")
    lines.append("[limits]")
    for field in attrs.fields(RelayLimits):
        lines.append(f"# {field.metadata['help']}")
        lines.append(f"{field.name} = {_toml_value(getattr(settings.limits, field.name))}")
    return "\n".join(lines) + "\n"


def _identity(settings: RelaySettings) -> Identity:
    """The relay's identity, created (and logged) on the first start."""
    path = identity.relay_identity_path(settings.identity)
    relay, created = identity.load_or_create_identity(path)
    if created:
        log.info("created relay identity %s; relay id %s", path, relay.peer_id)
    return relay


async def _run(settings: RelaySettings, relay: Identity) -> int:
    config = settings.relay_config(relay)
    collector = RelayCollector()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with open_hidden_nursery() as nursery:
            if settings.metrics is not None:  # first: a missing extra fails before peers come
                await nursery.start(serve_metrics, settings.metrics, [collector])
            server: RelayServer = await nursery.start(serve_relay, config)
            collector.server = server
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `meshcore-relay`; returns the exit status."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments and arguments[0] in chain_cli.COMMANDS:
        return chain_cli.main(arguments)
    if arguments and arguments[0] in identity.COMMANDS:
        return identity.main(arguments)
    args = _parser().parse_args(arguments)
    try:
        settings = _load(args)
        if args.print_config:
            sys.stdout.write(settings_as_toml(settings))
            return EXIT_OK
        setup_logging(settings.log_level, settings.log_format)
        return trio.run(_run, settings, _identity(settings))
    except ConfigError as exc:
        print(f"meshcore-relay: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MeshError as exc:
        print(f"meshcore-relay: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # before the signal handlers were installed
        print("meshcore-relay: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
