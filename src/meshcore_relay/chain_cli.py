"""`meshcore-relay registry ...`, `register`, `deregister`: the relay's side of the on-chain
registry. Deploy and name a registry, put this relay's entry in it, take it out, list it.

    meshcore-relay registry deploy --rpc URL --account-key FILE [--name NAME] [--ens ADDRESS]
    meshcore-relay register --rpc URL --registry ADDRESS|NAME --account-key FILE
                            [--identity RELAY_KEY] --url URL [--region R]
    meshcore-relay deregister --rpc URL --registry ADDRESS|NAME --account-key FILE
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
from collections.abc import Sequence
from typing import Final

from meshcore.errors import ConfigError, MeshError

__all__ = ["COMMANDS", "main"]

COMMANDS: Final = ("registry", "register", "deregister")
"""The first arguments that select these commands instead of running the relay."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

_RPC: Final = "--rpc http://127.0.0.1:8545"
_EXAMPLES: Final = {
    "deploy": f"""\
  meshcore-relay registry deploy {_RPC} --account-key owner.key
  meshcore-relay registry deploy {_RPC} --account-key owner.key --name chronara.eth
The address goes to stdout; with --name, what was set up goes to stderr.""",
    "list": f"""\
  meshcore-relay registry list {_RPC} --chain-id 31337 \\
      --registry 0x5FbDB2315678afecb367f032d93F642f64180aa3
  meshcore-relay registry list {_RPC} --chain-id 31337 --registry chronara.eth \\
      --ens 0xENS... --json""",
    "remove": f"""\
  meshcore-relay registry remove {_RPC} --registry chronara.eth --account-key owner.key \\
      --relay-id 49wfvha4tn6wq88f48wxwvh1ta2m83yz18z108aern248wh1yknzs6hg""",
    "register": f"""\
  meshcore-relay register {_RPC} --registry chronara.eth --account-key relay.key \\
      --identity relay.id --url wss://relay.example:7443/ --region eu
Run it again with another --url or --region to update the entry (nothing is sent when the
entry is already current).""",
    "deregister": f"""\
  meshcore-relay deregister {_RPC} --registry chronara.eth --account-key relay.key""",
}
_EPILOG: Final = """\
An account key file holds one hex private key and must be mode 0600 (chmod 600 FILE); the
account pays for the transactions. Each account holds at most one entry. Names are resolved
through the canonical ENS registry unless --ens gives another (a local chain has none:
`registry deploy --name` deploys one and says where). Needs the chain extra: pip install
'meshcore[chain]'. A bad flag or file exits 2; a failure on the chain (unreachable node,
wrong chain, refused transaction) exits 1; each with one line. docs/registry-chain.md
explains every step.
"""


def _epilog(command: str) -> str:
    return f"examples:\n{_EXAMPLES[command]}\n\n{_EPILOG}"


def _common(parser: argparse.ArgumentParser, *, registry: bool, key: bool) -> None:
    parser.add_argument("--rpc", required=True, metavar="URL", help="the node's JSON-RPC URL")
    if registry:
        parser.add_argument(
            "--registry", required=True, metavar="ADDRESS|NAME",
            help="the registry's 0x address or ENS name (e.g. chronara.eth)",
        )  # fmt: skip
    if key:
        parser.add_argument(
            "--account-key", required=True, metavar="FILE",
            help="file with the sending account's hex private key (mode 0600)",
        )  # fmt: skip
    parser.add_argument(
        "--ens", metavar="ADDRESS",
        help="the ENS registry that resolves names (default: the canonical one)",
    )  # fmt: skip
    parser.add_argument(
        "--chain-id", type=int, metavar="N",
        help="refuse to act unless the node is on this chain",
    )  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="meshcore-relay",
        description="The on-chain relay registry: deploy and name it, register this relay in "
        "it, take the relay out, list it.",
        epilog=_EPILOG,
        formatter_class=raw,
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    registry = commands.add_parser(
        "registry", help="deploy, list or prune a registry", allow_abbrev=False,
        description="Deploy a registry, list its entries, or remove one as its owner.",
        epilog=_EPILOG, formatter_class=raw,
    )  # fmt: skip
    sub = registry.add_subparsers(dest="action", required=True, metavar="ACTION")
    deploy = sub.add_parser(
        "deploy", allow_abbrev=False, epilog=_epilog("deploy"), formatter_class=raw,
        help="deploy a new registry owned by the account; print its address",
        description="Deploy a new, empty relay registry owned by the account and print its "
        "address. With --name, point that ENS name at it (deploying an ENS registry when the "
        "chain has none, and a resolver when the name has none).",
    )  # fmt: skip
    _common(deploy, registry=False, key=True)
    deploy.add_argument("--name", metavar="NAME", help="an ENS name to point at the registry")
    listing = sub.add_parser(
        "list", allow_abbrev=False, epilog=_epilog("list"), formatter_class=raw,
        help="print the registry's entries",
        description="Read every entry with calls only and print them as relay-list entries.",
    )  # fmt: skip
    _common(listing, registry=True, key=False)
    listing.add_argument("--json", action="store_true", help="print one JSON document")
    remove = sub.add_parser(
        "remove", allow_abbrev=False, epilog=_epilog("remove"), formatter_class=raw,
        help="remove any entry (the registry's owner only)",
        description="Remove the entry of any relay; only the registry's owner may.",
    )  # fmt: skip
    _common(remove, registry=True, key=True)
    remove.add_argument("--relay-id", required=True, metavar="ID", help="the relay's meshcore id")

    register = commands.add_parser(
        "register", allow_abbrev=False, epilog=_epilog("register"), formatter_class=raw,
        help="register this relay, or update its entry",
        description="Register this relay in the registry from its Ethereum account, or update "
        "the account's entry. The relay id comes from the relay's identity file.",
    )  # fmt: skip
    _common(register, registry=True, key=True)
    register.add_argument(
        "--identity",
        metavar="RELAY_KEY",
        help="the relay's identity file (default: the relay's own, as `meshcore-relay id`)",
    )
    register.add_argument(
        "--url", required=True, metavar="URL", help="where peers reach the relay (ws:// or wss://)"
    )
    register.add_argument("--region", default="", metavar="R", help="e.g. eu-west (optional)")

    deregister = commands.add_parser(
        "deregister", allow_abbrev=False, epilog=_epilog("deregister"), formatter_class=raw,
        help="remove this account's entry",
        description="Remove the entry of the account from the registry.",
    )  # fmt: skip
    _common(deregister, registry=True, key=True)
    return parser


def _relay_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"--url {url!r} must be ws://HOST:PORT/ or wss://HOST/ (peers dial it)")
    return url


def _run(args: argparse.Namespace) -> int:
    from meshcore.chain import read_registry
    from meshcore.chain._rpc import require_web3
    from meshcore.chain.keyfile import load_account_key
    from meshcore.chain.names import parse_address, parse_contract_ref
    from meshcore.chain.transact import (
        Writer,
        check_entry_fields,
        deploy_registry,
        deregister_relay,
        point_name,
        register_relay,
        remove_relay,
    )
    from meshcore.proto.identity import PeerId
    from meshcore_relay.identity import configured_identity_path, load_relay_identity

    require_web3()
    ens = parse_address(args.ens, what="--ens") if args.ens else None
    has_registry = hasattr(args, "registry")
    ref = parse_contract_ref(args.registry, what="--registry") if has_registry else None

    if args.command == "registry" and args.action == "list":
        if args.chain_id is None:
            raise ConfigError("registry list needs --chain-id N (the chain the registry is on)")
        listing = read_registry(args.rpc, args.registry, chain_id=args.chain_id, ens_registry=ens)
        if args.json:
            doc = {
                "source": listing.source,
                "contract": listing.contract,
                "block": listing.block_number,
                "entries": list(listing.entries),
                "problems": [str(p) for p in listing.problems],
            }
            print(json.dumps(doc, indent=2))
        else:
            print(f"# {listing.source} contract {listing.contract} block {listing.block_number}")
            for entry in listing.entries:
                region = f" region={entry['region']}" if "region" in entry else ""
                print(f"{entry['id']} {entry['url']}{region}")
            for problem in listing.problems:
                print(f"# skipped: {problem}")
        return EXIT_OK

    relay_id = b""
    url = ""
    if args.command == "register":  # check every local input before touching the network
        url = _relay_url(args.url)
        path = configured_identity_path(args.identity)
        relay_id = load_relay_identity(path).peer_id.digest
        check_entry_fields(url, relay_id, args.region)
    if args.command == "registry" and args.action == "remove":
        relay_id = PeerId.from_text(args.relay_id).digest
    name = None
    if args.command == "registry" and args.action == "deploy" and args.name:
        name = parse_contract_ref(args.name, what="--name").name
        if name is None:
            raise ConfigError(f"--name {args.name!r} must be an ENS name, not an address")
    key = load_account_key(args.account_key)
    writer = Writer(args.rpc, key, chain_id=args.chain_id)

    if args.command == "registry" and args.action == "deploy":
        address = deploy_registry(writer)
        print(address)
        if name is not None:
            setup = point_name(writer, name, address, ens_registry=ens)
            if "EnsRegistry" in setup.deployed:
                _note(
                    f"deployed an ENS registry at {setup.ens_registry} (this chain had none); "
                    f"readers need --ens {setup.ens_registry}"
                )
            _note(f"{setup.name} now points at {address} (resolver {setup.resolver})")
        return EXIT_OK
    assert ref is not None
    registry = writer.find(ref, ens_registry=ens)
    if args.command == "register":
        outcome = register_relay(writer, registry, url=url, relay_id=relay_id, region=args.region)
        print(f"{outcome}: relay {PeerId(relay_id)} at {url} in the registry at {registry}")
    elif args.command == "deregister":
        deregister_relay(writer, registry)
        print(f"deregistered: account {writer.address} from the registry at {registry}")
    else:
        remove_relay(writer, registry, relay_id)
        print(f"removed: relay {PeerId(relay_id)} from the registry at {registry}")
    return EXIT_OK


def _note(line: str) -> None:
    print(f"meshcore-relay: {line}", file=sys.stderr)


def main(argv: Sequence[str]) -> int:
    """Run one registry command; returns the exit status."""
    args = _parser().parse_args(list(argv))
    try:
        return _run(args)
    except ConfigError as exc:
        print(f"meshcore-relay: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except MeshError as exc:
        print(f"meshcore-relay: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("meshcore-relay: interrupted", file=sys.stderr)
        return 130
