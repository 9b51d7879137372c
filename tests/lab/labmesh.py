"""meshcore's executables in a lab: the relay, `meshcore-peer listen`/`connect` sessions
fed through pipes, and the TAP tunnel (`meshcore-peer up`), each inside a lab namespace.

Used by `netlab.py` (which re-exports the public names).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from .labproc import COMMAND_TIMEOUT_S, LabError, LabProcess

if TYPE_CHECKING:
    from .netlab import Lab

__all__ = ["Meshcore", "PeerKey", "PipeSession", "find_up_command"]


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
        self.relay.wait_for("listening", COMMAND_TIMEOUT_S)
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
        process.wait_for("registered", COMMAND_TIMEOUT_S)
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
        process.wait_for("tunnel up", COMMAND_TIMEOUT_S)
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

