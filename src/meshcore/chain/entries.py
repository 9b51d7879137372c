"""Turning one raw on-chain registry entry into a relay-list entry, or saying why it cannot be.

The result has exactly the shape of a static `[[relays]]` entry of a config file:
``{"url": str, "id": str, "region": str}`` (``region`` only when set), with the relay id in
its text form. Whether the entry is *usable* (URL scheme, duplicates, the 256-entry cap) is
the relay list's common validation, not decided here; only what cannot even be put into
that shape (bytes that are not UTF-8, an id that is not 32 bytes, a zero id) is a problem.
Pure: no web3, no I/O.
"""

from __future__ import annotations

from typing import Final

import attrs

from meshcore.proto.constants import PEER_ID_BYTES
from meshcore.proto.identity import PeerId

__all__ = [
    "MAX_ENTRIES",
    "MAX_REGION_BYTES",
    "MAX_URL_BYTES",
    "EntryProblem",
    "entry_from_chain",
]

# The registry contract's bounds (RelayRegistry.vy; a test checks that they agree).
MAX_ENTRIES: Final = 256
"""Entries in the registry, which is also the relay list's cap."""
MAX_URL_BYTES: Final = 256
MAX_REGION_BYTES: Final = 32


@attrs.frozen
class EntryProblem:
    """Entry `index` of the contract (at the block read), owned by `account`, is unusable."""

    index: int
    account: str
    problem: str

    def __str__(self) -> str:
        return f"on-chain entry {self.index} (account {self.account}): {self.problem}"


def _text(field: str, raw: bytes, problems: list[str]) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        problems.append(f"{field} is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start})")
        return ""


def entry_from_chain(
    index: int, account: str, relay_id: bytes, url: bytes, region: bytes
) -> dict[str, str] | EntryProblem:
    """The relay-list entry for one raw on-chain entry, or the problem that prevents one."""
    problems: list[str] = []
    url_text = _text("url", url, problems)
    region_text = _text("region", region, problems)
    if len(relay_id) != PEER_ID_BYTES:
        problems.append(f"relay id is {len(relay_id)} bytes, expected {PEER_ID_BYTES}")
    elif relay_id == bytes(PEER_ID_BYTES):
        problems.append("relay id is zero")
    if problems:
        return EntryProblem(index=index, account=account, problem="; ".join(problems))
    entry = {"url": url_text, "id": PeerId(relay_id).to_text()}
    if region_text:
        entry["region"] = region_text
    return entry
