"""meshcore-peer settings: TOML < environment < flags, every bad key named with its fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcore.errors import ConfigError
from meshcore_peer.cli import main
from meshcore_peer.config import load_peer_config


def test_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "peer.toml"
    path.write_text('relay = "ws://a:1"\nallow = ["x"]\ndirect = "never"\n')
    config = load_peer_config(path, {"relay": "ws://b:2"})
    assert config.relay == "ws://b:2"
    assert config.allow == ["x"]
    assert config.direct == "never"


def test_every_problem_is_named(tmp_path: Path) -> None:
    path = tmp_path / "peer.toml"
    path.write_text('relay = 5\nallowx = []\ndirect = "sometimes"\n')
    with pytest.raises(ConfigError) as info:
        load_peer_config(path, {})
    text = str(info.value)
    assert "relay: expected string" in text
    assert "allowx: unknown setting (did you mean 'allow'?)" in text
    assert "direct:" in text


def test_bad_flag_value_names_the_flag() -> None:
    with pytest.raises(ConfigError, match="--direct-retry"):
        load_peer_config(None, {"direct_retry_s": 0.0})


def test_cli_exits_2_with_the_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "peer.toml"
    path.write_text("relay = [\n")
    assert main(["listen", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "not valid TOML" in err


def test_metrics_address_from_a_file_a_variable_or_a_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "peer.toml"
    path.write_text('metrics = "127.0.0.1:9101"\n')
    assert load_peer_config(path, {}).metrics == "127.0.0.1:9101"
    monkeypatch.setenv("MESHCORE_PEER_METRICS", "9102")
    assert load_peer_config(path, {}).metrics == "9102"
    assert load_peer_config(path, {"metrics": "[::1]:9103"}).metrics == "[::1]:9103"


def test_a_bad_metrics_address_names_the_flag_and_the_form() -> None:
    expected = r"metrics: must be PORT or HOST:PORT.*\(from --metrics\)"
    with pytest.raises(ConfigError, match=expected):
        load_peer_config(None, {"metrics": "localhost"})
