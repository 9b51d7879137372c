"""contrib/systemd: `systemd-analyze verify` accepts both units (their commands pointed at this
environment's entry points), their hardening is what docs/observability.md says, and the one
capability the peer's unit grants is all `meshcore-peer up` needs: it runs as `nobody` with
CAP_NET_ADMIN alone (in a network namespace of its own)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "contrib" / "systemd"
BIN = Path(sys.executable).parent
ANALYZE = shutil.which("systemd-analyze")


def settings(unit: Path) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, repeated keys kept in order."""
    out: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def here(unit: Path, dest: Path) -> Path:
    """A copy of `unit` whose commands run this environment's executables."""
    dest.write_text(unit.read_text().replace("/usr/local/bin/", f"{BIN}/"))
    return dest


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed here")
def test_systemd_analyze_verify_accepts_both_units(tmp_path: Path) -> None:
    assert ANALYZE is not None
    relay = here(UNITS / "meshcore-relay.service", tmp_path / "meshcore-relay.service")
    peer = here(UNITS / "meshcore-peer@.service", tmp_path / "meshcore-peer@office.service")
    done = subprocess.run(
        [ANALYZE, "verify", "--man=no", relay, peer], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # unknown keys, bad values and unknown syscall groups are warnings: none may appear
    ours = [line for line in done.stderr.splitlines() if "meshcore" in line]
    assert ours == [], done.stderr


def test_verify_would_catch_a_command_that_does_not_exist(tmp_path: Path) -> None:
    if ANALYZE is None:
        pytest.skip("systemd-analyze is not installed here")
    broken = tmp_path / "meshcore-relay.service"
    broken.write_text((UNITS / "meshcore-relay.service").read_text())  # /usr/local/bin: absent
    if (Path("/usr/local/bin") / "meshcore-relay").exists():
        pytest.skip("meshcore-relay is installed in /usr/local/bin here")
    done = subprocess.run([ANALYZE, "verify", "--man=no", broken], capture_output=True, timeout=60)
    assert done.returncode != 0


def test_the_relay_runs_with_no_privilege_and_keeps_its_state_in_its_state_directory() -> None:
    unit = settings(UNITS / "meshcore-relay.service")
    assert unit["DynamicUser"] == ["yes"]
    assert unit["NoNewPrivileges"] == ["yes"]
    assert unit["CapabilityBoundingSet"] == [""] and unit["AmbientCapabilities"] == [""]
    assert unit["ProtectSystem"] == ["strict"] and unit["ProtectHome"] == ["yes"]
    assert unit["StateDirectory"] == ["meshcore-relay"]
    assert "XDG_CONFIG_HOME=%S/meshcore-relay" in unit["Environment"][-1]
    assert unit["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]


def test_the_peer_unit_grants_cap_net_admin_and_nothing_else() -> None:
    unit = settings(UNITS / "meshcore-peer@.service")
    assert unit["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert unit["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert unit["NoNewPrivileges"] == ["yes"] and unit["DynamicUser"] == ["yes"]
    assert unit["DevicePolicy"] == ["closed"] and unit["DeviceAllow"] == ["/dev/net/tun rw"]
    assert unit["ProtectSystem"] == ["strict"]
    assert unit["StateDirectory"] == ["meshcore-peer/%i"]
    (command,) = unit["ExecStart"]
    assert command.startswith("/usr/local/bin/meshcore-peer up --config /etc/meshcore/%i.toml")


# --- `up` as an unprivileged user holding CAP_NET_ADMIN only ----------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A fresh directory that `nobody` can read and write (tmp_path's parents are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="meshcore-cap-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _needs_root() -> None:
    missing = [tool for tool in ("unshare", "setpriv", "ip") if shutil.which(tool) is None]
    problem = "not root" if os.geteuid() != 0 else ", ".join(missing)
    if os.geteuid() == 0 and not missing:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this test as root with unshare and setpriv: {problem}")
    pytest.skip(f"needs root, unshare and setpriv to drop to nobody: {problem}")


def _run_up_as_nobody(shared: Path, caps: str) -> subprocess.Popen[str]:
    """`meshcore-peer up` as nobody with `caps` (setpriv syntax), in a new network and mount
    namespace whose /dev/net/tun is a node anyone may open (as on most distributions)."""
    peer = subprocess.run(
        [BIN / "meshcore-peer", "genkey", "--identity", shared / "peer.key"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    key = shared / "me.key"
    subprocess.run([BIN / "meshcore-peer", "genkey", "--identity", key], check=True, timeout=60)
    os.chown(key, 65534, 65534)
    config = shared / "mesh.toml"
    config.write_text(
        'relay = "ws://127.0.0.1:9"\n'
        f'identity = "{key}"\n'
        'device = "mccap0"\n'
        'address = "10.98.0.1/24"\n'
        f'control = "{shared / "control.sock"}"\n'
        f'peers = [{{ id = "{peer}" }}]\n'
    )
    bounding = "-all" if caps == "-all" else f"-all,{caps}"
    script = (
        f"mknod {shared}/tun c 10 200 && chmod 666 {shared}/tun && "
        f"mount --bind {shared}/tun /dev/net/tun && ip link set lo up && "
        "exec setpriv --reuid=65534 --regid=65534 --clear-groups "
        f"--inh-caps={caps} --ambient-caps={caps} --bounding-set={bounding} "
        f"{BIN}/meshcore-peer up --config {config}"
    )
    return subprocess.Popen(
        ["unshare", "--mount", "--net", "sh", "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def _read_until(proc: subprocess.Popen[str], needle: str) -> str:
    assert proc.stdout is not None
    seen = ""
    for line in proc.stdout:
        seen += line
        if needle in line:
            return seen
    raise AssertionError(f"never saw {needle!r}:\n{seen}")


def test_up_needs_only_the_capability_the_unit_grants(shared_dir: Path) -> None:
    _needs_root()
    proc = _run_up_as_nobody(shared_dir, "+net_admin")
    try:
        seen = _read_until(proc, "tunnel up on mccap0")
        assert "device mccap0 up" in seen
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, seen + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_up_without_the_capability_says_what_it_needs(shared_dir: Path) -> None:
    _needs_root()
    proc = _run_up_as_nobody(shared_dir, "-all")
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1, output
    assert "needs the CAP_NET_ADMIN capability" in output
