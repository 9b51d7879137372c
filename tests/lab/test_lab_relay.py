"""The real executables in the lab: meshcore-relay in the relay namespace, `meshcore-peer
listen` / `connect` and the TAP tunnel (`up`) on hosts behind each kind of NAT. Files cross
intact, and the router's counters say which way they went (docs/design.md §5)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import pytest

from meshcore.proto.identity import PeerId

from .netlab import Counters, Lab, Meshcore, Nat, Topology

MakeLab = Callable[[Topology], Lab]
SIZE = 8 * 1024 * 1024
# Heartbeats, acks and the control connection once a session went direct; docs/design.md §1 says
# the relay carries about 10 KB per session.
RELAY_IDLE_BYTES = 64 * 1024
DIRECT_WITHIN_S = 15.0  # handshake + one race (5 s deadline) + process start on a busy box
DIRECT_RETRY_S = 5.0  # --direct-retry for the fallback test (default 60 s)


def nats(a: Nat, b: Nat) -> Topology:
    return Topology.behind(a, b)


def relayed(counters: Counters) -> int:
    """Bytes that went a -> relay -> b or back (the lesser of the two legs)."""
    return min(counters.between("a", "relay").bytes, counters.between("b", "relay").bytes)


def send_file(session_send: Callable[[bytes], None]) -> None:
    for _ in range(SIZE // (1 << 20)):
        session_send(os.urandom(1 << 20))


# -- through the relay ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("nat_a", "nat_b"),
    [
        (Nat.NONE, Nat.NONE),
        (Nat.PRESERVING, Nat.PRESERVING),
        (Nat.RANDOM, Nat.RANDOM),
        (Nat.PRESERVING, Nat.RANDOM),
    ],
    ids=lambda nat: str(nat.value),
)
def test_relay_only_session_carries_a_file_intact_through_the_relay(
    make_lab: MakeLab, nat_a: Nat, nat_b: Nat
) -> None:
    lab = make_lab(nats(nat_a, nat_b))
    mesh = Meshcore(lab)
    mesh.start_relay()
    session = mesh.pipe("a", "b", extra=["--no-direct"])
    lab.reset_counters()
    send_file(session.send)
    session.finish()
    counters = lab.counters()
    assert relayed(counters) >= SIZE, counters
    assert counters.between("a", "b").packets == 0, counters


# -- direct paths (docs/design.md §1 step 5, §5) ---------------------------------------------------


@pytest.mark.parametrize(
    ("nat_a", "nat_b"),
    [(Nat.NONE, Nat.NONE), (Nat.PRESERVING, Nat.NONE), (Nat.NONE, Nat.PRESERVING)],
    ids=["flat", "a-behind-port-preserving", "b-behind-port-preserving"],
)
def test_session_goes_direct_and_the_relay_carries_almost_nothing(
    make_lab: MakeLab, nat_a: Nat, nat_b: Nat
) -> None:
    lab = make_lab(nats(nat_a, nat_b))
    mesh = Meshcore(lab)
    mesh.start_relay()
    session = mesh.pipe("a", "b")
    session.connect.wait_for("path relay -> direct", DIRECT_WITHIN_S)
    lab.reset_counters()
    send_file(session.send)
    session.finish()
    counters = lab.counters()
    assert counters.between("a", "b").bytes >= SIZE, counters
    assert relayed(counters) < RELAY_IDLE_BYTES, counters


def test_two_port_preserving_nats_go_direct_by_simultaneous_open(make_lab: MakeLab) -> None:
    lab = make_lab(Topology.behind(Nat.PRESERVING, Nat.PRESERVING, delay_ms=5.0))
    mesh = Meshcore(lab)
    mesh.start_relay()
    session = mesh.pipe("a", "b")
    session.connect.wait_for("path relay -> direct", DIRECT_WITHIN_S)
    lab.reset_counters()
    send_file(session.send)
    session.finish()
    counters = lab.counters()
    assert counters.between("a", "b").bytes >= SIZE, counters
    assert relayed(counters) < RELAY_IDLE_BYTES, counters


def test_two_symmetric_nats_stay_on_the_relay_and_say_so(make_lab: MakeLab) -> None:
    lab = make_lab(Topology.behind(Nat.RANDOM, Nat.RANDOM))
    mesh = Meshcore(lab)
    mesh.start_relay()
    session = mesh.pipe("a", "b")
    said = session.connect.wait_for("direct attempt failed", DIRECT_WITHIN_S)
    assert "path relay -> direct" not in said
    lab.reset_counters()
    send_file(session.send)
    session.finish()
    counters = lab.counters()
    assert relayed(counters) >= SIZE, counters
    assert counters.between("a", "b").bytes < RELAY_IDLE_BYTES, counters


def test_cut_direct_path_falls_back_to_the_relay_and_returns_without_loss(
    flat_lab: Lab,
) -> None:
    lab = flat_lab
    mesh = Meshcore(lab)
    mesh.start_relay()
    session = mesh.pipe("a", "b", extra=["--direct-retry", str(DIRECT_RETRY_S)])
    session.connect.wait_for("path relay -> direct", DIRECT_WITHIN_S)
    stop = threading.Event()

    def feed() -> None:  # a steady trickle: 400 KB/s, so every phase carries data
        while not stop.wait(0.05):
            session.send(os.urandom(20_000))

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        lab.block("a", "b")  # silently dropped: only the session's timers can tell
        session.connect.wait_for("fell back to relay", 30)
        lab.reset_counters()
        relayed_from = session.sent
        lab.unblock("a", "b")
        # Races come --direct-retry after the fallback, doubling after each failure. The
        # first one often fails ("already connected": the dead connection still holds the
        # shared port's 4-tuple); the second wins (docs/lab.md).
        session.connect.wait_for("path relay -> direct", 12 * DIRECT_RETRY_S, count=2)
        during_cut = lab.counters()
        lab.reset_counters()
        returned_at = session.sent
        while session.sent < returned_at + 1_000_000:
            stop.wait(0.1)
    finally:
        stop.set()
        feeder.join()
    session.finish()
    after = lab.counters()
    assert session.sent > relayed_from
    assert relayed(during_cut) > 0, during_cut
    assert after.between("a", "b").bytes >= 1_000_000, after
    assert relayed(after) < RELAY_IDLE_BYTES, after


def test_direct_session_carries_on_while_the_relay_restarts(flat_lab: Lab) -> None:
    lab = flat_lab
    mesh = Meshcore(lab)
    relay = mesh.start_relay()
    session = mesh.pipe("a", "b")
    session.connect.wait_for("path relay -> direct", DIRECT_WITHIN_S)
    lab.reset_counters()
    assert relay.stop() == 0
    session.send(os.urandom(1 << 20))  # while no relay runs at all
    mesh.start_relay()
    for peer in (session.connect, session.listener):
        peer.wait_for("registered at", 30, count=2)
    session.send(os.urandom(1 << 20))
    session.finish()
    counters = lab.counters()
    assert counters.between("a", "b").bytes >= 2 << 20, counters
    assert relayed(counters) < RELAY_IDLE_BYTES, counters


# -- the TAP tunnel (`meshcore-peer up`) --------------------------------------------------------


def ping(lab: Lab, node: str, target: str, *, within: float) -> bool:
    """True once one ICMP echo from `node` to `target` is answered, trying until `within` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done = lab.run(node, ["ping", "-n", "-c", "1", "-W", "1", target], check=False)
        if done.returncode == 0:
            return True
    return False


def tunnel_address(lab: Lab, host: str) -> str:
    return f"10.99.0.{lab.hosts.index(host) + 1}"


def start_mesh(lab: Lab) -> Meshcore:
    """A relay and a TAP tunnel on every host, each listing every other host as a peer."""
    mesh = Meshcore(lab)
    mesh.start_relay()
    ids = {host: mesh.key(host).peer_id for host in lab.hosts}
    for host in lab.hosts:
        others = [ids[other] for other in lab.hosts if other != host]
        mesh.up(host, others, address=f"{tunnel_address(lab, host)}/24")
    return mesh


def test_three_peers_share_one_layer_2_segment(make_lab: MakeLab) -> None:
    lab = make_lab(Topology.flat("a", "b", "c"))
    mesh = start_mesh(lab)
    for src in lab.hosts:
        for dst in lab.hosts:
            if src != dst:
                assert ping(lab, src, tunnel_address(lab, dst), within=20), (src, dst)
    # Layer 2: a learnt each peer's own MAC (derived from its peer id) over the tunnel.
    neighbours = lab.run("a", ["ip", "neigh", "show", "dev", lab.ifname("mesh")]).stdout.decode()
    for other in ("b", "c"):
        mac = bytes([0x02]) + PeerId.from_text(mesh.key(other).peer_id).digest[:5]
        assert f"{tunnel_address(lab, other)} lladdr {mac.hex(':')}" in neighbours, neighbours


def test_tunnel_recovers_when_the_relay_restarts(flat_lab: Lab) -> None:
    lab = flat_lab
    mesh = start_mesh(lab)
    assert ping(lab, "a", tunnel_address(lab, "b"), within=20)
    assert mesh.relay is not None
    assert mesh.relay.stop() == 0
    mesh.start_relay()
    assert ping(lab, "a", tunnel_address(lab, "b"), within=30)
    assert ping(lab, "b", tunnel_address(lab, "a"), within=5)
