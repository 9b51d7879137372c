"""What a router link of the lab does to its traffic: delay, a rate limit with a bounded
queue, random loss. A `Link` says it; the functions here turn it into `tc` and nftables
commands for the router's side of the link, so a host's own stack never sees the queue.

- Rate limit: a `tbf` shaper (a home uplink is a modem's FIFO drained at the line rate, not
  a policer: packets wait in a queue bounded by `queue_ms`, then drop). Towards the node it
  sits on the router's egress; from the node (its uplink) on an `ifb` device that the
  router's ingress redirects into.
- Loss: an nftables `numgen random` drop rule in the router's forward hook.
- Delay: `netem` where the kernel has it (`netem_available`), else the lab's userspace
  delay forwarder (`labtools.py delay`) between two TAP devices.
"""

from __future__ import annotations

import enum
import functools
import os
import secrets
from dataclasses import dataclass

from .labproc import LAB_PREFIX, LabError, run_command

__all__ = [
    "Direction",
    "Link",
    "LinkDevices",
    "loss_ruleset",
    "needs_ifb",
    "netem_available",
    "tc_commands",
]

_TBF_BURST_BYTES = 32 * 1024
"""Bytes the shaper may send at once: one GSO-sized burst, as a modem's small line buffer."""
_NETEM_LIMIT_PACKETS = 100_000
"""netem's own queue (packets in flight on the delayed wire): far above any BDP here."""
_LOSS_SCALE = 10_000
"""Loss resolution: `numgen random mod 10000 < N` gives steps of 0.01 %."""


class Direction(enum.Enum):
    """Which way across a router link an effect applies."""

    UP = "up"
    """From the node to the router: the node's uplink (a home's upload)."""
    DOWN = "down"
    """From the router to the node."""
    BOTH = "both"
    """Both ways."""

    def includes(self, other: Direction) -> bool:
        return self is Direction.BOTH or self is other


@dataclass(frozen=True)
class Link:
    """How the router's link to one node (the relay, or a host through its NAT) behaves.

    Zero delay, no rate and no loss is a plain veth. Each field is checked on creation.
    """

    delay_ms: float | None = None
    """One-way delay, each direction; None takes the topology's `delay_ms`."""
    rate_mbit: float | None = None
    """Rate limit in Mbit/s (a `tbf` shaper), None for none."""
    queue_ms: float = 20.0
    """The shaper's queue, as the time it takes to drain at the rate (tbf's `latency`)."""
    rate_direction: Direction = Direction.UP
    """Which way the rate limit applies (default: the node's uplink)."""
    loss_pct: float = 0.0
    """Percent of packets the router drops at random on this link."""
    loss_direction: Direction = Direction.BOTH
    """Which way the loss applies."""

    def __post_init__(self) -> None:
        problems = []
        if self.delay_ms is not None and self.delay_ms < 0:
            problems.append(f"delay_ms must be >= 0, got {self.delay_ms}")
        if self.rate_mbit is not None and not 0.01 <= self.rate_mbit <= 100_000:
            problems.append(f"rate_mbit must be within 0.01-100000, got {self.rate_mbit}")
        if not 0 < self.queue_ms <= 10_000:
            problems.append(f"queue_ms must be above 0 and at most 10000, got {self.queue_ms}")
        if not 0 <= self.loss_pct <= 100:
            problems.append(f"loss_pct must be within 0-100, got {self.loss_pct}")
        if problems:
            raise LabError("bad link: " + "; ".join(problems))

    def shaped(self, direction: Direction) -> bool:
        """True if traffic going `direction` passes the rate limit."""
        return self.rate_mbit is not None and self.rate_direction.includes(direction)


@dataclass(frozen=True)
class LinkDevices:
    """The router's devices for one link: the link itself and the ifb for its uplink."""

    inside: str
    """The router's end of the link (veth or TAP)."""
    ifb: str
    """An `ifb` device that the link's ingress is redirected into, if anything shapes or
    delays the node's uplink."""


def tc_commands(link: Link, devices: LinkDevices, delay_ms: float, netem: bool) -> list[str]:
    """`tc -batch` lines for the router's side of one link (empty if it needs none).

    `delay_ms` is the link's resolved delay; with `netem` false the delay is left to the
    userspace forwarder. On each device the qdiscs chain as the wire would: delay, then the
    shaper's queue (netem's one class holds the tbf).
    """
    lines = []
    for direction, device in ((Direction.DOWN, devices.inside), (Direction.UP, devices.ifb)):
        chain = []
        if netem and delay_ms > 0:
            chain.append(f"netem delay {delay_ms}ms limit {_NETEM_LIMIT_PACKETS}")
        if link.shaped(direction):
            assert link.rate_mbit is not None
            kbit = max(1, round(link.rate_mbit * 1000))
            chain.append(f"tbf rate {kbit}kbit burst {_TBF_BURST_BYTES} latency {link.queue_ms}ms")
        if not chain:
            continue
        if direction is Direction.UP:
            lines += [
                f"qdisc add dev {devices.inside} handle ffff: ingress",
                f"filter add dev {devices.inside} parent ffff: protocol all u32 match u32 0 0 "
                f"action mirred egress redirect dev {devices.ifb}",
            ]
        parent = "root handle 1:"
        for index, qdisc in enumerate(chain, start=1):
            lines.append(f"qdisc add dev {device} {parent} {qdisc}")
            parent = f"parent {index}:1 handle {index + 1}:"
    return lines


def needs_ifb(link: Link, delay_ms: float, netem: bool) -> bool:
    """True if the link's uplink passes a qdisc (so the router needs its ifb device)."""
    return link.shaped(Direction.UP) or (netem and delay_ms > 0)


def loss_ruleset(table: str, links: dict[str, Link]) -> str:
    """An nftables table dropping each link's `loss_pct` at random, keyed by the router's
    device for the link; a counter per rule counts what it dropped."""
    rules = []
    for device, link in links.items():
        if link.loss_pct <= 0:
            continue
        below = round(link.loss_pct / 100 * _LOSS_SCALE)
        for direction, match in ((Direction.UP, "iifname"), (Direction.DOWN, "oifname")):
            if link.loss_direction.includes(direction):
                rules.append(
                    f'    {match} "{device}" numgen random mod {_LOSS_SCALE} < {below} '
                    "counter drop\n"
                )
    if not rules:
        return ""
    return (
        f"table ip {table} {{\n"
        "  chain loss {\n"
        "    type filter hook forward priority filter - 20; policy accept;\n"
        f"{''.join(rules)}"
        "  }\n"
        "}\n"
    )


@functools.cache
def netem_available() -> bool:
    """True if this kernel has the `netem` qdisc (tried once, in a throwaway namespace)."""
    ns = f"{LAB_PREFIX}{os.getpid()}-{secrets.token_hex(3)}-netem"
    run_command(["ip", "netns", "add", ns])
    try:
        run_command(["ip", "-n", ns, "link", "set", "lo", "up"])
        try:
            run_command(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem"])
        except LabError:
            return False
        return True
    finally:
        run_command(["ip", "netns", "del", ns])
