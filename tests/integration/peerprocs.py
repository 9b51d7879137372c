"""The executables of one test as real processes: a relay and meshcore-peer commands, each
writing its stderr to `NAME.log` in the test's directory (so that tests/conftest.py checks it
for tracebacks), with bounded waits on what they log."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Procs:
    """Processes started for one test; `close` (or the `with` block's end) stops what still
    runs, the last started first (SIGTERM, then SIGKILL after 10 s)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.url = ""
        self.metrics_port = 0

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the peers, then the relay (so that no peer sees the relay go away)."""
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def genkey(self, name: str) -> tuple[Path, str]:
        key = self.workdir / f"{name}.key"
        out = subprocess.run(
            [BIN / "meshcore-peer", "genkey", "--identity", key],
            capture_output=True, check=True, env=ENV, timeout=60,
        )  # fmt: skip
        return key, out.stdout.decode().strip()

    def start(
        self,
        name: str,
        *argv: str | Path,
        stdin: IO[bytes] | int | None = subprocess.DEVNULL,
        stdout: IO[bytes] | int | None = subprocess.DEVNULL,
    ) -> subprocess.Popen[bytes]:
        with self.log_path(name).open("ab") as log:
            proc = subprocess.Popen(
                [str(a) for a in argv], stdin=stdin, stdout=stdout, stderr=log, env=ENV
            )
        self.procs[name] = proc
        return proc

    def peer(self, name: str, *args: str | Path, **io: Any) -> subprocess.Popen[bytes]:
        return self.start(name, BIN / "meshcore-peer", *args, **io)

    def start_relay(self) -> str:
        """Start a relay with an identity of its own; returns its URL with its relay id
        (URL#RELAY_ID), so that the peers verify it."""
        key = self.workdir / "relay.key"
        made = subprocess.run(
            [BIN / "meshcore-relay", "genkey", "--identity", key],
            capture_output=True, check=True, env=ENV, timeout=60,
        )  # fmt: skip
        relay_id = made.stdout.decode().strip()
        port, self.metrics_port = free_port(), free_port()
        self.start(
            "relay", BIN / "meshcore-relay", "--listen", f"127.0.0.1:{port}",
            "--identity", key, "--metrics", f"127.0.0.1:{self.metrics_port}",
        )  # fmt: skip
        self.wait_log("relay", "relay listening")
        self.url = f"ws://127.0.0.1:{port}#{relay_id}"
        return self.url

    def wait_log(self, name: str, text: str, times: int = 1, timeout: float = 30) -> float:
        """Wait until `name`'s log says `text` `times` times (checked every 20 ms); returns
        when (time.monotonic) that was seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log(name).count(text) >= times:
                return time.monotonic()
            proc = self.procs[name]
            if proc.poll() is not None and self.log(name).count(text) < times:
                raise AssertionError(f"{name} exited ({proc.returncode}):\n{self.log(name)}")
            time.sleep(0.02)
        raise AssertionError(f"{name} did not log {text!r} x{times}:\n{self.log(name)}")

    def status(self, control: Path) -> list[dict[str, Any]]:
        out = subprocess.run(
            [BIN / "meshcore-peer", "status", "--json", "--control", control],
            capture_output=True, env=ENV, timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr.decode()
        return [json.loads(line) for line in out.stdout.decode().splitlines()]

    def wait_status(self, control: Path, check: Any, timeout: float = 30) -> list[dict[str, Any]]:
        """Poll `status` until `check(rows)` is true (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.status(control)
            if check(rows):
                return rows
            if time.monotonic() > deadline:
                raise AssertionError(f"status never matched: {rows}")
            time.sleep(0.05)

    def relay_metrics(self) -> dict[str, float]:
        """The relay's Prometheus samples, by their line's name and labels."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                samples[key] = float(value)
        return samples
