"""The tunnels that bench_lab.py measures, each brought up between hosts a and b of a lab:
the bare path, meshcore's TAP tunnel (direct, and through the relay), and the peers n2n,
tinc, wireguard-go and nebula, all from Debian's packages, with their default settings.

A setup is a context manager that yields the address of b inside the tunnel once the
tunnel is configured (it may still be forming: the caller pings until it answers);
leaving it stops the tunnel's daemons (the lab kills whatever is left at teardown).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager

from lab.netlab import Lab, LabError, LabProcess, Meshcore

__all__ = [
    "PACKAGES",
    "PEERS",
    "TUNNELS",
    "Setup",
    "ensure_packages",
    "unavailable_reason",
]

PACKAGES = {  # command -> Debian package
    "iperf3": "iperf3",
    "ping": "iputils-ping",
    "supernode": "n2n",
    "edge": "n2n",
    "tincd": "tinc",
    "wireguard-go": "wireguard-go",
    "wg": "wireguard-tools",
    "nebula": "nebula",
    "nebula-cert": "nebula",
}
PEERS = ("n2n", "tinc", "wireguard-go", "nebula")
"""The other tunnels meshcore is compared with; "best peer" is the best of these."""
NEEDS = {  # tunnel -> the commands it runs
    "n2n": ("edge", "supernode"),
    "tinc": ("tincd",),
    "wireguard-go": ("wireguard-go", "wg"),
    "nebula": ("nebula", "nebula-cert"),
}
TUNNEL_NET = "10.99.0.{}"
MESH_DIRECT_WITHIN_S = 30.0  # handshake, one race, process start on a busy machine

Setup = Callable[[Lab], AbstractContextManager[str]]


def ensure_packages() -> dict[str, str]:
    """Install missing Debian packages (no recommends); return {command: why unavailable}."""
    missing = sorted({pkg for cmd, pkg in PACKAGES.items() if shutil.which(cmd) is None})
    if missing and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        print(f"installing {' '.join(missing)} with apt-get ...", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            env=env, check=False, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return {
        cmd: f"`{cmd}` missing (apt-get install {pkg} failed)"
        for cmd, pkg in PACKAGES.items()
        if shutil.which(cmd) is None
    }


def unavailable_reason(tunnel: str, unavailable: dict[str, str]) -> str:
    """Why `tunnel` cannot run here ("" if it can)."""
    return "; ".join(unavailable[cmd] for cmd in NEEDS.get(tunnel, ()) if cmd in unavailable)


@contextmanager
def bare(lab: Lab) -> Iterator[str]:
    yield lab.public("b")


@contextmanager
def n2n(lab: Lab) -> Iterator[str]:
    """n2n edges in a and b (layer 2, twofish), the supernode in the relay namespace."""
    port = 7654
    supernode = lab.popen("relay", ["supernode", "-l", str(port), "-v"])
    for index, host in enumerate(("a", "b"), start=1):
        lab.popen(host, [
            "edge", "-d", lab.ifname("n2n"), "-a", TUNNEL_NET.format(index),
            "-s", "255.255.255.0", "-c", "meshlab", "-k", "lab-secret",
            "-l", f"{lab.public('relay')}:{port}",
        ])  # fmt: skip
    try:
        yield TUNNEL_NET.format(2)
    finally:
        supernode.stop()


@contextmanager
def tinc(lab: Lab) -> Iterator[str]:
    """tinc 1.0 in switch mode (layer 2) with its default cipher and digest, a -> b."""
    dirs = {host: lab.workdir / f"tinc-{host}" for host in ("a", "b")}
    for index, (host, conf) in enumerate(dirs.items(), start=1):
        (conf / "hosts").mkdir(parents=True)
        other = "b" if host == "a" else "a"
        (conf / "tinc.conf").write_text(
            f"Name = {host}\nMode = switch\nInterface = {lab.ifname('tinc')}\n"
            f"AddressFamily = ipv4\nConnectTo = {other}\n"
        )
        up = conf / "tinc-up"
        up.write_text(
            '#!/bin/sh\nip link set "$INTERFACE" up\n'
            f'ip addr add {TUNNEL_NET.format(index)}/24 dev "$INTERFACE"\n'
        )
        up.chmod(0o755)
        (conf / "hosts" / host).write_text(f"Address = {lab.public(host)}\nPort = 655\n")
        lab.run(host, ["tincd", "-c", str(conf), "-K2048"], input=b"\n\n")
    for host, conf in dirs.items():
        other = "b" if host == "a" else "a"
        shutil.copy(dirs[other] / "hosts" / other, conf / "hosts" / other)
    daemons = [
        lab.popen(host, ["tincd", "-c", str(conf), "-D", "-d1",
                         f"--pidfile={conf / 'pid'}", f"--logfile={conf / 'log'}"])
        for host, conf in dirs.items()
    ]  # fmt: skip
    try:
        yield TUNNEL_NET.format(2)
    finally:
        for daemon in daemons:
            daemon.stop()


@contextmanager
def wireguard_go(lab: Lab) -> Iterator[str]:
    """wireguard-go (layer 3, userspace), keys and peers set with `wg`."""
    # One name per host: wireguard-go's control socket /var/run/wireguard/NAME.sock lives
    # in the shared file system, not in the namespace.
    names = {host: lab.ifname(f"wg{host}") for host in ("a", "b")}
    env = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "error"}
    keys = {}
    for host in ("a", "b"):
        private = lab.run(host, ["wg", "genkey"]).stdout
        public = lab.run(host, ["wg", "pubkey"], input=private).stdout.decode().strip()
        key_file = lab.workdir / f"wg-{host}.key"
        key_file.write_bytes(private)
        key_file.chmod(0o600)
        keys[host] = (key_file, public)
    daemons = []
    for index, host in enumerate(("a", "b"), start=1):
        other = "b" if host == "a" else "a"
        name = names[host]
        daemon = lab.popen(host, ["wireguard-go", "-f", name], env=env)
        daemons.append(daemon)
        wait_for_device(lab, host, name)
        lab.run(host, [
            "wg", "set", name, "private-key", str(keys[host][0]), "listen-port", "51820",
            "peer", keys[other][1], "endpoint", f"{lab.public(other)}:51820",
            "allowed-ips", f"{TUNNEL_NET.format(3 - index)}/32",
        ])  # fmt: skip
        lab.run(host, ["ip", "addr", "add", f"{TUNNEL_NET.format(index)}/24", "dev", name])
        lab.run(host, ["ip", "link", "set", name, "up"])
    try:
        yield TUNNEL_NET.format(2)
    finally:
        for daemon in daemons:
            daemon.stop()


_NEBULA_CONFIG = """\
pki:
  ca: {dir}/ca.crt
  cert: {dir}/{name}.crt
  key: {dir}/{name}.key
static_host_map:
  "{lighthouse_ip}": ["{lighthouse_public}:4242"]
lighthouse:
  am_lighthouse: {am_lighthouse}
  hosts: [{hosts}]
listen:
  host: 0.0.0.0
  port: 4242
punchy:
  punch: true
tun:
  disabled: {tun_disabled}
  dev: {dev}
logging:
  level: warning
firewall:
  outbound: [{{port: any, proto: any, host: any}}]
  inbound: [{{port: any, proto: any, host: any}}]
"""


@contextmanager
def nebula(lab: Lab) -> Iterator[str]:
    """nebula (layer 3, UDP, Noise): a CA and certificates made with nebula-cert in the
    lab's work directory, the lighthouse in the relay namespace, a and b as nodes."""
    pki = lab.workdir / "nebula"
    pki.mkdir()
    cert = ["nebula-cert"]
    subprocess.run([*cert, "ca", "-name", "meshlab", "-out-crt", pki / "ca.crt",
                    "-out-key", pki / "ca.key"], check=True, capture_output=True)  # fmt: skip
    lighthouse_ip = TUNNEL_NET.format(254)
    nodes = {"relay": lighthouse_ip, "a": TUNNEL_NET.format(1), "b": TUNNEL_NET.format(2)}
    daemons = []
    for name, ip in nodes.items():
        subprocess.run([
            *cert, "sign", "-name", name, "-ip", f"{ip}/24", "-ca-crt", pki / "ca.crt",
            "-ca-key", pki / "ca.key", "-out-crt", pki / f"{name}.crt",
            "-out-key", pki / f"{name}.key",
        ], check=True, capture_output=True)  # fmt: skip
        is_lighthouse = name == "relay"
        config = pki / f"{name}.yml"
        config.write_text(_NEBULA_CONFIG.format(
            dir=pki, name=name, lighthouse_ip=lighthouse_ip,
            lighthouse_public=lab.public("relay"),
            am_lighthouse="true" if is_lighthouse else "false",
            hosts="" if is_lighthouse else f'"{lighthouse_ip}"',
            tun_disabled="true" if is_lighthouse else "false", dev=lab.ifname("neb"),
        ))  # fmt: skip
        daemons.append(lab.popen(name, ["nebula", "-config", str(config)]))
    for host in ("a", "b"):
        wait_for_device(lab, host, lab.ifname("neb"))
    try:
        yield nodes["b"]
    finally:
        for daemon in daemons:
            daemon.stop()


def meshcore_tap(via_relay: bool, *, datagrams: bool = True) -> Setup:
    """meshcore's TAP tunnel (`meshcore-peer up`) between a and b, the relay in the relay
    namespace. `via_relay` cuts a <-> b on the router, so the relay is the only way;
    otherwise the setup returns once both peers logged their move to the direct path.
    `datagrams=False` carries every frame by the session (the baseline of the datagram
    path, docs/datagram.md)."""

    @contextmanager
    def setup(lab: Lab) -> Iterator[str]:
        start_meshcore_pair(lab, via_relay, datagrams=datagrams)
        yield TUNNEL_NET.format(2)  # the lab stops the processes

    return setup


def start_meshcore_pair(lab: Lab, via_relay: bool, *, datagrams: bool = True) -> list[LabProcess]:
    """The relay and `meshcore-peer up` on a (TUNNEL_NET .1) and b (.2); their processes.
    `via_relay` first cuts a <-> b on the router; otherwise this returns once both peers
    logged their move to the direct path. `datagrams=False` turns the datagram path off."""
    mesh = Meshcore(lab)
    mesh.start_relay()
    if via_relay:
        lab.block("a", "b")
    ids = {host: mesh.key(host).peer_id for host in ("a", "b")}
    toml = "" if datagrams else "datagrams = false\n"
    ups = [
        mesh.up(host, [ids[other]], address=f"{TUNNEL_NET.format(index)}/24", extra_toml=toml)
        for index, (host, other) in enumerate((("a", "b"), ("b", "a")), start=1)
    ]
    if not via_relay:
        for up in ups:
            up.wait_for("path relay -> direct", MESH_DIRECT_WITHIN_S)
    return ups


def wait_for_device(lab: Lab, host: str, name: str, timeout: float = 10.0) -> None:
    """Wait until network device `name` exists in `host` (a daemon creates it)."""
    deadline = time.monotonic() + timeout
    while lab.run(host, ["ip", "link", "show", name], check=False).returncode != 0:
        if time.monotonic() > deadline:
            raise LabError(f"{name} did not appear in {host} within {timeout} s")
        time.sleep(0.05)  # polling a device list: nothing to wait on


TUNNELS: dict[str, Setup] = {
    "bare": bare,
    "meshcore-direct": meshcore_tap(via_relay=False),
    "meshcore-direct-tcp": meshcore_tap(via_relay=False, datagrams=False),
    "meshcore-relay": meshcore_tap(via_relay=True),
    "n2n": n2n,
    "tinc": tinc,
    "wireguard-go": wireguard_go,
    "nebula": nebula,
}
"""Every tunnel, in the order the tables show them."""
