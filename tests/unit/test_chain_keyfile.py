"""Account key files: one hex private key, mode 0600 like identity files, never shown."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

pytest.importorskip("eth_account", reason="the chain tests need the test extra (web3)")

from meshcore.chain.keyfile import (
    AccountKey,
    load_account_key,
    parse_account_key,
    save_account_key,
)
from meshcore.errors import ConfigError

# The first well-known development key (anvil's and hardhat's account 0).
DEV_KEY = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.mark.parametrize(
    "text", [DEV_KEY, f"0x{DEV_KEY}\n", f"# the relay's account\n\n  0X{DEV_KEY.upper()}  \n"]
)
def test_a_hex_key_file_gives_its_address(tmp_path: Path, text: str) -> None:
    key = load_account_key(write(tmp_path / "k", text))
    assert key.address == DEV_ADDRESS
    assert key.secret == bytes.fromhex(DEV_KEY)


def test_the_key_is_never_shown(tmp_path: Path) -> None:
    key = load_account_key(write(tmp_path / "k", DEV_KEY))
    for shown in (repr(key), str(key)):
        assert DEV_KEY not in shown.lower()
        assert DEV_ADDRESS in shown


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o666, 0o700 | 0o044])
def test_a_key_file_others_can_read_is_refused_with_the_chmod_fix(
    tmp_path: Path, mode: int
) -> None:
    path = write(tmp_path / "k", DEV_KEY, mode)
    with pytest.raises(ConfigError) as info:
        load_account_key(path)
    assert f"chmod 600 {path}" in str(info.value)
    assert DEV_KEY not in str(info.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is not an account key file"),
        (DEV_KEY[:-2], "is not an account key file"),
        (DEV_KEY + "00", "is not an account key file"),
        (f"{DEV_KEY}\n{DEV_KEY}\n", "is not an account key file"),
        ("zz" * 32, "is not an account key file"),
        ("00" * 32, "not hold a valid secp256k1 private key"),
        ("ff" * 32, "not hold a valid secp256k1 private key"),
    ],
)
def test_a_file_without_exactly_one_valid_key_is_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        parse_account_key(text)
    assert text.strip() == "" or text.strip()[:64] not in str(info.value)


def test_a_missing_key_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist; write the account's hex private key"):
        load_account_key(tmp_path / "missing")


def test_a_directory_or_binary_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a regular file"):
        load_account_key(tmp_path)
    binary = tmp_path / "b"
    binary.write_bytes(b"\xff" * 64)
    os.chmod(binary, 0o600)
    with pytest.raises(ConfigError, match="is not text"):
        load_account_key(binary)


def test_a_symlink_is_not_followed(tmp_path: Path) -> None:
    target = write(tmp_path / "k", DEV_KEY)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="cannot open account key file"):
        load_account_key(link)


def test_a_saved_key_is_mode_0600_and_loads_back(tmp_path: Path) -> None:
    key = parse_account_key(DEV_KEY)
    path = tmp_path / "saved"
    save_account_key(key, path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    loaded = load_account_key(path)
    assert (loaded.address, loaded.secret) == (key.address, key.secret)
    with pytest.raises(ConfigError, match="already exists"):
        save_account_key(AccountKey(secret=key.secret, address=key.address), path)
