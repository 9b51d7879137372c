"""How `meshcore-peer status` and `ping` print the running peer's answers."""

from __future__ import annotations

import pytest

from meshcore_peer.show import (
    format_age,
    format_bytes,
    format_ping_reply,
    format_ping_summary,
    format_rtt,
    format_status,
    status_json,
)

PEER = "qnshakmhv4cyvcerqemmbvvvhdpsmxs7w3e67qpzeage251ajkpskxkm"
DIRECT = {
    "peer_id": PEER,
    "name": "bob",
    "path": "direct",
    "remote_address": "198.18.2.2:41000",
    "relay": "ws://198.18.0.2:7443/",
    "rtt_s": 0.00038,
    "bytes_sent": 1_300_000,
    "bytes_received": 348_000,
    "age_s": 62.4,
    "migrations": 1,
    "not_direct_reason": None,
}
RELAYED = {
    "peer_id": "zzzzzz",
    "name": None,
    "path": "relay",
    "remote_address": "198.18.0.2:7443",
    "relay": "ws://198.18.0.2:7443/",
    "rtt_s": 0.0021,
    "bytes_sent": 120,
    "bytes_received": 0,
    "age_s": 5.0,
    "migrations": 0,
    "not_direct_reason": "no path validated within 5 s; next attempt in 55 s",
}


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1_300_000, "1.2 MiB"), (None, "-")],
)
def test_bytes_are_shown_in_binary_units(n: object, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (62.4, "1m02s"), (3600 * 2 + 420, "2h07m"), (86400 * 3, "3d00h")],
)
def test_ages_are_compact(seconds: float, text: str) -> None:
    assert format_age(seconds) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.00038, "0.38 ms"), (0.0123, "12.3 ms"), (1.25, "1.25 s"), (None, "-")]
)
def test_round_trips_keep_their_precision(seconds: float | None, text: str) -> None:
    assert format_rtt(seconds) == text


def test_one_line_per_session_in_the_fields_shape() -> None:
    direct, relayed = format_status([DIRECT, RELAYED])
    assert direct.split() == [
        "bob", "direct", "198.18.2.2:41000", "rtt", "0.38", "ms", "tx", "1.2", "MiB",
        "rx", "339.8", "KiB", "age", "1m02s", "migrations", "1",
    ]  # fmt: skip
    assert relayed.startswith('zzzzzz  relay "ws://198.18.0.2:7443/"')
    assert relayed.endswith("not direct: no path validated within 5 s; next attempt in 55 s")


def test_columns_line_up() -> None:
    lines = format_status([DIRECT, RELAYED])
    assert lines[0].index("rtt ") == lines[1].index("rtt ")
    assert lines[0].index("age ") == lines[1].index("age ")


def test_no_sessions_says_so() -> None:
    assert format_status([]) == ["no sessions"]


def test_json_has_every_field_and_the_rtt_in_ms() -> None:
    row = status_json(DIRECT)
    assert {k: row[k] for k in DIRECT} == DIRECT
    assert row["rtt_ms"] == 0.38


def test_a_pong_names_its_path() -> None:
    relay = {"seq": 0, "rtt_ms": 2.1, "path": "relay", "address": None, "relay": "ws://r:7443/"}
    direct = {"seq": 1, "rtt_ms": 0.4, "path": "direct", "address": "198.18.2.2:41000"}
    assert format_ping_reply(relay, "bob") == 'pong from bob via relay "ws://r:7443/" in 2.10 ms'
    assert format_ping_reply(direct, "bob") == "pong from bob via 198.18.2.2:41000 in 0.40 ms"


def test_a_ping_without_reply_says_why() -> None:
    reply = {"seq": 3, "error": "no answer to a ping within 5 s"}
    line = format_ping_reply(reply, "bob")
    assert line == "ping 3 to bob: no reply: no answer to a ping within 5 s"


def test_the_last_line_says_whether_a_direct_path_was_established() -> None:
    assert (
        format_ping_summary({"direct": True, "address": "198.18.2.2:41000"})
        == "direct connection established: 198.18.2.2:41000"
    )
    assert (
        format_ping_summary({"direct": False, "not_direct_reason": "direct paths are off"})
        == "direct connection not established: direct paths are off"
    )
