"""meshcore.testing.open_session_pair: two real sessions over an in-memory pair, ready for
tests of protocols built on a Session."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

from meshcore import HandshakeError, Identity, SessionSettings
from meshcore.proto.packet import PacketType
from meshcore.testing import Direction, LossyNetwork, open_session_pair


async def test_the_pair_carries_messages_both_ways_between_the_given_peers() -> None:
    alice, bob = Identity.generate(), Identity.generate()
    with trio.fail_after(30):
        async with open_session_pair(identities=(alice, bob)) as (a, b):
            assert a.peer_id == bob.peer_id and b.peer_id == alice.peer_id
            await a.send(b"ping")
            assert await b.receive() == b"ping"
            await b.send(b"pong")
            assert await a.receive() == b"pong"


async def test_over_a_lossy_network_every_message_arrives_once_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    net = LossyNetwork(random.Random(5), loss=0.1, duplicate=0.05, reorder=0.1)
    settings = SessionSettings(dead_after_s=None, retransmit_timeout_s=0.2)
    with trio.fail_after(600):
        async with open_session_pair(filter=net, settings=settings) as (a, b):
            sent = [b"%d" % i for i in range(300)]

            async def send_all() -> None:
                for message in sent:
                    await a.send(message)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_all)  # the receiver reads meanwhile: flow control
                assert [await b.receive() for _ in sent] == sent
    assert net.lost and net.duplicated and net.reordered  # the network did misbehave


async def test_a_handshake_that_cannot_complete_raises_handshake_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def no_replies(direction: Direction, data: bytes) -> list[bytes]:
        return [] if data[0] == PacketType.HANDSHAKE_RESPONSE else [data]

    with pytest.raises(HandshakeError):
        async with open_session_pair(filter=no_replies):
            pytest.fail("no session without a handshake")
