"""A relay killed and restarted on the same port: sessions on a direct path keep working
throughout, a relay-only session re-opens its circuit (or fails with a clear reason once its
dead timer runs out), new sessions work after the restart, and `serve` keeps accepting."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

# the session-pair helpers live with the race tests
from relayharness import Relay, wait_until
from test_direct import ALICE, BOB, SESSION, pair, wait_path

from meshcore import Identity, Session, connect, serve
from meshcore._client import RelayClient
from meshcore._relay import RelayConfig
from meshcore._session import handshake_as_initiator, handshake_as_responder, open_session
from meshcore.errors import SessionClosed
from meshcore.proto.handshake import Responder
from meshcore.proto.session import SessionSettings

RELAY_CONFIG = RelayConfig(port=0, shutdown_grace_s=1.0)


@asynccontextmanager
async def restartable_relay() -> AsyncIterator[Relay]:
    async with trio.open_nursery() as nursery:
        relay = Relay(nursery, shutdown_grace_s=RELAY_CONFIG.shutdown_grace_s)
        await relay.start()
        yield relay
        nursery.cancel_scope.cancel()


async def restart(relay: Relay, *clients: RelayClient) -> None:
    """Stop the relay, wait until every client saw the loss, start it again on the same
    port, and wait until every client registered again."""
    before = [c.registrations for c in clients]
    await relay.stop()
    await wait_until(lambda: all(not c.connected for c in clients))
    await relay.start()
    await wait_until(lambda: all(c.registrations > n for c, n in zip(clients, before, strict=True)))


def ordered_pair() -> tuple[Identity, Identity]:
    """Two fresh identities, the controlling one (lower peer id) first."""
    one, two = Identity.generate(), Identity.generate()
    return (one, two) if one.peer_id.digest < two.peer_id.digest else (two, one)


# --- direct sessions ---------------------------------------------------------------------------


async def test_a_direct_session_keeps_exchanging_messages_while_the_relay_restarts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "meshcore.client")
    count = 4000
    received = {"a": 0, "b": 0}

    async def paced_send(session: Session) -> None:
        for i in range(count):
            await session.send(i.to_bytes(4, "big"))
            await trio.sleep(0.001)  # a steady stream, so that some of it crosses the outage

    async def receive_in_order(session: Session, side: str) -> None:
        for i in range(count):
            got = int.from_bytes(await session.receive(), "big")
            assert got == i, f"{side}: expected message {i}, got {got} (lost or reordered)"
            received[side] = i + 1

    with trio.fail_after(40):
        async with restartable_relay() as relay:
            assert relay.server is not None
            async with pair(relay.server) as (a, b):
                with trio.fail_after(3):
                    await wait_path(a.session, b.session, path="direct")
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(paced_send, a.session)
                    nursery.start_soon(paced_send, b.session)
                    nursery.start_soon(receive_in_order, a.session, "a")
                    nursery.start_soon(receive_in_order, b.session, "b")
                    with trio.fail_after(5):
                        await wait_until(lambda: min(received.values()) > 100)
                        await relay.stop()
                        await wait_until(lambda: not a.client.connected and not b.client.connected)
                        # messages keep arriving while there is no relay at all
                        during = dict(received)
                        await wait_until(lambda: all(received[s] > during[s] + 200 for s in "ab"))
                        assert not a.client.connected and not b.client.connected
                        await relay.start()
                        await wait_until(
                            lambda: a.client.registrations == b.client.registrations == 2
                        )
                assert received == {"a": count, "b": count}
                for side in (a, b):
                    assert side.session.path == "direct"
                    assert side.migrator.fallbacks == 0 and side.migrator.migrations == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("relay connection lost: ") and "reconnecting in" in m for m in messages)
    assert any(m.startswith("reconnected to relay") for m in messages)


async def test_the_same_peers_open_a_new_session_after_the_restart() -> None:
    with trio.fail_after(30):
        async with restartable_relay() as relay:
            assert relay.server is not None
            async with pair(relay.server) as (a, b):
                with trio.fail_after(3):
                    await wait_path(a.session, b.session, path="direct")
                with trio.fail_after(10):
                    await restart(relay, a.client, b.client)
                # a second session on the same clients, while the first one lives on
                results: dict[str, Session] = {}
                responder = Responder(BOB, {ALICE.peer_id: ALICE.public}.get)

                async def answer(task_status: trio.TaskStatus[None]) -> None:
                    task_status.started()
                    invitation = await b.client.next_invitation()
                    pairing = await b.client.accept(invitation)
                    result = await handshake_as_responder(pairing.circuit, responder)
                    async with open_session(pairing.circuit, result, settings=SESSION) as s:
                        assert await s.receive() == b"second session"
                        await s.send(b"answered")
                        with pytest.raises(trio.EndOfChannel):  # the initiator closes it
                            await s.receive()

                with trio.fail_after(10):
                    async with trio.open_nursery() as nursery:
                        await nursery.start(answer)
                        pairing = await a.client.connect(BOB.peer_id)
                        result = await handshake_as_initiator(pairing.circuit, ALICE, pairing.peer)
                        async with open_session(pairing.circuit, result, settings=SESSION) as s:
                            results["new"] = s
                            await s.send(b"second session")
                            assert await s.receive() == b"answered"
                # and the first session still carries traffic both ways
                with trio.fail_after(5):
                    await a.session.send(b"first session")
                    assert await b.session.receive() == b"first session"
                    await b.session.send(b"still here")
                    assert await a.session.receive() == b"still here"


# --- relay-only sessions -----------------------------------------------------------------------


@pytest.mark.parametrize("initiator_controls", [True, False], ids=["initiator", "responder"])
async def test_a_relay_only_session_reopens_its_circuit_after_the_restart(
    initiator_controls: bool,
) -> None:
    low, high = ordered_pair()
    dialer, server = (low, high) if initiator_controls else (high, low)
    sent_during_outage = 20

    async def echo(session: Session) -> None:
        while True:
            try:
                message = await session.receive()
            except trio.EndOfChannel:
                return
            await session.send(message)

    with trio.fail_after(40):
        async with restartable_relay() as relay, trio.open_nursery() as nursery:
            serving: RelayClient = await nursery.start(
                functools.partial(
                    serve, relay.url, server, [dialer.peer_id], echo, direct="never",
                    settings=SESSION,
                )
            )  # fmt: skip
            async with connect(
                relay.url, dialer, server.peer_id, direct="never", settings=SESSION
            ) as session:
                with trio.fail_after(5):
                    await session.send(b"before")
                    assert await session.receive() == b"before"
                await relay.stop()
                # sent while there is no relay: they wait in the retransmit buffer
                for i in range(sent_during_outage):
                    await session.send(i.to_bytes(4, "big"))
                with trio.fail_after(10):
                    await wait_until(lambda: not serving.connected)
                    await relay.start()
                    for i in range(sent_during_outage):
                        assert await session.receive() == i.to_bytes(4, "big")
                    await session.send(b"after")
                    assert await session.receive() == b"after"
                assert session.path == "relay" and session.close_reason is None
                assert serving.registrations == 2
            nursery.cancel_scope.cancel()


async def test_a_relay_only_session_fails_with_a_clear_reason_once_its_dead_timer_runs_out() -> (
    None
):
    low, high = ordered_pair()
    quick = SessionSettings(retransmit_timeout_s=0.2, keepalive_s=0.2, dead_after_s=1.5)
    handler_failed: list[str] = []

    async def hold(session: Session) -> None:
        await session.send(await session.receive())  # up on both sides
        try:
            await session.receive()
        except trio.BrokenResourceError as exc:
            handler_failed.append(str(exc))

    with trio.fail_after(30):
        async with restartable_relay() as relay, trio.open_nursery() as nursery:
            await nursery.start(
                functools.partial(
                    serve, relay.url, high, [low.peer_id], hold, direct="never", settings=quick
                )
            )
            async with connect(
                relay.url, low, high.peer_id, direct="never", settings=quick
            ) as session:
                with trio.fail_after(5):
                    await session.send(b"up")
                    assert await session.receive() == b"up"
                await relay.stop()  # and it stays away
                with trio.fail_after(5), pytest.raises(trio.BrokenResourceError) as caught:
                    await session.receive()
                cause = caught.value.__cause__
                assert isinstance(cause, SessionClosed)
                assert "no authenticated frame from the peer for 1.5 s" in cause.reason
                assert "relay circuit was lost and not re-opened in time" in cause.reason
                with trio.fail_after(5):  # the other side ends the same way
                    await wait_until(lambda: bool(handler_failed))
                assert "not re-opened in time" in handler_failed[0]
            nursery.cancel_scope.cancel()


# --- serve() and new sessions -------------------------------------------------------------------


async def test_serve_keeps_accepting_new_sessions_after_the_restart() -> None:
    carol, dave = Identity.generate(), Identity.generate()
    handled: list[bytes] = []

    async def handler(session: Session) -> None:
        message = await session.receive()
        handled.append(message)
        await session.send(b"ok " + message)
        await session.wait_acknowledged()

    with trio.fail_after(40):
        async with restartable_relay() as relay, trio.open_nursery() as nursery:
            serving: RelayClient = await nursery.start(
                functools.partial(serve, relay.url, carol, [dave.peer_id], handler)
            )
            for attempt in (b"before the restart", b"after the restart"):
                with trio.fail_after(10):
                    async with connect(relay.url, dave, carol.peer_id) as session:
                        await session.send(attempt)
                        assert await session.receive() == b"ok " + attempt
                if attempt == b"before the restart":
                    with trio.fail_after(10):
                        await restart(relay, serving)
            assert handled == [b"before the restart", b"after the restart"]
            assert serving.close_reason is None and serving.registrations == 2
            nursery.cancel_scope.cancel()
