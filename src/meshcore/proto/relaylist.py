"""The relay list: entries of a registry (a static list, a file, a contract), checked one by
one so that a bad entry is named and skipped while the good ones are used.

An entry is a relay's WebSocket URL, its relay id (the fingerprint of its static identity;
optional, but without it the relay cannot be verified) and an optional region. Every source
hands over plain mappings shaped like a `[[relays]]` TOML table; `check_relay_entries` turns
them into `RelayEntry` values and a list of problems, each naming its entry.
"""

from __future__ import annotations

import hashlib
import ipaddress
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Final

import attrs

from meshcore.errors import ConfigError
from meshcore.proto.identity import PeerId

__all__ = [
    "MAX_REGION_CHARS",
    "MAX_RELAYS",
    "MAX_URL_CHARS",
    "RelayEntry",
    "RelayList",
    "check_relay_entries",
    "merge_relay_lists",
    "normalize_relay_url",
    "parse_relay_spec",
]

MAX_RELAYS: Final = 256
"""Entries in one relay list; more are named and skipped (the on-chain registry has the same
bound)."""
MAX_URL_CHARS: Final = 256
"""A relay URL's length in characters (also the contract's bound)."""
MAX_REGION_CHARS: Final = 32
"""A region label's length, e.g. "eu-west"."""
_URL_KEY_LABEL: Final = b"meshcore/1 relay url"
_KEYS: Final = frozenset({"url", "id", "region"})


def normalize_relay_url(text: str) -> str:
    """The canonical form of a relay URL: `ws://host:port/path` with the scheme and host in
    lower case and the default port written out. Raises `ValueError` saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"must be a string, got {type(text).__name__}")
    if not text:
        raise ValueError("is empty")
    if len(text) > MAX_URL_CHARS:
        raise ValueError(f"is {len(text)} characters long, at most {MAX_URL_CHARS}")
    if not text.isascii() or any(ch.isspace() or ord(ch) < 32 for ch in text):
        raise ValueError(f"{text!r} has spaces, control or non-ASCII characters")
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("ws", "wss"):
        shown = f"{scheme}://" if scheme else "no scheme"
        raise ValueError(f"{text!r} has {shown}; relay URLs start with ws:// or wss://")
    host = parts.hostname
    if not host:
        raise ValueError(f"{text!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{text!r} has a user name or password; relays take none")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r} has a query or fragment; relay URLs take a path only")
    if port == 0:
        raise ValueError(f"{text!r} has port 0")
    if port is None:
        port = 443 if scheme == "wss" else 80
    try:
        shown_host = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        shown_host = host
    return f"{scheme}://{shown_host}:{port}{parts.path or '/'}"


@attrs.frozen
class RelayEntry:
    """One relay of the list: where it is, who it is, roughly where it stands."""

    url: str
    """Canonical WebSocket URL (`normalize_relay_url`)."""
    relay_id: PeerId | None = None
    """The relay's identity; None for an unverified entry (the relay is not checked)."""
    region: str = ""

    @property
    def key(self) -> bytes:
        """What rendezvous hashing scores: the relay id, or for an unverified entry a hash
        of its URL (so that every peer still computes the same answer)."""
        if self.relay_id is not None:
            return self.relay_id.digest
        return hashlib.sha256(_URL_KEY_LABEL + self.url.encode()).digest()

    @property
    def verified(self) -> bool:
        """True when connections to it check the relay's identity."""
        return self.relay_id is not None

    def label(self) -> str:
        """`url (id abcdefghjkmn)` for logs and errors."""
        if self.relay_id is None:
            return f"{self.url} (unverified)"
        return f"{self.url} (id {self.relay_id.short()})"

    def to_mapping(self) -> dict[str, str]:
        """The entry as a `[[relays]]` table (what the cache stores)."""
        out = {"url": self.url}
        if self.relay_id is not None:
            out["id"] = self.relay_id.to_text()
        if self.region:
            out["region"] = self.region
        return out


@attrs.frozen
class RelayList:
    """The usable entries of a source, in its order, and a problem line per skipped entry."""

    entries: tuple[RelayEntry, ...]
    problems: tuple[str, ...] = ()

    def require_usable(self, source: str) -> RelayList:
        """Self, or a `ConfigError` naming every problem when no entry is usable."""
        if self.entries:
            return self
        if not self.problems:
            raise ConfigError(
                f"the relay list from {source} is empty; give at least one relay "
                "(`--relay ws://HOST:PORT#RELAY_ID`, or a [[relays]] table with url and id)"
            )
        lines = "\n".join(f"  {p}" for p in self.problems)
        raise ConfigError(
            f"the relay list from {source} has no usable entry ({len(self.problems)} "
            f"problem{'s' if len(self.problems) != 1 else ''}):\n{lines}"
        )

    def find(self, url: str) -> RelayEntry | None:
        """The entry with this (canonical) URL, if any."""
        for entry in self.entries:
            if entry.url == url:
                return entry
        return None


def _entry(raw: object, where: str) -> RelayEntry:
    """One mapping -> RelayEntry; raises ValueError with a user-facing message."""
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a table with url, id and region, got {raw!r:.40}")
    unknown = sorted(str(k) for k in raw if k not in _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; an entry has url, id, region")
    if "url" not in raw:
        raise ValueError(f'{where}: no url; every entry needs url = "ws://HOST:PORT"')
    try:
        url = normalize_relay_url(raw["url"])
    except ValueError as exc:
        raise ValueError(f"{where}: url {exc}") from None
    relay_id: PeerId | None = None
    text = raw.get("id")
    if text is not None and text != "":
        if not isinstance(text, str):
            raise ValueError(f"{where} ({url}): id must be a string, got {type(text).__name__}")
        try:
            relay_id = PeerId.from_text(text)
        except ConfigError as exc:
            raise ValueError(
                f"{where} ({url}): {str(exc).replace('peer id', 'relay id')}".replace(
                    "`meshcore-peer id` prints it", "`meshcore-relay id` prints it"
                )
            ) from None
    region = raw.get("region", "")
    if not isinstance(region, str):
        raise ValueError(f"{where} ({url}): region must be a string, got {type(region).__name__}")
    if len(region) > MAX_REGION_CHARS or not region.isprintable():
        raise ValueError(
            f"{where} ({url}): region must be at most {MAX_REGION_CHARS} printable characters"
        )
    return RelayEntry(url, relay_id, region)


def check_relay_entries(raw: Sequence[object], *, name: str = "relays") -> RelayList:
    """Check every entry of a source; bad ones become problem lines naming `name[i]`.

    Duplicates (the same URL, or the same relay id under another URL) keep the first.
    Entries past `MAX_RELAYS` are skipped in one problem line. Never raises for bad
    entries: call `require_usable` on the result to refuse a list with none left.
    """
    entries: list[RelayEntry] = []
    problems: list[str] = []
    by_url: dict[str, int] = {}
    by_id: dict[bytes, int] = {}
    for index, item in enumerate(raw):
        where = f"{name}[{index}]"
        if len(entries) >= MAX_RELAYS:
            problems.append(
                f"{where} and after: {len(raw) - index} entries over the limit of "
                f"{MAX_RELAYS} relays skipped"
            )
            break
        try:
            entry = _entry(item, where)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        if entry.url in by_url:
            problems.append(
                f"{where} ({entry.url}): duplicate url of {name}[{by_url[entry.url]}]; skipped"
            )
            continue
        if entry.relay_id is not None and entry.relay_id.digest in by_id:
            first = by_id[entry.relay_id.digest]
            problems.append(
                f"{where} ({entry.url}): duplicate relay id of {name}[{first}]; skipped"
            )
            continue
        by_url[entry.url] = index
        if entry.relay_id is not None:
            by_id[entry.relay_id.digest] = index
        entries.append(entry)
    return RelayList(tuple(entries), tuple(problems))


def parse_relay_spec(text: str) -> dict[str, str]:
    """`URL[#RELAY_ID]` (the `--relay` flag) as an entry mapping for `check_relay_entries`."""
    url, sep, relay_id = text.partition("#")
    out = {"url": url}
    if sep:
        out["id"] = relay_id
    return out


def merge_relay_lists(lists: Iterable[RelayList]) -> RelayList:
    """Several lists as one (first occurrence wins), with every problem kept."""
    raw: list[object] = []
    problems: list[str] = []
    for lst in lists:
        raw.extend(entry.to_mapping() for entry in lst.entries)
        problems.extend(lst.problems)
    merged = check_relay_entries(raw)
    return RelayList(merged.entries, (*problems, *merged.problems))
