"""`meshcore-peer netcheck`: what this host looks like from the relays it knows, and what that
means for direct paths (in the shape of `tailscale netcheck`).

    meshcore-peer netcheck --relay ws://relay1:7443 --relay ws://relay2:7443 [--json]

Each relay address is asked, from one shared local port, which address it sees us at
(meshcore's `netcheck`); two relays (or two addresses of one) tell whether the NAT's mapping
varies by destination. Nothing registers, so a running peer with the same identity is never
disturbed. Exit status 0 if any relay answered, 1 if none did, 2 for bad flags.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from meshcore import ConfigError, NetcheckReport, RelayProbe, netcheck
from meshcore_peer.config import PeerConfig
from meshcore_peer.show import format_rtt

__all__ = ["add_parser", "format_report", "report_json", "run_netcheck"]

EXIT_OK = 0
EXIT_FAILED = 1


def add_parser(subparsers: Any, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `netcheck` subcommand to `subparsers`, with the `common` options."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "netcheck",
        parents=[common],
        help="what this host's network looks like from the relays, and what it means for "
        "direct paths",
    )
    p.add_argument(
        "--relay",
        dest="relays",
        metavar="URL",
        action="append",
        help="a relay to ask (repeat it: two relays tell whether the NAT's mapping varies by "
        "destination; default: the configured relay)",
    )
    p.add_argument(
        "--local-port",
        type=int,
        default=0,
        metavar="PORT",
        help="the local port to ask from (default: a free one)",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return p


async def run_netcheck(config: PeerConfig, args: argparse.Namespace) -> int:
    """Run the probes and print the report; returns the exit status."""
    urls = list(args.relays or ([config.relay] if config.relay else []))
    if not urls:
        raise ConfigError("no relay to ask: pass --relay URL (repeatable) or set relay = ...")
    if not 0 <= args.local_port <= 0xFFFF:
        raise ConfigError(f"--local-port must be 0..65535, got {args.local_port}")
    report = await netcheck(urls, local_port=args.local_port)
    if args.json:
        print(json.dumps(report_json(report)))
    else:
        print("\n".join(format_report(report)))
    answered = report.ipv4.reachable or report.ipv6.reachable
    return EXIT_OK if answered else EXIT_FAILED


def _yes_no(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


def _probe_line(probe: RelayProbe) -> str:
    where = f"{probe.url} ({probe.relay})" if probe.relay is not None else probe.url
    if probe.error is not None:
        return f"- {where}: {probe.error}"
    return f"- {where}: {format_rtt(probe.latency_s)}, sees us at {probe.observed}"


def format_report(report: NetcheckReport) -> list[str]:
    """The report as lines: reachability and address per family, the NAT's behaviour, the
    verdict for direct paths, and the latency to every relay address."""
    lines = ["Report:"]
    for family in (report.ipv4, report.ipv6):
        seen = ", ".join(map(str, family.observed))
        lines.append(f"  * IPv{family.family}: {'yes, ' + seen if family.reachable else 'no'}")
    main = report.ipv4 if report.ipv4.reachable or not report.ipv6.reachable else report.ipv6
    if main.reachable:
        lines.append(
            f"  * Mapping: {main.mapping.value} (keeps the port: {_yes_no(main.preserves_port)}; "
            f"varies by destination: {_yes_no(main.varies_by_destination)})"
        )
    lines.append(f"  * Direct paths: {report.verdict}")
    lines.append("  * Relays:")
    lines.extend(f"      {_probe_line(p)}" for p in report.probes)
    return lines


def _family_json(report: NetcheckReport, family: int) -> dict[str, Any]:
    f = report.ipv4 if family == 4 else report.ipv6
    return {
        "reachable": f.reachable,
        "observed": [str(e) for e in f.observed],
        "mapping": f.mapping.name.lower(),
        "preserves_port": f.preserves_port,
        "varies_by_destination": f.varies_by_destination,
        "verdict": f.verdict,
    }


def report_json(report: NetcheckReport) -> dict[str, Any]:
    """The report as one JSON-ready object, with the same fields as the text."""
    return {
        "ipv4": _family_json(report, 4),
        "ipv6": _family_json(report, 6),
        "verdict": report.verdict,
        "relays": [
            {
                "url": p.url,
                "address": None if p.relay is None else str(p.relay),
                "local": None if p.local is None else str(p.local),
                "observed": None if p.observed is None else str(p.observed),
                "latency_ms": None if p.latency_s is None else round(p.latency_s * 1e3, 3),
                "connect_ms": None if p.connect_s is None else round(p.connect_s * 1e3, 3),
                "error": p.error,
            }
            for p in report.probes
        ],
    }
