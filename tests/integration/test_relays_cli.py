"""meshcore-peer with a relay list, as subprocesses: listen registers at its rendezvous
relays, connect reaches it through the list, `relays` reports the running peer's
connections and `status` each session's relay."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from test_cli_transfer import BIN, free_port, genkeys, stop, wait_for_line


def test_a_peer_on_a_relay_list_reports_its_relays_and_sessions(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    keys, ids = genkeys(tmp_path, "alice", "bob")
    ports = [free_port() for _ in range(3)]
    urls = [f"ws://127.0.0.1:{p}/" for p in ports]
    relay_file = tmp_path / "relays.toml"
    relay_file.write_text("".join(f'[[relays]]\nurl = "{u}"\n' for u in urls))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            relay = subprocess.Popen(
                [BIN / "meshcore-relay", "--listen", f"127.0.0.1:{port}"],
                stderr=subprocess.PIPE, env=env,
            )  # fmt: skip
            procs.append(relay)
            wait_for_line(relay, b"listening", 30)
        control = tmp_path / "bob.sock"
        listener = subprocess.Popen(
            [BIN / "meshcore-peer", "listen", "--relays-file", relay_file, "--identity",
             keys["bob"], "--allow", ids["alice"], "--control", control, "--state-dir",
             tmp_path / "state", "--no-direct", "--exec", "cat"],
            stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        procs.append(listener)
        wait_for_line(listener, b"listening as", 30)
        connect = subprocess.Popen(
            [BIN / "meshcore-peer", "connect", "--relays-file", relay_file, "--identity",
             keys["alice"], "--state-dir", tmp_path / "state", "--no-direct", ids["bob"]],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        procs.append(connect)
        assert connect.stdin is not None and connect.stdout is not None
        connect.stdin.write(b"hello\n")
        connect.stdin.flush()
        assert connect.stdout.readline() == b"hello\n"  # the echo came back
        report = json.loads(
            subprocess.run(
                [BIN / "meshcore-peer", "relays", "--control", control, "--json"],
                capture_output=True,
                check=True,
                env=env,
                timeout=60,
            ).stdout
        )
        assert report["running"] is True and report["peer_id"] == ids["bob"]
        assert report["source"] == f"file {relay_file}"
        assert {r["url"] for r in report["relays"]} == set(urls)
        homes = [r for r in report["relays"] if r["rendezvous"]]
        assert len(homes) == 2 and {r["state"] for r in homes} == {"connected"}
        # alice's session: its circuit, and maybe already a spare on another relay
        assert sum(r["circuits"] for r in report["relays"]) in (1, 2)
        status = subprocess.run(
            [BIN / "meshcore-peer", "status", "--control", control, "--json"],
            capture_output=True, check=True, env=env, timeout=60,
        )  # fmt: skip
        (session,) = [json.loads(line) for line in status.stdout.splitlines()]
        assert session["path"] == "relay" and session["relay"] in urls
        lines = subprocess.run(
            [BIN / "meshcore-peer", "status", "--control", control],
            capture_output=True, check=True, env=env, timeout=60,
        ).stdout.decode()  # fmt: skip
        assert sum(line.startswith("relay ws://") for line in lines.splitlines()) >= 2, lines
        assert "(home): connected" in lines, lines
        table = subprocess.run(
            [BIN / "meshcore-peer", "relays", "--control", control],
            capture_output=True, check=True, env=env, timeout=60,
        ).stdout.decode()  # fmt: skip
        assert "rendezvous relays of" in table and "connected" in table
        connect.stdin.close()
        assert connect.wait(timeout=30) == 0
    finally:
        for proc in reversed(procs):
            stop(proc)
