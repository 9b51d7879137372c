"""The examples in examples/ run and do what they say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_echo_example_echoes_through_the_relay() -> None:
    out = subprocess.run(
        [sys.executable, EXAMPLES / "echo.py"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "echoed: hello",
        "echoed: post-quantum",
        "echoed: world",
    ]
