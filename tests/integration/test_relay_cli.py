"""`meshcore-relay` as a subprocess: it starts and says where it listens, serves peers, exits
0 with a shutdown line on SIGTERM/SIGINT, and refuses bad flags and settings with exit 2."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from test_relay import ALICE, ControlClient

from meshcore._transport import open_transport

BIN = Path(sys.executable).parent
LISTENING = re.compile(rb"relay listening on (ws://127\.0\.0\.1:(\d+)/)")
ENV = {k: v for k, v in os.environ.items() if not k.startswith("MESHCORE_RELAY_")}


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshcore_relay", *args],
        capture_output=True,
        text=True,
        env={**ENV, **(env or {})},
        timeout=60,
    )


class Relay:
    """A relay subprocess whose stderr is read as it comes."""

    def __init__(
        self, *args: str, env: dict[str, str] | None = None, listen: str | None = "127.0.0.1:0"
    ) -> None:
        listen_args = ["--listen", listen] if listen else []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshcore_relay", *listen_args, *args],
            stderr=subprocess.PIPE,
            env={**ENV, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        self.err = b""

    def wait_for(self, pattern: re.Pattern[bytes], timeout: float = 30) -> re.Match[bytes]:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while (match := pattern.search(self.err)) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern.pattern!r} in:\n{self.err.decode()}"
            ready, _, _ = select.select([self.proc.stderr], [], [], left)
            if ready:
                chunk = os.read(self.proc.stderr.fileno(), 65536)
                assert chunk, f"exited before {pattern.pattern!r}:\n{self.err.decode()}"
                self.err += chunk
        return match

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.proc.send_signal(signum)
        _, rest = self.proc.communicate(timeout=30)
        self.err += rest
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=30)


@pytest.fixture
def relay_proc() -> Iterator[list[Relay]]:
    started: list[Relay] = []
    yield started
    for relay in started:
        relay.kill()


async def _register(url: str) -> bytes:
    async with open_transport(url) as transport:
        registered = await ControlClient(transport).register(ALICE)
        return registered.peer_id


def test_starts_serves_and_exits_0_on_sigterm_with_a_shutdown_line(relay_proc: list[Relay]) -> None:
    relay = Relay()
    relay_proc.append(relay)
    url = relay.wait_for(LISTENING).group(1).decode()
    assert trio.run(_register, url) == ALICE.peer_id.digest
    relay.wait_for(re.compile(rb"registered peer=" + ALICE.peer_id.to_text().encode()))
    assert relay.stop(signal.SIGTERM) == 0
    assert b"received SIGTERM: shutting down" in relay.err
    assert b"relay stopped" in relay.err


def test_sigint_shuts_down_gracefully_too(relay_proc: list[Relay]) -> None:
    relay = Relay()
    relay_proc.append(relay)
    relay.wait_for(LISTENING)
    assert relay.stop(signal.SIGINT) == 0
    assert b"received SIGINT: shutting down" in relay.err
    assert b"Traceback" not in relay.err


def test_json_logs_carry_the_event_fields(relay_proc: list[Relay]) -> None:
    relay = Relay("--log-format", "json")
    relay_proc.append(relay)
    url = relay.wait_for(re.compile(rb'relay listening on (ws://[^ "]+)')).group(1).decode()
    trio.run(_register, url)
    line = relay.wait_for(re.compile(rb'\{[^\n]*"event":"registered"[^\n]*\}')).group(0)
    entry = json.loads(line)
    assert entry["peer"] == ALICE.peer_id.to_text()
    assert entry["addr"].startswith("127.0.0.1:")
    assert relay.stop() == 0


def test_listen_address_from_the_environment(relay_proc: list[Relay]) -> None:
    relay = Relay(listen=None, env={"MESHCORE_RELAY_LISTEN": "127.0.0.1:0"})
    relay_proc.append(relay)
    relay.wait_for(LISTENING)
    assert relay.stop() == 0


def test_metrics_are_served_where_asked_and_count_the_relays_work(
    relay_proc: list[Relay],
) -> None:
    relay = Relay(env={"MESHCORE_RELAY_METRICS": "127.0.0.1:0"})
    relay_proc.append(relay)
    metrics = relay.wait_for(re.compile(rb"serving metrics on (http://127\.0\.0\.1:\d+/metrics)"))
    url = relay.wait_for(LISTENING).group(1).decode()
    trio.run(_register, url)
    with urllib.request.urlopen(metrics.group(1).decode(), timeout=10) as response:
        text = response.read().decode()
    assert "meshcore_relay_registrations_total 1.0" in text.splitlines()
    assert "meshcore_relay_challenge_cpu_seconds_count 1.0" in text.splitlines()
    assert relay.stop() == 0


def test_a_bad_metrics_address_exits_2_naming_the_form() -> None:
    result = run("--metrics", "localhost")
    assert result.returncode == 2
    assert "metrics: must be PORT or HOST:PORT" in result.stderr
    assert "(from --metrics)" in result.stderr


def test_bad_flag_value_exits_2_naming_the_setting_and_the_flag() -> None:
    result = run("--max-peers", "ten")
    assert result.returncode == 2
    assert 'limits.max_peers: expected int, got "ten" (from --max-peers)' in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_flag_exits_2() -> None:
    result = run("--max-peer", "3")
    assert result.returncode == 2
    assert "unrecognized arguments: --max-peer" in result.stderr


def test_bad_config_file_exits_2_naming_each_key(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text('listen = "nowhere"\n[limits]\nmax_peer = 3\nidle_timeout_s = 0\n')
    result = run("--config", str(config))
    assert result.returncode == 2
    assert "invalid settings (3 problems)" in result.stderr
    assert "limits.max_peer: unknown setting (did you mean 'max_peers'?)" in result.stderr
    assert "limits.idle_timeout_s: must be more than 0" in result.stderr
    assert "listen: must be HOST:PORT" in result.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run("--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_bad_environment_variable_exits_2_naming_it() -> None:
    result = run(env={"MESHCORE_RELAY_LIMITS_MAX_PEERS": "many"})
    assert result.returncode == 2
    assert "(from MESHCORE_RELAY_LIMITS_MAX_PEERS)" in result.stderr


def test_port_in_use_exits_2_saying_so() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = run("--listen", f"127.0.0.1:{taken.getsockname()[1]}")
    assert result.returncode == 2
    assert "cannot listen on 127.0.0.1:" in result.stderr


def test_help_explains_with_examples() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout
    assert "MESHCORE_RELAY_LIMITS_MAX_PEERS" in result.stdout
    assert "--max-circuits N" in result.stdout


def test_version_names_the_package() -> None:
    result = subprocess.run(
        [BIN / "meshcore-relay", "--version"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    assert result.stdout.startswith("meshcore-relay (meshcore ")


def test_printed_config_reads_back_the_same(tmp_path: Path) -> None:
    printed = run("--print-config", "--max-peers", "7", "--overflow", "close")
    assert printed.returncode == 0
    config = tmp_path / "relay.toml"
    config.write_text(printed.stdout)
    again = run("--print-config", "--config", str(config))
    assert again.returncode == 0
    assert again.stdout == printed.stdout
    assert "max_peers = 7" in again.stdout and 'overflow = "close"' in again.stdout
