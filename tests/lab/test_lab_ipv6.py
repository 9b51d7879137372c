"""IPv6 direct paths in the lab: two peers that reach the relay over IPv4 but have only an
IPv6 link between them (ULA addresses on a veth pair of their own; the router drops IPv4
between them) announce their IPv6 addresses and go direct over it."""

from __future__ import annotations

import json
import os

from .netlab import Lab, Meshcore

DIRECT_WITHIN_S = 30.0  # the IPv4 candidates are dropped: each dial waits out its race
PREFIX = "fd00:6d63:36::"  # a ULA prefix: addresses only inside the lab's namespaces


def _ipv6_link(lab: Lab) -> None:
    """A veth pair between a and b carrying IPv6 only (no IPv4 address on it)."""
    a_if, b_if = lab.ifname("v6a"), lab.ifname("v6b")
    lab.run("a", ["ip", "link", "add", a_if, "type", "veth", "peer", "name", b_if,
                  "netns", lab.ns("b")])  # fmt: skip
    for node, name, host in (("a", a_if, 1), ("b", b_if, 2)):
        lab.run(node, ["ip", "-6", "addr", "add", f"{PREFIX}{host}/64", "dev", name, "nodad"])
        lab.run(node, ["ip", "link", "set", name, "up"])


def test_two_peers_with_only_ipv6_between_them_go_direct(flat_lab: Lab) -> None:
    lab = flat_lab
    _ipv6_link(lab)
    lab.block("a", "b")  # no IPv4 between the peers: only the IPv6 link
    lab.run("a", ["ping", "-6", "-c", "1", "-W", "5", f"{PREFIX}2"])
    mesh = Meshcore(lab)
    mesh.start_relay()
    session = mesh.pipe("a", "b")
    session.connect.wait_for("path relay -> direct", DIRECT_WITHIN_S)
    status = lab.run(
        "b",
        [mesh.exe("meshcore-peer"), "status", "--json",
         "--control", str(mesh.control_socket("b", "listen"))],
    )  # fmt: skip
    rows = [json.loads(line) for line in status.stdout.decode().splitlines()]
    assert len(rows) == 1, rows
    assert rows[0]["path"] == "direct", rows
    assert rows[0]["remote_address"].startswith(f"[{PREFIX}1]:"), rows
    lab.reset_counters()
    for _ in range(20):
        session.send(os.urandom(50_000))
    session.finish()
    counters = lab.counters()
    assert counters.between("a", "b").bytes == 0, counters  # not a byte over IPv4
