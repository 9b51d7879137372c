"""`meshcore-peer relays`: the relays of the registry with their ids, this peer's rendezvous
relays, each connection's state and round trip, and where the list came from.

From a running peer through its control socket (`{"cmd": "relays"}`), or, when none runs,
from the config alone (saying so). `relays_report` is what a running peer answers.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from meshcore import (
    ConfigError,
    ControlRequestFailed,
    Identity,
    RelayClient,
    RelayNetwork,
    control_request,
    default_control_path,
    rendezvous_relays,
)
from meshcore_peer.chainsettings import ChainTable
from meshcore_peer.relaysettings import RelayTable, open_relays

__all__ = ["add_relays_parser", "print_connections", "relays_report", "run_relays"]

EXIT_OK = 0


def add_relays_parser(subparsers: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `relays` subcommand (its relay flags come from `relaysettings`)."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "relays",
        parents=[common],
        help="list the relays, this peer's rendezvous relays and each connection's state",
        description=(
            "Ask the running peer (its --control socket) which relays it uses: every relay of "
            "the list with its id, the peer's rendezvous relays, each connection's state, "
            "round trip and circuits, and where the list came from. Without a running peer, "
            "the same from the config alone."
        ),
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--control", metavar="PATH", help="the running peer's control socket")
    return p


# --- what a running peer reports -------------------------------------------------------------


def relays_report(meeting: RelayClient | RelayNetwork) -> dict[str, Any]:
    """The JSON-ready report of the relays `meeting` uses (the control socket's answer)."""
    if isinstance(meeting, RelayClient):
        client = meeting
        state = (
            "connected"
            if client.connected
            else ("closed" if client.close_reason else "reconnecting")
        )
        return {
            "peer_id": client.identity.peer_id.to_text(),
            "running": True,
            "source": f"relay {client.url}",
            "age_s": None,
            "from_cache": False,
            "last_error": None,
            "rendezvous_k": 1,
            "rendezvous": [client.url],
            "relays": [
                {
                    "url": client.url,
                    "id": None,
                    "region": "",
                    "rendezvous": True,
                    "role": "home",
                    "state": state,
                    "verified": False,
                    "last_error": client.lost_reason or client.close_reason,
                    "rtt_ms": None,
                    "circuits": client.circuits,
                    "registrations": client.registrations,
                    "observed": str(client.observed) if client.observed else None,
                }
            ],
        }
    network = meeting
    ours = {e.url for e in network.home_relays}
    connections = {c.url: c for c in network.connections()}
    rows = []
    for entry in network.entries:
        conn = connections.pop(entry.url, None)
        rows.append(_row(entry.url, entry.relay_id, entry.region, entry.url in ours, conn))
    for conn in connections.values():  # left the list, not closed yet
        rows.append(_row(conn.url, None, conn.region, False, conn))
    listing = network.listing
    registry = network.registry
    return {
        "peer_id": network.identity.peer_id.to_text(),
        "running": True,
        "source": listing.source if listing is not None else "a fixed list",
        "age_s": round(listing.age_s(), 1) if listing is not None else None,
        "from_cache": listing.from_cache if listing is not None else False,
        "block_number": listing.block_number if listing is not None else None,
        "last_error": registry.last_error if registry is not None else None,
        "rendezvous_k": network.rendezvous_k,
        "rendezvous": [e.url for e in network.home_relays],
        "relays": rows,
    }


def _row(url: str, relay_id: Any, region: str, ours: bool, conn: Any) -> dict[str, Any]:
    return {
        "url": url,
        "id": relay_id.to_text() if relay_id is not None else (conn.relay_id if conn else None),
        "region": region,
        "rendezvous": ours,
        "role": conn.role if conn is not None else None,
        "state": conn.state if conn is not None else "not connected",
        "verified": conn.verified if conn is not None else False,
        "last_error": conn.last_error if conn is not None else None,
        "rtt_ms": round(conn.rtt_s * 1e3, 2) if conn is not None and conn.rtt_s else None,
        "circuits": conn.circuits if conn is not None else 0,
        "registrations": conn.registrations if conn is not None else 0,
        "observed": conn.observed if conn is not None else None,
    }


# --- the command -----------------------------------------------------------------------------


async def _from_config(
    relay: str | None,
    relays: Sequence[RelayTable],
    relays_file: str | None,
    state_dir: str | None,
    rendezvous_k: int,
    identity: Identity | None,
    chain: ChainTable | None,
) -> dict[str, Any]:
    block: int | None = None
    async with open_relays(relay, relays, relays_file, state_dir, chain) as source:
        if isinstance(source, str):
            entries = []
            rows = [_row(source, None, "", True, None)]
            origin, age, cached, error = f"relay {source}", None, False, None
        else:
            entries = list(source.entries)
            ours = (
                {e.url for e in rendezvous_relays(identity.peer_id, entries, rendezvous_k)}
                if identity is not None
                else set()
            )
            rows = [_row(e.url, e.relay_id, e.region, e.url in ours, None) for e in entries]
            listing = source.listing
            origin, age, cached = listing.source, round(listing.age_s(), 1), listing.from_cache
            error, block = source.last_error, listing.block_number
    homes = [r["url"] for r in rows if r["rendezvous"]]
    return {
        "peer_id": identity.peer_id.to_text() if identity is not None else None,
        "running": False,
        "source": origin,
        "age_s": age,
        "from_cache": cached,
        "block_number": block,
        "last_error": error,
        "rendezvous_k": rendezvous_k if entries else 1,
        "rendezvous": homes,
        "relays": rows,
    }


async def run_relays(
    *,
    control: Path | None,
    as_json: bool,
    relay: str | None,
    relays: Sequence[RelayTable],
    relays_file: str | None,
    state_dir: str | None,
    rendezvous_k: int,
    identity_path: Path,
    chain: ChainTable | None = None,
) -> int:
    """`meshcore-peer relays`: print the running peer's report, or the config's."""
    path = control or default_control_path()
    report: dict[str, Any] | None = None
    note = ""
    try:
        async for answer in control_request(path, {"cmd": "relays"}):
            report = answer
    except ControlRequestFailed as exc:
        if not isinstance(exc.__cause__, OSError):
            raise
        note = f"no running peer answers on {path}: from the config alone"
    if report is None:
        try:
            identity: Identity | None = Identity.load(identity_path)
        except ConfigError:
            identity = None
            note += f" (no identity at {identity_path}: the rendezvous relays are not known)"
        report = await _from_config(
            relay, relays, relays_file, state_dir, rendezvous_k, identity, chain
        )
        report["note"] = note.strip()
    if as_json:
        print(json.dumps(report))
    else:
        _print_table(report)
    return EXIT_OK


async def print_connections(control: Path) -> None:
    """The running peer's relay connections, one line each (for `status`); nothing if it
    reports none."""
    try:
        answers = [a async for a in control_request(control, {"cmd": "relays"})]
    except ControlRequestFailed:
        return
    for report in answers:
        for relay in report.get("relays", []):
            if relay.get("role") is None:
                continue
            rtt = f", rtt {relay['rtt_ms']} ms" if relay.get("rtt_ms") else ""
            error = f": {relay['last_error']}" if relay.get("last_error") else ""
            print(
                f"relay {relay['url']} ({relay['role']}): {relay['state']}, "
                f"{relay['circuits']} circuit(s){rtt}{error}"
            )


_COLUMNS = (
    ("url", "url"),
    ("id", "id"),
    ("region", "region"),
    ("ours", "rendezvous"),
    ("role", "role"),
    ("state", "state"),
    ("rtt ms", "rtt_ms"),
    ("circuits", "circuits"),
    ("last error", "last_error"),
)


def _print_table(report: dict[str, Any]) -> None:
    if report.get("note"):
        print(report["note"])
    age = report.get("age_s")
    block = report.get("block_number")
    at = f", block {block}" if isinstance(block, int) else ""
    when = f", read {age:.0f} s ago" if isinstance(age, int | float) else ""
    cached = " (from cache: the source was unreachable)" if report.get("from_cache") else ""
    print(f"relays from {report['source']}{at}{when}{cached}")
    if report.get("last_error"):
        print(f"last refresh failed: {report['last_error']}")
    peer = report.get("peer_id") or "this peer"
    homes = ", ".join(report.get("rendezvous") or []) or "-"
    print(f"rendezvous relays of {peer} (k={report.get('rendezvous_k')}): {homes}")
    rows = []
    for relay in report.get("relays", []):
        cells = []
        for _, key in _COLUMNS:
            value = relay.get(key)
            if key == "rendezvous":
                value = "yes" if value else "no"
            elif key == "id" and isinstance(value, str):
                value = value[:12]
            cells.append("-" if value is None or value == "" else str(value))
        rows.append(cells)
    table = [[h for h, _ in _COLUMNS], *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(_COLUMNS))]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
