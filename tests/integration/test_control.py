"""The peer's control socket: status and ping answered from the registry of sessions."""

from __future__ import annotations

import stat
from functools import partial
from pathlib import Path

import attrs
import pytest
import trio

from meshcore._control import (
    SessionRegistry,
    control_request,
    serve_control,
)
from meshcore._counters import SessionCounters
from meshcore.errors import ConfigError, ControlRequestFailed


@attrs.frozen
class FakeStatus:
    peer_id: str
    path: str
    rtt_s: float | None = 0.0004


class FakeSession:
    def __init__(self, peer: str, path: str = "direct") -> None:
        self.peer, self.path = peer, path
        self.pings = 0
        self.close_reason: str | None = None

    def status(self) -> FakeStatus:
        return FakeStatus(self.peer, self.path)

    def counters(self) -> SessionCounters:
        return SessionCounters(messages_sent=self.pings)

    async def ping(self, timeout: float) -> tuple[float, str]:
        self.pings += 1
        await trio.lowlevel.checkpoint()
        return 0.0005, self.path


async def collect(path: Path, request: dict[str, object]) -> list[dict[str, object]]:
    with trio.fail_after(10):
        return [answer async for answer in control_request(path, request)]


async def test_status_lists_every_registered_session(tmp_path: Path) -> None:
    registry = SessionRegistry()
    sock = tmp_path / "peer.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, sock, registry)
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert await collect(sock, {"cmd": "status"}) == []
        with (
            registry.registered(FakeSession("abc", "relay")),
            registry.registered(FakeSession("xyz")),
        ):
            answers = await collect(sock, {"cmd": "status"})
        assert [(a["peer_id"], a["path"]) for a in answers] == [("abc", "relay"), ("xyz", "direct")]
        nursery.cancel_scope.cancel()
    assert not sock.exists()


async def test_a_session_that_ended_drops_out_of_status_at_once(tmp_path: Path) -> None:
    # e.g. the peer closed it while its --exec command is still being stopped
    registry = SessionRegistry()
    sock = tmp_path / "peer.sock"
    ended = FakeSession("abc")
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, sock, registry)
        with registry.registered(ended), registry.registered(FakeSession("xyz")):
            ended.close_reason = "peer closed: interrupted by SIGHUP"
            answers = await collect(sock, {"cmd": "status"})
            assert [a["peer_id"] for a in answers] == ["xyz"]
            with pytest.raises(ControlRequestFailed, match="no session with peer"):
                await collect(sock, {"cmd": "ping", "peer": "abc"})
        nursery.cancel_scope.cancel()


async def test_ping_reports_rtt_and_path(tmp_path: Path) -> None:
    registry = SessionRegistry()
    sock = tmp_path / "peer.sock"
    session = FakeSession("abcdef")
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, sock, registry)
        with registry.registered(session):
            answers = await collect(sock, {"cmd": "ping", "peer": "abc", "count": 3, "interval": 0})
        *replies, summary = answers
        assert [a["path"] for a in replies] == ["direct"] * 3
        assert summary == {
            "summary": True,
            "direct": True,
            "address": None,
            "relay": None,
            "not_direct_reason": None,
        }
        assert session.pings == 3
        with pytest.raises(ControlRequestFailed, match="no session with peer"):
            await collect(sock, {"cmd": "ping", "peer": "nobody"})
        nursery.cancel_scope.cancel()


async def test_ping_until_direct_stops_at_the_first_direct_reply(tmp_path: Path) -> None:
    registry = SessionRegistry()
    sock = tmp_path / "peer.sock"
    session = FakeSession("abcdef", "relay")
    real_ping = session.ping

    async def ping(timeout: float) -> tuple[float, str]:
        if session.pings == 2:
            session.path = "direct"  # the session moved after the second reply
        return await real_ping(timeout)

    session.ping = ping  # type: ignore[method-assign]
    request = {"cmd": "ping", "peer": "abc", "count": 10, "interval": 0, "until_direct": True}
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, sock, registry)
        with registry.registered(session):
            *replies, summary = await collect(sock, request)
        nursery.cancel_scope.cancel()
    assert [a["path"] for a in replies] == ["relay", "relay", "direct"]
    assert summary["direct"] is True


async def test_a_bad_ping_request_is_an_error_for_that_request(tmp_path: Path) -> None:
    registry = SessionRegistry()
    sock = tmp_path / "peer.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, sock, registry)
        with registry.registered(FakeSession("abcdef")):
            with pytest.raises(ControlRequestFailed, match="must be numbers"):
                await collect(sock, {"cmd": "ping", "peer": "abc", "count": "many"})
            assert len(await collect(sock, {"cmd": "status"})) == 1  # still serving
        nursery.cancel_scope.cancel()


async def test_status_names_peers_and_ping_finds_them_by_name(tmp_path: Path) -> None:
    registry = SessionRegistry(names={"abcdef": "bob"})
    sock = tmp_path / "peer.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, sock, registry)
        with registry.registered(FakeSession("abcdef")), registry.registered(FakeSession("x")):
            statuses = await collect(sock, {"cmd": "status"})
            answers = await collect(sock, {"cmd": "ping", "peer": "bob", "interval": 0})
        nursery.cancel_scope.cancel()
    assert [(a["peer_id"], a["name"]) for a in statuses] == [("abcdef", "bob"), ("x", None)]
    assert answers[0]["path"] == "direct"


def test_the_registry_keeps_the_counters_of_ended_sessions() -> None:
    registry = SessionRegistry()
    first, second = FakeSession("a"), FakeSession("b")
    first.pings, second.pings = 3, 4
    with registry.registered(first):
        with registry.registered(second):
            assert registry.sessions() == [first, second]
        assert registry.ended_counters().messages_sent == 4
    assert registry.sessions() == []
    assert registry.ended_counters().messages_sent == 7


async def test_unknown_command_is_an_error(tmp_path: Path) -> None:
    sock = tmp_path / "peer.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, sock, SessionRegistry())
        with pytest.raises(ControlRequestFailed, match="unknown command"):
            await collect(sock, {"cmd": "reboot"})
        nursery.cancel_scope.cancel()


async def test_no_running_peer_names_the_socket(tmp_path: Path) -> None:
    sock = tmp_path / "missing.sock"
    with pytest.raises(ControlRequestFailed, match=str(sock)):
        await collect(sock, {"cmd": "status"})


async def test_socket_in_use_is_refused_and_stale_one_replaced(tmp_path: Path) -> None:
    sock = tmp_path / "peer.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, sock, SessionRegistry())
        with pytest.raises(ConfigError, match="in use"):
            await serve_control(sock, SessionRegistry())
        nursery.cancel_scope.cancel()
    sock.write_bytes(b"")  # a stale file left by a crashed peer
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, sock, SessionRegistry())
        assert await collect(sock, {"cmd": "status"}) == []
        nursery.cancel_scope.cancel()


async def test_a_peer_that_loses_the_race_for_the_socket_carries_on_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sock = tmp_path / "peer.sock"
    async with trio.open_nursery() as nursery:
        assert await nursery.start(serve_control, sock, SessionRegistry()) == sock
        # the second peer checked before the first one bound: it sees no socket, then its
        # bind finds the address taken
        monkeypatch.setattr(Path, "exists", lambda self: False)
        assert (
            await nursery.start(partial(serve_control, required=False), sock, SessionRegistry())
            is None
        )
        with pytest.raises(ConfigError, match="in use by another running peer"):
            await serve_control(sock, SessionRegistry())
        monkeypatch.undo()
        assert await collect(sock, {"cmd": "status"}) == []  # the first one still answers
        nursery.cancel_scope.cancel()
    assert "status and ping are unavailable for this process" in caplog.text
