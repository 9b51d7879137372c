"""The TAP tunnel (`meshcore-peer up`) on direct paths, in the lab: it goes direct where the
NATs allow it (flat, one port-preserving NAT, two of them by simultaneous open), stays on
the relay behind symmetric NATs and says why, falls back when the direct path is cut
mid-transfer and returns, and keeps its direct sessions while the relay restarts. The
router's counters say which way the bytes really went (docs/design.md §1 step 5, §5)."""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import pytest

from .labproc import wait_until
from .netlab import Counters, Lab, LabProcess, Meshcore, Nat, Topology

MakeLab = Callable[[Topology], Lab]
MiB = 1 << 20
RELAY_IDLE_BYTES = 64 * 1024
"""What the relay may carry once a session went direct: heartbeats, acks, control."""
DIRECT_WITHIN_S = 15.0  # handshake + one race (5 s deadline) + process start on a busy box
DIRECT_RETRY_S = 5.0  # direct_retry_s of the fallback test (default 60 s)
PORT = 5001

# A TCP receiver and a (optionally paced) sender, run with the venv's python inside the
# namespaces, over the tunnel's addresses. Both print the SHA-256 of what crossed.
RECEIVER = """
import hashlib, socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
conn, _ = server.accept()
digest, size = hashlib.sha256(), 0
while data := conn.recv(1 << 20):
    digest.update(data)
    size += len(data)
conn.close()
print(f"received {size} {digest.hexdigest()}", flush=True)
"""
SENDER = """
import hashlib, os, socket, sys, time
host, port, total, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
sock = socket.create_connection((host, port), timeout=20)
sock.settimeout(180)
digest, sent, start, step = hashlib.sha256(), 0, time.monotonic(), 8 << 20
while sent < total:
    if rate:
        time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    chunk = os.urandom(min(1 << 20, total - sent))
    sock.sendall(chunk)
    digest.update(chunk)
    sent += len(chunk)
    if sent % step == 0:
        print(f"progress {sent >> 20} MiB", flush=True)
sock.shutdown(socket.SHUT_WR)
sock.recv(1)  # the receiver closes once it has read everything
print(f"sent {sent} {digest.hexdigest()}", flush=True)
"""


# -- helpers ----------------------------------------------------------------------------------


def tunnel_address(lab: Lab, host: str) -> str:
    return f"10.99.0.{lab.hosts.index(host) + 1}"


def control(lab: Lab, host: str) -> str:
    return str(lab.workdir / f"{host}-up.sock")


def start_up(lab: Lab, mesh: Meshcore, host: str, *, retry_s: float | None = None) -> LabProcess:
    """`meshcore-peer up` on `host`, every other host of the lab its peer, own control socket."""
    others = [mesh.key(other).peer_id for other in lab.hosts if other != host]
    toml = f"control = {json.dumps(control(lab, host))}\n"
    if retry_s is not None:
        toml += f"direct_retry_s = {retry_s}\n"
    return mesh.up(host, others, address=f"{tunnel_address(lab, host)}/24", extra_toml=toml)


def start_tunnels(
    lab: Lab, hosts: tuple[str, ...] = ("a", "b"), *, retry_s: float | None = None
) -> tuple[Meshcore, dict[str, LabProcess]]:
    mesh = Meshcore(lab)
    mesh.start_relay()
    ups = {host: start_up(lab, mesh, host, retry_s=retry_s) for host in hosts}
    return mesh, ups


def status(lab: Lab, mesh: Meshcore, host: str) -> list[dict[str, Any]]:
    """`meshcore-peer status --json` on `host`: one dict per live session."""
    argv = [mesh.exe("meshcore-peer"), "status", "--json", "--control", control(lab, host)]
    out = lab.run(host, argv).stdout.decode()
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def ping(lab: Lab, node: str, target: str, *, within: float) -> bool:
    """True once one ICMP echo from `node` to `target` is answered, trying until `within` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        done = lab.run(node, ["ping", "-n", "-c", "1", "-W", "1", target], check=False)
        if done.returncode == 0:
            return True
    return False


def relayed(counters: Counters) -> int:
    """Bytes that went a -> relay -> b or back (the lesser of the two legs)."""
    return min(counters.between("a", "relay").bytes, counters.between("b", "relay").bytes)


def start_transfer(
    lab: Lab, src: str, dst: str, size: int, *, rate: float = 0.0
) -> tuple[LabProcess, LabProcess]:
    """A TCP stream of `size` random bytes from `src` to `dst` through the tunnel."""
    receiver = lab.popen(dst, [sys.executable, "-c", RECEIVER, tunnel_address(lab, dst), str(PORT)])
    receiver.wait_for("listening", 10)
    argv = [sys.executable, "-c", SENDER, tunnel_address(lab, dst), str(PORT), str(size), str(rate)]
    return lab.popen(src, argv), receiver


def finish_transfer(sender: LabProcess, receiver: LabProcess, size: int, timeout: float) -> None:
    """Wait for both ends; assert every byte arrived, in order (SHA-256)."""
    assert sender.wait(timeout) == 0, sender.output
    assert receiver.wait(10) == 0, receiver.output
    sent = re.search(r"^sent (\d+) (\w+)$", sender.output, re.M)
    got = re.search(r"^received (\d+) (\w+)$", receiver.output, re.M)
    assert sent and got, (sender.output, receiver.output)
    assert int(sent.group(1)) == size
    assert got.groups() == sent.groups(), (sent.groups(), got.groups())


def wait_direct(ups: dict[str, LabProcess]) -> None:
    for up in ups.values():
        up.wait_for("path relay -> direct", DIRECT_WITHIN_S)


# -- direct where the NATs allow it -----------------------------------------------------------


@pytest.mark.parametrize(
    "topology",
    [
        Topology.flat(),
        Topology.behind(Nat.PRESERVING, Nat.NONE),
        Topology.behind(Nat.PRESERVING, Nat.PRESERVING, delay_ms=5.0),
    ],
    ids=["flat", "a-behind-port-preserving", "both-port-preserving-simultaneous-open"],
)
def test_tunnel_goes_direct_and_the_relay_circuit_closes(
    make_lab: MakeLab, topology: Topology
) -> None:
    lab = make_lab(topology)
    mesh, ups = start_tunnels(lab)
    wait_direct(ups)
    assert mesh.relay is not None
    mesh.relay.wait_for("circuit closed", 10)
    assert ping(lab, "a", tunnel_address(lab, "b"), within=10)
    lab.reset_counters()
    size = 4 * MiB
    sender, receiver = start_transfer(lab, "a", "b", size)
    finish_transfer(sender, receiver, size, timeout=60)
    counters = lab.counters()
    assert counters.between("a", "b").bytes >= size, counters
    assert relayed(counters) < RELAY_IDLE_BYTES, counters
    for host, other in (("a", "b"), ("b", "a")):
        sessions = status(lab, mesh, host)
        assert [s["peer_id"] for s in sessions] == [mesh.key(other).peer_id], sessions
        assert sessions[0]["path"] == "direct", sessions
        assert sessions[0]["migrations"] >= 1, sessions


def test_symmetric_nats_keep_the_tunnel_on_the_relay_and_status_says_why(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(Topology.behind(Nat.RANDOM, Nat.RANDOM))
    mesh, ups = start_tunnels(lab)
    said = ups["a"].wait_for("direct attempt failed: ", DIRECT_WITHIN_S)
    reason = said.split("direct attempt failed: ", 1)[1].splitlines()[0].strip()
    assert ping(lab, "a", tunnel_address(lab, "b"), within=10)
    lab.reset_counters()
    size = 4 * MiB
    sender, receiver = start_transfer(lab, "a", "b", size)
    finish_transfer(sender, receiver, size, timeout=60)
    counters = lab.counters()
    assert relayed(counters) >= size, counters
    assert counters.between("a", "b").bytes < RELAY_IDLE_BYTES, counters
    (session,) = status(lab, mesh, "a")
    assert session["path"] == "relay", session
    assert session["last_error"] == reason, (session, reason)
    assert "path relay -> direct" not in ups["a"].output + ups["b"].output


# -- the datagram path ------------------------------------------------------------------------

UDP_DROP = ["nft", "-f", "-"]
UDP_DROP_RULES = b"""
table inet udpdrop {
    chain input { type filter hook input priority 0; meta l4proto udp drop; }
}
"""


def datagram_state(lab: Lab, mesh: Meshcore, host: str) -> tuple[str, int, int]:
    """The datagram path of `host`'s one session, ("no session", 0, 0) before it is up."""
    sessions = status(lab, mesh, host)
    if not sessions:
        return "no session", 0, 0
    (session,) = sessions
    return session["datagram_path"], session["datagrams_sent"], session["datagrams_received"]


def pings(lab: Lab, src: str, dst: str, count: int) -> None:
    done = lab.run(src, ["ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", "2",
                         tunnel_address(lab, dst)], check=False)  # fmt: skip
    assert done.returncode == 0 and f" {count} received" in done.stdout.decode(), done


def test_small_frames_go_by_udp_and_by_tcp_while_udp_is_blocked(flat_lab: Lab) -> None:
    """On a direct path a ping crosses as a datagram; with UDP dropped at one end the path
    stops being used within the trust time and pings cross by TCP; it comes back after."""
    lab = flat_lab
    mesh, ups = start_tunnels(lab)
    wait_direct(ups)
    for host in ("a", "b"):
        wait_until(lambda h=host: datagram_state(lab, mesh, h)[0] == "up", 10,  # type: ignore[misc]
                   f"the datagram path of {host} is up")  # fmt: skip
    _, sent_a, _got_a = datagram_state(lab, mesh, "a")
    _, _sent_b, got_b = datagram_state(lab, mesh, "b")
    pings(lab, "a", "b", 40)
    _, sent_a2, _ = datagram_state(lab, mesh, "a")
    _, _, got_b2 = datagram_state(lab, mesh, "b")
    assert sent_a2 - sent_a >= 40 and got_b2 - got_b >= 40, (sent_a, sent_a2, got_b, got_b2)
    lab.run("b", UDP_DROP, input=UDP_DROP_RULES)
    wait_until(lambda: datagram_state(lab, mesh, "a")[0] == "probing", 10,
               "a notices that UDP no longer gets through")  # fmt: skip
    ups["a"].wait_for("datagram path stopped answering", 5)
    _, sent_a3, _ = datagram_state(lab, mesh, "a")
    pings(lab, "a", "b", 20)  # every one answered, by TCP
    assert datagram_state(lab, mesh, "a")[1] == sent_a3
    (session,) = status(lab, mesh, "a")
    assert session["path"] == "direct", session
    lab.run("b", ["nft", "delete", "table", "inet", "udpdrop"])
    wait_until(lambda: datagram_state(lab, mesh, "a")[0] == "up", 10,
               "the datagram path comes back once UDP gets through again")  # fmt: skip
    pings(lab, "a", "b", 10)
    assert datagram_state(lab, mesh, "a")[1] >= sent_a3 + 10


def test_behind_symmetric_nats_small_frames_cross_the_relay_by_udp(make_lab: MakeLab) -> None:
    """Relayed (both peers behind symmetric NATs), a ping crosses as a datagram through the
    relay's UDP port; with UDP dropped at one end pings cross by the relay's WebSocket after
    the trust time, and UDP is used again once it gets through."""
    lab = make_lab(Topology.behind(Nat.RANDOM, Nat.RANDOM))
    mesh, _ = start_tunnels(lab)
    for host in ("a", "b"):
        wait_until(lambda h=host: datagram_state(lab, mesh, h)[0] == "up", 20,  # type: ignore[misc]
                   f"the datagram path of {host} through the relay is up")  # fmt: skip
    (session,) = status(lab, mesh, "a")
    assert session["path"] == "relay", session
    _, sent_a, _ = datagram_state(lab, mesh, "a")
    _, _, got_b = datagram_state(lab, mesh, "b")
    pings(lab, "a", "b", 40)
    _, sent_a2, _ = datagram_state(lab, mesh, "a")
    _, _, got_b2 = datagram_state(lab, mesh, "b")
    assert sent_a2 - sent_a >= 40 and got_b2 - got_b >= 40, (sent_a, sent_a2, got_b, got_b2)
    lab.run("b", UDP_DROP, input=UDP_DROP_RULES)
    for host in ("a", "b"):  # each side within its own trust time
        wait_until(lambda h=host: datagram_state(lab, mesh, h)[0] == "probing", 10,  # type: ignore[misc]
                   f"{host} notices that UDP through the relay no longer gets through")  # fmt: skip
    _, sent_a3, _ = datagram_state(lab, mesh, "a")
    pings(lab, "a", "b", 20)  # every one answered, by the relay's WebSocket
    assert datagram_state(lab, mesh, "a")[1] == sent_a3
    lab.run("b", ["nft", "delete", "table", "inet", "udpdrop"])
    wait_until(lambda: datagram_state(lab, mesh, "a")[0] == "up", 10,
               "the datagram path through the relay comes back")  # fmt: skip
    pings(lab, "a", "b", 10)
    assert datagram_state(lab, mesh, "a")[1] >= sent_a3 + 10
    (session,) = status(lab, mesh, "a")
    assert session["path"] == "relay", session


# -- losing the direct path, losing the relay ---------------------------------------------------


def test_cut_direct_path_mid_transfer_falls_back_and_returns_without_loss(
    flat_lab: Lab,
) -> None:
    lab = flat_lab
    mesh, ups = start_tunnels(lab, retry_s=DIRECT_RETRY_S)
    wait_direct(ups)
    size = 200 * MiB
    # Paced (~40 s in all) so that the stream spans the cut, the fallback and the return.
    sender, receiver = start_transfer(lab, "a", "b", size, rate=5 * MiB)
    sender.wait_for("progress 24 MiB", 30)
    lab.block("a", "b")  # silently dropped: only the session's timers can tell
    ups["a"].wait_for("fell back to relay", 30)
    lab.reset_counters()
    lab.unblock("a", "b")
    # The first race after a fallback often fails ("already connected": the dead
    # connection's 4-tuple); the second, twice the retry later, wins (docs/lab.md).
    ups["a"].wait_for("path relay -> direct", 12 * DIRECT_RETRY_S, count=2)
    during_cut = lab.counters()
    finish_transfer(sender, receiver, size, timeout=120)
    assert relayed(during_cut) >= MiB, during_cut
    lab.reset_counters()
    done = lab.run("a", ["ping", "-n", "-q", "-f", "-c", "2000", "-s", "1000",
                         tunnel_address(lab, "b")])  # fmt: skip
    assert done.returncode == 0
    after = lab.counters()
    assert after.between("a", "b").bytes >= 2000 * 1000, after
    assert relayed(after) < RELAY_IDLE_BYTES, after
    (session,) = status(lab, mesh, "a")
    assert session["path"] == "direct", session
    assert session["migrations"] >= 2, session


LOST_PINGS_MAX = 2
"""Of the ~200 pings (50 ms apart) that span a relay outage, at most this many may be lost
(measured: 0 of 196)."""


def test_direct_tunnels_carry_on_while_the_relay_restarts_and_new_ones_form_after(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(Topology.flat("a", "b", "c"))
    mesh, ups = start_tunnels(lab, ("a", "b"))
    wait_direct(ups)
    assert ping(lab, "a", tunnel_address(lab, "b"), within=10)
    pings = lab.popen("a", ["ping", "-n", "-i", "0.05", tunnel_address(lab, "b")])
    pings.wait_for("icmp_seq=", 5)
    lab.reset_counters()
    assert mesh.relay is not None
    mesh.relay.signal(signal.SIGKILL)
    mesh.relay.wait(10)
    replies = pings.output.count("icmp_seq=")
    pings.wait_for("icmp_seq=", 10, count=replies + 60)  # ~3 s with no relay at all
    mesh.start_relay()
    for up in ups.values():
        up.wait_for("registered at", 30, count=2)
    before_c = lab.counters()  # c's sessions may run through the relay: count without them
    ups["c"] = start_up(lab, mesh, "c")
    for other in ("a", "b"):
        assert ping(lab, "c", tunnel_address(lab, other), within=30), other
        assert ping(lab, other, tunnel_address(lab, "c"), within=5), other
    pings.signal(signal.SIGINT)
    pings.wait(10)
    summary = re.search(r"(\d+) packets transmitted, (\d+) received", pings.output)
    assert summary, pings.output
    transmitted, received = map(int, summary.groups())
    assert transmitted >= 60, pings.output
    assert transmitted - received <= LOST_PINGS_MAX, pings.output
    assert relayed(before_c) < RELAY_IDLE_BYTES, before_c
    assert lab.counters().between("a", "b").packets >= received
