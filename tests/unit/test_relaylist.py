"""The relay list: every bad entry is named and skipped, the good ones are kept in order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.errors import ConfigError
from meshcore.proto.identity import PeerId
from meshcore.proto.relaylist import (
    MAX_RELAYS,
    RelayEntry,
    check_relay_entries,
    merge_relay_lists,
    normalize_relay_url,
    parse_relay_spec,
)

ID_A = PeerId(bytes(range(32)))
ID_B = PeerId(bytes(range(1, 33)))


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("ws://relay.example:7443", "ws://relay.example:7443/"),
        ("WS://Relay.Example:7443/mesh", "ws://relay.example:7443/mesh"),
        ("wss://relay.example", "wss://relay.example:443/"),
        ("ws://10.0.0.1", "ws://10.0.0.1:80/"),
        ("ws://[2001:db8::1]:7443", "ws://[2001:db8::1]:7443/"),
    ],
)
def test_relay_urls_have_one_canonical_form(text: str, canonical: str) -> None:
    assert normalize_relay_url(text) == canonical


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("ftp://relay.example:7443", "ws:// or wss://"),
        ("relay.example:7443", "ws:// or wss://"),
        ("ws://:7443", "no host"),
        ("ws://relay.example:99999", "not a URL"),
        ("ws://relay.example:0", "port 0"),
        ("ws://user:pw@relay.example", "password"),
        ("ws://relay.example/?x=1", "query"),
        ("ws://relay example", "spaces"),
        ("", "empty"),
        ("ws://" + "a" * 300, "at most 256"),
    ],
)
def test_bad_relay_urls_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        normalize_relay_url(text)


def test_good_entries_are_kept_in_order_with_ids_and_regions() -> None:
    result = check_relay_entries(
        [
            {"url": "ws://a.example:7443", "id": ID_A.to_text(), "region": "eu-west"},
            {"url": "ws://b.example:7443"},
        ]
    )
    assert result.problems == ()
    assert result.entries == (
        RelayEntry("ws://a.example:7443/", ID_A, "eu-west"),
        RelayEntry("ws://b.example:7443/", None, ""),
    )
    assert result.entries[0].verified and not result.entries[1].verified


def test_each_bad_entry_is_named_and_skipped() -> None:
    bad_id = ID_A.to_text()[:-1] + ("0" if ID_A.to_text()[-1] != "0" else "1")
    result = check_relay_entries(
        [
            {"url": "ftp://a.example"},
            {"url": "ws://b.example", "id": bad_id},
            {"url": "ws://c.example", "colour": "red"},
            {"id": ID_A.to_text()},
            "ws://d.example",
            {"url": "ws://e.example", "region": 7},
            {"url": "ws://ok.example", "id": ID_B.to_text()},
        ]
    )
    assert [e.url for e in result.entries] == ["ws://ok.example:80/"]
    problems = result.problems
    assert len(problems) == 6
    assert problems[0].startswith("relays[0]: url") and "ws://" in problems[0]
    assert (
        problems[1].startswith("relays[1] (ws://b.example:80/): relay id")
        and "checksum" in (problems[1])
    )
    assert "meshcore-peer" not in problems[1]
    assert problems[2].startswith("relays[2]: unknown key 'colour'")
    assert problems[3].startswith("relays[3]: no url")
    assert problems[4].startswith("relays[4]: expected a table")
    assert problems[5].startswith("relays[5] (ws://e.example:80/): region")


def test_duplicates_keep_the_first_and_name_it() -> None:
    result = check_relay_entries(
        [
            {"url": "ws://a.example:7443", "id": ID_A.to_text()},
            {"url": "WS://A.EXAMPLE:7443/"},
            {"url": "ws://other.example:7443", "id": ID_A.to_text()},
        ]
    )
    assert len(result.entries) == 1
    assert result.problems == (
        "relays[1] (ws://a.example:7443/): duplicate url of relays[0]; skipped",
        "relays[2] (ws://other.example:7443/): duplicate relay id of relays[0]; skipped",
    )


def test_entries_past_the_limit_are_skipped_in_one_line() -> None:
    raw = [{"url": f"ws://r{i}.example:7443"} for i in range(MAX_RELAYS + 10)]
    result = check_relay_entries(raw)
    assert len(result.entries) == MAX_RELAYS
    assert result.problems == (
        f"relays[{MAX_RELAYS}] and after: 10 entries over the limit of 256 relays skipped",
    )


def test_a_list_without_a_usable_entry_is_a_config_error_naming_every_problem() -> None:
    result = check_relay_entries([{"url": "ftp://a"}, {"url": "ws://b", "id": "short"}])
    with pytest.raises(ConfigError) as info:
        result.require_usable("peer.toml")
    text = str(info.value)
    assert "peer.toml" in text and "2 problems" in text
    assert "relays[0]" in text and "relays[1]" in text
    with pytest.raises(ConfigError, match="empty"):
        check_relay_entries([]).require_usable("--relay")


def test_the_relay_flag_takes_a_url_and_an_optional_id() -> None:
    assert parse_relay_spec("ws://a:1") == {"url": "ws://a:1"}
    assert parse_relay_spec(f"ws://a:1#{ID_A}") == {"url": "ws://a:1", "id": ID_A.to_text()}


def test_merging_lists_keeps_the_first_of_duplicates_and_every_problem() -> None:
    one = check_relay_entries([{"url": "ws://a:1"}, {"url": "ftp://x"}])
    two = check_relay_entries([{"url": "ws://a:1"}, {"url": "ws://b:1"}])
    merged = merge_relay_lists([one, two])
    assert [e.url for e in merged.entries] == ["ws://a:1/", "ws://b:1/"]
    assert len(merged.problems) == 2


def test_entries_round_trip_through_their_mapping() -> None:
    entry = RelayEntry("ws://a.example:7443/", ID_A, "eu")
    assert check_relay_entries([entry.to_mapping()]).entries == (entry,)


@given(
    st.lists(
        st.one_of(
            st.text(max_size=40),
            st.dictionaries(
                st.text(max_size=8),
                st.one_of(st.text(max_size=60), st.integers(), st.none()),
                max_size=4,
            ),
        ),
        max_size=8,
    )
)
def test_any_input_gives_entries_and_problems_never_an_exception(raw: list[object]) -> None:
    result = check_relay_entries(raw)
    assert len(result.entries) + len(result.problems) <= len(raw)
    for entry in result.entries:
        assert normalize_relay_url(entry.url) == entry.url
