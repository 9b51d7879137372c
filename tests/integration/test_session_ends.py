"""How a Session ends, over in-memory pairs: each direction ends on its own (`send_eof`, trio's
half-close), the session finishes once both ended, a peer's Close ends it at once as "peer
closed", and what each call raises afterwards."""

from __future__ import annotations

import hashlib
import random

import pytest
import trio

from meshcore.errors import ClosedByPeer
from meshcore.proto.session import SessionSettings
from meshcore.testing.memory import LossyNetwork
from meshcore.testing.sessions import open_session_pair

FAST = SessionSettings(retransmit_timeout_s=0.05, keepalive_s=0.5, dead_after_s=5.0)
LIMIT_S = 30


async def read_all(session: trio.abc.ReceiveChannel[bytes]) -> list[bytes]:
    got = []
    async for message in session:
        got.append(message)
    return got


async def test_send_eof_ends_the_peers_direction_and_ours_stays_open() -> None:
    with trio.fail_after(LIMIT_S):
        async with open_session_pair(settings=FAST) as (a, b):
            for i in range(20):
                await a.send(b"%d" % i)
            await a.send_eof()
            await a.send_eof()  # idempotent
            assert await read_all(b) == [b"%d" % i for i in range(20)]
            with pytest.raises(trio.ClosedResourceError, match="send_eof"):
                await a.send(b"too late")
            await b.send(b"the answer")  # b's direction is still open, and a still reads
            assert await a.receive() == b"the answer"
            assert a.close_reason is None and b.close_reason is None


async def test_when_both_directions_ended_the_session_finishes_on_both_sides() -> None:
    with trio.fail_after(LIMIT_S):
        async with open_session_pair(settings=FAST) as (a, b):
            await a.send(b"request")
            await a.send_eof()
            assert await read_all(b) == [b"request"]
            await b.send(b"response")
            await b.send_eof()
            assert await read_all(a) == [b"response"]
            await a.wait_finished()
            await b.wait_finished()
            assert a.finished and b.finished
            assert a.close_reason == b.close_reason == "finished: both directions ended"
            with pytest.raises(trio.EndOfChannel):
                await a.receive()
            start = trio.current_time()
            await a.aclose()  # nothing left to tell the peer: returns at once
            assert trio.current_time() - start < 0.5


@pytest.mark.parametrize("seed", range(4))
async def test_the_end_of_stream_arrives_once_after_everything_over_a_bad_network(
    seed: int,
) -> None:
    network = LossyNetwork(random.Random(seed), loss=0.1, duplicate=0.05, reorder=0.1)
    payloads = [random.Random(seed).randbytes(700) for _ in range(400)]
    with trio.fail_after(LIMIT_S * 2):
        async with open_session_pair(filter=network, settings=FAST) as (a, b):

            async def sender() -> None:
                for payload in payloads:
                    await a.send(payload)
                await a.send_eof()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                got = await read_all(b)
            digest = hashlib.sha256(b"".join(got)).digest()
            assert digest == hashlib.sha256(b"".join(payloads)).digest()
            await b.send_eof()
            await a.wait_finished()
            await b.wait_finished()
    assert network.lost and network.duplicated


async def test_a_peer_that_closes_first_ends_the_session_as_peer_closed() -> None:
    with trio.fail_after(LIMIT_S):
        async with open_session_pair(settings=FAST) as (a, b):
            await b.send(b"bye then")
            await b.aclose("going away")
            assert await read_all(a) == [b"bye then"]  # its last words, then the end
            assert a.close_reason == "peer closed: going away"
            for call in (a.send(b"x"), a.send_eof(), a.wait_finished()):
                with pytest.raises(trio.BrokenResourceError) as info:
                    await call
                assert isinstance(info.value.__cause__, ClosedByPeer)
            assert not a.finished


async def test_what_was_unacknowledged_when_the_peer_closed_is_reported() -> None:
    with trio.fail_after(LIMIT_S):
        async with open_session_pair(settings=FAST) as (a, b):
            await a.send(b"one")
            assert await b.receive() == b"one"
            await b.aclose("not listening")
            with pytest.raises(trio.BrokenResourceError) as info:
                while True:  # sooner or later a send or the wait meets the close
                    await a.send(b"more")
                    await trio.sleep(0.01)
            assert isinstance(info.value.__cause__, ClosedByPeer)


async def test_after_our_own_aclose_calls_raise_closed_resource_error() -> None:
    with trio.fail_after(LIMIT_S):
        async with open_session_pair(settings=FAST) as (a, b):
            await a.aclose()
            for call in (a.send(b"x"), a.send_eof(), a.receive(), a.wait_finished()):
                with pytest.raises(trio.ClosedResourceError):
                    await call
            with pytest.raises(trio.EndOfChannel):
                await b.receive()
