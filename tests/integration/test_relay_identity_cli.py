"""The relay's identity with real `meshcore-relay` processes: `genkey` and `id`, the file
created with mode 0600 on the first start (and kept after), the relay id in the log; peers
given the right relay id register, a wrong one is refused naming the URL and the id, a relay
used without an id is logged once."""

from __future__ import annotations

import logging
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from test_relay_cli import ENV, Relay, run

from meshcore._client import open_relay_client
from meshcore.errors import RelayNotVerified
from meshcore.proto.identity import Identity, PeerId
from meshcore_relay.identity import default_identity_path, load_or_create_identity

ALICE = Identity.generate()
LISTENING = re.compile(rb"relay listening on (ws://127\.0\.0\.1:\d+/)")
RELAY_ID = re.compile(rb"relay id ([0-9a-z]{56})")
WAIT_S = 10


@pytest.fixture
def state(tmp_path: Path) -> dict[str, str]:
    """An environment whose default relay identity lives under `tmp_path`."""
    return {"XDG_STATE_HOME": str(tmp_path / "state")}


@pytest.fixture
def relays() -> Iterator[list[Relay]]:
    started: list[Relay] = []
    yield started
    for relay in started:
        relay.kill()


def start(relays: list[Relay], *args: str, env: dict[str, str]) -> tuple[Relay, str, str]:
    """A relay process: (it, its URL, the relay id it logged)."""
    relay = Relay(*args, env=env)
    relays.append(relay)
    url = relay.wait_for(LISTENING).group(1).decode()
    return relay, url, relay.wait_for(RELAY_ID).group(1).decode()


# --- genkey and id ---------------------------------------------------------------------------


def test_genkey_writes_a_0600_file_and_id_prints_the_same_relay_id(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "relay.key"
    made = run("genkey", "--identity", str(key))
    assert made.returncode == 0, made.stderr
    relay_id = made.stdout.strip()
    assert PeerId.from_text(relay_id) == Identity.load(key).peer_id
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert f"wrote a new relay identity to {key} (mode 0600)" in made.stderr
    shown = run("id", "--identity", str(key))
    assert (shown.returncode, shown.stdout.strip()) == (0, relay_id)


def test_genkey_refuses_to_replace_an_identity_unless_forced(tmp_path: Path) -> None:
    key = tmp_path / "relay.key"
    first = run("genkey", "--identity", str(key)).stdout.strip()
    again = run("genkey", "--identity", str(key))
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert f"relay identity file {key} already exists" in again.stderr
    assert "--force" in again.stderr
    assert run("id", "--identity", str(key)).stdout.strip() == first
    forced = run("genkey", "--identity", str(key), "--force")
    assert forced.returncode == 0 and forced.stdout.strip() != first


def test_id_of_a_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    key = tmp_path / "nothing.key"
    result = run("id", "--identity", str(key))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        f"meshcore-relay: error: relay identity file {key} does not exist; create one with "
        f"`meshcore-relay genkey --identity {key}` (or start the relay once, which creates it)"
    )


def test_id_finds_the_file_as_the_relay_does(tmp_path: Path, state: dict[str, str]) -> None:
    default = run("genkey", env=state).stdout.strip()
    assert run("id", env=state).stdout.strip() == default
    key = tmp_path / "elsewhere.key"
    other = run("genkey", "--identity", str(key)).stdout.strip()
    assert run("id", env={**state, "MESHCORE_RELAY_IDENTITY": str(key)}).stdout.strip() == other
    config = tmp_path / "relay.toml"
    config.write_text(f'identity = "{key}"\n')
    assert run("id", "--config", str(config), env=state).stdout.strip() == other


def test_help_lists_every_command_with_examples() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("genkey", "id", "registry", "register", "deregister"):
        assert f"meshcore-relay {command}" in result.stdout
    assert "--identity FILE" in result.stdout
    assert run("id", "--help").returncode == run("genkey", "--help").returncode == 0


# --- the identity at start ------------------------------------------------------------------


def test_the_first_start_creates_the_identity_0600_and_later_starts_keep_it(
    relays: list[Relay], state: dict[str, str]
) -> None:
    key = default_identity_path(state)
    relay, _, relay_id = start(relays, env=state)
    created = f"created relay identity {key}; relay id {relay_id}".encode()
    assert created in relay.err
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert Identity.load(key).peer_id.to_text() == relay_id
    assert relay.stop() == 0
    again, _, same_id = start(relays, env=state)
    assert same_id == relay_id and b"created relay identity" not in again.err


def test_systemds_state_directory_is_the_default_place(relays: list[Relay], tmp_path: Path) -> None:
    directory = tmp_path / "var-lib-meshcore"
    directory.mkdir(mode=0o700)
    _, _, relay_id = start(relays, env={"STATE_DIRECTORY": str(directory)})
    assert Identity.load(directory / "relay.key").peer_id.to_text() == relay_id


def test_an_identity_file_others_can_read_stops_the_start_with_the_fix(tmp_path: Path) -> None:
    key = tmp_path / "relay.key"
    Identity.generate().save(key)
    key.chmod(0o640)
    result = run("--listen", "127.0.0.1:0", "--identity", str(key))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"chmod 600 {key}" in result.stderr


def test_two_relays_creating_the_same_identity_at_once_share_it(tmp_path: Path) -> None:
    key = tmp_path / "relay.key"
    Identity.generate().save(tmp_path / "winner.key")
    os.link(tmp_path / "winner.key", key)  # the other relay won the race
    identity, created = load_or_create_identity(key)
    assert not created and identity == Identity.load(tmp_path / "winner.key")


# --- peers and the relay id -----------------------------------------------------------------


async def test_peers_verify_a_relay_process_by_its_id(relays: list[Relay], tmp_path: Path) -> None:
    key = tmp_path / "relay.key"
    relay_id = PeerId.from_text(run("genkey", "--identity", str(key)).stdout.strip())
    _, url, logged = start(relays, "--identity", str(key), env={})
    assert logged == relay_id.to_text()
    with trio.fail_after(WAIT_S):
        async with open_relay_client(url, ALICE, relay_id=relay_id) as client:
            assert client.connected and client.verified
        wrong = Identity.generate().peer_id
        with pytest.raises(RelayNotVerified) as caught:
            async with open_relay_client(url, ALICE, relay_id=wrong):
                pytest.fail("registered with a relay that is not the expected one")
    assert str(caught.value).startswith(f"relay at {url} is not relay {wrong}: ")
    assert f"it presented the keys of relay {relay_id}" in str(caught.value)


async def test_a_relay_process_used_without_its_id_is_logged_once(
    relays: list[Relay], caplog: pytest.LogCaptureFixture, state: dict[str, str]
) -> None:
    caplog.set_level(logging.INFO, "meshcore.client")
    _, url, relay_id = start(relays, env=state)
    with trio.fail_after(WAIT_S):
        for _ in range(3):
            async with open_relay_client(url, ALICE) as client:
                assert client.connected and not client.verified
    lines = [r.getMessage() for r in caplog.records if "is not verified" in r.getMessage()]
    assert lines == [
        f"relay at {url} is not verified: no relay id was given for it; it presents relay id "
        f"{relay_id}; give its id with the URL so that a stranger at that address is refused"
    ]


# --- the heartbeat against a stopped process ----------------------------------------------


@asynccontextmanager
async def relay_process(identity_file: Path) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshcore_relay", "--listen", "127.0.0.1:0", "--identity",
         str(identity_file)],
        stderr=subprocess.PIPE,
        env={**ENV, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        err = b""
        with trio.fail_after(30):
            while (match := LISTENING.search(err)) is None:
                chunk = await trio.to_thread.run_sync(os.read, proc.stderr.fileno(), 65536)
                assert chunk, err.decode()
                err += chunk
        yield proc, match.group(1).decode()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
        proc.wait(timeout=30)


async def test_a_stopped_relay_process_is_noticed_by_the_heartbeat(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "meshcore.client")
    key = tmp_path / "relay.key"
    relay = Identity.generate()
    relay.save(key)
    async with (
        relay_process(key) as (proc, url),
        open_relay_client(
            url, ALICE, relay_id=relay.peer_id, heartbeat_s=0.5, dead_after_s=1.5
        ) as client,
    ):
        os.kill(proc.pid, signal.SIGSTOP)  # its sockets stay open; nothing answers
        stopped_at = trio.current_time()
        with trio.fail_after(WAIT_S):
            while client.connected:
                await trio.sleep(0.01)
        noticed_after = trio.current_time() - stopped_at
        os.kill(proc.pid, signal.SIGCONT)
        with trio.fail_after(WAIT_S):
            while not client.connected:
                await trio.sleep(0.01)
        assert client.registrations == 2 and client.verified
    lost = [r.getMessage() for r in caplog.records if "relay connection lost" in r.getMessage()]
    assert lost and lost[0].startswith(
        "relay connection lost: no answer from the relay for 1.5 s; reconnecting in "
    )
    # The last message came at most one heartbeat (0.5 s) before the stop.
    assert 0.9 <= noticed_after <= 3.0, noticed_after
