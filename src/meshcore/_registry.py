"""Registries of relays: a source (a static list, a file that is re-read when it changes, or
a contract) gives a relay list; `open_registry` keeps the current one, refreshed in the
background, with the last good list cached on disk for starts when the source is away.

Every source hands its entries to the one checker (`meshcore.proto.relaylist`), so a bad
entry is named and skipped the same way wherever it came from.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import time
import tomllib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final

import attrs
import trio

from meshcore._nursery import open_hidden_nursery
from meshcore.errors import ConfigError, RegistryError
from meshcore.proto.relaylist import MAX_RELAYS, RelayEntry, RelayList, check_relay_entries

__all__ = [
    "FILE_POLL_S",
    "FileSource",
    "Registry",
    "RegistryListing",
    "RegistrySource",
    "RelayListCache",
    "StaticSource",
    "open_registry",
]

log = logging.getLogger("meshcore.registry")

FILE_POLL_S: Final = 2.0
"""How often a relay-list file is checked for changes (a stat call; read only when changed)."""
_MAX_FILE_BYTES: Final = 1024 * 1024
_CACHE_VERSION: Final = 1


@attrs.frozen
class RegistryListing:
    """A relay list as one source gave it, and where and when it came from."""

    relays: RelayList
    source: str
    """Which source gave it, e.g. "file /etc/meshcore/relays.toml"."""
    fetched_at: float
    """Wall-clock time (time.time()) the source was read."""
    block_number: int | None = None
    """For a contract: the block the entries were read at."""
    from_cache: bool = False
    """True when the source was unreachable and this came from the on-disk cache."""

    @property
    def entries(self) -> tuple[RelayEntry, ...]:
        return self.relays.entries

    def age_s(self, now: float | None = None) -> float:
        """Seconds since the source was read (wall clock)."""
        return max(0.0, (time.time() if now is None else now) - self.fetched_at)


class RegistrySource(abc.ABC):
    """Where a relay list comes from. `fetch` reads it once; `refresh_s` says how often to
    read it again (None: it never changes)."""

    @property
    @abc.abstractmethod
    def description(self) -> str:
        """What and where it is, for logs and errors ("file relays.toml")."""

    @property
    def refresh_s(self) -> float | None:
        return None

    @abc.abstractmethod
    async def fetch(self) -> RegistryListing:
        """Read the list. Raises `RegistryError` when the source cannot be read at all
        (unreachable, unreadable, malformed as a whole); bad entries are not errors but
        problems in the listing. Cancellation abandons the read."""

    def __str__(self) -> str:
        return self.description


class StaticSource(RegistrySource):
    """A fixed list: `[[relays]]` tables of a config file, or `--relay URL#ID` flags."""

    def __init__(self, raw: Sequence[object], *, name: str = "the relay list") -> None:
        self._raw = list(raw)
        self._name = name

    @property
    def description(self) -> str:
        return self._name

    async def fetch(self) -> RegistryListing:
        return RegistryListing(check_relay_entries(self._raw), self._name, time.time())


class FileSource(RegistrySource):
    """A TOML file of `[[relays]]` tables (or a JSON list of entries, for `.json`), read
    again every `poll_s`, so that an edit takes effect within one poll."""

    def __init__(self, path: str | os.PathLike[str], *, poll_s: float = FILE_POLL_S) -> None:
        self.path = Path(path)
        self._poll_s = poll_s

    @property
    def description(self) -> str:
        return f"file {self.path}"

    @property
    def refresh_s(self) -> float:
        return self._poll_s

    async def fetch(self) -> RegistryListing:
        # read every time: a file rewritten within one timestamp tick keeps its mtime, and
        # reading a small file every few seconds costs nothing
        raw = await trio.to_thread.run_sync(self._read)
        return RegistryListing(check_relay_entries(raw), self.description, time.time())

    def _read(self) -> list[object]:
        try:
            with self.path.open("rb") as f:
                data = f.read(_MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise RegistryError(f"relay list file {self.path} does not exist") from None
        except OSError as exc:
            raise RegistryError(
                f"cannot read relay list file {self.path}: {exc.strerror or exc}"
            ) from None
        if len(data) > _MAX_FILE_BYTES:
            raise RegistryError(f"relay list file {self.path} is over {_MAX_FILE_BYTES} bytes")
        try:
            text = data.decode()
        except UnicodeDecodeError:
            raise RegistryError(f"relay list file {self.path} is not UTF-8 text") from None
        if self.path.suffix == ".json":
            try:
                parsed: object = json.loads(text)
            except json.JSONDecodeError as exc:
                raise RegistryError(
                    f"relay list file {self.path} is not valid JSON: {exc.msg} at line {exc.lineno}"
                ) from None
            if isinstance(parsed, dict):
                parsed = parsed.get("relays")
        else:
            try:
                table = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise RegistryError(
                    f"relay list file {self.path} is not valid TOML: {exc}"
                ) from None
            unknown = sorted(k for k in table if k != "relays")
            if unknown:
                raise RegistryError(
                    f"relay list file {self.path}: unknown key {unknown[0]!r}; the file holds "
                    "[[relays]] tables with url, id and region"
                )
            parsed = table.get("relays", [])
        if not isinstance(parsed, list):
            raise RegistryError(
                f"relay list file {self.path} must hold a list of relays ([[relays]] tables)"
            )
        return parsed


class RelayListCache:
    """The last good relay list on disk (JSON, mode 0600), for starts while the source is
    unreachable. Written atomically; a corrupt cache is ignored with a warning."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def save(self, listing: RegistryListing) -> None:
        """Write `listing` (raises nothing: a cache that cannot be written is logged)."""
        document = {
            "version": _CACHE_VERSION,
            "source": listing.source,
            "fetched_at": listing.fetched_at,
            "block_number": listing.block_number,
            "relays": [entry.to_mapping() for entry in listing.entries],
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(document, f, indent=1)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot cache the relay list in %s: %s", self.path, exc.strerror or exc)

    def load(self) -> RegistryListing | None:
        """The cached listing, or None (no cache, or one that cannot be used)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("cannot read the relay list cache %s: %s", self.path, exc.strerror or exc)
            return None
        try:
            document = json.loads(data)
            if document.get("version") != _CACHE_VERSION:
                raise ValueError("unknown version")
            relays = document["relays"]
            if not isinstance(relays, list) or len(relays) > MAX_RELAYS:
                raise ValueError("bad relay list")
            listing = RegistryListing(
                check_relay_entries(relays, name="cached relays"),
                str(document["source"]),
                float(document["fetched_at"]),
                int(document["block_number"]) if document.get("block_number") is not None else None,
                from_cache=True,
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("ignoring the relay list cache %s: it is corrupt", self.path)
            return None
        return listing if listing.entries else None


class Registry:
    """The current relay list of one source (made by `open_registry`).

    `listing` is replaced whenever a refresh brings different entries; `changed()` waits
    for that. A refresh that fails keeps the last good list. Cancelling a refresh (or
    `run`) abandons the read and keeps the current list.
    """

    def __init__(
        self, source: RegistrySource, listing: RegistryListing, cache: RelayListCache | None
    ) -> None:
        self.source = source
        self.listing = listing
        self.version = 0
        """Bumped each time the entries change."""
        self.last_error: str | None = None
        """Why the latest refresh failed (None after a good one)."""
        self._cache = cache
        self._changed = trio.Event()
        self._seen_problems: set[str] = set()
        self._log_problems(listing)

    @property
    def entries(self) -> tuple[RelayEntry, ...]:
        return self.listing.entries

    async def changed(self, since: int) -> int:
        """Wait until `version` is past `since`; returns the new version. Cancellation
        just stops waiting."""
        while self.version <= since:
            await self._changed.wait()
        return self.version

    async def refresh(self) -> bool:
        """Read the source now; True if the entries changed. A failure (or a list with no
        usable entry) keeps the last good list and is logged once until it clears."""
        source = self.source
        try:
            listing = await source.fetch()
            listing.relays.require_usable(str(source))
        except (RegistryError, ConfigError) as exc:
            why = str(exc)
            if why != self.last_error:
                log.warning(
                    "refreshing the relay list from %s failed: %s; keeping the last good list "
                    "of %d relays",
                    source,
                    why,
                    len(self.entries),
                )
            self.last_error = why
            return False
        if self.last_error is not None:
            log.info("the relay list from %s is readable again", source)
        self.last_error = None
        self._log_problems(listing)
        old = {e.url for e in self.entries}
        same = listing.entries == self.entries
        self.listing = listing
        if same:
            return False
        new = {e.url for e in listing.entries}
        log.info(
            "relay list from %s changed: %d relays (%d added, %d removed)",
            source,
            len(listing.entries),
            len(new - old),
            len(old - new),
        )
        self.version += 1
        self._changed.set()
        self._changed = trio.Event()
        await self.save_cache()
        return True

    async def save_cache(self) -> None:
        """Write the current list to the cache, if there is one (off the trio thread)."""
        if self._cache is not None and not self.listing.from_cache:
            await trio.to_thread.run_sync(self._cache.save, self.listing)

    async def run(self) -> None:
        """Refresh every `source.refresh_s` until cancelled (nothing to do for a static
        source)."""
        every_s = self.source.refresh_s
        if every_s is None:
            await trio.sleep_forever()
            return
        while True:
            await trio.sleep(every_s)
            await self.refresh()

    def _log_problems(self, listing: RegistryListing) -> None:
        for problem in listing.relays.problems:
            if problem not in self._seen_problems:
                self._seen_problems.add(problem)
                log.warning("relay list from %s: %s", listing.source, problem)


async def _first_listing(source: RegistrySource, cache: RelayListCache | None) -> RegistryListing:
    try:
        listing = await source.fetch()
    except RegistryError as exc:
        cached = cache.load() if cache is not None else None
        if cached is None:
            hint = "" if cache is None else f" (and there is no cached list in {cache.path})"
            raise ConfigError(f"cannot load the relay list from {source}: {exc}{hint}") from None
        log.warning(
            "cannot load the relay list from %s: %s; using the cached list of %d relays "
            "from %s, %.0f s old",
            source,
            exc,
            len(cached.entries),
            cached.source,
            cached.age_s(),
        )
        return cached
    listing.relays.require_usable(str(source))
    return listing


@asynccontextmanager
async def open_registry(
    source: RegistrySource, *, cache: RelayListCache | None = None
) -> AsyncIterator[Registry]:
    """Load the relay list from `source` (or, if it is unreachable, from `cache`) and keep
    it current in the background while the block runs.

    Raises `ConfigError` when neither the source nor the cache gives a usable entry, naming
    the source, what failed and every bad entry. Later refreshes that fail, or that give no
    usable entry, keep the last good list and log why once. Leaving the block (or
    cancelling it) stops the refresh task.
    """
    listing = await _first_listing(source, cache)
    registry = Registry(source, listing, cache)
    await registry.save_cache()
    async with open_hidden_nursery() as nursery:
        nursery.start_soon(registry.run)
        try:
            yield registry
        finally:
            nursery.cancel_scope.cancel()
