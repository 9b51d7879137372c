"""The executables as subprocesses: meshcore-relay, meshcore-peer listen and meshcore-peer
connect carry a 50 MiB random file; the SHA-256 matches at the other end."""

from __future__ import annotations

import hashlib
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SIZE = 50 * 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_line(proc: subprocess.Popen[bytes], needle: bytes, timeout: float) -> bytes:
    """Read proc's stderr until a line contains `needle` (bounded by `timeout`)."""
    assert proc.stderr is not None
    seen = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stderr, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise AssertionError(f"never saw {needle!r}; stderr so far:\n{seen.decode()}")
        if sel.select(left):
            seen += os.read(proc.stderr.fileno(), 65536)
    return seen


def genkeys(tmp_path: Path, *names: str) -> tuple[dict[str, Path], dict[str, str]]:
    """A fresh identity per name (`meshcore-peer genkey` into `tmp_path/NAME.key`): the key
    files and the peer ids, by name."""
    keys = {name: tmp_path / f"{name}.key" for name in names}
    ids = {
        name: subprocess.run(
            [BIN / "meshcore-peer", "genkey", "--identity", key],
            capture_output=True, check=True, timeout=60,
        ).stdout.decode().strip()
        for name, key in keys.items()
    }  # fmt: skip
    return keys, ids


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM a process still running and wait for it (bounded; killed if it hangs)."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_fifty_mib_file_through_relay_listen_and_connect(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    keys, ids = genkeys(tmp_path, "alice", "bob")
    alice_key, bob_key = keys["alice"], keys["bob"]
    assert all((key.stat().st_mode & 0o777) == 0o600 for key in keys.values())
    source = tmp_path / "source.bin"
    source.write_bytes(os.urandom(SIZE))
    received = tmp_path / "received.bin"
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    relay = subprocess.Popen(
        [BIN / "meshcore-relay", "--listen", f"127.0.0.1:{port}"],
        stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    listener = None
    try:
        wait_for_line(relay, b"listening", 30)
        with received.open("wb") as sink:
            listener = subprocess.Popen(
                [BIN / "meshcore-peer", "listen", "--relay", url, "--identity", bob_key,
                 "--allow", ids["alice"]],
                stdout=sink, stderr=subprocess.PIPE, env=env,
            )  # fmt: skip
            wait_for_line(listener, b"registered", 30)
            with source.open("rb") as stdin:
                connect = subprocess.run(
                    [BIN / "meshcore-peer", "connect", "--relay", url, "--identity", alice_key,
                     ids["bob"]],
                    stdin=stdin, capture_output=True, env=env, timeout=300,
                )  # fmt: skip
            assert connect.returncode == 0, connect.stderr.decode()
            wait_for_line(listener, b"done", 60)
        digest_in = hashlib.sha256(source.read_bytes()).hexdigest()
        digest_out = hashlib.sha256(received.read_bytes()).hexdigest()
        assert received.stat().st_size == SIZE
        assert digest_out == digest_in
    finally:
        for proc in (listener, relay):
            stop(proc)
    assert relay.returncode == 0


def test_connect_without_relay_names_the_fix(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    subprocess.run([BIN / "meshcore-peer", "genkey", "--identity", key], check=True, timeout=60)
    out = subprocess.run(
        [BIN / "meshcore-peer", "connect", "--identity", key, "x" * 56],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    assert b"--relay URL" in out.stderr


def test_world_readable_key_is_refused_with_the_chmod_hint(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    subprocess.run([BIN / "meshcore-peer", "genkey", "--identity", key], check=True, timeout=60)
    key.chmod(0o644)
    out = subprocess.run(
        [BIN / "meshcore-peer", "id", "--identity", key], capture_output=True, timeout=60
    )
    assert out.returncode == 2
    assert f"chmod 600 {key}".encode() in out.stderr


@pytest.mark.parametrize("args", [["--help"], ["connect", "--help"], ["listen", "--help"]])
def test_help_is_helpful(args: list[str]) -> None:
    out = subprocess.run([BIN / "meshcore-peer", *args], capture_output=True, timeout=60)
    assert out.returncode == 0
    assert b"usage:" in out.stdout


def test_listen_exec_pipes_each_session_into_a_command(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    keys, ids = genkeys(tmp_path, "alice", "bob")
    payload = os.urandom(1024 * 1024)
    inbox = tmp_path / "inbox.bin"
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    relay = subprocess.Popen(
        [BIN / "meshcore-relay", "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE, env=env
    )
    listener = None
    try:
        wait_for_line(relay, b"listening", 30)
        listener = subprocess.Popen(
            [BIN / "meshcore-peer", "listen", "--relay", url, "--identity", keys["bob"],
             "--allow", ids["alice"], "--exec", f"sh -c 'cat > {inbox}'"],
            stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        wait_for_line(listener, b"registered", 30)
        connect = subprocess.run(
            [BIN / "meshcore-peer", "connect", "--relay", url, "--identity", keys["alice"],
             ids["bob"]],
            input=payload, capture_output=True, env=env, timeout=120,
        )  # fmt: skip
        assert connect.returncode == 0, connect.stderr.decode()
        wait_for_line(listener, b"exited with 0", 60)
        assert inbox.read_bytes() == payload
    finally:
        for proc in (listener, relay):
            stop(proc)


def test_status_and_ping_report_the_running_session(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    keys, ids = genkeys(tmp_path, "alice", "bob")
    control = tmp_path / "bob.sock"
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    relay = subprocess.Popen(
        [BIN / "meshcore-relay", "--listen", f"127.0.0.1:{port}"], stderr=subprocess.PIPE, env=env
    )
    procs: list[subprocess.Popen[bytes]] = [relay]
    try:
        wait_for_line(relay, b"listening", 30)
        listener = subprocess.Popen(
            [BIN / "meshcore-peer", "listen", "--relay", url, "--identity", keys["bob"],
             "--allow", ids["alice"], "--control", control, "--metrics", "127.0.0.1:0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        procs.append(listener)
        said = wait_for_line(listener, b"registered", 30)
        metrics = re.search(rb"serving metrics on (http://\S+/metrics)", said)
        assert metrics is not None, said
        connector = subprocess.Popen(
            [BIN / "meshcore-peer", "connect", "--relay", url, "--identity", keys["alice"],
             ids["bob"]],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        procs.append(connector)
        wait_for_line(listener, b"session from", 30)
        status = subprocess.run(
            [BIN / "meshcore-peer", "status", "--json", "--control", control],
            capture_output=True, timeout=30, check=True,
        )  # fmt: skip
        (row,) = [json.loads(line) for line in status.stdout.splitlines()]
        assert row["peer_id"] == ids["alice"]
        assert row["path"] in ("relay", "direct")
        ping = subprocess.run(
            [BIN / "meshcore-peer", "ping", "--count", "2", "--no-until-direct",
             "--interval", "0.1", "--control", control, ids["alice"][:12]],
            capture_output=True, timeout=60,
        )  # fmt: skip
        assert ping.returncode == 0, ping.stdout.decode() + ping.stderr.decode()
        *pongs, last = ping.stdout.decode().splitlines()
        assert len(pongs) == 2, pongs
        # loopback, or another interface's address, IPv4 or IPv6
        direct = r"(\d+\.\d+\.\d+\.\d+|\[[0-9a-f:]+\]):\d+"
        via = rf'(relay "{url}/?"|{direct})'
        for pong in pongs:
            assert re.fullmatch(rf"pong from {ids['alice'][:12]} via {via} in [0-9.]+ m?s", pong)
        assert re.fullmatch(rf"direct connection (established: {direct}|not .*)", last)
        table = subprocess.run(
            [BIN / "meshcore-peer", "status", "--control", control],
            capture_output=True, timeout=30, check=True,
        )  # fmt: skip
        with urllib.request.urlopen(metrics.group(1).decode(), timeout=10) as response:
            scraped = response.read().decode().splitlines()
        assert f'meshcore_peer_relay_connected{{relay="{url}"}} 1.0' in scraped
        assert sum(line.startswith("meshcore_peer_sessions{") for line in scraped) == 2
        line, *connections = table.stdout.decode().splitlines()
        assert [c.split(" (")[0] for c in connections] == [f"relay {url}"], connections
        assert line.startswith(ids["alice"]) and "migrations" in line and "age " in line
        assert re.search(rf'(direct {direct}|relay "{url}/?")', line), line
        assert connector.stdin is not None
        connector.stdin.close()
        assert connector.wait(timeout=60) == 0
    finally:
        for proc in reversed(procs):
            stop(proc)


def test_status_without_a_running_peer_says_so(tmp_path: Path) -> None:
    out = subprocess.run(
        [BIN / "meshcore-peer", "status", "--control", tmp_path / "none.sock"],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert b"no running peer answers" in out.stderr


def test_demo_shows_every_step_and_passes() -> None:
    out = subprocess.run(
        [BIN / "meshcore-peer", "demo", "--messages", "500"], capture_output=True, timeout=120
    )
    text = out.stdout.decode()
    assert out.returncode == 0, text + out.stderr.decode()
    for needle in (
        "relay listening on ws://127.0.0.1:",
        "hybrid X25519 + ML-KEM-768 handshake in",
        "path: relay",
        "path relay -> direct",
        "fell back to the relay",
        "back on the direct path",
        "SHA-256 matches",
        "a spare circuit via ws://127.0.0.1:",
        "stopped the relay carrying the session",
        "the session moved to ws://127.0.0.1:",
        "3000 of 3000 numbered messages, every one once and in order",
        "demo passed",
    ):
        assert needle in text, f"{needle!r} missing from:\n{text}"
