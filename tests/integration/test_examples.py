"""The examples in examples/ run and do what they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
