"""Direct connections served by the data path's thread (`ThreadedLink`), and sessions driven
from it (`attach_receiver`, `send_nowait`): on loopback, with the real relay and migrator,
messages still arrive exactly once and in order across forced fallbacks."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import trio
from test_direct import PATHS, Side, pair, running_relay, wait_path
from test_migrator import Stream

from meshcore._iothread import IoThread, open_io_thread
from meshcore._threadlink import ThreadedLink

FAST = attrs.evolve(
    PATHS, race_deadline_s=2.0, retry_s=0.05, retry_max_s=0.1, stable_s=0.01, retry_jitter=0.1
)


@asynccontextmanager
async def threaded_pair() -> AsyncIterator[tuple[Side, Side, IoThread, IoThread]]:
    """A session pair whose direct connections are each side's data thread's."""
    async with (
        open_io_thread("test-a") as io_a,
        open_io_thread("test-b") as io_b,
        running_relay() as relay,
        pair(relay, paths=FAST, io=(io_a, io_b)) as (a, b),
    ):
        yield a, b, io_a, io_b


async def wait_threaded_direct(a: Side, b: Side) -> None:
    await wait_path(a.session, b.session, path="direct")
    for side in (a, b):
        assert isinstance(side.migrator.direct_link, ThreadedLink)


async def test_messages_cross_threaded_links_exactly_once_across_fallbacks() -> None:
    each_way = 20_000
    to_b, to_a = Stream(3, each_way), Stream(4, each_way)
    kills = 0
    with trio.fail_after(90):
        async with threaded_pair() as (a, b, _, _):

            async def chaos() -> None:
                nonlocal kills
                while kills < 6:
                    with trio.fail_after(10):
                        await wait_threaded_direct(a, b)
                    goal = min(to_b.received + 1000, each_way)
                    while to_b.received < goal:
                        await trio.sleep(0.001)
                    if (a, b)[kills % 2].migrator.abort_direct("killed by the test"):
                        kills += 1
                    with trio.fail_after(10):
                        while a.migrator.fallbacks < kills or b.migrator.fallbacks < kills:
                            await trio.sleep(0.001)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(to_b.send, a.session)
                nursery.start_soon(to_a.send, b.session)
                nursery.start_soon(to_b.receive, b.session)
                nursery.start_soon(to_a.receive, a.session)
                await chaos()
    assert kills == 6
    assert to_b.got_hash.digest() == to_b.sent_hash.digest()
    assert to_a.got_hash.digest() == to_a.sent_hash.digest()


class Collector:
    """A receiver for `attach_receiver`: records each message and the thread it came in."""

    def __init__(self, io: IoThread) -> None:
        self.io = io
        self.messages: list[bytes] = []
        self.in_io_thread = 0
        self.window_opened = 0
        self.arrived = threading.Event()
        self.expected = 0

    def deliver(self, payload: bytes) -> None:
        self.messages.append(payload)
        self.in_io_thread += self.io.in_thread()
        if len(self.messages) >= self.expected:
            self.arrived.set()

    def window_open(self) -> None:
        self.window_opened += 1


async def test_a_receiver_gets_every_message_in_order_in_the_data_thread() -> None:
    count = 5000
    with trio.fail_after(60):
        async with threaded_pair() as (a, b, _, io_b):
            await wait_threaded_direct(a, b)
            collector = Collector(io_b)
            collector.expected = count
            b.session.attach_receiver(collector.deliver, collector.window_open)
            for i in range(count):
                await a.session.send(i.to_bytes(4, "big"))
            assert await trio.to_thread.run_sync(collector.arrived.wait, 30.0)
            b.session.detach_receiver()
            sent, received = a.session.counters(), b.session.counters()
    # the threaded links count what they carry like the others (the metrics read it)
    assert sent.direct_frames_sent >= count and received.direct_frames_received >= count
    assert sent.direct_bytes_sent >= count * 4 and received.direct_bytes_received > 0
    assert [int.from_bytes(m, "big") for m in collector.messages] == list(range(count))
    assert collector.in_io_thread == count  # all of it came over the direct path's thread


async def test_send_nowait_fills_the_window_and_window_open_says_when_to_go_on() -> None:
    count = 2000
    message = bytes(16 * 1024)
    with trio.fail_after(60):
        async with threaded_pair() as (a, b, io_a, io_b):
            await wait_threaded_direct(a, b)
            got = Collector(io_b)
            got.expected = count
            b.session.attach_receiver(got.deliver, got.window_open)
            token = trio.lowlevel.current_trio_token()
            room = trio.Event()
            sender = Collector(io_a)

            def window_open() -> None:
                sender.window_open()
                token.run_sync_soon(room.set)

            a.session.attach_receiver(sender.deliver, window_open)
            sent = refused = 0
            while sent < count:
                if a.session.send_nowait(message):
                    sent += 1
                    continue
                refused += 1
                await room.wait()
                room = trio.Event()
            assert await trio.to_thread.run_sync(got.arrived.wait, 30.0)
    assert len(got.messages) == count
    assert refused > 0 and sender.window_opened >= refused  # the window did fill, and reopen


class TimerSteps(trio.abc.Instrument):
    """Counts the steps of the sessions' timer tasks (how often trio wakes for them)."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += task.name.endswith("._run_timers")


async def test_an_idle_session_driven_from_its_thread_does_not_poll_trio() -> None:
    with trio.fail_after(60):
        async with threaded_pair() as (a, b, _, io_b):
            await wait_threaded_direct(a, b)
            got = Collector(io_b)
            got.expected = 100
            b.session.attach_receiver(got.deliver, got.window_open)
            for i in range(100):  # driven from b's data thread: its timer polls meanwhile
                await a.session.send(i.to_bytes(4, "big"))
            assert await trio.to_thread.run_sync(got.arrived.wait, 30.0)
            await trio.sleep(0.1)  # the last poll after the traffic
            steps = TimerSteps()
            trio.lowlevel.add_instrument(steps)
            try:
                await trio.sleep(1.0)  # idle: a 20 ms poll would step both timers 100 times
            finally:
                trio.lowlevel.remove_instrument(steps)
            b.session.detach_receiver()
    assert steps.steps <= 10  # only the sessions' own deadlines (heartbeats, probes)
