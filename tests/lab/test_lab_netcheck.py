"""`meshcore-peer netcheck` in the lab with two relays: behind a port-preserving NAT it says
direct connections should work; behind a fully-random (symmetric) NAT it says the mapping
varies by destination; on a public address it sees no NAT at all."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from .netlab import Lab, Meshcore, Nat, Topology

MakeLab = Callable[[Topology], Lab]


def netcheck(lab: Lab, mesh: Meshcore, host: str, *urls: str) -> tuple[dict[str, Any], str]:
    """Run netcheck on `host` against `urls`: (the JSON report, the text report)."""
    argv = [mesh.exe("meshcore-peer"), "netcheck"]
    for url in urls:
        argv += ["--relay", url]
    as_json = json.loads(lab.run(host, [*argv, "--json"]).stdout)
    text = lab.run(host, argv).stdout.decode()
    return as_json, text


def test_netcheck_tells_a_port_preserving_nat_from_a_symmetric_one(make_lab: MakeLab) -> None:
    lab = make_lab(Topology({"a": Nat.PRESERVING, "b": Nat.RANDOM, "c": Nat.NONE}))
    relays = [Meshcore(lab, port=7443), Meshcore(lab, port=7444)]
    for relay in relays:
        relay.start_relay()
    urls = [relay.relay_url for relay in relays]

    report, text = netcheck(lab, relays[0], "a", *urls)
    v4 = report["ipv4"]
    assert v4["mapping"] == "port_preserving", report
    assert v4["preserves_port"] is True and v4["varies_by_destination"] is False
    assert v4["observed"] == [f"{lab.public('a')}:{report['relays'][0]['local'].split(':')[1]}"]
    assert "Direct paths: port-preserving NAT: direct connections should work" in text
    assert all(r["error"] is None and r["latency_ms"] > 0 for r in report["relays"])

    report, text = netcheck(lab, relays[0], "b", *urls)
    v4 = report["ipv4"]
    assert v4["mapping"] == "varies_by_destination", report
    assert v4["varies_by_destination"] is True and len(v4["observed"]) == 2
    assert all(e.startswith(f"{lab.public('b')}:") for e in v4["observed"])
    assert (
        "Direct paths: mapping varies by destination: direct only if the other side is reachable"
        in text
    )

    report, text = netcheck(lab, relays[0], "c", *urls)
    assert report["ipv4"]["mapping"] == "none", report
    assert "Direct paths: no NAT" in text
