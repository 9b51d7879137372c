"""meshcore-peer's relay settings: one URL, repeated --relay, [[relays]] tables, a relays file
with its cache in the state directory; every bad entry named, no usable one exits 2."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest

from meshcore import Identity, Registry
from meshcore.errors import ConfigError
from meshcore_peer.cli import main
from meshcore_peer.config import load_peer_config
from meshcore_peer.relaysettings import (
    check_relay_source,
    default_state_dir,
    open_relays,
    relay_overrides,
)

RELAY_ID = Identity.generate().peer_id.to_text()


def args(**values: object) -> argparse.Namespace:
    return argparse.Namespace(**values)


def test_one_bare_relay_flag_is_one_url_as_before() -> None:
    assert relay_overrides(args(relay_specs=["ws://a:1"])) == {
        "relay": "ws://a:1",
        "relays": [],
        "relays_file": None,
        "registry.chain_rpc": None,
        "registry.registry": None,
    }


def test_repeated_relay_flags_and_ids_make_a_list() -> None:
    out = relay_overrides(args(relay_specs=["ws://a:1", f"ws://b:2#{RELAY_ID}"]))
    assert out["relay"] is None
    assert out["relays"] == [{"url": "ws://a:1"}, {"url": "ws://b:2", "id": RELAY_ID}]
    one_with_id = relay_overrides(args(relay_specs=[f"ws://b:2#{RELAY_ID}"]))
    assert one_with_id["relays"] == [{"url": "ws://b:2", "id": RELAY_ID}]


def test_flags_replace_the_config_files_relays(tmp_path: Path) -> None:
    path = tmp_path / "peer.toml"
    path.write_text('relays_file = "/etc/relays.toml"\n[[relays]]\nurl = "ws://x:1"\n')
    config = load_peer_config(path, relay_overrides(args(relay_specs=["ws://a:1"])))
    assert (config.relay, config.relays, config.relays_file) == ("ws://a:1", [], None)


def test_relay_and_relays_file_flags_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="either --relay or --relays-file"):
        relay_overrides(args(relay_specs=["ws://a:1"], relays_file="r.toml"))


def test_relay_tables_and_settings_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "peer.toml"
    path.write_text(
        f'rendezvous_k = 3\nstate_dir = "{tmp_path}"\n'
        f'[[relays]]\nurl = "ws://a:1"\nid = "{RELAY_ID}"\nregion = "eu"\n'
        '[[relays]]\nurl = "ws://b:2"\n'
    )
    config = load_peer_config(path, {})
    assert [(r.url, r.id, r.region) for r in config.relays] == [
        ("ws://a:1", RELAY_ID, "eu"),
        ("ws://b:2", None, ""),
    ]
    assert config.rendezvous_k == 3 and config.state_dir == str(tmp_path)


def test_bad_relay_settings_are_named(tmp_path: Path) -> None:
    path = tmp_path / "peer.toml"
    path.write_text('rendezvous_k = 0\n[[relays]]\nurl = "ws://a:1"\nport = 3\n')
    with pytest.raises(ConfigError) as info:
        load_peer_config(path, {})
    text = str(info.value)
    assert "rendezvous_k" in text and "at least 1" in text
    assert "relays[0].port" in text


def test_the_relays_must_be_given_one_way() -> None:
    with pytest.raises(ConfigError, match="the relay is missing: pass --relay URL"):
        check_relay_source(None, [], None)
    with pytest.raises(ConfigError, match="relay and relays_file are both set"):
        check_relay_source("ws://a:1", [], "r.toml")


def test_the_state_directory_follows_systemd_then_xdg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/meshcore:/var/lib/other")
    assert default_state_dir() == Path("/var/lib/meshcore")
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", "/home/u/.state")
    assert default_state_dir() == Path("/home/u/.state/meshcore")
    monkeypatch.delenv("XDG_STATE_HOME")
    assert default_state_dir() == Path.home() / ".local" / "state" / "meshcore"


async def test_a_static_list_skips_and_names_bad_entries(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    from meshcore_peer.relaysettings import RelayTable

    tables = [RelayTable("http://a:1"), RelayTable("ws://b:2", RELAY_ID)]
    async with open_relays(None, tables, None, None) as relays:
        assert isinstance(relays, Registry)
        assert [e.url for e in relays.entries] == ["ws://b:2/"]
    assert "relays[0]" in caplog.text and "ws:// or wss://" in caplog.text


async def test_a_list_with_no_usable_entry_is_a_config_error_naming_each() -> None:
    from meshcore_peer.relaysettings import RelayTable

    tables = [RelayTable("http://a:1"), RelayTable("ws://b:0")]
    with pytest.raises(ConfigError) as info:
        async with open_relays(None, tables, None, None):
            pass
    assert "relays[0]" in str(info.value) and "no usable entry" in str(info.value)


async def test_a_relays_file_is_cached_and_the_cache_used_when_it_is_gone(tmp_path: Path) -> None:
    file = tmp_path / "relays.toml"
    file.write_text(f'[[relays]]\nurl = "ws://a:1"\nid = "{RELAY_ID}"\n')
    state = tmp_path / "state"
    async with open_relays(None, [], str(file), str(state)) as relays:
        assert isinstance(relays, Registry)
        assert [e.url for e in relays.entries] == ["ws://a:1/"]
    (cached,) = list(state.glob("relays-*.json"))
    assert cached.stat().st_mode & 0o777 == 0o600
    assert json.loads(cached.read_text())["relays"] == [{"url": "ws://a:1/", "id": RELAY_ID}]
    file.unlink()
    async with open_relays(None, [], str(file), str(state)) as relays:
        assert isinstance(relays, Registry)
        assert relays.listing.from_cache
        assert [e.url for e in relays.entries] == ["ws://a:1/"]
    with pytest.raises(ConfigError, match="no cached list"):
        async with open_relays(None, [], str(file), str(tmp_path / "empty")):
            pass


def test_the_cli_exits_2_for_a_list_with_no_usable_entry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "k.key"
    Identity.generate().save(key)
    peer = Identity.generate().peer_id.to_text()
    code = main(
        ["connect", "--identity", str(key), "--relay", "http://a:1", "--relay", "ws://b:2#x", peer]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "relays[0]" in err and "relays[1]" in err and "no usable entry" in err


def test_relays_without_a_running_peer_reports_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "k.key"
    me = Identity.generate()
    me.save(key)
    ids = [Identity.generate().peer_id.to_text() for _ in range(3)]
    flags = [arg for i, rid in enumerate(ids) for arg in ("--relay", f"ws://10.0.0.{i}:7443#{rid}")]
    code = main(
        [
            "relays",
            "--identity",
            str(key),
            "--control",
            str(tmp_path / "none.sock"),
            "--json",
            *flags,
        ]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["running"] is False and "from the config alone" in report["note"]
    assert report["peer_id"] == me.peer_id.to_text()
    assert len(report["relays"]) == 3 and len(report["rendezvous"]) == 2
    assert {r["url"] for r in report["relays"] if r["rendezvous"]} == set(report["rendezvous"])
    code = main(
        ["relays", "--identity", str(key), "--control", str(tmp_path / "none.sock"), *flags]
    )
    table = capsys.readouterr().out
    assert code == 0 and "rendezvous relays of" in table and "ws://10.0.0.2:7443/" in table
