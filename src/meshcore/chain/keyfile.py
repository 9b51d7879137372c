"""Ethereum account key files: one hex private key, readable by its owner only (mode 0600).

They are checked like meshcore identity files: a key file that group or others can read is
refused with the `chmod 600` fix. The key never appears in a repr, log or error message.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Final

import attrs

from meshcore.errors import ConfigError

__all__ = ["AccountKey", "load_account_key", "parse_account_key", "save_account_key"]

_MAX_FILE_BYTES: Final = 4096
_HEX_KEY: Final = re.compile(r"(?:0[xX])?([0-9a-fA-F]{64})")
_FORMAT_HINT: Final = "it must hold one Ethereum private key as 64 hex digits (0x prefix optional)"


@attrs.frozen(repr=False, eq=False)
class AccountKey:
    """An Ethereum account's private key and its address; the key is never shown."""

    secret: bytes = attrs.field(repr=False)
    address: str

    def __repr__(self) -> str:
        return f"AccountKey(address={self.address!r}, key hidden)"

    __str__ = __repr__


def parse_account_key(text: str, *, source: str = "account key") -> AccountKey:
    """The key in a key file's text (blank lines and ``#`` comments are ignored).

    Raises:
        ConfigError: not exactly one 64-digit hex key, or not a valid secp256k1 key.
    """
    from eth_account import Account

    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    match = _HEX_KEY.fullmatch(lines[0]) if len(lines) == 1 else None
    if match is None:
        raise ConfigError(f"{source} is not an account key file: {_FORMAT_HINT}")
    secret = bytes.fromhex(match.group(1))
    try:
        address = str(Account.from_key(secret).address)
    except Exception:  # eth-keys refuses 0 and values >= the curve order; say so, not how
        raise ConfigError(
            f"{source} does not hold a valid secp256k1 private key (zero or too large)"
        ) from None
    return AccountKey(secret=secret, address=address)


def load_account_key(path: str | os.PathLike[str]) -> AccountKey:
    """Read an account key file; it must be a regular file of mode 0600 (or stricter).

    Raises:
        ConfigError: the file is missing, accessible by group or others (the message
            gives the `chmod 600` fix), or does not hold a valid key.
    """
    target = Path(path)
    try:
        fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise ConfigError(
            f"account key file {target} does not exist; write the account's hex private key "
            f"to it and `chmod 600 {target}`"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot open account key file {target}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"account key file {target} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ConfigError(
                f"account key file {target} is accessible by group or others (mode "
                f"{mode:04o}); protect it with `chmod 600 {target}`"
            )
        raw = os.read(fd, _MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > _MAX_FILE_BYTES:
        raise ConfigError(f"account key file {target} is too large: {_FORMAT_HINT}")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ConfigError(f"account key file {target} is not text: {_FORMAT_HINT}") from None
    return parse_account_key(text, source=f"account key file {target}")


def save_account_key(key: AccountKey, path: str | os.PathLike[str]) -> None:
    """Write `key` to a new file of mode 0600.

    Raises:
        ConfigError: the file exists or cannot be written.
    """
    target = Path(path)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"account key file {target} already exists; refusing to overwrite it"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot write account key file {target}: {exc.strerror}") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"0x{key.secret.hex()}\n".encode("ascii"))
        os.fsync(fd)
    finally:
        os.close(fd)
