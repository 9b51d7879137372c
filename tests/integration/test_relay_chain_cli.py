"""`meshcore-relay registry deploy`, `register`, `deregister` as subprocesses against anvil:
deploy with and without a name, register, update, deregister; the 0600 rule for account keys;
a refusal from the contract, an unreachable node and a wrong chain each shown as one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("eth_tester", reason="the chain tests need the test extra")

from web3 import Web3

from meshcore.chain import read_registry
from meshcore.chain.keyfile import save_account_key
from meshcore.chain.transact import Writer, deploy_registry, register_relay
from meshcore.proto.identity import Identity, PeerId
from meshcore.testing.chain import fund, new_account_keys
from meshcore_relay import chain_cli

ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("MESHCORE_RELAY_")}


def relay(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshcore_relay", *args],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        timeout=120,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


class Accounts:
    """Funded accounts on the node, each with a 0600 key file, and relay identities."""

    def __init__(self, node: Any, tmp_path: Path, n: int) -> None:
        keys = new_account_keys(n)
        fund(Web3(node.provider()), keys)
        self.files = []
        for k, key in enumerate(keys):
            path = tmp_path / f"account{k}.key"
            save_account_key(key, path)
            self.files.append(str(path))
        self.keys = keys
        self.addresses = [k.address for k in keys]
        self.identities = []
        for k in range(n):
            identity = Identity.generate()
            identity.save(tmp_path / f"relay{k}.id")
            self.identities.append((str(tmp_path / f"relay{k}.id"), identity.peer_id.to_text()))


def deploy(node: Any, key_file: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return relay("registry", "deploy", "--rpc", node.url, "--account-key", key_file, *extra)


def test_deploy_prints_the_address_of_a_new_registry(anvil: Any, tmp_path: Path) -> None:
    accounts = Accounts(anvil, tmp_path, 1)
    result = deploy(anvil, accounts.files[0], "--chain-id", str(anvil.chain_id))
    assert result.returncode == 0, result.stderr
    assert ADDRESS.fullmatch(result.stdout.strip())
    listing = read_registry(anvil.url, result.stdout.strip(), chain_id=anvil.chain_id)
    assert listing.entries == ()


def test_deploy_with_a_name_sets_it_up_and_the_name_resolves(anvil: Any, tmp_path: Path) -> None:
    accounts = Accounts(anvil, tmp_path, 1)
    result = deploy(anvil, accounts.files[0], "--name", "chronara.eth")
    assert result.returncode == 0, result.stderr
    registry = result.stdout.strip()
    ens = re.search(r"readers need --ens (0x[0-9a-fA-F]{40})", result.stderr)
    assert ens, result.stderr
    assert f"chronara.eth now points at {registry}" in result.stderr
    listing = read_registry(
        anvil.url, "chronara.eth", chain_id=anvil.chain_id, ens_registry=ens.group(1)
    )
    assert listing.contract == registry


def test_register_update_and_deregister_a_relay(anvil: Any, tmp_path: Path) -> None:
    accounts = Accounts(anvil, tmp_path, 2)
    registry = deploy_registry(Writer(anvil.url, accounts.keys[0]))
    identity_file, relay_id = accounts.identities[1]
    common = ["--rpc", anvil.url, "--registry", registry, "--account-key", accounts.files[1]]

    result = relay("register", *common, "--identity", identity_file, "--url", "wss://a.example/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"registered: relay {relay_id} at wss://a.example/ in the registry at {registry}"
    )
    result = relay(
        "register", *common, "--identity", identity_file, "--url", "wss://b.example/",
        "--region", "eu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("updated: ")
    listing = read_registry(anvil.url, registry, chain_id=anvil.chain_id)
    assert listing.entries == ({"url": "wss://b.example/", "id": relay_id, "region": "eu"},)

    result = relay("deregister", *common)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        f"deregistered: account {accounts.addresses[1]} from the registry at {registry}"
    )
    assert read_registry(anvil.url, registry, chain_id=anvil.chain_id).entries == ()
    line = one_line_error(relay("deregister", *common), 1)
    assert line == (
        f"meshcore-relay: registry via {anvil.url}: the contract refused deregister: "
        "registry: no entry for this account"
    )


def test_register_defaults_to_the_relays_own_identity(anvil: Any, tmp_path: Path) -> None:
    accounts = Accounts(anvil, tmp_path, 2)
    registry = deploy_registry(Writer(anvil.url, accounts.keys[0]))
    state = tmp_path / "state"
    own = Identity.generate()
    (state / "meshcore").mkdir(parents=True)
    own.save(state / "meshcore" / "relay.key")  # where `meshcore-relay` keeps it
    result = relay(
        "register", "--rpc", anvil.url, "--registry", registry, "--account-key",
        accounts.files[1], "--url", "wss://own.example/", env={"XDG_STATE_HOME": str(state)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"registered: relay {own.peer_id} at wss://own.example/" in result.stdout


def test_a_relay_id_already_registered_is_one_line_with_the_contracts_reason(
    anvil: Any, tmp_path: Path
) -> None:
    accounts = Accounts(anvil, tmp_path, 2)
    registry = deploy_registry(Writer(anvil.url, accounts.keys[0]))
    identity_file, relay_id = accounts.identities[0]
    register_relay(
        Writer(anvil.url, accounts.keys[0]), registry, url="wss://x/",
        relay_id=PeerId.from_text(relay_id).digest,
    )  # fmt: skip
    result = relay(
        "register", "--rpc", anvil.url, "--registry", registry,
        "--account-key", accounts.files[1], "--identity", identity_file, "--url", "wss://y/",
    )  # fmt: skip
    line = one_line_error(result, 1)
    assert line.endswith("the contract refused register: registry: relay id already registered")


def test_an_account_key_others_can_read_is_refused_with_the_chmod_fix(
    anvil: Any, tmp_path: Path
) -> None:
    accounts = Accounts(anvil, tmp_path, 1)
    os.chmod(accounts.files[0], 0o644)
    line = one_line_error(deploy(anvil, accounts.files[0]), 2)
    assert line == (
        f"meshcore-relay: error: account key file {accounts.files[0]} is accessible by group or "
        f"others (mode 0644); protect it with `chmod 600 {accounts.files[0]}`"
    )


# The same command line in-process: every other bad input is one line too.


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = chain_cli.main(list(args))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err.strip()


def test_a_wrong_chain_is_one_line(
    anvil: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = Accounts(anvil, tmp_path, 1)
    code, _, err = run_in_process(
        capsys, "registry", "deploy", "--rpc", anvil.url, "--account-key", accounts.files[0],
        "--chain-id", "1",
    )  # fmt: skip
    assert (code, err) == (
        1,
        f"meshcore-relay: registry via {anvil.url}: wrong chain: expected chain id 1, but the "
        "node is on chain 31337",
    )


def test_an_unreachable_node_is_one_line_naming_it(
    anvil: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    accounts = Accounts(anvil, tmp_path, 1)
    code, _, err = run_in_process(
        capsys, "deregister", "--rpc", url, "--registry", "chronara.eth",
        "--account-key", accounts.files[0],
    )  # fmt: skip
    assert (code, err) == (
        1,
        f"meshcore-relay: registry via {url}: cannot connect (connection refused) while "
        "reading the chain id",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--registry", "0x1234"], "--registry '0x1234' is not an address"),
        (["--registry", "a b"], "--registry 'a b' is neither a 0x address nor a valid ENS name"),
        (["--url", "http://relay.example/"], "--url 'http://relay.example/' must be ws://"),
        (["--identity", "/nonexistent/relay.id"], "identity file /nonexistent/relay.id does not"),
        (["--account-key", "/nonexistent/k"], "account key file /nonexistent/k does not exist"),
        (["--ens", "nope"], "--ens 'nope' is not an address"),
        (["--region", "r" * 33], "the region is longer than the registry's 32 bytes"),
        (["--rpc", "ftp://x/"], "RPC URL 'ftp://x' must start with http:// or https://"),
    ],
)
def test_bad_local_input_is_one_line_and_exit_2(
    anvil: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    accounts = Accounts(anvil, tmp_path, 1)
    values = {
        "--rpc": anvil.url,
        "--registry": "chronara.eth",
        "--account-key": accounts.files[0],
        "--identity": accounts.identities[0][0],
        "--url": "wss://relay.example/",
    }
    values.update(dict(zip(args[::2], args[1::2], strict=True)))
    argv = ["register"] + [item for pair in values.items() for item in pair]
    code, _, err = run_in_process(capsys, *argv)
    assert code == 2
    assert err.startswith("meshcore-relay: error: ") and message in err, err
    assert "\n" not in err


def test_without_web3_the_commands_say_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "web3", None)
    code, _, err = run_in_process(
        capsys, "deregister", "--rpc", "http://127.0.0.1:1", "--registry", "chronara.eth",
        "--account-key", "k",
    )  # fmt: skip
    assert code == 2
    assert err == (
        "meshcore-relay: error: the on-chain relay registry needs web3.py, which is not "
        "installed: pip install 'meshcore[chain]'"
    )


def test_registry_list_prints_the_entries(
    anvil: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = Accounts(anvil, tmp_path, 1)
    registry = deploy_registry(Writer(anvil.url, accounts.keys[0]))
    _, relay_id = accounts.identities[0]
    register_relay(
        Writer(anvil.url, accounts.keys[0]), registry, url="wss://x/", region="eu",
        relay_id=PeerId.from_text(relay_id).digest,
    )  # fmt: skip
    code, out, _ = run_in_process(
        capsys, "registry", "list", "--rpc", anvil.url, "--registry", registry,
        "--chain-id", "31337",
    )  # fmt: skip
    assert code == 0
    assert out.splitlines()[1:] == [f"{relay_id} wss://x/ region=eu"]
    code, out, _ = run_in_process(
        capsys, "registry", "list", "--rpc", anvil.url, "--registry", registry,
        "--chain-id", "31337", "--json",
    )  # fmt: skip
    import json

    doc = json.loads(out)
    assert doc["entries"] == [{"url": "wss://x/", "id": relay_id, "region": "eu"}]
    assert doc["contract"] == registry and doc["problems"] == []
