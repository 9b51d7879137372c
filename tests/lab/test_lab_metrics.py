"""Prometheus metrics of the real executables in the lab: the relay and two `meshcore-peer up`
tunnels serve /metrics, scraped from inside their namespaces; once the tunnel is direct the
peers' bytes went direct, the TAP frames are counted, and the relay holds no circuit."""

from __future__ import annotations

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

from .labproc import wait_until
from .netlab import Lab, LabProcess, Meshcore

PEER_METRICS = "127.0.0.1:9101"
RELAY_METRICS = "127.0.0.1:9090"
SCRAPE = (
    "import sys, urllib.request; "
    "print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"
)
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(lab: Lab, node: str, address: str) -> Samples:
    """GET /metrics from inside `node`, parsed with prometheus-client's parser."""
    out = lab.run(node, [sys.executable, "-c", SCRAPE, f"http://{address}/metrics"]).stdout
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(out.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def start(lab: Lab, mesh: Meshcore, host: str, other: str, index: int) -> LabProcess:
    toml = f"metrics = {json.dumps(PEER_METRICS)}\ncontrol = {json.dumps(str(lab.workdir / host))}"
    return mesh.up(
        host, [mesh.key(other).peer_id], address=f"10.96.0.{index}/24", extra_toml=toml
    )


def test_the_relay_and_the_tunnels_export_what_they_carried(flat_lab: Lab) -> None:
    lab = flat_lab
    mesh = Meshcore(lab)
    mesh.start_relay("--metrics", RELAY_METRICS)
    ups = [start(lab, mesh, "a", "b", 1), start(lab, mesh, "b", "a", 2)]
    for up in ups:
        up.wait_for("path relay -> direct", 30)
    wait_until(lambda: value(scrape(lab, "relay", RELAY_METRICS), "meshcore_relay_circuits") == 0,
               20.0, "the circuit's release")  # fmt: skip
    done = lab.run("a", ["ping", "-n", "-q", "-c", "200", "-i", "0.01", "-s", "1000", "10.96.0.2"])
    assert b" 0% packet loss" in done.stdout, done.stdout

    peer = scrape(lab, "a", PEER_METRICS)
    assert value(peer, "meshcore_peer_sessions", path="direct") == 1
    assert value(peer, "meshcore_peer_migrations_total", kind="relay_to_direct") == 1
    direct = value(peer, "meshcore_peer_path_bytes_total", path="direct", direction="sent")
    assert direct >= 200 * 1000  # the pings' payloads, sealed, went direct
    assert value(peer, "meshcore_peer_tap_frames_total", direction="out") >= 200
    assert value(peer, "meshcore_peer_tap_frames_total", direction="in") >= 200
    assert value(peer, "meshcore_peer_tap_dropped_frames_total", reason="device_write") == 0
    relay = scrape(lab, "relay", RELAY_METRICS)
    assert value(relay, "meshcore_relay_peers") == 2
    assert value(relay, "meshcore_relay_pairings_total") == 1
    assert value(relay, "meshcore_relay_circuit_closes_total", reason="none") == 1
    # what crossed the relay is the start of the session only, far less than the pings
    assert value(relay, "meshcore_relay_forwarded_bytes_total") < direct / 4
