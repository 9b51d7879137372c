"""The relay's static identity: where its key file lives, loading it (or creating it on the
first start), and the `meshcore-relay genkey` and `meshcore-relay id` commands.

    meshcore-relay genkey [--identity FILE] [--config FILE.toml] [--force]
    meshcore-relay id [--identity FILE] [--config FILE.toml]

The relay id is the fingerprint of the identity's public keys; peers that have it in their
relay list check it on every connection (docs/relay.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from meshcore import ConfigError, Identity, MeshError

__all__ = [
    "COMMANDS",
    "configured_identity_path",
    "default_identity_path",
    "load_or_create_identity",
    "load_relay_identity",
    "main",
    "relay_identity_path",
]

log = logging.getLogger("meshcore.relay")

COMMANDS: Final = ("genkey", "id")
"""The first arguments that select these commands instead of running the relay."""

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

KEY_FILE: Final = "relay.key"


def default_identity_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the relay's identity lives without --identity: systemd's `$STATE_DIRECTORY`
    when set (its first entry), else `$XDG_STATE_HOME/meshcore`, else
    `~/.local/state/meshcore`."""
    env = os.environ if environ is None else environ
    state = env.get("STATE_DIRECTORY", "").split(":")[0]
    if state:
        return Path(state) / KEY_FILE
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "meshcore" / KEY_FILE


def relay_identity_path(configured: str | os.PathLike[str] | None) -> Path:
    """The identity file to use: the configured one, or the default."""
    return Path(configured) if configured else default_identity_path()


def load_relay_identity(path: Path) -> Identity:
    """Read the relay's identity file. Raises ConfigError naming the file and the fix."""
    if not os.path.lexists(path):
        raise ConfigError(
            f"relay identity file {path} does not exist; create one with `meshcore-relay "
            f"genkey --identity {path}` (or start the relay once, which creates it)"
        )
    return Identity.load(path)


def load_or_create_identity(path: Path) -> tuple[Identity, bool]:
    """The relay's identity from `path`, created (mode 0600, in a directory made 0700 if
    needed) when the file does not exist yet; and whether it was created.

    Raises ConfigError if the file cannot be read or written (the message names it).
    """
    if os.path.lexists(path):
        return Identity.load(path), False
    identity = Identity.generate()
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the directory of the relay identity file {path}: {exc.strerror}; "
            "create it or choose another file with --identity"
        ) from None
    try:
        identity.save(path)
    except ConfigError:
        if os.path.lexists(path):  # another relay starting at the same moment made it first
            return Identity.load(path), False
        raise
    return identity, True


def _parser() -> argparse.ArgumentParser:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="meshcore-relay",
        description="The relay's identity: its key file and relay id.",
        formatter_class=raw,
        allow_abbrev=False,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--identity",
        metavar="FILE",
        help=f"the relay's identity file (default: {default_identity_path()})",
    )
    common.add_argument(
        "--config", metavar="FILE.toml", help="take the identity file from the relay's settings"
    )
    genkey = commands.add_parser(
        "genkey", parents=[common], allow_abbrev=False, formatter_class=raw,
        help="create the relay's identity file (mode 0600) and print its relay id",
        description="Create a new relay identity file (mode 0600) and print its relay id. "
        "The relay also creates one on its first start.",
        epilog="examples:\n  meshcore-relay genkey\n  meshcore-relay genkey --identity "
        "/etc/meshcore/relay.key",
    )  # fmt: skip
    genkey.add_argument(
        "--force", action="store_true", help="replace an existing file (a new relay id)"
    )
    commands.add_parser(
        "id", parents=[common], allow_abbrev=False, formatter_class=raw,
        help="print the relay id, for peers' relay lists",
        description="Print the relay id of the relay's identity file: the id that peers put "
        "in their relay list next to the relay's URL.",
        epilog="examples:\n  meshcore-relay id\n  meshcore-relay id --identity relay.key",
    )  # fmt: skip
    return parser


def configured_identity_path(flag: str | None, config: str | None = None) -> Path:
    """The identity file as the relay would use it: `flag` (--identity), else the settings
    (`config` or $MESHCORE_RELAY_CONFIG, $MESHCORE_RELAY_IDENTITY), else the default.

    Raises ConfigError for settings that do not load.
    """
    from meshcore_relay.config import CONFIG_ENV, load_relay_settings

    overrides = {"identity": flag} if flag else {}
    path = config or os.environ.get(CONFIG_ENV) or None
    settings = load_relay_settings(path, overrides, {"identity": "--identity"})
    return relay_identity_path(settings.identity)


def main(argv: Sequence[str]) -> int:
    """Run `genkey` or `id`; returns the exit status."""
    args = _parser().parse_args(list(argv))
    try:
        path = configured_identity_path(args.identity, args.config)
        if args.command == "genkey":
            if os.path.lexists(path) and not args.force:
                raise ConfigError(
                    f"relay identity file {path} already exists; a new one would change the "
                    "relay id that peers check: pass --force to replace it, or choose "
                    "another --identity"
                )
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            identity = Identity.generate()
            identity.save(path, overwrite=args.force)
            print(f"wrote a new relay identity to {path} (mode 0600)", file=sys.stderr)
        else:
            identity = load_relay_identity(path)
        print(identity.peer_id.to_text())
        return EXIT_OK
    except ConfigError as exc:
        print(f"meshcore-relay: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(
            f"meshcore-relay: error: cannot create {exc.filename}: {exc.strerror}", file=sys.stderr
        )
        return EXIT_USAGE
    except MeshError as exc:
        print(f"meshcore-relay: {exc}", file=sys.stderr)
        return EXIT_FAILED
