"""Relay registries: sources, the background refresh, and the on-disk cache of the last good
list (used when the source is unreachable at start)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
import trio
import trio.testing

from meshcore._registry import (
    FileSource,
    RegistryListing,
    RegistrySource,
    RelayListCache,
    StaticSource,
    open_registry,
)
from meshcore.errors import ConfigError, RegistryError
from meshcore.proto.identity import PeerId
from meshcore.proto.relaylist import check_relay_entries

ID_A = PeerId(bytes(range(32))).to_text()


def _toml(*urls: str) -> str:
    return "".join(f'[[relays]]\nurl = "{u}"\n\n' for u in urls)


async def test_a_static_list_is_checked_and_its_bad_entries_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "meshcore.registry")
    source = StaticSource(
        [{"url": "ws://a.example:7443", "id": ID_A}, {"url": "ftp://b.example"}], name="peer.toml"
    )
    async with open_registry(source) as registry:
        assert [e.url for e in registry.entries] == ["ws://a.example:7443/"]
        assert registry.listing.source == "peer.toml"
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "relay list from peer.toml: relays[1]: url" in warnings[0]


async def test_a_list_with_no_usable_entry_is_a_config_error_naming_each_problem() -> None:
    with pytest.raises(ConfigError) as info:
        async with open_registry(StaticSource([{"url": "ftp://x"}], name="--relay")):
            pass  # pragma: no cover
    assert "no usable entry" in str(info.value) and "relays[0]" in str(info.value)


async def test_a_changed_file_is_read_again_within_one_poll(tmp_path: Path) -> None:
    path = tmp_path / "relays.toml"
    path.write_text(_toml("ws://a.example:1"))
    async with open_registry(FileSource(path, poll_s=0.05)) as registry:
        assert [e.url for e in registry.entries] == ["ws://a.example:1/"]
        path.write_text(_toml("ws://a.example:1", "ws://b.example:1"))
        with trio.fail_after(5):
            version = await registry.changed(0)
        assert version == 1
        assert [e.url for e in registry.entries] == ["ws://a.example:1/", "ws://b.example:1/"]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "does not exist"),
        ("[[relays]\nurl=", "not valid TOML"),
        ('relays = "ws://a"\n', "must hold a list"),
        ('[server]\nurl = "ws://a"\n', "unknown key 'server'"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
async def test_an_unreadable_file_names_itself_and_what_is_wrong(
    tmp_path: Path, content: str | bytes | None, says: str
) -> None:
    path = tmp_path / "relays.toml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(RegistryError, match=says) as info:
        await FileSource(path).fetch()
    assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="cannot load the relay list from file"):
        async with open_registry(FileSource(path)):
            pass  # pragma: no cover


async def test_a_json_file_holds_a_list_of_entries(tmp_path: Path) -> None:
    path = tmp_path / "relays.json"
    path.write_text(json.dumps({"relays": [{"url": "ws://a.example:1", "id": ID_A}]}))
    listing = await FileSource(path).fetch()
    assert listing.entries[0].relay_id is not None


async def test_the_last_good_list_is_cached_0600_and_used_when_the_source_is_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "relays.toml"
    path.write_text(_toml("ws://a.example:1", "ws://b.example:1"))
    cache = RelayListCache(tmp_path / "state" / "relays.json")
    async with open_registry(FileSource(path), cache=cache):
        pass
    assert stat.S_IMODE(os.stat(cache.path).st_mode) == 0o600
    path.unlink()
    caplog.set_level(logging.WARNING, "meshcore.registry")
    async with open_registry(FileSource(path), cache=cache) as registry:
        assert registry.listing.from_cache
        assert [e.url for e in registry.entries] == ["ws://a.example:1/", "ws://b.example:1/"]
    assert any("using the cached list of 2 relays" in r.getMessage() for r in caplog.records)


async def test_a_cached_list_is_replaced_once_the_source_is_back(tmp_path: Path) -> None:
    path = tmp_path / "relays.toml"
    cache = RelayListCache(tmp_path / "relays-cache.json")
    cache.save(RegistryListing(check_relay_entries([{"url": "ws://old:1"}]), "x", 0.0))
    async with open_registry(FileSource(path, poll_s=0.05), cache=cache) as registry:
        assert registry.listing.from_cache
        path.write_text(_toml("ws://new:1"))
        with trio.fail_after(5):
            await registry.changed(0)
        assert [e.url for e in registry.entries] == ["ws://new:1/"]
        assert not registry.listing.from_cache
    assert json.loads(cache.path.read_text())["relays"] == [{"url": "ws://new:1/"}]


async def test_a_corrupt_cache_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RelayListCache(tmp_path / "relays.json")
    cache.path.write_text("{not json")
    caplog.set_level(logging.WARNING, "meshcore.registry")
    assert cache.load() is None
    assert "corrupt" in caplog.text
    with pytest.raises(ConfigError, match="no cached list"):
        async with open_registry(FileSource(tmp_path / "missing.toml"), cache=cache):
            pass  # pragma: no cover


async def test_a_failing_refresh_keeps_the_last_good_list_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "relays.toml"
    path.write_text(_toml("ws://a.example:1"))
    caplog.set_level(logging.WARNING, "meshcore.registry")
    async with open_registry(FileSource(path, poll_s=3600)) as registry:
        path.write_text("not toml [")
        for _ in range(3):
            assert not await registry.refresh()
        assert [e.url for e in registry.entries] == ["ws://a.example:1/"]
        assert registry.last_error is not None and "not valid TOML" in registry.last_error
        path.write_text(_toml("ftp://only-bad"))
        assert not await registry.refresh()
        assert [e.url for e in registry.entries] == ["ws://a.example:1/"]
        path.write_text(_toml("ws://b.example:1"))
        assert await registry.refresh()
        assert registry.last_error is None
    failures = [r for r in caplog.records if "refreshing the relay list" in r.getMessage()]
    assert len(failures) == 2  # once for the bad TOML, once for the list with no usable entry


class _ChangingSource(RegistrySource):
    """A source whose list the test changes, read without threads (so MockClock applies)."""

    def __init__(self, urls: list[str], refresh_s: float) -> None:
        self.urls = urls
        self._refresh_s = refresh_s
        self.fetched_at: list[float] = []

    @property
    def description(self) -> str:
        return "a test source"

    @property
    def refresh_s(self) -> float:
        return self._refresh_s

    async def fetch(self) -> RegistryListing:
        self.fetched_at.append(trio.current_time())
        raw = [{"url": u} for u in self.urls]
        return RegistryListing(check_relay_entries(raw), self.description, 0.0)


async def test_the_background_refresh_runs_on_the_poll_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    source = _ChangingSource(["ws://a.example:1"], refresh_s=30.0)
    async with open_registry(source) as registry:
        start = trio.current_time()
        source.urls = ["ws://b.example:1"]
        with trio.fail_after(100):
            assert await registry.changed(0) == 1
        assert trio.current_time() - start == 30.0
        assert [e.url for e in registry.entries] == ["ws://b.example:1/"]
        await trio.sleep_until(start + 95.0)  # virtual time: three polls have run
        assert [t - start for t in source.fetched_at[1:4]] == [30.0, 60.0, 90.0]
