"""meshcore-peer's on-chain registry settings: the `[registry]` table, its flags and variables,
every bad value named with its fix, and a missing web3 naming the extra."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

pytest.importorskip("web3", reason="the chain settings need the chain extra (web3)")

from meshcore import ChainSource, Identity
from meshcore.errors import ConfigError, ConfigProblems
from meshcore_peer.chainsettings import ChainTable, chain_source
from meshcore_peer.cli import main
from meshcore_peer.config import load_peer_config
from meshcore_peer.relaysettings import check_relay_source, relay_overrides
from meshcore_peer.up import load_up_config

ENS = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


def flags(**values: object) -> dict[str, object]:
    return relay_overrides(argparse.Namespace(**values))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "peer.toml"
    path.write_text(text)
    return path


def test_a_registry_table_makes_a_chain_source(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[registry]\nchain_rpc = "http://127.0.0.1:8545"\nregistry = "chronara.eth"\n'
        f'chain_id = 31337\nens = "{ENS}"\nrefresh_s = 30\n',
    )
    config = load_peer_config(path, {})
    assert config.registry == ChainTable(
        chain_rpc="http://127.0.0.1:8545",
        registry="chronara.eth",
        chain_id=31337,
        ens=ENS,
        refresh_s=30.0,
    )
    check_relay_source(config.relay, config.relays, config.relays_file, config.registry)
    source = chain_source(config.registry)
    assert isinstance(source, ChainSource)
    assert source.description == "chain chronara.eth at http://127.0.0.1:8545, chain 31337"
    assert source.refresh_s == 30.0 and source.ens_registry == ENS


def test_flags_give_the_registry_and_replace_the_config_files_relays(tmp_path: Path) -> None:
    path = write(tmp_path, '[[relays]]\nurl = "ws://x:1"\n')
    overrides = flags(
        chain_rpc="http://127.0.0.1:8545",
        chain_registry="chronara.eth",
        chain_id="31337",
        chain_refresh_s="5",
    )
    config = load_peer_config(path, overrides)
    assert (config.relay, config.relays, config.relays_file) == (None, [], None)
    assert config.registry.chain_id == 31337 and config.registry.refresh_s == 5.0
    check_relay_source(config.relay, config.relays, config.relays_file, config.registry)


def test_relay_flags_replace_the_config_files_registry(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[registry]\nchain_rpc = "http://n:1"\nregistry = "a.eth"\nchain_id = 1\n'
    )
    config = load_peer_config(path, flags(relay_specs=["ws://a:1"]))
    assert config.relay == "ws://a:1" and not config.registry.given


def test_relay_flags_and_registry_flags_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="either --relay or the on-chain registry"):
        flags(relay_specs=["ws://a:1"], chain_rpc="http://n:1")


def test_a_list_and_a_registry_in_the_config_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, '[[relays]]\nurl = "ws://x:1"\n[registry]\nchain_rpc = "http://n:1"\n')
    config = load_peer_config(path, {})
    with pytest.raises(ConfigError, match=r"\[\[relays\]\] and \[registry\] are both set"):
        check_relay_source(config.relay, config.relays, config.relays_file, config.registry)


def test_every_bad_value_is_named_with_where_it_came_from(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[registry]\nchain_rpc = "ws://127.0.0.1:8545"\nregistry = "chronara.eth"\n'
        "refresh_s = 0\nchain = 1\n",
    )
    with pytest.raises(ConfigProblems) as info:
        load_peer_config(path, flags(chain_id="mainnet"))
    problems = info.value.problems
    assert any(
        p.startswith("registry.chain_rpc: must be the node's JSON-RPC URL starting with http://")
        and p.endswith(f"(in {path})")
        for p in problems
    ), problems
    assert 'registry.chain_id: expected int, got "mainnet" (from --chain-id)' in problems
    assert any(p.startswith("registry.refresh_s: must be at least 1 second") for p in problems)
    assert any(p.startswith("registry.chain: unknown setting (did you mean") for p in problems)


def test_a_negative_chain_id_from_the_environment_is_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MESHCORE_PEER_REGISTRY_CHAIN_ID", "-1")
    with pytest.raises(ConfigProblems, match=r"registry\.chain_id: must be the chain's id"):
        load_peer_config(None, {})


def test_missing_settings_are_each_named_with_the_flag_that_gives_them() -> None:
    with pytest.raises(ConfigProblems) as info:
        chain_source(ChainTable(registry="chronara.eth"))
    problems = info.value.problems
    assert len(problems) == 2
    assert "pass --registry-rpc URL" in problems[0]
    assert "pass --chain-id N (1 for Ethereum mainnet, 31337 for a local anvil node)" in problems[1]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            ChainTable(chain_rpc="http://n:1", registry="0x12", chain_id=1),
            r"registry.registry \(--registry\): registry '0x12' is not an address",
        ),
        (
            ChainTable(chain_rpc="http://n:1", registry="a.eth", chain_id=1, ens="nope"),
            r"registry.ens \(--ens\): ENS registry 'nope' is not an address",
        ),
    ],
)
def test_a_malformed_address_names_its_setting(table: ChainTable, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        chain_source(table)


def test_up_takes_the_registry_table_too(tmp_path: Path) -> None:
    peer = Identity.generate().peer_id.to_text()
    path = write(
        tmp_path,
        '[registry]\nchain_rpc = "http://n:1"\nregistry = "a.eth"\nchain_id = 1\n'
        f'[[peers]]\nid = "{peer}"\n',
    )
    config = load_up_config(path, {})
    assert config.registry.given and config.registry.chain_id == 1


def test_without_web3_meshcore_peer_names_the_extra_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "web3", None)
    code = main(
        [
            "relays",
            "--control",
            str(tmp_path / "none.sock"),
            "--registry-rpc",
            "http://127.0.0.1:8545",
            "--registry",
            "chronara.eth",
            "--chain-id",
            "31337",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "meshcore-peer: error:" in err and "pip install 'meshcore[chain]'" in err
    assert "Traceback" not in err
