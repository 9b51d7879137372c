"""How meshcore-peer's processes end, with real processes: a signal while data flows (on the
relay and on a direct path) closes the session at once and quietly on both sides; half-close
carries a whole answer back after the request's stdin ended; an unexplained loss (SIGKILL)
is one warning after the dead timer."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from peerprocs import BIN, ENV, Procs

CLOSED = "ended: peer closed: interrupted by"
SIGNALS = [signal.SIGHUP, signal.SIGTERM, signal.SIGINT]


def quiet(log: str) -> None:
    """No warning, no error, no traceback in a process's log."""
    for word in ("WARNING", "ERROR", "Traceback", "ExceptionGroup"):
        assert word not in log, log


@pytest.mark.parametrize("path", ["relay", "direct"])
@pytest.mark.parametrize("sig", SIGNALS, ids=[s.name for s in SIGNALS])
def test_a_signal_ends_connect_and_the_listening_side_at_once(
    tmp_path: Path, sig: signal.Signals, path: str
) -> None:
    with Procs(tmp_path) as procs:
        url = procs.start_relay()
        akey, aid = procs.genkey("alice")
        bkey, bid = procs.genkey("bob")
        control = tmp_path / "bob.sock"
        mode = ["--no-direct"] if path == "relay" else []
        procs.peer(
            "listen", "listen", "--relay", url, "--identity", bkey, "--allow", aid,
            "--control", control, *mode,
        )  # fmt: skip
        procs.wait_log("listen", "registered")
        with open("/dev/zero", "rb") as endless:
            connect = procs.peer(
                "connect", "connect", "--relay", url, "--identity", akey, bid, *mode,
                stdin=endless,
            )  # fmt: skip
        if path == "direct":
            procs.wait_log("connect", "path relay -> direct")
        procs.wait_status(control, lambda rows: rows and rows[0]["bytes_received"] > 1 << 20)
        assert procs.status(control)[0]["path"] == path

        connect.send_signal(sig)
        sent = time.monotonic()
        seen = procs.wait_log("listen", CLOSED + f" {sig.name}", timeout=10)
        assert seen - sent < 1.0, procs.log("listen")
        assert connect.wait(10) == 128 + sig
        assert procs.status(control) == []
        metrics = procs.relay_metrics()
        assert metrics["meshcore_relay_circuits"] == 0
        assert metrics["meshcore_relay_pairings_total"] == 1  # nothing was re-paired
        assert metrics["meshcore_relay_circuit_reopens_total"] == 0
        listen_log = procs.log("listen")
        assert len(re.findall(r"session from \S+\n", listen_log)) == 1  # one session
        assert "fell back" not in listen_log
    for name in ("listen", "connect", "relay"):
        quiet(procs.log(name))
    assert not control.exists()


def test_sigterm_ends_listen_its_sessions_and_its_control_socket(tmp_path: Path) -> None:
    with Procs(tmp_path) as procs:
        url = procs.start_relay()
        akey, aid = procs.genkey("alice")
        bkey, bid = procs.genkey("bob")
        control = tmp_path / "bob.sock"
        listen = procs.peer(
            "listen", "listen", "--relay", url, "--identity", bkey, "--allow", aid,
            "--control", control,
        )  # fmt: skip
        procs.wait_log("listen", "registered")
        with open("/dev/zero", "rb") as endless:
            connect = procs.peer(
                "connect", "connect", "--relay", url, "--identity", akey, bid, stdin=endless
            )
        procs.wait_status(control, lambda rows: rows and rows[0]["bytes_received"] > 1 << 20)
        assert control.exists()

        listen.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        seen = procs.wait_log("connect", CLOSED + " SIGTERM", timeout=10)
        assert seen - sent < 1.0, procs.log("connect")
        assert listen.wait(10) == 0
        assert connect.wait(10) == 3  # the peer closed first
        assert not control.exists()
        assert "without a WebSocket close" not in procs.log("relay")
        assert procs.relay_metrics()["meshcore_relay_circuits"] == 0
    for name in ("listen", "connect", "relay"):
        quiet(procs.log(name))
    assert "session ended: peer closed: interrupted by SIGTERM" in procs.log("connect")


@pytest.mark.parametrize("path", ["relay", "direct"])
def test_half_close_carries_a_whole_answer_back_after_the_request_ended(
    tmp_path: Path, path: str
) -> None:
    request, answer = os.urandom(4096), os.urandom(1 << 20)
    (tmp_path / "answer.bin").write_bytes(answer)
    with Procs(tmp_path) as procs:
        url = procs.start_relay()
        akey, aid = procs.genkey("alice")
        bkey, bid = procs.genkey("bob")
        mode = ["--no-direct"] if path == "relay" else []
        # the command answers only once the request has ended: it needs the half-close
        command = f"sh -c 'cat > {tmp_path}/request.bin && cat {tmp_path}/answer.bin'"
        procs.peer(
            "listen", "listen", "--relay", url, "--identity", bkey, "--allow", aid,
            "--exec", command, *mode,
        )  # fmt: skip
        procs.wait_log("listen", "registered")
        with (tmp_path / "connect.log").open("ab") as log:
            done = subprocess.run(
                [BIN / "meshcore-peer", "connect", "--relay", url, "--identity", akey, bid,
                 *mode],
                input=request, stdout=subprocess.PIPE, stderr=log, env=ENV, timeout=120,
            )  # fmt: skip
        assert done.returncode == 0, procs.log("connect")
        assert hashlib.sha256(done.stdout).digest() == hashlib.sha256(answer).digest()
        procs.wait_log("listen", "exited with 0")
        assert (tmp_path / "request.bin").read_bytes() == request
        assert "finished: both directions ended" in procs.log("listen")
    for name in ("listen", "connect", "relay"):
        quiet(procs.log(name))


@pytest.mark.slow
def test_a_killed_peer_is_one_warning_after_the_dead_timer(tmp_path: Path) -> None:
    with Procs(tmp_path) as procs:
        url = procs.start_relay()
        akey, aid = procs.genkey("alice")
        bkey, bid = procs.genkey("bob")
        control = tmp_path / "bob.sock"
        procs.peer(
            "listen", "listen", "--relay", url, "--identity", bkey, "--allow", aid,
            "--control", control, "--no-direct",
        )  # fmt: skip
        procs.wait_log("listen", "registered")
        with open("/dev/zero", "rb") as endless:
            connect = procs.peer(
                "connect", "connect", "--relay", url, "--identity", akey, bid, "--no-direct",
                stdin=endless,
            )  # fmt: skip
        procs.wait_status(control, lambda rows: rows and rows[0]["bytes_received"] > 1 << 20)
        connect.kill()
        connect.wait(10)
        procs.wait_log("listen", "ended: no authenticated frame from the peer", timeout=40)
        assert procs.status(control) == []
    log = procs.log("listen")
    warnings = [line for line in log.splitlines() if "WARNING" in line]
    assert len(warnings) == 1, log
    assert "failed" in warnings[0]
    assert "Traceback" not in log and "ExceptionGroup" not in log
