"""Several relays in a lab: meshcore-relay on hosts of their own (public addresses), the
relay-list file the peers follow, and peers (`meshcore-peer up`) on that list with chosen
identities, for the tests of the relay network (docs/relay-network.md).
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from meshcore import Identity, PeerId, RelayEntry, rendezvous_relays

from .labmesh import Meshcore, PeerKey, find_up_command
from .labproc import COMMAND_TIMEOUT_S, LabError, LabProcess
from .netlab import Lab

__all__ = ["RelaySet", "choose_identity", "peer_status", "relays_report", "start_up"]

PORT = 7443


class RelaySet:
    """meshcore-relay on each of `nodes` (hosts of the lab with public addresses), each with
    an identity of its own (`--identity`), and the relay-list file (`[[relays]]` tables with
    `url` and `id`) the peers of the lab follow, so that every relay connection is verified."""

    def __init__(self, lab: Lab, mesh: Meshcore, nodes: Sequence[str]) -> None:
        self.lab = lab
        self.mesh = mesh
        self.nodes = tuple(nodes)
        self.file = lab.workdir / "relays.toml"
        self.processes: dict[str, LabProcess] = {}
        self.keys: dict[str, Path] = {}
        self.ids: dict[str, PeerId] = {}
        for node in self.nodes:  # one identity per relay of the lab, whoever asks first
            self.keys[node] = path = lab.workdir / f"relay-{node}.key"
            if path.exists():
                identity = Identity.load(path)
            else:
                identity = Identity.generate()
                identity.save(path)
            self.ids[node] = identity.peer_id

    def url(self, node: str) -> str:
        return f"ws://{self.lab.public(node)}:{PORT}/"

    def entries(self, nodes: Sequence[str] | None = None) -> list[RelayEntry]:
        """The list entries of `nodes` (default: all), as the peers see them."""
        return [RelayEntry(self.url(node), self.ids[node]) for node in (nodes or self.nodes)]

    def node_of(self, url: str | None) -> str:
        for node in self.nodes:
            if self.url(node) == url:
                return node
        raise LabError(f"{url!r} is not one of this lab's relays {self.nodes}")

    def start(self, *nodes: str) -> None:
        """Start meshcore-relay on each of `nodes` (default: all); return once they listen."""
        for node in nodes or self.nodes:
            listen = f"{self.lab.public(node)}:{PORT}"
            argv = [self.mesh.exe("meshcore-relay"), "--listen", listen]
            process = self.lab.popen(node, [*argv, "--identity", str(self.keys[node])])
            process.wait_for("listening", COMMAND_TIMEOUT_S)
            self.processes[node] = process

    def kill(self, node: str) -> None:
        """SIGKILL the relay on `node` (its connections die with it, no Close sent)."""
        process = self.processes.pop(node)
        process.signal(signal.SIGKILL)
        process.wait(10)

    def write(self, nodes: Sequence[str] | None = None) -> Path:
        """(Re)write the relay-list file with `nodes` (default: all), atomically."""
        lines = []
        for node in nodes or self.nodes:
            relay_id = json.dumps(self.ids[node].to_text())
            lines += ["[[relays]]", f"url = {json.dumps(self.url(node))}", f"id = {relay_id}", ""]
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        tmp.replace(self.file)
        return self.file


def choose_identity(lab: Lab, host: str, wanted: Callable[[Identity], bool]) -> PeerKey:
    """A fresh identity for `host` that `wanted` accepts (e.g. its rendezvous relays), saved
    under the lab's work directory (mode 0600)."""
    for _ in range(10_000):
        identity = Identity.generate()
        if wanted(identity):
            path = lab.workdir / f"{host}.key"
            identity.save(path, overwrite=True)
            return PeerKey(path, identity.peer_id.to_text())
    raise LabError(f"no identity for {host} met the condition in 10,000 tries")


def homes(identity: Identity, relays: RelaySet, k: int) -> set[str]:
    """The nodes of `identity`'s rendezvous relays."""
    return {relays.node_of(e.url) for e in rendezvous_relays(identity.peer_id, relays.entries(), k)}


def control(lab: Lab, host: str) -> Path:
    return lab.workdir / f"{host}-up.sock"


def start_up(
    lab: Lab,
    mesh: Meshcore,
    relays: RelaySet,
    host: str,
    key: PeerKey,
    peers: Sequence[PeerKey],
    *,
    address: str,
    k: int = 2,
    extra_toml: str = "",
) -> LabProcess:
    """`meshcore-peer up` on `host` following the relay-list file, with `key`; returns once
    the tunnel is up (sessions may still be forming)."""
    command = find_up_command(mesh.bindir)
    if command is None:
        raise LabError("meshcore-peer has no `up` command (TAP mode) in this checkout")
    lines = [
        f"relays_file = {json.dumps(str(relays.file))}",
        f"rendezvous_k = {k}",
        f"state_dir = {json.dumps(str(lab.workdir / f'{host}-state'))}",
        f"identity = {json.dumps(str(key.path))}",
        f"device = {json.dumps(lab.ifname('mesh'))}",
        f"address = {json.dumps(address)}",
        f"control = {json.dumps(str(control(lab, host)))}",
        "peers = [" + ", ".join(f"{{ id = {json.dumps(p.peer_id)} }}" for p in peers) + "]",
        extra_toml,
    ]
    config = lab.workdir / f"{host}-up.toml"
    config.write_text("\n".join(lines) + "\n")
    process = lab.popen(host, [*command, "--config", str(config)])
    process.wait_for("tunnel up", COMMAND_TIMEOUT_S)
    return process


def _ask(lab: Lab, mesh: Meshcore, host: str, what: str) -> str:
    argv = [mesh.exe("meshcore-peer"), what, "--json", "--control", str(control(lab, host))]
    return lab.run(host, argv).stdout.decode()


def peer_status(lab: Lab, mesh: Meshcore, host: str) -> list[dict[str, Any]]:
    """`meshcore-peer status --json` on `host`: one dict per live session."""
    out = _ask(lab, mesh, host, "status")
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def relays_report(lab: Lab, mesh: Meshcore, host: str) -> dict[str, Any]:
    """`meshcore-peer relays --json` on `host` (the running peer's report)."""
    report: dict[str, Any] = json.loads(_ask(lab, mesh, host, "relays"))
    return report
