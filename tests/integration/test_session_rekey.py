"""Rekey every 120 s inside a live session (MockClock: minutes pass instantly)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshcore._session import handshake_as_initiator, handshake_as_responder, open_session
from meshcore.proto.constants import REJECT_AFTER_S, REKEY_AFTER_S
from meshcore.proto.handshake import Responder
from meshcore.proto.identity import Identity
from meshcore.proto.session import SessionSettings
from meshcore.testing.memory import memory_transport_pair

ALICE = Identity.generate()
BOB = Identity.generate()


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0)


async def test_session_rekeys_in_the_background_and_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ta, tb = memory_transport_pair(256)
    responder = Responder(BOB, {ALICE.peer_id: ALICE.public}.get)
    results = {}

    async def run_b() -> None:
        results["b"] = await handshake_as_responder(tb, responder)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_b)
        results["a"] = await handshake_as_initiator(ta, ALICE, BOB.public)
    settings = SessionSettings(keepalive_s=3.0, dead_after_s=15.0)
    minutes = 7
    async with (
        open_session(ta, results["a"], settings=settings, identity=ALICE) as a,
        open_session(tb, results["b"], settings=settings, responder=responder) as b,
    ):
        first_keys = (a._core.keys.send_key, b._core.keys.send_key)
        for second in range(minutes * 60):
            await a.send(second.to_bytes(4, "big"))
            await b.send(second.to_bytes(4, "big"))
            with trio.fail_after(5):
                assert await b.receive() == second.to_bytes(4, "big")
                assert await a.receive() == second.to_bytes(4, "big")
            await trio.sleep(1.0)
        # one rekey per REKEY_AFTER_S, and never a key used past REJECT_AFTER_S
        assert a._core.rekeys >= (minutes * 60) // int(REKEY_AFTER_S) - 1
        assert b._core.rekeys == a._core.rekeys
        assert (a._core.keys.send_key, b._core.keys.send_key) != first_keys
        now = trio.current_time()
        for session in (a, b):
            send_key = session._core.keys.send_key
            assert send_key is not None and now - send_key.created_at < REJECT_AFTER_S


async def test_without_rekeying_the_keys_expire_and_the_session_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ta, tb = memory_transport_pair(256)
    responder = Responder(BOB, {ALICE.peer_id: ALICE.public}.get)
    results = {}

    async def run_b() -> None:
        results["b"] = await handshake_as_responder(tb, responder)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_b)
        results["a"] = await handshake_as_initiator(ta, ALICE, BOB.public)
    async with (
        open_session(ta, results["a"]) as a,
        open_session(tb, results["b"]) as b,
    ):
        await trio.sleep(REJECT_AFTER_S + 1)
        with pytest.raises(trio.BrokenResourceError):
            await a.send(b"too late")
        assert b is not None
