"""The network lab: real networks from Linux namespaces, veth links and nftables NATs.

`Lab(topology)` builds a router namespace (`inet`), a `relay` namespace with a public
address and one namespace per host, each either public or behind its own NAT namespace
(port-preserving or fully-random masquerade). Each router link can be given a delay, a
rate limit with a bounded queue, and random loss (`Link`, built by `shaping.py`). Real
processes run inside with `lab.popen`; counters on the router tell which way traffic went;
`lab.block` cuts a path. Leaving the `with` block kills every process and deletes every
namespace, also after a failure.

The traffic tools (`dial`, `whoami`, `serve-whoami`, `forward`, `delay`) live in
`labtools.py`, a stdlib-only script that `lab.tool(node, ...)` starts inside a namespace.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .labmesh import Meshcore, PeerKey, PipeSession, find_up_command
from .labproc import (
    COMMAND_TIMEOUT_S,
    LAB_PREFIX,
    LabError,
    LabProcess,
    kill_namespace_processes,
    lab_namespaces,
    missing_prerequisites,
    run_command,
    sweep_stale_labs,
)
from .shaping import (
    Direction,
    Link,
    LinkDevices,
    loss_ruleset,
    needs_ifb,
    netem_available,
    tc_commands,
)

__all__ = [
    "LAB_PREFIX",
    "NETLAB_TOOL",
    "Count",
    "Counters",
    "Direction",
    "Lab",
    "LabError",
    "LabProcess",
    "Link",
    "Meshcore",
    "Nat",
    "PeerKey",
    "PipeSession",
    "Topology",
    "find_up_command",
    "lab_namespaces",
    "missing_prerequisites",
    "sweep_stale_labs",
]

#: The traffic tools: run it with `sys.executable` inside a namespace (`Lab.tool`).
NETLAB_TOOL = Path(__file__).resolve().with_name("labtools.py")

# Address plan, used only inside the lab's namespaces (nothing is ever added to the host's
# own namespace). Link k joins the router to node k: 198.18.k.0/24 (RFC 2544's benchmarking
# range), router .1, far end .2. The relay is k = 0. Behind a NAT, host k's LAN is
# 10.k.0.0/24: NAT .1, host .2.
_PUBLIC_NET = "198.18.{k}.{h}"
_LAN_NET = "10.{k}.0.{h}"
_HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,5}$")
_RESERVED = frozenset({"inet", "relay"})


class Nat(enum.Enum):
    """What stands between a host and the router."""

    NONE = "none"
    """No NAT: the host holds a public address (the flat topology)."""
    PRESERVING = "preserving"
    """nftables `masquerade`: keeps the source port when free (endpoint-independent mapping,
    the common home router)."""
    RANDOM = "random"
    """nftables `masquerade fully-random`: a new random port per connection (symmetric)."""


@dataclass(frozen=True)
class Topology:
    """Which hosts exist, what NAT each sits behind and how each router link behaves; the
    relay and router always exist."""

    hosts: Mapping[str, Nat] = field(default_factory=lambda: {"a": Nat.NONE, "b": Nat.NONE})
    delay_ms: float = 0.0
    """One-way delay of every router link (so A to B takes 2 * delay_ms each way), unless
    `links` says otherwise for a node. Zero gives plain veth links; above zero, netem where
    the kernel has it, else TAP pairs joined by a userspace forwarder that holds each frame
    this long (slower than a veth: for latency, not for bulk transfers)."""
    links: Mapping[str, Link] = field(default_factory=dict)
    """How the router's link to a node ("relay" or a host) behaves: delay, rate limit,
    loss (`shaping.Link`). Nodes not named get `Link()` with the topology's delay."""

    def __post_init__(self) -> None:
        if self.delay_ms < 0:
            raise LabError(f"delay_ms must be >= 0, got {self.delay_ms}")
        if not self.hosts:
            raise LabError("a topology needs at least one host")
        for name in self.hosts:
            if not _HOST_NAME.match(name) or name in _RESERVED:
                raise LabError(
                    f"host name {name!r} must be 1-6 lowercase letters/digits starting with a "
                    f"letter, and not one of {sorted(_RESERVED)}"
                )
        if len(self.hosts) > 250:
            raise LabError("at most 250 hosts fit the address plan")
        unknown = sorted(set(self.links) - {"relay", *self.hosts})
        if unknown:
            raise LabError(
                f"links given for {unknown}, which are not nodes of this topology; "
                f"name the relay or one of the hosts {sorted(self.hosts)}"
            )

    def link(self, node: str) -> Link:
        """How the router's link to `node` (the relay or a host) behaves."""
        return self.links.get(node, Link())

    def link_delay_ms(self, node: str) -> float:
        """The one-way delay of the router's link to `node`."""
        delay = self.link(node).delay_ms
        return self.delay_ms if delay is None else delay

    @classmethod
    def flat(
        cls, *names: str, delay_ms: float = 0.0, links: Mapping[str, Link] | None = None
    ) -> Topology:
        """Every host public (default hosts `a` and `b`)."""
        return cls({name: Nat.NONE for name in names or ("a", "b")}, delay_ms, dict(links or {}))

    @classmethod
    def behind(
        cls, a: Nat, b: Nat, *, delay_ms: float = 0.0, links: Mapping[str, Link] | None = None
    ) -> Topology:
        """Hosts `a` and `b` behind the given NATs."""
        return cls({"a": a, "b": b}, delay_ms, dict(links or {}))


@dataclass(frozen=True)
class Count:
    """Packets and bytes an nftables counter saw."""

    packets: int = 0
    bytes: int = 0

    def __add__(self, other: Count) -> Count:
        return Count(self.packets + other.packets, self.bytes + other.bytes)


class Counters(Mapping[tuple[str, str], Count]):
    """Router counters keyed by (source node, destination node), public addresses only."""

    def __init__(self, counts: Mapping[tuple[str, str], Count]) -> None:
        self._counts = dict(counts)

    def __getitem__(self, key: tuple[str, str]) -> Count:
        return self._counts[key]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._counts)

    def __len__(self) -> int:
        return len(self._counts)

    def between(self, x: str, y: str) -> Count:
        """Traffic from x to y plus from y to x."""
        return self._counts[(x, y)] + self._counts[(y, x)]

    def __repr__(self) -> str:
        busy = {f"{s}>{d}": (c.packets, c.bytes) for (s, d), c in self._counts.items() if c.packets}
        return f"Counters({busy})"


@dataclass(frozen=True)
class _Node:
    name: str
    ns: str
    address: str  # the node's own address
    public: str  # the address the router (the internet) sees for it


class Lab:
    """A built network; use as `with Lab(topology) as lab:`.

    Nodes are named `inet` (the router), `relay`, each host name, and `nat-<host>` for a
    host's NAT. `public(node)` is the address the rest of the lab sees for a host or relay.
    """

    def __init__(self, topology: Topology | None = None) -> None:
        self.topology = topology or Topology()
        self.run_id = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.prefix = f"{LAB_PREFIX}{self.run_id}-"
        # Interface names: 15 characters at most; "mc" + 5 hex + a role letter + host name.
        self._tag = "mc" + secrets.token_hex(3)[:5]
        self.workdir = Path(tempfile.mkdtemp(prefix=self.prefix))
        self._nodes: dict[str, _Node] = {}
        self._namespaces: list[str] = []
        self._processes: list[LabProcess] = []
        self._cables: list[tuple[str, float]] = []  # userspace cables: (NS:TAP=NS:TAP, one-way ms)
        self._shaped_links: dict[str, Link] = {}  # the router's device -> its link
        self._closed = False
        self._plan()

    # -- building -------------------------------------------------------------------------

    def _plan(self) -> None:
        def add(name: str, address: str, public: str) -> None:
            self._nodes[name] = _Node(name, self.prefix + name, address, public)

        add("inet", _PUBLIC_NET.format(k=0, h=1), _PUBLIC_NET.format(k=0, h=1))
        add("relay", _PUBLIC_NET.format(k=0, h=2), _PUBLIC_NET.format(k=0, h=2))
        for k, (host, nat) in enumerate(self.topology.hosts.items(), start=1):
            wan = _PUBLIC_NET.format(k=k, h=2)
            if nat is Nat.NONE:
                add(host, wan, wan)
            else:
                add(f"nat-{host}", wan, wan)
                add(host, _LAN_NET.format(k=k, h=2), wan)

    def __enter__(self) -> Lab:
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _ip(self, node: str, commands: Sequence[str]) -> None:
        run_command(["ip", "-n", self.ns(node), "-batch", "-"], input="\n".join(commands).encode())

    def _nft(self, node: str, ruleset: str) -> None:
        argv = ["ip", "netns", "exec", self.ns(node), "nft", "-f", "-"]
        run_command(argv, input=ruleset.encode())

    def _sysctl(self, node: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        run_command(["ip", "netns", "exec", self.ns(node), "sh", "-c", f"echo {value} > {path}"])

    def _build(self) -> None:
        for node in self._nodes.values():
            run_command(["ip", "netns", "add", node.ns])
            self._namespaces.append(node.ns)
            self._ip(node.name, ["link set lo up"])
        self._link("inet", "relay", 0)
        routers = ["inet"]
        for k, (host, nat) in enumerate(self.topology.hosts.items(), start=1):
            if nat is Nat.NONE:
                self._link("inet", host, k)
            else:
                self._link("inet", f"nat-{host}", k)
                self._add_nat(host, nat, k)
                routers.append(f"nat-{host}")
        for name in routers:
            self._sysctl(name, "net.ipv4.ip_forward", "1")
        self._nft("inet", self._router_ruleset())
        loss = loss_ruleset("shape", self._shaped_links)
        if loss:
            self._nft("inet", loss)
        # One forwarder per cable: each runs its own loop, on its own core if free.
        forwarders = [
            self.tool("inet", "delay", f"--ms={ms}", f"--link={link}")
            for link, ms in self._cables
        ]
        for forwarder in forwarders:
            forwarder.wait_for("ready", COMMAND_TIMEOUT_S)

    def _add_nat(self, host: str, nat: Nat, k: int) -> None:
        """Put `host` on a LAN 10.k.0.0/24 behind namespace nat-<host>, which masquerades."""
        natnode = f"nat-{host}"
        lan_nat, lan_host = f"{self._tag}l{host}", f"{self._tag}e{host}"
        self._ip(
            natnode,
            [
                f"link add {lan_nat} type veth peer name {lan_host} netns {self.ns(host)}",
                f"addr add {_LAN_NET.format(k=k, h=1)}/24 dev {lan_nat}",
                f"link set {lan_nat} up",
            ],
        )
        self._ip(
            host,
            [
                f"addr add {_LAN_NET.format(k=k, h=2)}/24 dev {lan_host}",
                f"link set {lan_host} up",
                f"route add default via {_LAN_NET.format(k=k, h=1)}",
            ],
        )
        flags = " fully-random" if nat is Nat.RANDOM else ""
        self._nft(
            natnode,
            "table ip nat {\n"
            "  chain postrouting {\n"
            "    type nat hook postrouting priority srcnat; policy accept;\n"
            f'    oifname "{self._tag}w{host}" masquerade{flags}\n'
            "  }\n"
            "}\n",
        )

    def _link(self, router: str, far: str, k: int) -> None:
        """Join the router to node `far` (a relay, public host or NAT) on 198.18.k.0/24,
        with the delay, rate limit and loss its topology gives it."""
        suffix = far.removeprefix("nat-")
        inside, outside = f"{self._tag}i{suffix}", f"{self._tag}w{suffix}"
        link, delay = self.topology.link(suffix), self.topology.link_delay_ms(suffix)
        # A shaped link is a userspace cable even without delay: a veth (or netem) hands the
        # sender's own skb to the router, so a packet waiting in the shaper's queue is still
        # charged to the sending socket, which then blocks instead of seeing drops, and the
        # queue moves into the sender. A cable copies the frame, as a NIC and a modem do.
        cable = link.rate_mbit is not None or (delay > 0 and not netem_available())
        netem = delay > 0 and not cable
        if cable:
            create = f"tuntap add mode tap name {inside}"
            self._ip(far, [f"tuntap add mode tap name {outside}"])
            ends = f"{self.ns(router)}:{inside}={self.ns(far)}:{outside}"
            self._cables.append((ends, delay))
        else:
            create = f"link add {inside} type veth peer name {outside} netns {self.ns(far)}"
        self._ip(
            router,
            [
                create,
                f"addr add {_PUBLIC_NET.format(k=k, h=1)}/24 dev {inside}",
                f"link set {inside} up",
            ],
        )
        self._ip(
            far,
            [
                f"addr add {_PUBLIC_NET.format(k=k, h=2)}/24 dev {outside}",
                f"link set {outside} up",
                f"route add default via {_PUBLIC_NET.format(k=k, h=1)}",
            ],
        )
        devices = LinkDevices(inside=inside, ifb=f"{self._tag}u{suffix}")
        if needs_ifb(link, delay, netem):
            self._ip(router, [f"link add {devices.ifb} type ifb", f"link set {devices.ifb} up"])
        commands = tc_commands(link, devices, delay, netem)
        if commands:
            argv = ["tc", "-n", self.ns(router), "-batch", "-"]
            run_command(argv, input="\n".join(commands).encode())
        self._shaped_links[inside] = link

    def _public_nodes(self) -> list[str]:
        return ["relay", *self.topology.hosts]

    def _router_ruleset(self) -> str:
        names = self._public_nodes()
        counters = "".join(f"  counter {s}_to_{d} {{ }}\n" for s in names for d in names if s != d)
        rules = "".join(
            f"    ip saddr {self.public(s)} ip daddr {self.public(d)} counter name {s}_to_{d}\n"
            for s in names
            for d in names
            if s != d
        )
        return (
            "table ip lab {\n"
            f"{counters}"
            "  set dropped { type ipv4_addr . ipv4_addr; }\n"
            "  set rejected { type ipv4_addr . ipv4_addr; }\n"
            "  chain cut {\n"
            "    type filter hook forward priority filter - 10; policy accept;\n"
            "    ip saddr . ip daddr @dropped counter drop\n"
            "    ip saddr . ip daddr @rejected meta l4proto tcp counter reject with tcp reset\n"
            "    ip saddr . ip daddr @rejected counter reject\n"
            "  }\n"
            "  chain count {\n"
            "    type filter hook forward priority filter; policy accept;\n"
            f"{rules}"
            "  }\n"
            "}\n"
        )

    # -- addresses ------------------------------------------------------------------------

    def ns(self, node: str) -> str:
        """The network namespace name of `node` (for `ip netns exec` or pyroute2's NetNS)."""
        return self._node(node).ns

    def addr(self, node: str) -> str:
        """The node's own IPv4 address (a host behind a NAT: its LAN address)."""
        return self._node(node).address

    def public(self, node: str) -> str:
        """The IPv4 address the rest of the lab sees for `node` (its NAT's, if any)."""
        return self._node(node).public

    def ifname(self, suffix: str) -> str:
        """An interface name unique to this lab (for TAP/TUN devices a test creates): the
        lab's 7-character tag + `suffix` (at most 8 characters)."""
        if not re.fullmatch(r"[a-z0-9]{1,8}", suffix):
            raise LabError(f"interface suffix {suffix!r} must be 1-8 lowercase letters/digits")
        return self._tag + suffix

    @property
    def hosts(self) -> list[str]:
        return list(self.topology.hosts)

    @property
    def namespaces(self) -> list[str]:
        """Every namespace this lab created."""
        return list(self._namespaces)

    @property
    def processes(self) -> list[LabProcess]:
        """Every process `popen` started in this lab, in the order it started them."""
        return list(self._processes)

    def _node(self, node: str) -> _Node:
        try:
            return self._nodes[node]
        except KeyError:
            raise LabError(f"no node {node!r} in this lab; nodes: {sorted(self._nodes)}") from None

    # -- processes ------------------------------------------------------------------------

    def _argv(self, node: str, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(node), *(os.fspath(a) for a in argv)]

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        return {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}

    def run(
        self,
        node: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        input: bytes | None = None,
        timeout: float = 60.0,
        check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run `argv` inside `node` to completion; raise LabError if it fails and `check`."""
        full = self._argv(node, argv)
        try:
            done = subprocess.run(
                full, input=input, capture_output=True, timeout=timeout, env=self._env(env)
            )
        except subprocess.TimeoutExpired as exc:
            raise LabError(f"`{' '.join(full)}` took longer than {timeout} s") from exc
        if check and done.returncode != 0:
            raise LabError(
                f"`{' '.join(full)}` exited {done.returncode}:\n"
                f"{done.stderr.decode(errors='replace')}{done.stdout.decode(errors='replace')}"
            )
        return done

    def popen(
        self,
        node: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LabProcess:
        """Start `argv` inside `node` in its own process group; the lab stops it at teardown.

        With `stdout` left None, stdout and stderr are merged into `LabProcess.output`;
        otherwise stdout goes where asked and stderr is collected.
        """
        self._check_open()
        proc = subprocess.Popen(
            self._argv(node, argv),
            stdin=stdin,
            stdout=subprocess.PIPE if stdout is None else stdout,
            stderr=subprocess.STDOUT if stdout is None else subprocess.PIPE,
            env=self._env(env),
            start_new_session=True,
        )
        process = LabProcess(node, [os.fspath(a) for a in argv], proc)
        self._processes.append(process)
        return process

    def tool(self, node: str, *args: str) -> LabProcess:
        """Start one of this file's traffic tools (`dial`, `whoami`,
        `serve-whoami`, `forward`, `delay`) in `node`."""
        return self.popen(node, [sys.executable, NETLAB_TOOL, *args])

    # -- the router -----------------------------------------------------------------------

    def counters(self) -> Counters:
        """Read the router's counters: packets/bytes between every pair of public nodes."""
        self._check_open()
        out = self.run("inet", ["nft", "-j", "list", "counters", "table", "ip", "lab"]).stdout
        counts: dict[tuple[str, str], Count] = {}
        for item in json.loads(out)["nftables"]:
            counter = item.get("counter")
            if counter is None or "_to_" not in counter["name"]:
                continue
            src, dst = counter["name"].split("_to_")
            counts[(src, dst)] = Count(counter["packets"], counter["bytes"])
        return Counters(counts)

    def reset_counters(self) -> None:
        """Zero every router counter (e.g. after setup, before the traffic under test)."""
        self.run("inet", ["nft", "reset", "counters", "table", "ip", "lab"])

    def block(self, x: str, y: str, *, reject: bool = False) -> None:
        """Make the router discard traffic between public nodes x and y, both directions.

        By default packets are silently dropped (a dead path found only by timeouts); with
        `reject` the router answers TCP with a reset and the rest with ICMP unreachable.
        """
        self._set_elements("add", "rejected" if reject else "dropped", x, y)

    def unblock(self, x: str, y: str) -> None:
        """Undo `block(x, y)` (either kind)."""
        for name in ("dropped", "rejected"):
            with contextlib.suppress(LabError):
                self._set_elements("delete", name, x, y)

    def _set_elements(self, verb: str, set_name: str, x: str, y: str) -> None:
        px, py = self.public(x), self.public(y)
        self.run(
            "inet",
            ["nft", verb, "element", "ip", "lab", set_name, f"{{ {px} . {py}, {py} . {px} }}"],
        )

    # -- teardown -------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise LabError("this lab was torn down; build a new one")

    def close(self) -> None:
        """Stop every process and delete every namespace and file of this lab (idempotent).

        Every step runs even if an earlier one failed; failures are raised together at the
        end as one LabError.
        """
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        problems: list[str] = []
        for process in reversed(self._processes):
            try:
                process.stop()
            except Exception as exc:  # keep tearing down; report at the end
                problems.append(f"stopping {process.argv[0]} in {process.node}: {exc}")
        for ns in reversed(self._namespaces):
            try:
                kill_namespace_processes(ns)
                run_command(["ip", "netns", "del", ns])
            except LabError as exc:
                problems.append(str(exc))
        shutil.rmtree(self.workdir, ignore_errors=True)
        if problems:
            raise LabError("lab teardown was incomplete:\n" + "\n".join(problems))


