"""`meshcore-peer up`: fails at once without privilege, names every bad setting, removes its
device on SIGTERM, SIGINT and even SIGKILL, and outlives its peers' sessions."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tapmesh import Mesh, needs_tap

import meshcore_peer.up as up
from meshcore import Identity
from meshcore._tap import check_tap_access
from meshcore.errors import ConfigError

ME = Identity.generate()
OTHER = Identity.generate()


@pytest.fixture
def privileged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend the TAP device can be created, so that the settings are checked next."""
    monkeypatch.setattr(up, "check_tap_access", lambda: None)


@pytest.fixture
def key(tmp_path: Path) -> Path:
    path = tmp_path / "me.key"
    ME.save(path)
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = up.main(argv)
    return code, capsys.readouterr().err


# --- no privilege ---------------------------------------------------------------------------


def test_without_privilege_up_fails_at_once_and_suggests_userspace_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(up, "check_tap_access", lambda: "creating a TAP device needs CAP_NET_ADMIN")
    started = time.monotonic()
    code, err = run(["--relay", "ws://127.0.0.1:9/", "--peer", str(OTHER.peer_id)], capsys)
    assert time.monotonic() - started < 0.5
    assert code == up.EXIT_FAILED
    assert "CAP_NET_ADMIN" in err
    assert "meshcore-peer listen" in err and "meshcore-peer connect" in err


def test_without_tun_device_the_message_names_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(up, "check_tap_access", lambda: check_tap_access("/nonexistent/tun"))
    code, err = run([], capsys)
    assert code == up.EXIT_FAILED
    assert "/nonexistent/tun does not exist" in err
    assert "meshcore-peer listen" in err


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to run as an unprivileged user",
)
def test_as_an_unprivileged_user_up_fails_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         sys.executable, "-m", "meshcore_peer.up", "--relay", "ws://127.0.0.1:9/",
         "--peer", str(OTHER.peer_id)],
        capture_output=True, text=True, timeout=30, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == up.EXIT_FAILED, proc.stderr
    assert "CAP_NET_ADMIN" in proc.stderr
    assert "meshcore-peer connect" in proc.stderr
    assert time.monotonic() - started < 10  # interpreter start-up, no network wait


# --- settings -------------------------------------------------------------------------------


def test_every_bad_setting_is_named_with_its_source(
    privileged: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "peer.toml"
    config.write_text(
        'relay = "ws://127.0.0.1:9/"\n'
        "mtuu = 1400\n"
        'address = "10.77.0.300/24"\n'
        'device = "a-very-long-device-name"\n'
        "[[peers]]\n"
        'id = "not-a-peer-id"\n'
        "[[peers]]\n"
        f'idd = "{OTHER.peer_id}"\n'
    )
    code, err = run(["--config", str(config), "--mtu", "40"], capsys)
    assert code == up.EXIT_USAGE
    for expected in (
        "mtuu: unknown setting (did you mean 'mtu'?)",
        "mtu: must be 68..65504, got 40 (from --mtu)",
        "address: '10.77.0.300/24' is not an IP address",
        "device: 'a-very-long-device-name' is 23 bytes long",
        "peers[0].id: peer id 'not-a-peer-id'",
        "peers[1].idd: unknown setting",
        "peers[1].id: required setting is missing",
    ):
        assert expected in err, (expected, err)


def test_relay_and_peers_are_required(
    privileged: None, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["--identity", str(key)], capsys)
    assert code == up.EXIT_USAGE
    assert "relay: the relay is missing" in err
    assert "peers: no peer given" in err


def test_address_without_prefix_length_is_refused(
    privileged: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run(["--relay", "ws://x/", "--peer", str(OTHER.peer_id), "--address", "10.1.2.3"],
                    capsys)  # fmt: skip
    assert code == up.EXIT_USAGE
    assert "needs a prefix length, e.g. 10.1.2.3/24" in err


def test_a_peer_listed_twice_is_refused(
    privileged: None, capsys: pytest.CaptureFixture[str]
) -> None:
    peer = str(OTHER.peer_id)
    code, err = run(["--relay", "ws://x/", "--peer", f"{peer},{peer}"], capsys)
    assert code == up.EXIT_USAGE
    assert "peers[1].id" in err and "listed twice" in err


def test_our_own_id_among_the_peers_is_refused(
    privileged: None, key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--identity", str(key), "--relay", "ws://x/", "--peer", str(ME.peer_id)]
    code, err = run(argv, capsys)
    assert code == up.EXIT_USAGE
    assert "this peer's own id" in err


def test_missing_identity_file_is_a_usage_error(
    privileged: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--identity", str(tmp_path / "nope.key"), "--relay", "ws://x/", "--peer",
            str(OTHER.peer_id)]  # fmt: skip
    code, err = run(argv, capsys)
    assert code == up.EXIT_USAGE
    assert "nope.key does not exist" in err


def test_flags_override_the_file_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "peer.toml"
    config.write_text(
        f'relay = "ws://file/"\nmtu = 1300\ndevice = "file0"\n[[peers]]\nid = "{ME.peer_id}"\n'
    )
    monkeypatch.setenv("MESHCORE_PEER_MTU", "1280")
    monkeypatch.setenv("MESHCORE_PEER_DEVICE", "env0")
    monkeypatch.setenv("MESHCORE_PEER_ALLOW", "set for `listen`, not an error here")
    parser = argparse.ArgumentParser()
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config")
    sub = parser.add_subparsers(dest="command")
    up.add_up_parser(sub, common)
    args = parser.parse_args(["up", "--config", str(config), "--mtu", "1200",
                              "--peer", f"{OTHER.peer_id}"])  # fmt: skip
    loaded = up.load_up_config(Path(args.config), up._overrides(args))
    assert loaded.relay == "ws://file/"
    assert loaded.device == "env0"
    assert loaded.mtu == 1200
    assert [p.id for p in loaded.peers] == [str(OTHER.peer_id)]


def test_defaults_are_mesh0_and_mtu_1400() -> None:
    config = up.UpConfig()
    assert (config.device, config.mtu, config.address) == ("mesh0", 1400, None)


def test_mac_address_is_locally_administered_unicast_and_stable() -> None:
    mac = up.tap_mac(ME.peer_id)
    assert len(mac) == 6
    assert mac[0] & 0b11 == 0b10
    assert mac == up.tap_mac(ME.peer_id)
    assert mac != up.tap_mac(OTHER.peer_id)


def test_load_errors_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        up.load_up_config(None, {"mtu": "lots"})


def test_datagrams_are_on_by_default_and_can_be_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert up.UpConfig().datagrams is True
    base = {"relay": "ws://r/", "peers": [{"id": str(OTHER.peer_id)}]}
    assert up.load_up_config(None, base).datagrams is True
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    up.add_up_parser(sub, argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["up", "--no-datagrams"])
    assert up.load_up_config(None, {**base, **up._overrides(args)}).datagrams is False
    config = tmp_path / "peer.toml"
    config.write_text('datagrams = "sometimes"\n')
    with pytest.raises(ConfigError, match=r"datagrams: .*true or false"):
        up.load_up_config(config, base)
    monkeypatch.setenv("MESHCORE_PEER_DATAGRAMS", "false")
    assert up.load_up_config(None, base).datagrams is False


# --- the device's lifetime and the peers' (real, in namespaces) ------------------------------


@pytest.fixture
def lone_netns(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A namespace and a config whose relay cannot be reached (the tunnel retries)."""
    name = f"mctun{os.getpid()}xlone{time.monotonic_ns() % 10**6}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        ME.save(tmp_path / "me.key", overwrite=True)
        config = tmp_path / "peer.toml"
        config.write_text(
            f'relay = "ws://127.0.0.1:9/"\nidentity = "{tmp_path / "me.key"}"\n'
            f'address = "10.77.9.1/24"\ndevice = "mctest0"\n'
            f'[[peers]]\nid = "{OTHER.peer_id}"\n'
        )
        yield name, config
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def _device_exists(netns: str, name: str = "mctest0") -> bool:
    shown = subprocess.run(["ip", "-n", netns, "link", "show", name], capture_output=True)
    return shown.returncode == 0


def _start_up(netns: str, config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-m", "meshcore_peer.up",
         "--config", str(config)],
        stdout=subprocess.DEVNULL, stderr=open(log, "wb"),
    )  # fmt: skip


def _wait_for(log: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text():
            return
        assert proc.poll() is None, f"exited early:\n{log.read_text()}"
        time.sleep(0.05)
    raise AssertionError(f"no {text!r} within {timeout} s:\n{log.read_text()}")


@needs_tap
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_removes_the_device_and_exits_cleanly(
    lone_netns: tuple[str, Path], tmp_path: Path, sig: int
) -> None:
    netns, config = lone_netns
    log = tmp_path / "up.log"
    proc = _start_up(netns, config, log)
    try:
        _wait_for(log, "tunnel up on mctest0", proc)
        assert _device_exists(netns)
        _wait_for(log, "reconnecting in", proc)  # the relay is unreachable: it keeps trying
        proc.send_signal(sig)
        assert proc.wait(10) == up.EXIT_OK, log.read_text()
    finally:
        proc.kill()
        proc.wait()
    assert not _device_exists(netns)
    assert "removing mctest0" in log.read_text()


@needs_tap
def test_even_a_killed_process_leaves_no_device_behind(
    lone_netns: tuple[str, Path], tmp_path: Path
) -> None:
    netns, config = lone_netns
    log = tmp_path / "up.log"
    proc = _start_up(netns, config, log)
    try:
        _wait_for(log, "tunnel up on mctest0", proc)
    finally:
        proc.kill()
        proc.wait()
    assert not _device_exists(netns)


@needs_tap
def test_a_killed_peer_does_not_end_the_tunnel_and_its_new_session_replaces_the_old(
    tmp_path: Path,
) -> None:
    with Mesh(2, tmp_path) as mesh:
        mesh.start_all()
        assert mesh.ping(0, 1, count=1).returncode == 0
        # kill the dialling peer (lower id): back, it dials at once, and the survivor swaps
        # the new session in without waiting for the old one's dead timer
        dialler = min(range(2), key=lambda i: mesh.ids[i].digest)
        survivor = 1 - dialler
        mesh.stop_peer(dialler, signal.SIGKILL)
        assert mesh.peers[survivor].poll() is None
        assert mesh.run(survivor, "ip", "link", "show", "mesh0").returncode == 0
        mesh.start_peer(dialler)
        mesh.wait_log(survivor, " up (", 2)
        mesh.wait_log(survivor, "ended: replaced by a newer session")
        result = mesh.ping(survivor, dialler, count=2)
        assert result.returncode == 0, result.stdout + result.stderr


@needs_tap
def test_sigterm_closes_the_sessions_so_the_other_peer_ends_its_own_at_once(
    tmp_path: Path,
) -> None:
    with Mesh(2, tmp_path) as mesh:
        controls = [tmp_path / f"peer{i}.sock" for i in range(2)]
        for i in range(2):
            mesh.start_peer(i, "--control", str(controls[i]))
        for i in range(2):
            mesh.wait_log(i, " up (")
        assert mesh.ping(0, 1, count=1).returncode == 0
        assert controls[0].exists()
        stopping = mesh.peers.pop(0)
        stopping.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        mesh.wait_log(1, "ended: peer closed", timeout=10)
        assert time.monotonic() - sent < 1.0, mesh.log(1).read_text()
        assert stopping.wait(10) == up.EXIT_OK
        assert not controls[0].exists()
        stopped, survivor = mesh.log(0).read_text(), mesh.log(1).read_text()
    assert "removing mesh0" in stopped
    for log in (stopped, survivor):
        warnings = [w for w in log.splitlines() if "WARNING" in w and "is not verified" not in w]
        assert not warnings and "Traceback" not in log, log  # (the mesh's relay has no id)
