"""The examples in examples/ run and do what they say."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from meshcore.proto.constants import MAX_HANDSHAKE_BYTES
from meshcore.proto.handshake_messages import HANDSHAKE_INIT_BYTES, HANDSHAKE_RESPONSE_BYTES

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, EXAMPLES / name], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


def test_echo_example_echoes_through_the_relay() -> None:
    assert run_example("echo.py") == [
        "echoed: hello",
        "echoed: post-quantum",
        "echoed: world",
    ]


def test_own_transport_example_keeps_its_session_across_a_cut_connection() -> None:
    assert run_example("own_transport.py") == [
        "echoed: POST",
        "echoed: QUANTUM",
        "echoed: SESSIONS",
        "connection cut",
        "echoed: OUTLIVE",
        "echoed: THEIR",
        "echoed: CONNECTIONS",
    ]


def test_embedded_relay_example_pairs_two_peers_and_stops_gracefully() -> None:
    assert run_example("embedded_relay.py") == [
        "peers registered: 2",
        "circuits open: 1",
        "hello -> HELLO",
        "from -> FROM",
        "alice -> ALICE",
        "relay carried both ways: True",
        "relay stopped",
    ]


def test_metrics_scrape_example_counts_what_it_sent_by_path() -> None:
    (line,) = run_example("metrics_scrape.py")
    out = json.loads(line)
    sent, relay, alice, bob = out["sent"], out["relay"], out["alice"], out["bob"]
    total = sent["messages"] * sent["message_bytes"]
    after = sent["after_upgrade"] * sent["message_bytes"]

    def path_bytes(peer: dict[str, float], path: str, direction: str) -> float:
        return peer[f"meshcore_peer_path_bytes_total{{direction={direction},path={path}}}"]

    # every message, exactly once, whichever path carried it
    assert alice["meshcore_peer_message_bytes_total{direction=sent}"] == total
    assert bob["meshcore_peer_message_bytes_total{direction=received}"] == total
    # what was sent after the upgrade went direct (sealed frames are a little larger)
    assert path_bytes(alice, "direct", "sent") >= after
    assert path_bytes(bob, "direct", "received") >= after
    # the relay forwarded at least what the peers got from it, and at most what they sent on
    # it: their session frames and, before the session existed, the handshake's three
    # messages (which the session's path counters do not count)
    on_relay_sent = path_bytes(alice, "relay", "sent") + path_bytes(bob, "relay", "sent")
    on_relay_got = path_bytes(alice, "relay", "received") + path_bytes(bob, "relay", "received")
    handshake = HANDSHAKE_INIT_BYTES + HANDSHAKE_RESPONSE_BYTES + MAX_HANDSHAKE_BYTES
    forwarded = relay["meshcore_relay_forwarded_bytes_total"]
    assert 0 < on_relay_got <= forwarded <= on_relay_sent + handshake
    # one migration each, and the relay released the circuit after the upgrade
    for peer in (alice, bob):
        assert peer["meshcore_peer_migrations_total{kind=relay_to_direct}"] == 1
        assert peer["meshcore_peer_migrations_total{kind=direct_to_relay}"] == 0
        assert peer["meshcore_peer_sessions{path=direct}"] == 1
    assert relay["meshcore_relay_circuits"] == 0
    assert relay["meshcore_relay_pairings_total"] == 1
    assert relay["meshcore_relay_peers"] == 2


def test_the_application_protocol_fuzz_example_passes() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            EXAMPLES / "test_app_protocol.py",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=EXAMPLES.parent,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "4 passed" in out.stdout
