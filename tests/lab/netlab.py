"""The network lab: real networks from Linux namespaces, veth links and nftables NATs.

`Lab(topology)` builds a router namespace (`inet`), a `relay` namespace with a public
address and one namespace per host, each either public or behind its own NAT namespace
(port-preserving or fully-random masquerade). Real processes run inside with `lab.popen`;
counters on the router tell which way traffic went; `lab.block` cuts a path. Leaving the
`with` block kills every process and deletes every namespace, also after a failure.

Run as a script, this file is also the lab's tools (`dial`, `whoami`, `serve-whoami`,
`forward`, and `delay` for delayed links), stdlib only, so a test can start them inside a
namespace with `lab.tool(node, ...)`.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import enum
import fcntl
import hashlib
import json
import os
import random
import re
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = [
    "LAB_PREFIX",
    "NETLAB_TOOL",
    "Count",
    "Counters",
    "Lab",
    "LabError",
    "LabProcess",
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

#: Every namespace and work directory of a lab starts with this, then the owner's pid.
LAB_PREFIX = "mclab-"
#: This file: run it with `sys.executable` inside a namespace for the traffic tools.
NETLAB_TOOL = Path(__file__).resolve()

# Address plan, used only inside the lab's namespaces (nothing is ever added to the host's
# own namespace). Link k joins the router to node k: 198.18.k.0/24 (RFC 2544's benchmarking
# range), router .1, far end .2. The relay is k = 0. Behind a NAT, host k's LAN is
# 10.k.0.0/24: NAT .1, host .2.
_PUBLIC_NET = "198.18.{k}.{h}"
_LAN_NET = "10.{k}.0.{h}"
_HOST_NAME = re.compile(r"^[a-z][a-z0-9]{0,5}$")
_RESERVED = frozenset({"inet", "relay"})
_COMMAND_TIMEOUT_S = 30.0
_STOP_GRACE_S = 5.0


class LabError(RuntimeError):
    """The lab could not be built, driven or torn down; the message says which step."""


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
    """Which hosts exist and what NAT each sits behind; the relay and router always exist."""

    hosts: Mapping[str, Nat] = field(default_factory=lambda: {"a": Nat.NONE, "b": Nat.NONE})
    delay_ms: float = 0.0
    """One-way delay of every router link (so A to B takes 2 * delay_ms each way). Zero
    gives plain veth links; above zero, links are TAP pairs joined by a userspace forwarder
    that holds each frame this long (the kernel here has no netem). Slower: use it where
    latency matters (simultaneous open), not for bulk transfers."""

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

    @classmethod
    def flat(cls, *names: str, delay_ms: float = 0.0) -> Topology:
        """Every host public (default hosts `a` and `b`)."""
        return cls({name: Nat.NONE for name in names or ("a", "b")}, delay_ms)

    @classmethod
    def behind(cls, a: Nat, b: Nat, *, delay_ms: float = 0.0) -> Topology:
        """Hosts `a` and `b` behind the given NATs."""
        return cls({"a": a, "b": b}, delay_ms)


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


class LabProcess:
    """A process running in a lab namespace; its output is collected by a reader thread.

    Unless `stdout` was redirected, stdout and stderr are merged into `output`. `wait_for`
    blocks on the reader's condition variable, never on a fixed sleep.
    """

    def __init__(self, node: str, argv: Sequence[str], proc: subprocess.Popen[bytes]) -> None:
        self.node = node
        self.argv = list(argv)
        self.proc = proc
        self._output = bytearray()
        self._cond = threading.Condition()
        self._eof = False
        stream = proc.stderr if proc.stdout is None else proc.stdout
        self._reader = threading.Thread(
            target=self._read, args=(stream,), name=f"lab-{node}-{proc.pid}", daemon=True
        )
        self._reader.start()

    def _read(self, stream: IO[bytes] | None) -> None:
        try:
            while stream is not None:
                chunk = os.read(stream.fileno(), 65536)
                if not chunk:
                    break
                with self._cond:
                    self._output += chunk
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        """Everything the process printed so far (decoded leniently)."""
        with self._cond:
            return self._output.decode(errors="replace")

    def wait_for(self, needle: str, timeout: float, *, count: int = 1) -> str:
        """Block until the output contains `needle` (`count` times); return the output.

        Raises LabError with the output so far if the process ends or `timeout` passes first.
        """
        deadline = time.monotonic() + timeout
        raw = needle.encode()
        with self._cond:
            while self._output.count(raw) < count:
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    why = "exited" if self._eof else f"did not say it within {timeout} s"
                    raise LabError(
                        f"{self.argv[0]} in {self.node} {why} (waiting for {needle!r} x{count}); "
                        f"output:\n{self._output.decode(errors='replace')}"
                    )
                self._cond.wait(left)
            return self._output.decode(errors="replace")

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit and its output to be read; return its exit code."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise LabError(
                f"{self.argv[0]} in {self.node} still runs after {timeout} s; output:\n"
                f"{self.output}"
            ) from None
        self._reader.join(timeout)
        return code

    def signal(self, sig: int) -> None:
        """Send `sig` to the process group (the process and any children it started)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = _STOP_GRACE_S) -> int:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; return the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(grace)
        # Children that outlive it (e.g. a --exec command) die with the namespace.
        self._reader.join(grace)
        return self.proc.returncode


def _run(argv: Sequence[str], *, input: bytes | None = None) -> str:
    """Run a setup command; raise LabError naming it and its stderr if it fails."""
    try:
        done = subprocess.run(
            list(argv), input=input, capture_output=True, timeout=_COMMAND_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"`{' '.join(argv)}` could not run: {exc}") from exc
    if done.returncode != 0:
        raise LabError(
            f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.decode(errors='replace')}"
            + (f"\ninput:\n{input.decode()}" if input else "")
        )
    return done.stdout.decode()


def lab_namespaces() -> list[str]:
    """Names of every network namespace that a lab created and did not delete yet."""
    out = _run(["ip", "netns", "list"])
    return sorted(line.split()[0] for line in out.splitlines() if line.startswith(LAB_PREFIX))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(name: str) -> int | None:
    match = re.match(re.escape(LAB_PREFIX) + r"(\d+)-", name)
    return int(match.group(1)) if match else None


def _kill_namespace_processes(ns: str) -> None:
    """SIGKILL every process inside namespace `ns` (daemons included) and wait until gone."""
    try:
        out = _run(["ip", "netns", "pids", ns])
    except LabError:
        return
    pids = [int(p) for p in out.split()]
    waiters = []
    for pid in pids:
        try:
            waiters.append(os.pidfd_open(pid))
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + _STOP_GRACE_S
    try:
        for fd in waiters:
            # A pidfd turns readable when its process exits: a wait, not a poll loop.
            left = max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                raise LabError(f"a process in namespace {ns} survived SIGKILL ({pids})")
    finally:
        for fd in waiters:
            os.close(fd)
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap the ones that were our children


def sweep_stale_labs() -> list[str]:
    """Delete namespaces and work directories left by labs whose owning process is gone.

    Labs of live processes (another test run at the same time) are left alone. Returns the
    namespaces deleted.
    """
    swept = []
    for ns in lab_namespaces():
        owner = _owner_pid(ns)
        if owner is None or _pid_alive(owner):
            continue
        _kill_namespace_processes(ns)
        with contextlib.suppress(LabError):
            _run(["ip", "netns", "del", ns])
            swept.append(ns)
    for path in Path(tempfile.gettempdir()).glob(f"{LAB_PREFIX}*"):
        owner = _owner_pid(path.name)
        if owner is not None and not _pid_alive(owner):
            shutil.rmtree(path, ignore_errors=True)
    return swept


def missing_prerequisites() -> list[str]:
    """What this machine lacks to build a lab (empty when it can): root, nft, /dev/net/tun."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces need CAP_NET_ADMIN; run the tests as root)")
    if shutil.which("nft") is None:
        missing.append("the `nft` command (apt-get install nftables)")
    if not Path("/dev/net/tun").exists():
        missing.append("/dev/net/tun (load the tun module or give the container the device)")
    return missing


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
        self._delayed_links: list[str] = []
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
        _run(["ip", "-n", self.ns(node), "-batch", "-"], input="\n".join(commands).encode())

    def _nft(self, node: str, ruleset: str) -> None:
        _run(["ip", "netns", "exec", self.ns(node), "nft", "-f", "-"], input=ruleset.encode())

    def _sysctl(self, node: str, key: str, value: str) -> None:
        path = "/proc/sys/" + key.replace(".", "/")
        _run(["ip", "netns", "exec", self.ns(node), "sh", "-c", f"echo {value} > {path}"])

    def _build(self) -> None:
        for node in self._nodes.values():
            _run(["ip", "netns", "add", node.ns])
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
        if self._delayed_links:
            links = [f"--link={link}" for link in self._delayed_links]
            forwarder = self.tool("inet", "delay", f"--ms={self.topology.delay_ms}", *links)
            forwarder.wait_for("ready", _COMMAND_TIMEOUT_S)

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
        """Join the router to node `far` (a relay, public host or NAT) on 198.18.k.0/24."""
        suffix = far.removeprefix("nat-")
        inside, outside = f"{self._tag}i{suffix}", f"{self._tag}w{suffix}"
        if self.topology.delay_ms > 0:
            create = f"tuntap add mode tap name {inside}"
            self._ip(far, [f"tuntap add mode tap name {outside}"])
            self._delayed_links.append(f"{self.ns(router)}:{inside}={self.ns(far)}:{outside}")
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
                _kill_namespace_processes(ns)
                _run(["ip", "netns", "del", ns])
            except LabError as exc:
                problems.append(str(exc))
        shutil.rmtree(self.workdir, ignore_errors=True)
        if problems:
            raise LabError("lab teardown was incomplete:\n" + "\n".join(problems))


# -- meshcore's executables in a lab ---------------------------------------------------------


def find_up_command(bindir: Path | None = None) -> list[str] | None:
    """How to run `meshcore-peer up` (TAP mode) here: the subcommand, else its module
    (`python -m meshcore_peer.up`); None if neither exists yet."""
    peer = (bindir or Path(sys.executable).parent) / "meshcore-peer"
    if subprocess.run([peer, "up", "--help"], capture_output=True).returncode == 0:
        return [str(peer), "up"]
    probe = [sys.executable, "-m", "meshcore_peer.up", "--help"]
    if subprocess.run(probe, capture_output=True).returncode == 0:
        return probe[:3]
    return None


@dataclass(frozen=True)
class PeerKey:
    """An identity file made with `meshcore-peer genkey` and the peer id it printed."""

    path: Path
    peer_id: str


class Meshcore:
    """Runs meshcore-relay and meshcore-peer inside a lab's namespaces.

    The relay listens on the relay node's public address; every peer gets its own identity
    file and control socket under the lab's work directory, so two peers (or two test runs)
    never share a path.
    """

    def __init__(self, lab: Lab, *, port: int = 7443, bindir: Path | None = None) -> None:
        self.lab = lab
        self.port = port
        self.bindir = bindir or Path(sys.executable).parent
        self.relay: LabProcess | None = None
        self._keys: dict[str, PeerKey] = {}

    @property
    def relay_url(self) -> str:
        return f"ws://{self.lab.public('relay')}:{self.port}"

    def exe(self, name: str) -> str:
        path = self.bindir / name
        if not path.exists():
            raise LabError(f"{path} is missing: install the project (pip install -e .)")
        return str(path)

    def start_relay(self, *extra: str) -> LabProcess:
        """Start meshcore-relay in the relay namespace; return once it listens."""
        listen = f"{self.lab.public('relay')}:{self.port}"
        self.relay = self.lab.popen(
            "relay", [self.exe("meshcore-relay"), "--listen", listen, *extra]
        )
        self.relay.wait_for("listening", _COMMAND_TIMEOUT_S)
        return self.relay

    def key(self, host: str) -> PeerKey:
        """The identity of `host` (made on first use, inside the host's namespace)."""
        if host not in self._keys:
            path = self.lab.workdir / f"{host}.key"
            out = self.lab.run(host, [self.exe("meshcore-peer"), "genkey", "--identity", path])
            self._keys[host] = PeerKey(path, out.stdout.decode().strip())
        return self._keys[host]

    def control_socket(self, host: str, role: str) -> Path:
        return self.lab.workdir / f"{host}-{role}.sock"

    def listen(
        self,
        host: str,
        allow: Sequence[str],
        *,
        stdout: int | IO[Any] | None = None,
        extra: Sequence[str] = (),
    ) -> LabProcess:
        """Start `meshcore-peer listen` on `host`; return once it registered with the relay."""
        argv = [
            self.exe("meshcore-peer"), "listen", "--relay", self.relay_url,
            "--identity", str(self.key(host).path), "--allow", ",".join(allow),
            "--control", str(self.control_socket(host, "listen")), *extra,
        ]  # fmt: skip
        process = self.lab.popen(host, argv, stdout=stdout)
        process.wait_for("registered", _COMMAND_TIMEOUT_S)
        return process

    def connect(
        self,
        host: str,
        peer: str,
        *,
        stdin: int | IO[Any] | None,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        extra: Sequence[str] = (),
    ) -> LabProcess:
        """Start `meshcore-peer connect` from `host` to peer id `peer` (wait on the result)."""
        argv = [
            self.exe("meshcore-peer"), "connect", "--relay", self.relay_url,
            "--identity", str(self.key(host).path), *extra, peer,
        ]  # fmt: skip
        return self.lab.popen(host, argv, stdin=stdin, stdout=stdout)

    def pipe(self, src: str, dst: str, *, extra: Sequence[str] = ()) -> PipeSession:
        """A session from `src` to `dst` to push bytes through (see PipeSession)."""
        return PipeSession(self, src, dst, extra)

    def up(
        self,
        host: str,
        peers: Sequence[str],
        *,
        address: str | None = None,
        device: str | None = None,
        extra_toml: str = "",
    ) -> LabProcess:
        """Start the TAP tunnel (`meshcore-peer up --config`) on `host` to the given peers.

        The device is named `lab.ifname("mesh")` unless given (unique to this lab); returns
        once the tunnel is up (sessions may still be forming).
        """
        command = find_up_command(self.bindir)
        if command is None:
            raise LabError("meshcore-peer has no `up` command (TAP mode) in this checkout")
        lines = [
            f"relay = {json.dumps(self.relay_url)}",
            f"identity = {json.dumps(str(self.key(host).path))}",
            f"device = {json.dumps(device or self.lab.ifname('mesh'))}",
            *([f"address = {json.dumps(address)}"] if address else []),
            "peers = [" + ", ".join(f"{{ id = {json.dumps(p)} }}" for p in peers) + "]",
            extra_toml,
        ]
        config = self.lab.workdir / f"{host}-up.toml"
        config.write_text("\n".join(lines) + "\n")
        process = self.lab.popen(host, [*command, "--config", str(config)])
        process.wait_for("tunnel up", _COMMAND_TIMEOUT_S)
        return process


class PipeSession:
    """`meshcore-peer connect` on `src` fed through a pipe, to `listen` on `dst` writing a file.

    `send` writes into the session (blocking while the session pushes back); `finish` closes
    the input, waits for both ends to finish and checks that `dst` received every byte sent,
    in order (SHA-256).
    """

    def __init__(self, mesh: Meshcore, src: str, dst: str, extra: Sequence[str] = ()) -> None:
        lab = mesh.lab
        self.received = lab.workdir / f"{src}-to-{dst}.bin"
        self._sink = self.received.open("wb")
        self.listener = mesh.listen(
            dst, allow=[mesh.key(src).peer_id], stdout=self._sink, extra=extra
        )
        read_end, write_end = os.pipe()
        try:
            self.connect = mesh.connect(src, mesh.key(dst).peer_id, stdin=read_end, extra=extra)
        finally:
            os.close(read_end)
        self._input = os.fdopen(write_end, "wb")
        self._digest = hashlib.sha256()
        self.sent = 0

    def send(self, data: bytes) -> None:
        self._digest.update(data)
        self._input.write(data)
        self._input.flush()
        self.sent += len(data)

    def finish(self, timeout: float = 120.0) -> None:
        """End the input; raise LabError unless both ends finished and the bytes match."""
        self._input.close()
        code = self.connect.wait(timeout)
        if code != 0:
            raise LabError(f"meshcore-peer connect exited {code}:\n{self.connect.output}")
        self.listener.wait_for("done", timeout)
        self._sink.close()
        got = hashlib.sha256(self.received.read_bytes()).hexdigest()
        if got != self._digest.hexdigest():
            size = self.received.stat().st_size
            raise LabError(f"sent {self.sent} bytes, received {size} with another SHA-256")


# -- traffic tools (run as `python netlab.py TOOL ...` inside a namespace) ------------------


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _tool_dial(args: argparse.Namespace) -> int:
    """TCP connect from a fixed local port to a fixed remote, re-dialling on every refusal.

    Both ends of a simultaneous open run this against each other. The first attempt starts
    at `--start-at` (wall clock, shared by all namespaces) or at once; after a refusal the
    next one follows `--redial` seconds later, jittered by +-50% so that two dialers that
    started out of step do not stay out of step. Prints one JSON line; exits 0 once
    connected and a greeting went both ways, 1 at the deadline.
    """
    local, remote = _hostport(args.bind), _hostport(args.to)
    if args.start_at is not None:
        time.sleep(max(0.0, args.start_at - time.time()))
    start = time.monotonic()
    deadline = start + args.deadline
    attempts, refused, last_error = 0, 0, ""
    while time.monotonic() < deadline:
        attempts += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(local)
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.connect(remote)
            sock.sendall(f"hello from {args.name}\n".encode())
            greeting = sock.makefile("rb").readline().decode().strip()
        except OSError as exc:
            refused += isinstance(exc, ConnectionRefusedError)
            last_error = f"{type(exc).__name__}: {exc}"
            sock.close()
            time.sleep(args.redial * random.uniform(0.5, 1.5))  # the re-dial under test
            continue
        report = {
            "connected": True,
            "attempts": attempts,
            "refused": refused,
            "elapsed_s": round(time.monotonic() - start, 3),
            "local": "{}:{}".format(*sock.getsockname()),
            "remote": "{}:{}".format(*sock.getpeername()),
            "greeting": greeting,
        }
        print(json.dumps(report), flush=True)
        sock.close()
        return 0
    report = {
        "connected": False,
        "attempts": attempts,
        "refused": refused,
        "last_error": last_error,
    }
    print(json.dumps(report), flush=True)
    return 1


def _tool_serve_whoami(args: argparse.Namespace) -> int:
    """Accept `count` connections; answer each with the address it came from."""
    with socket.create_server(_hostport(args.listen), reuse_port=True) as server:
        print("listening", flush=True)
        for _ in range(args.count):
            conn, peer = server.accept()
            with conn:
                conn.sendall(f"{peer[0]}:{peer[1]}\n".encode())
            print(f"peer {peer[0]}:{peer[1]}", flush=True)
    return 0


def _tool_whoami(args: argparse.Namespace) -> int:
    """Connect from a fixed local port and print the address the server saw."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(_hostport(args.bind))
        sock.settimeout(10)
        sock.connect(_hostport(args.to))
        print(sock.makefile("rb").readline().decode().strip(), flush=True)
    return 0


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _tool_forward(args: argparse.Namespace) -> int:
    """A plain TCP relay: accept on `--listen`, connect to `--to`, copy bytes both ways."""
    with socket.create_server(_hostport(args.listen), reuse_port=True) as server:
        print("listening", flush=True)
        while True:
            client, _ = server.accept()
            upstream = socket.create_connection(_hostport(args.to), timeout=10)
            upstream.settimeout(None)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(src, dst), daemon=True).start()


_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_CLONE_NEWNET = 0x40000000


def _open_tap(ns: str, name: str) -> int:
    """Attach to the existing TAP device `name` in namespace `ns`; return its fd."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/run/netns/{ns}") as nsfile:
        if libc.setns(nsfile.fileno(), _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns}: {os.strerror(err)}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), _IFF_TAP | _IFF_NO_PI))
    return fd


def _tool_delay(args: argparse.Namespace) -> int:
    """Join TAP pairs in (possibly different) namespaces, holding every frame `--ms`.

    Each `--link NS:TAP=NS:TAP` is a cable with a constant one-way delay; a constant delay
    keeps each direction first-in first-out, so a deque per direction is the whole queue.
    """
    delay = args.ms / 1000.0
    peer_of: dict[int, int] = {}
    for link in args.link:
        left, right = (side.split(":", 1) for side in link.split("="))
        fd_left, fd_right = _open_tap(*left), _open_tap(*right)
        peer_of[fd_left], peer_of[fd_right] = fd_right, fd_left
    queues: dict[int, deque[tuple[float, bytes]]] = {fd: deque() for fd in peer_of}
    print("ready", flush=True)
    poller = select.epoll()
    for fd in peer_of:
        poller.register(fd, select.EPOLLIN)
    while True:
        now = time.monotonic()
        due = min((q[0][0] for q in queues.values() if q), default=None)
        timeout = -1.0 if due is None else max(0.0, due - now)
        for fd, _ in poller.poll(timeout):
            arrival = time.monotonic() + delay
            queue = queues[peer_of[fd]]
            for _ in range(64):  # drain a burst, but let the other links have their turn
                try:
                    queue.append((arrival, os.read(fd, 65536)))
                except BlockingIOError:
                    break
        now = time.monotonic()
        for fd, queue in queues.items():
            while queue and queue[0][0] <= now:
                with contextlib.suppress(OSError):  # a full or downed device drops, as a wire
                    os.write(fd, queue.popleft()[1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netlab", description="the lab's traffic tools")
    sub = parser.add_subparsers(dest="tool", required=True)
    dial = sub.add_parser("dial", help="re-dialling TCP connect from a fixed port")
    dial.add_argument("--bind", required=True, help="local HOST:PORT")
    dial.add_argument("--to", required=True, help="remote HOST:PORT")
    dial.add_argument("--deadline", type=float, default=5.0, help="seconds to keep trying")
    dial.add_argument("--redial", type=float, default=0.05, help="seconds between attempts")
    dial.add_argument("--start-at", type=float, help="wall-clock time of the first attempt")
    dial.add_argument("--name", default="dialer")
    serve = sub.add_parser("serve-whoami", help="tell each client its address")
    serve.add_argument("--listen", required=True, help="HOST:PORT")
    serve.add_argument("--count", type=int, default=1)
    whoami = sub.add_parser("whoami", help="ask a serve-whoami who we are")
    whoami.add_argument("--bind", required=True, help="local HOST:PORT")
    whoami.add_argument("--to", required=True, help="server HOST:PORT")
    forward = sub.add_parser("forward", help="relay TCP connections to another address")
    forward.add_argument("--listen", required=True, help="HOST:PORT")
    forward.add_argument("--to", required=True, help="HOST:PORT")
    delay = sub.add_parser("delay", help="join TAP pairs with a constant delay")
    delay.add_argument("--ms", type=float, required=True, help="one-way delay")
    delay.add_argument("--link", action="append", required=True, help="NS:TAP=NS:TAP")
    args = parser.parse_args(argv)
    tools = {
        "dial": _tool_dial,
        "serve-whoami": _tool_serve_whoami,
        "whoami": _tool_whoami,
        "forward": _tool_forward,
        "delay": _tool_delay,
    }
    return tools[args.tool](args)


if __name__ == "__main__":
    sys.exit(main())
