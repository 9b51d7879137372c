"""How `meshcore-peer status` and `ping` print what a running peer answers, in the shape
people know from `tailscale status` / `tailscale ping`: one line per session, one line per
pong, and a last line that says whether a direct path was established.

Pure functions of the control socket's JSON answers (meshcore's `control_request`), so the
formatting is tested without a running peer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "format_age",
    "format_bytes",
    "format_ping_reply",
    "format_ping_summary",
    "format_rtt",
    "format_status",
    "peer_label",
    "status_json",
]

Row = Mapping[str, Any]


def format_bytes(n: object) -> str:
    """A byte count as people read it: "512 B", "1.5 KiB", "12.0 MiB" (binary units)."""
    if not isinstance(n, int) or isinstance(n, bool):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def format_age(seconds: object) -> str:
    """A duration: "42s", "3m05s", "2h07m", "3d04h"."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_rtt(seconds: object) -> str:
    """A round trip: "0.38 ms", "12.3 ms", "1.25 s"; "-" when unknown."""
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "-"
    ms = seconds * 1e3
    if ms < 10:
        return f"{ms:.2f} ms"
    if ms < 1000:
        return f"{ms:.1f} ms"
    return f"{seconds:.2f} s"


def peer_label(row: Row) -> str:
    """The peer's configured name if it has one, else its id."""
    name = row.get("name")
    return str(name) if name else str(row.get("peer_id", "?"))


def _via(row: Row) -> str:
    udp = row.get("datagram_path")
    datagrams = f" (udp {udp})" if udp and udp != "off" else ""
    if row.get("path") == "direct":
        return f"direct {row.get('remote_address') or '?'}{datagrams}"
    relay = row.get("relay") or row.get("remote_address") or "?"
    return f'relay "{relay}"{datagrams}'


def format_status(rows: Sequence[Row]) -> list[str]:
    """One line per session, columns aligned: peer, `direct ADDRESS:PORT` or `relay "URL"`,
    RTT, bytes each way, age, migrations, and why it is not direct (when it is not)."""
    if not rows:
        return ["no sessions"]
    table = [
        [
            peer_label(row),
            _via(row),
            f"rtt {format_rtt(row.get('rtt_s'))}",
            f"tx {format_bytes(row.get('bytes_sent'))}",
            f"rx {format_bytes(row.get('bytes_received'))}",
            f"age {format_age(row.get('age_s'))}",
            f"migrations {row.get('migrations', 0)}",
            f"not direct: {row['not_direct_reason']}" if row.get("not_direct_reason") else "",
        ]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in table
    ]


def status_json(row: Row) -> dict[str, Any]:
    """The JSON object `status --json` prints for a session: every field the control socket
    gave (the ones the line shows among them) and `rtt_ms`."""
    out = dict(row)
    rtt = row.get("rtt_s")
    out["rtt_ms"] = round(rtt * 1e3, 3) if isinstance(rtt, int | float) else None
    return out


def format_ping_reply(reply: Row, peer: str) -> str:
    """One line per reply: `pong from PEER via relay "URL" in 2.10 ms` or `... via
    ADDRESS:PORT in 0.38 ms` (a direct path), or the error of a ping that got none."""
    if "error" in reply:
        return f"ping {reply.get('seq', '?')} to {peer}: no reply: {reply['error']}"
    rtt_ms = reply.get("rtt_ms")
    rtt = format_rtt(rtt_ms / 1e3) if isinstance(rtt_ms, int | float) else "-"
    if reply.get("path") == "direct":
        via = str(reply.get("address") or "a direct path")
    else:
        via = f'relay "{reply.get("relay") or "?"}"'
    return f"pong from {peer} via {via} in {rtt}"


def format_ping_summary(summary: Row) -> str:
    """The last line: whether a direct path was established, where, and if not, why not."""
    if summary.get("direct"):
        return f"direct connection established: {summary.get('address') or '?'}"
    reason = summary.get("not_direct_reason")
    return "direct connection not established" + (f": {reason}" if reason else "")
