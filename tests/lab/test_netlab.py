"""The lab harness itself: reachability, what each NAT does to source ports, docs/design.md §5's
simultaneous-open finding, link shaping (rate limit, random loss, per-link delays) measured
with real traffic, the router's counters and cuts, and teardown that leaves nothing."""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .netlab import (
    LAB_PREFIX,
    NETLAB_TOOL,
    Direction,
    Lab,
    LabError,
    LabProcess,
    Link,
    Nat,
    Topology,
    lab_namespaces,
    sweep_stale_labs,
)
from .shaping import LinkDevices, tc_commands

MakeLab = Callable[[Topology], Lab]
SIM_OPEN_PORT = 40000
# One-way delay per router link for the simultaneous-open tests: A to B is then 10 ms each
# way. At zero delay the two SYNs must cross within ~30 us and re-dialling practically never
# wins (docs/lab.md has the numbers); the internet always has some delay.
SIM_OPEN_DELAY_MS = 5.0


def ping(lab: Lab, node: str, target: str) -> bool:
    """One ICMP echo from `node` to `target`, answered within 1 s (the lab's RTT is < 1 ms)."""
    done = lab.run(node, ["ping", "-n", "-c", "1", "-W", "1", target], check=False)
    return done.returncode == 0


def ping_rtt_ms(lab: Lab, node: str, target: str) -> float:
    out = lab.run(node, ["ping", "-n", "-c", "3", "-i", "0.2", target]).stdout.decode()
    match = re.search(r"= [\d.]+/([\d.]+)/", out)
    assert match, out
    return float(match.group(1))


def whoami(lab: Lab, node: str, local_port: int, server: str, *, check: bool = True) -> str:
    """Connect from `local_port` and return the address:port that `server` saw."""
    argv = [sys.executable, str(NETLAB_TOOL), "whoami", "--bind", f"0.0.0.0:{local_port}"]
    done = lab.run(node, [*argv, "--to", server], check=check)
    return done.stdout.decode().strip() if done.returncode == 0 else done.stderr.decode()


def serve_whoami(lab: Lab, node: str, port: int, count: int) -> LabProcess:
    server = lab.tool(node, "serve-whoami", "--listen", f"0.0.0.0:{port}", "--count", str(count))
    server.wait_for("listening", 10)
    return server


def dial(lab: Lab, node: str, peer: str, start_at: float, deadline: float) -> LabProcess:
    return lab.tool(
        node, "dial", "--bind", f"0.0.0.0:{SIM_OPEN_PORT}",
        "--to", f"{lab.public(peer)}:{SIM_OPEN_PORT}", "--name", node,
        "--start-at", repr(start_at), "--deadline", str(deadline), "--redial", "0.05",
    )  # fmt: skip


def dial_report(process: LabProcess, timeout: float) -> dict[str, object]:
    process.wait(timeout)
    report: dict[str, object] = json.loads(process.output)
    return report


# -- reachability and addresses ---------------------------------------------------------------


def test_flat_hosts_reach_each_other_and_the_relay(flat_lab: Lab) -> None:
    assert ping(flat_lab, "a", flat_lab.public("b"))
    assert ping(flat_lab, "a", flat_lab.public("relay"))
    assert ping(flat_lab, "b", flat_lab.public("relay"))
    assert ping(flat_lab, "relay", flat_lab.public("a"))


def test_hosts_behind_nats_reach_the_relay_but_not_each_others_lan(make_lab: MakeLab) -> None:
    lab = make_lab(Topology.behind(Nat.PRESERVING, Nat.RANDOM))
    assert lab.addr("a") != lab.public("a")
    assert ping(lab, "a", lab.public("relay"))
    assert ping(lab, "b", lab.public("relay"))
    assert not ping(lab, "a", lab.addr("b"))  # the router has no route to a private LAN


def test_port_preserving_nat_keeps_the_source_port_and_shows_its_own_address(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(Topology.behind(Nat.PRESERVING, Nat.NONE))
    server = serve_whoami(lab, "b", 5000, 2)
    seen = [whoami(lab, "a", port, f"{lab.public('b')}:5000") for port in (40001, 40002)]
    assert seen == [f"{lab.public('a')}:40001", f"{lab.public('a')}:40002"]
    assert server.wait(10) == 0
    assert f"peer {lab.public('a')}:40001" in server.output


def test_fully_random_nat_does_not_keep_source_ports(make_lab: MakeLab) -> None:
    lab = make_lab(Topology.behind(Nat.RANDOM, Nat.NONE))
    ports = list(range(40001, 40006))
    serve_whoami(lab, "b", 5000, len(ports))
    seen = [whoami(lab, "a", port, f"{lab.public('b')}:5000") for port in ports]
    hosts = {s.rsplit(":", 1)[0] for s in seen}
    assert hosts == {lab.public("a")}
    kept = [port for port, s in zip(ports, seen, strict=True) if int(s.rsplit(":", 1)[1]) == port]
    # A random port equals the source port with probability ~1/64k: allow one such accident.
    assert len(kept) <= 1, seen


# -- docs/design.md §5: TCP simultaneous open between fixed ports ----------------------------------


def test_simultaneous_open_through_two_port_preserving_nats_connects_by_redialling(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(Topology.behind(Nat.PRESERVING, Nat.PRESERVING, delay_ms=SIM_OPEN_DELAY_MS))
    # a starts first, so its first SYNs meet b's NAT with no conntrack entry: refused.
    start = time.time() + 0.3
    a = dial(lab, "a", "b", start, deadline=10)
    b = dial(lab, "b", "a", start + 0.5, deadline=9.5)
    report_a, report_b = dial_report(a, 20), dial_report(b, 20)
    assert report_a["connected"] and report_b["connected"], (report_a, report_b)
    assert report_a["remote"] == f"{lab.public('b')}:{SIM_OPEN_PORT}"
    assert report_b["remote"] == f"{lab.public('a')}:{SIM_OPEN_PORT}"
    assert report_a["greeting"] == "hello from b"
    assert report_b["greeting"] == "hello from a"
    assert isinstance(report_a["refused"], int) and report_a["refused"] >= 1
    counters = lab.counters()
    assert counters.between("a", "b").packets > 0
    assert counters.between("a", "relay").packets == 0


def test_simultaneous_open_through_two_fully_random_nats_never_connects(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(Topology.behind(Nat.RANDOM, Nat.RANDOM, delay_ms=SIM_OPEN_DELAY_MS))
    start = time.time() + 0.3
    a = dial(lab, "a", "b", start, deadline=3)
    b = dial(lab, "b", "a", start, deadline=3)
    report_a, report_b = dial_report(a, 10), dial_report(b, 10)
    assert not report_a["connected"] and not report_b["connected"]
    assert isinstance(report_a["attempts"], int) and report_a["attempts"] >= 20
    assert isinstance(report_b["attempts"], int) and report_b["attempts"] >= 20


def test_delayed_links_add_their_delay_to_the_round_trip(make_lab: MakeLab) -> None:
    lab = make_lab(Topology.flat(delay_ms=5.0))
    # a -> router -> b and back crosses four delayed link hops.
    rtt = ping_rtt_ms(lab, "a", lab.public("b"))
    assert 20.0 <= rtt < 60.0


# -- shaping: rate limit, loss, per-link delays ----------------------------------------------


def ping_times_ms(lab: Lab, node: str, target: str, count: int, interval: float) -> list[float]:
    """RTTs of the echoes answered out of `count` sent `interval` s apart (-W 1: late = lost)."""
    argv = ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", target]
    out = lab.run(node, argv, check=False, timeout=count * interval + 30).stdout.decode()
    return [float(t) for t in re.findall(r"time=([\d.]+) ms", out)]


def iperf_mbit_s(lab: Lab, target: str, seconds: float, *, reverse: bool = False) -> float:
    """One iperf3 TCP stream a -> target (b -> a with `reverse`): Mbit/s received."""
    argv = ["iperf3", "-c", target, "-t", str(seconds), "-J", *(["-R"] if reverse else [])]
    report = json.loads(lab.run("a", argv, timeout=seconds + 30).stdout)
    return float(report["end"]["sum_received"]["bits_per_second"]) / 1e6


RATE_MBIT = 20.0
QUEUE_MS = 20.0


def test_rate_limited_uplink_holds_tcp_to_its_rate_and_its_queue_bounds_the_delay(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(Topology.flat(links={"a": Link(rate_mbit=RATE_MBIT, queue_ms=QUEUE_MS)}))
    target = lab.public("b")
    lab.popen("b", ["iperf3", "-s", "--forceflush"]).wait_for("listening", 10)
    idle = statistics.median(ping_times_ms(lab, "a", target, 20, 0.01))
    # cubic (Linux's usual default) fills the queue until it drops, as a bulk copy does.
    stream = lab.popen("a", ["iperf3", "-c", target, "-t", "3", "-J", "-C", "cubic"])
    loaded = ping_times_ms(lab, "a", target, 150, 0.01)  # 1.5 s, inside the stream
    assert stream.wait(10) == 0, stream.output
    report = json.loads(stream.output)
    upload = float(report["end"]["sum_received"]["bits_per_second"]) / 1e6
    assert 0.6 * RATE_MBIT < upload <= 1.05 * RATE_MBIT, upload
    # The pings share the uplink's queue: they wait in it, but never longer than it holds
    # (QUEUE_MS plus one 32 KiB burst at the rate, 13 ms), give or take a busy machine.
    assert statistics.median(loaded) > idle + 5.0, (idle, loaded)
    assert max(loaded) < QUEUE_MS + 13.0 + 25.0, loaded
    # Only the uplink is shaped: the download runs at veth speed.
    assert iperf_mbit_s(lab, target, 1, reverse=True) > 10 * RATE_MBIT


def test_rate_limited_uplink_drops_what_overruns_it_instead_of_blocking_the_sender(
    make_lab: MakeLab,
) -> None:
    # As at a modem: a UDP sender at twice the rate loses the excess at the queue. (Over a
    # veth the router would hold the sender's own skbs, charged to its socket, and the
    # sender would block instead: the queue would move into the sender.)
    lab = make_lab(Topology.flat(links={"a": Link(rate_mbit=RATE_MBIT, queue_ms=QUEUE_MS)}))
    lab.popen("b", ["iperf3", "-s", "--forceflush"]).wait_for("listening", 10)
    argv = ["iperf3", "-c", lab.public("b"), "-u", "-b", f"{2 * RATE_MBIT:g}M", "-t", "2", "-J"]
    report = json.loads(lab.run("a", argv, timeout=30).stdout)
    total = report["end"]["sum"]
    sent_mbit = float(total["bytes"]) * 8 / float(total["seconds"]) / 1e6
    assert sent_mbit > 1.7 * RATE_MBIT, total
    assert 30.0 < float(total["lost_percent"]) < 70.0, total


PINGS = 500
LOSS_PCT = 10.0


@pytest.mark.parametrize(
    ("direction", "expected"),
    [(Direction.UP, LOSS_PCT / 100), (Direction.BOTH, 1 - (1 - LOSS_PCT / 100) ** 2)],
    ids=["up", "both"],
)
def test_random_loss_drops_about_the_configured_fraction(
    make_lab: MakeLab, direction: Direction, expected: float
) -> None:
    link = Link(loss_pct=LOSS_PCT, loss_direction=direction)
    lab = make_lab(Topology.flat(links={"a": link}))
    answered = len(ping_times_ms(lab, "a", lab.public("b"), PINGS, 0.002))
    lost = PINGS - answered
    # Binomial: within 4.5 standard deviations of the expected count (p ~ 1e-5 to fail).
    spread = 4.5 * (PINGS * expected * (1 - expected)) ** 0.5
    assert abs(lost - PINGS * expected) < spread, (lost, PINGS * expected)
    # A lost echo lost exactly one packet (the request, or its reply): the rules' counters.
    out = lab.run("inet", ["nft", "-j", "list", "table", "ip", "shape"]).stdout
    dropped = [
        item["rule"]["expr"][-2]["counter"]["packets"]
        for item in json.loads(out)["nftables"]
        if "rule" in item
    ]
    assert len(dropped) == (2 if direction is Direction.BOTH else 1)
    assert sum(dropped) == lost


def test_per_link_delays_reproduce_the_design_example_geometry(make_lab: MakeLab) -> None:
    # Two hosts 30 ms apart (RTT), the relay 40 ms from each: 80 ms via the relay.
    links = {"a": Link(delay_ms=7.5), "b": Link(delay_ms=7.5), "relay": Link(delay_ms=12.5)}
    lab = make_lab(Topology.flat(links=links))
    for src, dst, rtt in (("a", "b", 30.0), ("a", "relay", 40.0), ("b", "relay", 40.0)):
        times = ping_times_ms(lab, src, lab.public(dst), 15, 0.05)
        assert len(times) >= 14, (src, dst, times)
        assert min(times) >= rtt, (src, dst, times)
        assert statistics.median(times) < rtt + 5.0, (src, dst, times)


def test_link_settings_are_checked() -> None:
    with pytest.raises(LabError, match="not nodes of this topology"):
        Topology.flat(links={"c": Link(delay_ms=1.0)})
    with pytest.raises(LabError, match=r"loss_pct.*rate_mbit|rate_mbit.*loss_pct"):
        Link(rate_mbit=0.0, loss_pct=101.0)
    with pytest.raises(LabError, match="queue_ms"):
        Link(rate_mbit=50.0, queue_ms=0.0)


def test_netem_delay_and_the_shaper_chain_on_the_router_side() -> None:
    # netem is missing from some kernels (this lab then delays in userspace): the commands
    # are checked as text, so the netem path is pinned where it cannot run.
    link = Link(rate_mbit=50.0, queue_ms=20.0, rate_direction=Direction.UP)
    lines = tc_commands(link, LinkDevices(inside="ia", ifb="ua"), 7.5, netem=True)
    assert lines == [
        "qdisc add dev ia root handle 1: netem delay 7.5ms limit 100000",
        "qdisc add dev ia handle ffff: ingress",
        "filter add dev ia parent ffff: protocol all u32 match u32 0 0 "
        "action mirred egress redirect dev ua",
        "qdisc add dev ua root handle 1: netem delay 7.5ms limit 100000",
        "qdisc add dev ua parent 1:1 handle 2: tbf rate 50000kbit burst 32768 latency 20.0ms",
    ]
    assert tc_commands(Link(), LinkDevices("ia", "ua"), 0.0, netem=False) == []


# -- the router: counters and cuts ----------------------------------------------------------


def test_counters_tell_direct_from_relayed_traffic(flat_lab: Lab) -> None:
    lab = flat_lab
    serve_whoami(lab, "b", 5000, 2)
    forward = lab.tool("relay", "forward", "--listen", "0.0.0.0:6000", "--to",
                       f"{lab.public('b')}:5000")  # fmt: skip
    forward.wait_for("listening", 10)
    lab.reset_counters()
    assert whoami(lab, "a", 40001, f"{lab.public('b')}:5000") == f"{lab.public('a')}:40001"
    direct = lab.counters()
    assert direct.between("a", "b").packets > 0
    assert direct.between("a", "relay").packets == 0
    assert direct.between("b", "relay").packets == 0

    lab.reset_counters()
    # b sees the relay, not a: the connection went a -> relay -> b.
    assert whoami(lab, "a", 40002, f"{lab.public('relay')}:6000").startswith(lab.public("relay"))
    relayed = lab.counters()
    assert relayed.between("a", "b").packets == 0
    assert relayed.between("a", "relay").packets > 0
    assert relayed.between("b", "relay").packets > 0


def test_block_drops_one_path_only_and_unblock_restores_it(flat_lab: Lab) -> None:
    lab = flat_lab
    lab.block("a", "b")
    assert not ping(lab, "a", lab.public("b"))
    assert not ping(lab, "b", lab.public("a"))
    assert ping(lab, "a", lab.public("relay"))
    assert lab.counters().between("a", "b").packets == 0
    lab.unblock("a", "b")
    assert ping(lab, "a", lab.public("b"))


def test_block_with_reject_refuses_tcp_at_once(flat_lab: Lab) -> None:
    lab = flat_lab
    serve_whoami(lab, "b", 5000, 1)
    lab.block("a", "b", reject=True)
    started = time.monotonic()
    error = whoami(lab, "a", 40001, f"{lab.public('b')}:5000", check=False)
    assert "ConnectionRefusedError" in error
    assert time.monotonic() - started < 5


# -- naming and teardown -------------------------------------------------------------------


def test_two_labs_at_once_do_not_collide(make_lab: MakeLab) -> None:
    first, second = make_lab(Topology.flat()), make_lab(Topology.flat())
    assert not set(first.namespaces) & set(second.namespaces)
    assert all(ns.startswith(LAB_PREFIX + str(os.getpid())) for ns in first.namespaces)
    assert ping(first, "a", first.public("b"))
    assert ping(second, "a", second.public("b"))


def _spawn_everything(lab: Lab) -> list[int]:
    """Start a tracked process and a daemon that escapes its process group; return pids."""
    tracked = lab.popen("a", ["sleep", "300"])
    daemon = lab.run("b", ["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo $!"])
    return [tracked.pid, int(daemon.stdout)]


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or "Z" in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_teardown_leaves_no_namespace_process_or_file() -> None:
    before = subprocess.run(["ip", "netns", "list"], capture_output=True, check=True).stdout
    topology = Topology({"a": Nat.PRESERVING, "b": Nat.RANDOM, "c": Nat.NONE}, delay_ms=1.0)
    with Lab(topology) as lab:
        pids = _spawn_everything(lab)
        workdir = lab.workdir
        assert len(lab.namespaces) == 7
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, check=True).stdout
    assert after == before
    assert all(_gone(pid) for pid in pids)
    assert not workdir.exists()


def test_a_failing_test_body_still_cleans_up() -> None:
    with pytest.raises(ZeroDivisionError), Lab(Topology.behind(Nat.RANDOM, Nat.NONE)) as lab:
        pids = _spawn_everything(lab)
        names = lab.namespaces
        _ = 1 / 0
    assert not set(names) & set(lab_namespaces())
    assert all(_gone(pid) for pid in pids)
    with pytest.raises(LabError, match="torn down"):
        lab.popen("a", ["true"])


def test_sweeper_removes_labs_of_dead_runs_and_spares_live_ones(flat_lab: Lab) -> None:
    dead_pid = _a_dead_pid()
    stale = f"{LAB_PREFIX}{dead_pid}-abcdef-inet"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        swept = sweep_stale_labs()
        assert stale in swept
        assert stale not in lab_namespaces()
        assert set(flat_lab.namespaces) <= set(lab_namespaces())
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def _a_dead_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    for pid in range(pid_max - 1, 1, -1):
        if not Path(f"/proc/{pid}").exists():
            return pid
    raise AssertionError("no free pid")


@pytest.mark.parametrize("name", ["A", "inet", "relay", "toolong7", "1a", "a-b"])
def test_topology_refuses_bad_host_names(name: str) -> None:
    with pytest.raises(LabError, match="host name"):
        Topology({name: Nat.NONE})
