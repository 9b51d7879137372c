"""Real TAP meshes in network namespaces for the tests and benchmarks that need them: a relay
namespace and peer namespaces running `meshcore-peer up`, and `needs_tap`, which marks such a
test `lab` and skips it loudly on a machine that cannot build them."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from itertools import count
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import pytest

from meshcore import Identity, PeerId

F = TypeVar("F", bound=Callable[..., Any])


def tap_prerequisites(*, ping: bool = False) -> list[str]:
    """What this machine lacks to build network namespaces with TAP devices (and, with `ping`,
    to ping across them); empty when nothing is missing."""
    needs = [
        ("root (CAP_NET_ADMIN)", os.geteuid() == 0),
        ("/dev/net/tun", os.path.exists("/dev/net/tun")),
        ("the ip command", shutil.which("ip") is not None),
    ]
    if ping:
        needs.append(("ping", shutil.which("ping") is not None))
    return [what for what, ok in needs if not ok]


def tap_marker(kind: str, missing: list[str]) -> Callable[[F], F]:
    """A decorator that marks a test `lab` and skips it loudly, naming `kind` and what is
    missing, on a machine that lacks anything in `missing`."""
    skip = pytest.mark.skipif(
        bool(missing), reason=f"{kind} SKIPPED, this machine lacks: " + ", ".join(missing)
    )

    def mark(test: F) -> F:
        return pytest.mark.lab(skip(test))  # type: ignore[no-any-return]

    return mark


needs_tap = tap_marker("TAP MESH TESTS", tap_prerequisites(ping=True))
"""Builds network namespaces with TAP devices: marked `lab`, skipped loudly without root."""


_PREFIX = "mctun"
_serial = count()
_RELAY_CODE = """
import sys, trio
from meshcore._relay import RelayConfig, serve_relay
async def main():
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_relay, RelayConfig(host="0.0.0.0", port=7443))
        print("ready", flush=True)
trio.run(main)
"""


def _sweep_stale() -> None:
    """Delete namespaces left behind by test runs that died (their pid is gone)."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        match = re.match(rf"^({_PREFIX}(\d+)x\S*)", line)
        if match and not os.path.exists(f"/proc/{match.group(2)}"):
            subprocess.run(["ip", "netns", "del", match.group(1)], capture_output=True)


class Mesh:
    """A relay namespace and `size` peer namespaces, each joined to the relay's by a veth
    pair (172.31.<i+1>.0/24, relay .1, peer .2); with `routed` the relay's namespace also
    forwards between them. Peers run `meshcore-peer up` with TAP addresses 10.77.0.<i+1>/24.
    Leaving the `with` block stops every process and deletes every namespace, also after a
    failure. Nothing touches the host's own namespace."""

    def __init__(
        self,
        size: int,
        workdir: Path,
        identities: list[Identity] | None = None,
        *,
        routed: bool = False,
    ) -> None:
        self.size = size
        self.routed = routed
        """Route between the peers' namespaces through the relay's (direct paths work)."""
        self.workdir = workdir
        self.tag = f"{_PREFIX}{os.getpid()}x{next(_serial)}"
        self.identities = identities or [Identity.generate() for _ in range(size)]
        self.ids: list[PeerId] = [i.peer_id for i in self.identities]
        self.namespaces: list[str] = []
        self.relay: subprocess.Popen[bytes] | None = None
        self.peers: dict[int, subprocess.Popen[bytes]] = {}

    def ns(self, i: int | str) -> str:
        return f"{self.tag}{i}"

    def address(self, i: int) -> str:
        return f"10.77.0.{i + 1}"

    def key(self, i: int) -> Path:
        return self.workdir / f"peer{i}.key"

    def log(self, i: int) -> Path:
        return self.workdir / f"peer{i}.log"

    def __enter__(self) -> Mesh:
        _sweep_stale()
        try:
            self._build()
        except BaseException:
            self._teardown()
            raise
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._teardown()

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    def _build(self) -> None:
        for name in ["r", *range(self.size)]:
            self._ip("netns", "add", self.ns(name))
            self.namespaces.append(self.ns(name))
            self._ip("-n", self.ns(name), "link", "set", "lo", "up")
        relay_ns = self.ns("r")
        for i in range(self.size):
            self._ip(
                "-n", relay_ns, "link", "add", f"v{i}", "type", "veth",
                "peer", "name", "eth0", "netns", self.ns(i),
            )  # fmt: skip
            self._ip("-n", relay_ns, "addr", "add", f"172.31.{i + 1}.1/24", "dev", f"v{i}")
            self._ip("-n", relay_ns, "link", "set", f"v{i}", "up")
            self._ip("-n", self.ns(i), "addr", "add", f"172.31.{i + 1}.2/24", "dev", "eth0")
            self._ip("-n", self.ns(i), "link", "set", "eth0", "up")
            if self.routed:
                self._ip(
                    "-n", self.ns(i), "route", "add", "172.31.0.0/16", "via", f"172.31.{i + 1}.1"
                )
            self.identities[i].save(self.key(i), overwrite=True)
        if self.routed:
            subprocess.run(
                ["ip", "netns", "exec", relay_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
                check=True,
            )
        self.relay = subprocess.Popen(
            ["ip", "netns", "exec", relay_ns, sys.executable, "-c", _RELAY_CODE],
            stdout=subprocess.PIPE,
            stderr=open(self.workdir / "relay.log", "wb"),  # noqa: SIM115
        )
        assert self.relay.stdout is not None
        ready, _, _ = select.select([self.relay.stdout], [], [], 15)
        if not ready or self.relay.stdout.readline().strip() != b"ready":
            raise RuntimeError("the relay did not start: " + self._tail(self.workdir / "relay.log"))

    def config(self, i: int, **extra: object) -> Path:
        """A TOML file for peer i: every other peer of the mesh, its address, the relay."""
        lines = [
            f'relay = "ws://172.31.{i + 1}.1:7443/"',
            f'identity = "{self.key(i)}"',
            f'address = "{self.address(i)}/24"',
        ]
        lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
        for j in range(self.size):
            if j != i:
                lines += ["[[peers]]", f'id = "{self.ids[j]}"', f'name = "peer{j}"']
        path = self.workdir / f"peer{i}.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start_peer(self, i: int, *args: str, python: Sequence[str] = ()) -> subprocess.Popen[bytes]:
        """Run `meshcore-peer up` for peer i inside its namespace (`python`: interpreter
        options before `-m`, such as a profiler)."""
        command = [sys.executable, *python, "-m", "meshcore_peer.up"]
        command += ["--config", str(self.config(i))]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(i), *command, *args],
            stdout=subprocess.DEVNULL,
            stderr=open(self.log(i), "ab"),  # noqa: SIM115
        )
        self.peers[i] = proc
        return proc

    def start_all(self, python: Sequence[str] = ()) -> None:
        for i in range(self.size):
            self.start_peer(i, python=python)
        for i in range(self.size):
            self.wait_log(i, " up (", self.size - 1)  # "session with X up (dialled)"

    def stop_peer(self, i: int, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        proc = self.peers.pop(i)
        proc.send_signal(sig)
        return proc.wait(timeout)

    def wait_log(self, i: int, text: str, times: int = 1, timeout: float = 20) -> None:
        """Wait until peer i's log says `text` `times` times (checked every 50 ms)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log(i).exists() and self.log(i).read_text().count(text) >= times:
                return
            proc = self.peers.get(i)
            if proc is not None and proc.poll() is not None:
                raise AssertionError(f"peer {i} exited early:\n{self._tail(self.log(i))}")
            time.sleep(0.05)
        raise AssertionError(f"peer {i} did not log {text!r} x{times}:\n{self._tail(self.log(i))}")

    def run(self, i: int, *command: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns(i), *command],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ping(self, i: int, j: int, count: int = 3) -> subprocess.CompletedProcess[str]:
        return self.run(i, "ping", "-c", str(count), "-i", "0.2", "-W", "2", self.address(j))

    def link_stats(self, i: int) -> dict[str, Any]:
        out = self.run(i, "ip", "-j", "-s", "link", "show", "mesh0").stdout
        stats: dict[str, Any] = json.loads(out)[0]["stats64"]
        return stats

    @staticmethod
    def _tail(path: Path) -> str:
        return path.read_text()[-3000:] if path.exists() else "(no log)"

    def _teardown(self) -> None:
        procs = [*self.peers.values(), *([self.relay] if self.relay else [])]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for name in self.namespaces:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
