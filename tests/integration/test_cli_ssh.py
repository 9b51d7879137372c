"""A real client through meshcore-peer: ssh and scp with `connect` as their ProxyCommand,
against `listen --exec "nc 127.0.0.1 PORT"` in front of a throwaway sshd on a loopback port
(its own host key and configuration in the test's directory). When ssh is done it ends the
ProxyCommand (SIGHUP); the listening side must end that session at once and quietly."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from peerprocs import BIN, ENV, Procs, free_port

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")


def _tools() -> None:
    missing = [t for t in ("ssh", "scp", "ssh-keygen", "nc") if shutil.which(t) is None]
    if not SSHD.exists():
        missing.append(str(SSHD))
    if missing and os.environ.get("CI"):
        pytest.fail(f"CI must have openssh-server, openssh-client and netcat: {missing}")
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    if os.geteuid() != 0 and os.environ.get("CI"):
        pytest.fail("CI runs this as root (sshd logs in as the user running it)")
    if os.geteuid() != 0:
        pytest.skip("sshd must run as root here")


def _start_sshd(procs: Procs, workdir: Path) -> tuple[int, Path]:
    """An sshd on 127.0.0.1:PORT that lets only the test's own key in; returns the port
    and the client's key."""
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", workdir / name],
            check=True, timeout=60,
        )  # fmt: skip
    (workdir / "authorized_keys").write_text((workdir / "client_key.pub").read_text())
    # sshd insists on its privilege separation directory, which the service manager creates
    # at boot (RuntimeDirectory=sshd) and a machine without one lacks.
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    config = workdir / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {workdir / 'host_key'}\n"
        f"AuthorizedKeysFile {workdir / 'authorized_keys'}\nPidFile {workdir / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "Subsystem sftp internal-sftp\n"
    )
    procs.start("sshd", SSHD, "-D", "-e", "-f", config)
    procs.wait_log("sshd", "Server listening on 127.0.0.1")
    return port, workdir / "client_key"


def _ssh_options(workdir: Path, key: Path, proxy: str) -> list[str]:
    return [
        "-F", "/dev/null", "-i", str(key), "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes", "-o", f"UserKnownHostsFile={workdir / 'known_hosts'}",
        "-o", "StrictHostKeyChecking=accept-new", "-o", f"ProxyCommand={proxy}",
    ]  # fmt: skip


@pytest.mark.slow
def test_ssh_and_scp_through_connect_as_proxy_command(tmp_path: Path) -> None:
    _tools()
    payload = os.urandom(3 * 1024 * 1024)
    source = tmp_path / "source.bin"
    source.write_bytes(payload)
    with Procs(tmp_path) as procs:
        port, client_key = _start_sshd(procs, tmp_path)
        url = procs.start_relay()
        akey, aid = procs.genkey("alice")
        bkey, bid = procs.genkey("bob")
        control = tmp_path / "bob.sock"
        procs.peer(
            "listen", "listen", "--relay", url, "--identity", bkey, "--allow", aid,
            "--exec", f"nc 127.0.0.1 {port}", "--control", control,
        )  # fmt: skip
        procs.wait_log("listen", "registered")
        connect_log = tmp_path / "connect.log"
        connect = f"{BIN / 'meshcore-peer'} connect --relay {url} --identity {akey} {bid}"
        proxy = f"{connect} 2>>{connect_log}"
        options = _ssh_options(tmp_path, client_key, proxy)

        shell = subprocess.run(
            ["ssh", *options, "root@meshcore-test", "sha256sum"],
            input=payload, capture_output=True, env=ENV, timeout=120,
        )  # fmt: skip
        assert shell.returncode == 0, shell.stderr.decode()
        assert shell.stdout.split()[0].decode() == hashlib.sha256(payload).hexdigest()

        copied = tmp_path / "copied.bin"
        scp = subprocess.run(
            ["scp", "-q", *options, str(source), f"root@meshcore-test:{copied}"],
            capture_output=True, env=ENV, timeout=120,
        )  # fmt: skip
        assert scp.returncode == 0, scp.stderr.decode()
        assert hashlib.sha256(copied.read_bytes()).digest() == hashlib.sha256(payload).digest()

        # each ssh ended its ProxyCommand, and the session on the listening side with it
        procs.wait_log("listen", "exited with", times=2, timeout=10)
        assert procs.status(control) == []
        listen_log = procs.log("listen")
        ends = listen_log.count("ended: peer closed") + listen_log.count("finished: both")
        assert ends == 2, listen_log
        assert procs.relay_metrics()["meshcore_relay_circuits"] == 0
    for name in ("listen", "relay"):
        log = procs.log(name)
        for word in ("WARNING", "ERROR", "Traceback", "ExceptionGroup"):
            assert word not in log, log
    assert "Traceback" not in connect_log.read_text()
