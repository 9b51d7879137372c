"""The relay client's connection is shared by every circuit and request: one sender being
cancelled mid-write must not cut it for all the others (a session's writer is cancelled
whenever its circuit is released)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from meshcore._clientlink import ClientLink as _Link
from meshcore.errors import TransportClosed
from meshcore.testing import memory_transport_pair


class SlowTransport:
    """Stands in for a WebSocket whose write takes a while (or forever)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.written: list[bytes] = []

    async def send(self, data: bytes) -> None:
        await trio.sleep(self.seconds)
        self.written.append(data)

    async def send_many(self, messages: list[bytes]) -> None:
        await trio.sleep(self.seconds)
        self.written += messages


async def test_a_cancelled_sender_still_finishes_its_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    transport = SlowTransport(0.5)
    link = _Link(transport)  # type: ignore[arg-type]
    with trio.move_on_after(0.1) as scope:
        await link.send(b"frame")
        await trio.lowlevel.checkpoint()
    assert scope.cancelled_caught  # the caller was cancelled ...
    assert transport.written == [b"frame"]  # ... after the whole message was written


async def test_a_cancelled_batch_still_finishes_its_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    transport = SlowTransport(0.5)
    link = _Link(transport)  # type: ignore[arg-type]
    with trio.move_on_after(0.1) as scope:
        await link.send_many([b"one", b"two", b"three"])
        await trio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    assert transport.written == [b"one", b"two", b"three"]


async def test_a_write_the_relay_never_takes_is_cut_after_the_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    link = _Link(SlowTransport(3600.0))  # type: ignore[arg-type]
    start = trio.current_time()
    with pytest.raises(TransportClosed, match="took no message"):
        await link.send(b"frame")
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_a_sender_cancelled_while_waiting_for_the_lock_sends_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = memory_transport_pair()
    link = _Link(a)

    async def hold(task_status: trio.TaskStatus[None]) -> None:
        async with link.lock:
            task_status.started()
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        await nursery.start(hold)
        with trio.move_on_after(0.1):
            await link.send(b"never")
    await link.send(b"after")
    assert await b.receive() == b"after"
