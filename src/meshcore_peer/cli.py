"""`meshcore-peer`: identities, netcat-style sessions through a relay, and the demo.

meshcore-peer genkey [--identity FILE]
meshcore-peer id [--identity FILE]
meshcore-peer connect --relay URL[#ID] [--relay ...] [--identity FILE] PEER_ID
meshcore-peer listen --relay URL[#ID] [--relay ...] --allow PEER_ID[,...] [--exec CMD]
meshcore-peer relays [--json]
meshcore-peer status [--json] | ping PEER [-c N] [--until-direct] | netcheck [--relay URL ...]
meshcore-peer demo
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import attrs
import trio

import meshcore
from meshcore import (
    ConfigError,
    FileReceiveStream,
    FileSendStream,
    Identity,
    MeshError,
    PathSettings,
    PeerCollector,
    PeerId,
    Session,
    SessionRegistry,
    control_request,
    default_control_path,
    open_hidden_nursery,
    open_meeting,
    open_peer_session,
    pipe_command,
    pipe_session,
    serve,
    serve_control,
    serve_metrics,
)
from meshcore.logs import describe_error, setup_logging
from meshcore_peer import netcheck, show
from meshcore_peer.config import PeerConfig, load_peer_config
from meshcore_peer.lifecycle import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_STATUS_HELP,
    EXIT_USAGE,
    Stopping,
    connect_status,
    interrupted_status,
    leaf_error,
    run_until_signalled,
)
from meshcore_peer.relays_cmd import (
    add_relays_parser,
    print_connections,
    relays_report,
    run_relays,
)
from meshcore_peer.relaysettings import (
    add_relay_flags,
    check_relay_source,
    open_relays,
    relay_overrides,
)
from meshcore_peer.up import add_up_parser, run_up

__all__ = ["main"]

log = logging.getLogger("meshcore.peer")

_EPILOG = """\
examples:
  meshcore-peer genkey --identity alice.key
  meshcore-peer id --identity alice.key
  meshcore-peer listen --relay ws://127.0.0.1:7443 --identity bob.key --allow ALICE_ID
  meshcore-peer connect --relay ws://127.0.0.1:7443 --identity alice.key BOB_ID < file
  meshcore-peer listen --relays-file relays.toml --identity bob.key --allow ALICE_ID
  meshcore-peer relays --json
  meshcore-peer status; meshcore-peer ping BOB_ID
  meshcore-peer netcheck --relay ws://relay1:7443 --relay ws://relay2:7443
  meshcore-peer demo

Settings come from flags, then MESHCORE_PEER_* environment variables, then --config FILE.toml.
"""


def default_identity_path() -> Path:
    """Where the identity lives when --identity is not given."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "meshcore" / "identity.key"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshcore-peer",
        description="Post-quantum, end-to-end encrypted peer-to-peer sessions through a relay.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"meshcore {meshcore.__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="FILE.toml", help="read settings from a TOML file")
    common.add_argument(
        "--identity", metavar="FILE", help=f"identity key file (default: {default_identity_path()})"
    )
    common.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="default: info"
    )
    common.add_argument("--log-format", choices=["text", "json"], help="default: text")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("genkey", parents=[common], help="create a new identity file (mode 0600)")
    p.add_argument("--force", action="store_true", help="overwrite an existing identity file")
    sub.add_parser("id", parents=[common], help="print this identity's peer id to share")

    p = sub.add_parser(
        "connect",
        parents=[common],
        help="pipe stdin/stdout through a session with a peer",
        description="Pipe stdin to the peer and the peer to stdout, with half-close: when "
        "stdin ends the peer sees its end, and connect exits once the peer's answer ended "
        "too (as nc -N or socat). Works as an ssh ProxyCommand.",
        epilog=EXIT_STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_relay_flags(p)
    p.add_argument("peer", metavar="PEER_ID", nargs="?", help="the peer's id")

    p = sub.add_parser(
        "listen",
        parents=[common],
        help="serve sessions from allowed peers",
        epilog="On SIGHUP, SIGTERM or SIGINT every session is closed (the peer is told), the "
        "relay connection closed and the control socket removed; the exit status is 0.",
    )
    add_relay_flags(p)
    p.add_argument(
        "--allow",
        metavar="PEER_ID[,...]",
        action="append",
        help="peer ids allowed to connect (repeat or comma-separate)",
    )
    p.add_argument(
        "--exec",
        dest="exec_",
        metavar="CMD",
        help="run CMD for each session, piping the session to its stdin and stdout",
    )
    p.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (a bare port: 127.0.0.1)",
    )

    for name in ("connect", "listen"):
        group = sub.choices[name].add_mutually_exclusive_group()
        group.add_argument(
            "--no-direct",
            dest="direct",
            action="store_const",
            const="never",
            help="stay on the relay (no direct connection attempts)",
        )
        group.add_argument(
            "--direct-only",
            dest="direct",
            action="store_const",
            const="only",
            help="fail unless a direct path works (the relay only introduces the peers)",
        )
        sub.choices[name].add_argument(
            "--direct-retry",
            dest="direct_retry_s",
            type=float,
            metavar="SECONDS",
            help="pause between direct-path attempts while on the relay (default 60, jittered)",
        )
        sub.choices[name].add_argument(
            "--control",
            metavar="PATH",
            help="control socket for status/ping (listen default: "
            f"{default_control_path()}; connect: none unless given)",
        )
    p = sub.add_parser("status", parents=[common], help="show the running peer's sessions")
    p.add_argument("--json", action="store_true", help="one JSON object per session")
    p.add_argument("--control", metavar="PATH", help="the running peer's control socket")
    p = sub.add_parser("ping", parents=[common], help="ping a peer through its session")
    p.add_argument("peer", metavar="PEER", help="peer id (or a unique prefix), or its name")
    p.add_argument("-c", "--count", type=int, default=10, help="pings to send at most (default 10)")
    p.add_argument(
        "--until-direct",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stop at the first reply over a direct path (default: yes)",
    )
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="between pings (1)"
    )
    p.add_argument("--control", metavar="PATH", help="the running peer's control socket")
    netcheck.add_parser(sub, common)

    p = sub.add_parser(
        "demo", parents=[common], help="run a relay and two peers on loopback and show each step"
    )
    p.add_argument("--messages", type=int, default=2000, help="messages to time (default 2000)")
    add_up_parser(sub, common)
    add_relay_flags(add_relays_parser(sub, common))
    return parser


def _load(args: argparse.Namespace) -> PeerConfig:
    overrides: dict[str, object] = relay_overrides(args)
    keys = ("identity", "log_level", "log_format", "exec_", "peer", "direct")
    for key in (*keys, "direct_retry_s", "metrics"):
        value = getattr(args, key, None)
        if value is not None:
            overrides[key.rstrip("_")] = value
    allow = getattr(args, "allow", None)
    if allow:
        overrides["allow"] = [p.strip() for item in allow for p in item.split(",") if p.strip()]
    return load_peer_config(Path(args.config) if args.config else None, overrides)


def _identity_path(config: PeerConfig) -> Path:
    return Path(config.identity) if config.identity else default_identity_path()


def _cmd_genkey(config: PeerConfig, force: bool) -> int:
    path = _identity_path(config)
    if path.exists() and not force:
        raise ConfigError(
            f"identity file {path} already exists; refusing to overwrite it (a new key "
            "changes your peer id); delete it first or pass --force"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    identity = Identity.generate()
    identity.save(path, overwrite=force)
    print(f"wrote new identity to {path} (mode 0600)", file=sys.stderr)
    print(identity.peer_id.to_text())
    return EXIT_OK


def _cmd_id(config: PeerConfig) -> int:
    print(Identity.load(_identity_path(config)).peer_id.to_text())
    return EXIT_OK


def _paths(config: PeerConfig) -> PathSettings:
    retry = config.direct_retry_s
    return PathSettings(retry_s=retry, retry_max_s=max(retry, PathSettings().retry_max_s))


def _require(value: str | None, what: str, flag: str) -> str:
    if not value:
        raise ConfigError(f"{what} is missing: pass {flag} or set it in the config file")
    return value


async def _run_connect(config: PeerConfig, control: Path | None, stopping: Stopping) -> int:
    check_relay_source(config.relay, config.relays, config.relays_file, config.registry)
    peer = PeerId.from_text(_require(config.peer, "the peer id", "PEER_ID"))
    identity = Identity.load(_identity_path(config))
    registry = SessionRegistry()
    paths = attrs.evolve(_paths(config), mode=config.direct)
    async with (
        open_relays(
            config.relay, config.relays, config.relays_file, config.state_dir, config.registry
        ) as relay,
        open_hidden_nursery() as nursery,
    ):
        if control is not None:
            await nursery.start(serve_control, control, registry)
        async with (
            open_meeting(
                relay,
                identity,
                direct=config.direct != "never",
                rendezvous_k=config.rendezvous_k,
            ) as meeting,
            open_peer_session(meeting, peer, path_settings=paths) as session,
        ):
            registry.relays = partial(relays_report, meeting)
            with registry.registered(session):
                try:
                    sent, received = await pipe_session(
                        session,
                        FileReceiveStream(sys.stdin.buffer),
                        FileSendStream(sys.stdout.buffer),
                    )
                finally:
                    await _close_if_stopping(session, stopping)
        nursery.cancel_scope.cancel()
    log.info("done: sent %d bytes (all acknowledged), received %d bytes", sent, received)
    return EXIT_OK


async def _close_if_stopping(session: Session, stopping: Stopping) -> None:
    """Close `session` telling the peer why, once a signal stopped the command (bounded,
    and shielded by `Session.aclose` itself)."""
    if stopping.reason is not None:
        await session.aclose(stopping.reason)


async def _pipe_to_process(command: str, session: Session) -> None:
    code = await pipe_command(session, shlex.split(command))
    log.info("command %r for session with %s exited with %d", command, session.peer_id, code)


async def _run_listen(config: PeerConfig, control: Path | None, stopping: Stopping) -> int:
    if not config.allow:
        raise ConfigError("no peer is allowed: pass --allow PEER_ID[,...] or set allow = [...]")
    allow = [PeerId.from_text(p) for p in config.allow]
    identity = Identity.load(_identity_path(config))
    sink = FileSendStream(sys.stdout.buffer)
    command = config.exec

    registry = SessionRegistry()

    async def handler(session: Session) -> None:
        log.info("session from %s", session.peer_id)
        with registry.registered(session):
            try:
                if command:
                    await _pipe_to_process(command, session)
                else:
                    await pipe_session(session, None, sink)
            finally:
                await _close_if_stopping(session, stopping)
        log.info("session from %s done", session.peer_id)

    collector = PeerCollector(registry)
    async with (
        open_relays(
            config.relay, config.relays, config.relays_file, config.state_dir, config.registry
        ) as relay,
        open_hidden_nursery() as nursery,
    ):
        if config.metrics is not None:
            await nursery.start(serve_metrics, config.metrics, [collector])
        if control is None:
            await nursery.start(
                partial(serve_control, default_control_path(), registry, required=False)
            )
        else:
            await nursery.start(serve_control, control, registry)
        meeting = await nursery.start(
            partial(
                serve,
                relay,
                identity,
                allow,
                handler,
                direct=config.direct,
                path_settings=_paths(config),
                rendezvous_k=config.rendezvous_k,
            )
        )
        collector.relay = meeting
        registry.relays = partial(relays_report, meeting)
        shown = relay if isinstance(relay, str) else f"the relays of {relay.source}"
        log.info(
            "listening as %s via %s for %d allowed peer(s)", identity.peer_id, shown, len(allow)
        )
        await trio.sleep_forever()  # serve runs until a signal cancels it, or it fails
    return EXIT_OK


async def _run_status(control: Path, as_json: bool) -> int:
    rows = [entry async for entry in control_request(control, {"cmd": "status"})]
    if as_json:
        for row in rows:
            print(json.dumps(show.status_json(row)))
    else:
        for line in show.format_status(rows):
            print(line)
        await print_connections(control)
    return EXIT_OK


async def _run_ping(
    control: Path, peer: str, count: int, until_direct: bool, interval: float
) -> int:
    if count < 1:
        raise ConfigError(f"--count must be at least 1, got {count}")
    if interval < 0:
        raise ConfigError(f"--interval must be 0 or more seconds, got {interval:g}")
    request = {
        "cmd": "ping",
        "peer": peer,
        "count": count,
        "until_direct": until_direct,
        "interval": interval,
    }
    replies = 0
    async for answer in control_request(control, request):
        if answer.get("summary"):
            print(show.format_ping_summary(answer))
            continue
        replies += "error" not in answer
        print(show.format_ping_reply(answer, peer))
    return EXIT_OK if replies else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `meshcore-peer`; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "up":
        return run_up(args)  # its own settings (a TOML with a [[peers]] table) and errors
    try:
        config = _load(args)
        quiet = args.command == "demo" and args.log_level is None
        setup_logging("warning" if quiet else config.log_level, config.log_format)
        if args.command == "genkey":
            return _cmd_genkey(config, args.force)
        if args.command == "id":
            return _cmd_id(config)
        control = Path(args.control) if getattr(args, "control", None) else None
        if args.command in ("connect", "listen"):
            return _run_signalled(args.command, config, control)
        if args.command == "status":
            return trio.run(_run_status, control or default_control_path(), args.json)
        if args.command == "ping":
            where = control or default_control_path()
            return trio.run(
                _run_ping, where, args.peer, args.count, args.until_direct, args.interval
            )
        if args.command == "netcheck":
            return trio.run(netcheck.run_netcheck, config, args)
        if args.command == "relays":
            return trio.run(
                partial(
                    run_relays,
                    control=control,
                    as_json=args.json,
                    relay=config.relay,
                    relays=config.relays,
                    relays_file=config.relays_file,
                    chain=config.registry,
                    state_dir=config.state_dir,
                    rendezvous_k=config.rendezvous_k,
                    identity_path=_identity_path(config),
                )
            )
        if args.command == "demo":
            from meshcore_peer.demo import run_demo

            return trio.run(run_demo, args.messages)
    except (Exception, KeyboardInterrupt) as exc:  # every error: one line and a status
        return _report(args.command, leaf_error(exc))
    parser.error(f"unknown command {args.command!r}")
    return EXIT_USAGE  # pragma: no cover


def _run_signalled(command: str, config: PeerConfig, control: Path | None) -> int:
    """Run connect or listen until done or a signal (`meshcore_peer.lifecycle`)."""
    work = partial(_run_connect if command == "connect" else _run_listen, config, control)
    ending = trio.run(partial(run_until_signalled, work, name=command))
    if ending.signal is None:
        assert ending.status is not None
        return ending.status
    log.info("%s: stopped by %s", command, ending.signal.name)
    return interrupted_status(ending.signal) if command == "connect" else EXIT_OK


def _report(command: str, exc: BaseException) -> int:
    """Say what ended the command in one line on stderr; returns the exit status. Only an
    unexpected error shows its traceback, and only with --log-level debug."""
    if isinstance(exc, ConfigError):
        print(f"meshcore-peer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if isinstance(exc, KeyboardInterrupt):  # before the signal handler was installed
        print("meshcore-peer: interrupted", file=sys.stderr)
        return interrupted_status(2)
    known = connect_status(exc) if command == "connect" else None
    if known is not None:
        status, line = known
        print(f"meshcore-peer: {line}", file=sys.stderr)
        return status
    if isinstance(exc, MeshError):
        print(f"meshcore-peer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
        print(f"meshcore-peer: session failed: {describe_error(exc)}", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(exc, BrokenPipeError):  # whoever read our stdout went away
        _silence_stdout()
        print("meshcore-peer: stdout was closed by its reader", file=sys.stderr)
        return EXIT_FAILED
    if isinstance(exc, OSError):
        print(f"meshcore-peer: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"meshcore-peer: unexpected error: {type(exc).__name__}: {exc}", file=sys.stderr)
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        log.debug("traceback of the error above", exc_info=exc)
    else:
        print("meshcore-peer: (run with --log-level debug for the traceback)", file=sys.stderr)
    return EXIT_FAILED


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that flushing it at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
