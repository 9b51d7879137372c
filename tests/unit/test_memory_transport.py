"""memory_transport_pair: an in-memory Transport that keeps the Transport rules."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from meshcore._transport import Transport
from meshcore.errors import TransportClosed
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.packet import PacketType
from meshcore.testing.memory import Direction, LossyNetwork, memory_transport_pair


async def test_messages_cross_both_ways_in_order() -> None:
    a, b = memory_transport_pair()
    for i in range(5):
        await a.send(b"a%d" % i)
        await b.send(b"b%d" % i)
    assert [await b.receive() for _ in range(5)] == [b"a%d" % i for i in range(5)]
    assert [await a.receive() for _ in range(5)] == [b"b%d" % i for i in range(5)]


def test_pair_members_are_transports_with_the_given_addresses() -> None:
    ea, eb = Endpoint("192.0.2.1", 1000), Endpoint("2001:db8::1", 2000)
    a, b = memory_transport_pair(addresses=(ea, eb))
    assert isinstance(a, Transport)
    assert (a.local_address, a.remote_address) == (ea, eb)
    assert (b.local_address, b.remote_address) == (eb, ea)
    assert a.close_reason is None


async def test_remote_close_delivers_queued_messages_then_raises_with_reason() -> None:
    a, b = memory_transport_pair()
    await a.send(b"last words")
    await a.aclose("shutting down")
    assert await b.receive() == b"last words"
    with pytest.raises(TransportClosed, match="shutting down") as info:
        await b.receive()
    assert info.value.reason == "shutting down"
    assert b.close_reason == "shutting down"


async def test_local_close_discards_queued_messages() -> None:
    a, b = memory_transport_pair()
    await b.send(b"never read")
    await a.aclose("done")
    with pytest.raises(TransportClosed, match="done"):
        await a.receive()


@pytest.mark.parametrize("closer", ["a", "b"])
async def test_send_after_either_side_closed_raises_with_the_reason(closer: str) -> None:
    a, b = memory_transport_pair()
    await (a if closer == "a" else b).aclose(f"{closer} left")
    for end in (a, b):
        with pytest.raises(TransportClosed, match=f"{closer} left"):
            await end.send(b"x")


async def test_first_close_reason_wins_and_aclose_is_idempotent() -> None:
    a, b = memory_transport_pair()
    await b.aclose("first")
    await a.aclose("second")
    await a.aclose("third")
    assert a.close_reason == "first"
    assert b.close_reason == "first"


async def test_full_queue_blocks_the_sender_until_the_receiver_reads() -> None:
    a, b = memory_transport_pair(capacity=3)
    sent = 0

    async def sender() -> None:
        nonlocal sent
        for i in range(10):
            await a.send(bytes([i]))
            sent += 1

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            await trio.testing.wait_all_tasks_blocked()
            assert sent == 3
            assert [await b.receive() for _ in range(10)] == [bytes([i]) for i in range(10)]
    assert sent == 10


async def test_blocked_sender_is_released_by_the_receiver_closing() -> None:
    a, b = memory_transport_pair(capacity=1)
    await a.send(b"fills the queue")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def close_when_blocked() -> None:
                await trio.testing.wait_all_tasks_blocked()
                await b.aclose("receiver gone")

            nursery.start_soon(close_when_blocked)
            with pytest.raises(TransportClosed, match="receiver gone"):
                await a.send(b"blocks")


async def test_cancelled_receive_loses_nothing() -> None:
    a, b = memory_transport_pair()
    with trio.move_on_after(0.01):
        await b.receive()
    await a.send(b"kept")
    assert await b.receive() == b"kept"


async def test_oversized_send_is_refused_and_the_transport_stays_open() -> None:
    a, b = memory_transport_pair(max_message=10)
    with pytest.raises(ValueError, match="11 bytes"):
        await a.send(b"x" * 11)
    await a.send(b"x" * 10)
    assert await b.receive() == b"x" * 10


async def test_filter_can_drop_duplicate_and_alter_per_direction() -> None:
    def middle(direction: Direction, data: bytes) -> Iterator[bytes]:
        if direction is Direction.B_TO_A:
            yield data.upper()
        elif data == b"drop":
            return
        elif data == b"twice":
            yield data
            yield data
        else:
            yield data

    a, b = memory_transport_pair(filter=middle)
    for message in (b"drop", b"twice", b"plain"):
        await a.send(message)
    await b.send(b"shout")
    assert [await b.receive() for _ in range(3)] == [b"twice", b"twice", b"plain"]
    assert await a.receive() == b"SHOUT"


async def test_filter_holding_a_message_back_reorders() -> None:
    held: list[bytes] = []

    def swap_pairs(direction: Direction, data: bytes) -> list[bytes]:
        if not held:
            held.append(data)
            return []
        return [data, held.pop()]

    a, b = memory_transport_pair(filter=swap_pairs)
    for message in (b"1", b"2", b"3", b"4"):
        await a.send(message)
    assert [await b.receive() for _ in range(4)] == [b"2", b"1", b"4", b"3"]


@given(
    messages=st.lists(st.binary(max_size=64), max_size=40),
    capacity=st.integers(min_value=1, max_value=8),
)
def test_every_message_arrives_once_and_in_order(messages: list[bytes], capacity: int) -> None:
    async def run() -> list[bytes]:
        a, b = memory_transport_pair(capacity=capacity)
        received: list[bytes] = []

        async def sender() -> None:
            for message in messages:
                await a.send(message)
            await a.aclose("end")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender)
            try:
                while True:
                    received.append(await b.receive())
            except TransportClosed:
                pass
        return received

    assert trio.run(run) == messages


def test_public_api_is_pinned() -> None:
    import meshcore.testing.memory as module

    assert sorted(module.__all__) == [
        "Direction",
        "LossyNetwork",
        "MemoryTransport",
        "MessageFilter",
        "memory_transport_pair",
    ]


# --- LossyNetwork -----------------------------------------------------------------------------

FRAME = bytes([PacketType.FRAME]) + bytes(40)


def frames(n: int) -> list[bytes]:
    return [FRAME + i.to_bytes(4, "big") for i in range(n)]


def test_the_lossy_network_loses_duplicates_and_reorders_frames_by_its_rates() -> None:
    net = LossyNetwork(random.Random(1), loss=0.1, duplicate=0.1, reorder=0.1)
    sent = frames(5000)
    out = [m for frame in sent for m in net(Direction.A_TO_B, frame)]
    assert 400 < net.lost < 600 and 400 < net.duplicated < 600 and 400 < net.reordered < 600
    assert len(out) == len(sent) - net.lost + net.duplicated - (1 if net._held else 0)
    assert out != sorted(out)  # some frame overtook another
    assert set(out) <= set(sent)


def test_the_lossy_network_lets_handshake_messages_through() -> None:
    net = LossyNetwork(random.Random(2), loss=0.9)
    for kind in (PacketType.HANDSHAKE_INIT, PacketType.HANDSHAKE_RESPONSE):
        message = bytes([kind]) + bytes(100)
        assert all(net(Direction.B_TO_A, message) == [message] for _ in range(50))
    assert net.lost == 0


def test_a_held_frame_comes_out_behind_the_next_one_in_its_direction() -> None:
    always = LossyNetwork(random.Random(3), loss=0.0, duplicate=0.0, reorder=0.999)
    first, second, third = frames(3)
    assert always(Direction.A_TO_B, first) == []
    assert always(Direction.B_TO_A, third) == []  # held separately per direction
    assert always(Direction.A_TO_B, second) == [second, first]


def test_the_same_seed_makes_the_same_network() -> None:
    runs = []
    for _ in range(2):
        net = LossyNetwork(random.Random(4))
        runs.append([m for frame in frames(500) for m in net(Direction.A_TO_B, frame)])
    assert runs[0] == runs[1]


@pytest.mark.parametrize(
    "rates", [{"loss": 1.0}, {"reorder": -0.1}, {"loss": 0.5, "duplicate": 0.5}]
)
def test_impossible_rates_are_refused(rates: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        LossyNetwork(random.Random(0), **rates)
