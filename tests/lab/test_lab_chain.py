"""The on-chain relay registry in the lab, with the real executables (docs/registry-chain.md):
anvil runs in a relay's namespace, the relays register themselves with `meshcore-relay
register`, and peers configured with only the node's URL and the registry's name find the
relays, meet and go direct; a relay that deregisters is left by the peers within one refresh;
with the node stopped, a restarted peer starts from its cache."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .labmesh import Meshcore, PeerKey, find_up_command
from .labproc import COMMAND_TIMEOUT_S, LabError, LabProcess, wait_until
from .labrelays import choose_identity, relays_report
from .netlab import Lab, Topology
from .test_lab_network import ping_once, tunnel

MakeLab = Callable[[Topology], Lab]
RELAYS = ("r1", "r2")
CHAIN_NODE = "r1"
"""anvil runs beside the first relay."""
ANVIL_PORT = 8545
RELAY_PORT = 7443
CHAIN_ID = 31337
REFRESH_S = 2.0
_IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")
_DEV_KEY = re.compile(r"^\((\d+)\) (0x[0-9a-f]{64})$", re.M)


def anvil_binary() -> Path:
    """The anvil binary, or a skip (a failure under CI) naming how to install it."""
    try:
        from meshcore.testing.chain import find_anvil
    except ImportError as exc:  # pragma: no cover - the chain extra is missing
        path, missing = None, f"the chain test extra is not installed ({exc})"
    else:
        path = find_anvil()
        missing = "anvil is not installed: `npm ci --prefix .ci/node` (as .ci/run does)"
    if path is None:
        if _IN_CI:
            pytest.fail(f"CI must run the lab's chain test, but {missing}")
        pytest.skip(f"LAB CHAIN TEST SKIPPED: {missing}")
    return path


class Chain:
    """anvil on `CHAIN_NODE`'s public address, a registry named chronara.eth on it, and a
    0600 account key file for each of anvil's development accounts."""

    def __init__(self, lab: Lab, mesh: Meshcore) -> None:
        self.lab, self.mesh = lab, mesh
        self.url = f"http://{lab.public(CHAIN_NODE)}:{ANVIL_PORT}"
        argv = [str(anvil_binary()), "--host", lab.public(CHAIN_NODE), "--port", str(ANVIL_PORT),
                "--chain-id", str(CHAIN_ID), "--accounts", "4"]  # fmt: skip
        self.process = lab.popen(CHAIN_NODE, argv)
        output = self.process.wait_for("Listening on", COMMAND_TIMEOUT_S)
        self.keys: list[Path] = []
        for index, secret in _DEV_KEY.findall(output):
            path = lab.workdir / f"account{index}.key"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secret + "\n")
            self.keys.append(path)
        assert len(self.keys) == 4, output
        deploy = self.relay_command(
            CHAIN_NODE, "registry", "deploy", "--account-key", self.keys[0], "--name",
            "chronara.eth",
        )  # fmt: skip
        found = re.search(r"readers need --ens (0x[0-9a-fA-F]{40})", deploy.stderr.decode())
        assert found, deploy.stderr
        self.ens = found.group(1)

    def relay_argv(self, *args: str | Path) -> list[str | Path]:
        """`meshcore-relay ARGS` against this chain."""
        return [self.mesh.exe("meshcore-relay"), *args, "--rpc", self.url,
                "--chain-id", str(CHAIN_ID)]  # fmt: skip

    def relay_command(self, node: str, *args: str | Path) -> Any:
        return self.lab.run(node, self.relay_argv(*args), timeout=COMMAND_TIMEOUT_S)

    def registry_flags(self) -> list[str | Path]:
        return ["--registry", "chronara.eth", "--ens", self.ens]

    def stop(self) -> None:
        self.process.stop()


def relay_url(lab: Lab, node: str) -> str:
    return f"ws://{lab.public(node)}:{RELAY_PORT}/"


def start_relays(lab: Lab, mesh: Meshcore, chain: Chain) -> None:
    """meshcore-relay on each of `RELAYS` with an identity of its own, each registered from
    its own account (`meshcore-relay register`); the relays and commands run side by side."""
    relays = []
    for node in RELAYS:
        listen = f"{lab.public(node)}:{RELAY_PORT}"
        argv = [mesh.exe("meshcore-relay"), "--listen", listen, "--identity", identity(lab, node)]
        relays.append(lab.popen(node, argv))
    for relay in relays:
        relay.wait_for("listening", COMMAND_TIMEOUT_S)
    registers = []
    for k, node in enumerate(RELAYS, start=1):
        argv = chain.relay_argv(
            "register", *chain.registry_flags(), "--account-key", chain.keys[k],
            "--identity", identity(lab, node), "--url", relay_url(lab, node),
        )  # fmt: skip
        registers.append(lab.popen(node, argv))
    for register in registers:
        assert register.wait(COMMAND_TIMEOUT_S) == 0, register.output


def identity(lab: Lab, node: str) -> str:
    return str(lab.workdir / f"{node}.id")


def start_peer(lab: Lab, mesh: Meshcore, chain: Chain, host: str, key: PeerKey,
               other: PeerKey) -> LabProcess:  # fmt: skip
    """`meshcore-peer up` on `host` whose only relay setting is the chain's [registry] (the
    caller waits for "tunnel up")."""
    command = find_up_command(mesh.bindir)
    if command is None:
        raise LabError("meshcore-peer has no `up` command (TAP mode) in this checkout")
    config = lab.workdir / f"{host}-up.toml"
    config.write_text(
        "\n".join(
            [
                "rendezvous_k = 1",
                f"state_dir = {json.dumps(str(lab.workdir / f'{host}-state'))}",
                f"identity = {json.dumps(str(key.path))}",
                f"device = {json.dumps(lab.ifname('mesh'))}",
                f'address = "{tunnel(host)}/24"',
                f"control = {json.dumps(str(lab.workdir / f'{host}-up.sock'))}",
                f"peers = [{{ id = {json.dumps(other.peer_id)} }}]",
                "[registry]",
                f"chain_rpc = {json.dumps(chain.url)}",
                'registry = "chronara.eth"',
                f"chain_id = {CHAIN_ID}",
                f"ens = {json.dumps(chain.ens)}",
                f"refresh_s = {REFRESH_S}",
            ]
        )
        + "\n"
    )
    return lab.popen(host, [*command, "--config", str(config)])


def test_peers_find_the_registered_relays_by_name_leave_one_that_deregisters_and_restart_from_cache(
    make_lab: MakeLab,
) -> None:
    lab = make_lab(Topology.flat(*RELAYS, "a", "b"))
    mesh = Meshcore(lab)
    chain = Chain(lab, mesh)
    start_relays(lab, mesh, chain)
    keys = {h: choose_identity(lab, h, lambda i: True) for h in ("a", "b")}
    ups = {
        h: start_peer(lab, mesh, chain, h, keys[h], keys[o]) for h, o in (("a", "b"), ("b", "a"))
    }
    for up in ups.values():
        up.wait_for("tunnel up", COMMAND_TIMEOUT_S)

    # (1) with only the node and the name, they find both relays, meet and go direct
    for up in ups.values():
        up.wait_for("path relay -> direct", 30)
    assert ping_once(lab, 10)
    report = relays_report(lab, mesh, "a")
    assert sorted(r["url"] for r in report["relays"]) == sorted(relay_url(lab, n) for n in RELAYS)
    source = f"chain chronara.eth at {chain.url}, chain {CHAIN_ID}"
    assert report["source"] == source and not report["from_cache"], report
    assert isinstance(report["block_number"], int) and report["block_number"] > 0

    # (2) a's rendezvous relay deregisters: both peers leave it within one refresh
    (home,) = report["rendezvous"]
    gone = next(n for n in RELAYS if relay_url(lab, n) == home)
    chain.relay_command(
        gone, "deregister", *chain.registry_flags(), "--account-key",
        chain.keys[1 + RELAYS.index(gone)],
    )  # fmt: skip

    def left(host: str) -> Callable[[], bool]:
        return lambda: all(r["url"] != home for r in relays_report(lab, mesh, host)["relays"])

    took = max(wait_until(left(h), REFRESH_S + 5, f"{h} left {home}") for h in ("a", "b"))
    print(f"the peers left the deregistered relay within {took:.1f} s (refresh {REFRESH_S:g} s)")
    assert relays_report(lab, mesh, "a")["rendezvous"] != [home]

    # (3) the node stops; a restarted peer starts from its cache and meets b again
    chain.stop()
    ups["a"].stop()
    ups["a"] = start_peer(lab, mesh, chain, "a", keys["a"], keys["b"])
    ups["a"].wait_for("tunnel up", COMMAND_TIMEOUT_S)
    assert "using the cached list of 1 relays" in ups["a"].output, ups["a"].output
    again = relays_report(lab, mesh, "a")
    assert again["from_cache"] is True and again["source"] == source, again
    assert [r["url"] for r in again["relays"]] == [r for r in [relay_url(lab, n) for n in RELAYS]
                                                    if r != home]  # fmt: skip
    assert ping_once(lab, 20)
