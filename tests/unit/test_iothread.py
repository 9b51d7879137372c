"""The data path's thread: handlers run there on readiness, calls run there in order, a
removal waits for a running handler, and a failing handler costs only its descriptor."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable

import pytest
import trio

from meshcore._iothread import IoThread, open_io_thread


def waiter() -> tuple[threading.Event, Callable[[], None]]:
    done = threading.Event()
    return done, done.set


async def wait(event: threading.Event) -> None:
    assert await trio.to_thread.run_sync(event.wait, 5.0), "the thread never got there"


async def test_a_readable_descriptor_runs_its_handler_in_the_thread() -> None:
    a, b = socket.socketpair()
    seen: list[tuple[bytes, bool]] = []
    done = threading.Event()
    async with open_io_thread() as io:

        def readable() -> None:
            seen.append((b.recv(100), io.in_thread()))
            done.set()

        io.register(b.fileno(), readable)
        a.send(b"ping")
        await wait(done)
        io.unregister(b.fileno())
    assert seen == [(b"ping", True)]
    assert not io.in_thread()
    a.close()
    b.close()


async def test_calls_run_in_the_thread_in_order() -> None:
    order: list[int] = []
    done, finished = waiter()
    async with open_io_thread() as io:
        for i in range(100):
            io.call_soon(order.append, i)
        io.call_soon(finished)
        await wait(done)
    assert order == list(range(100))


async def test_writable_is_reported_only_while_asked_for() -> None:
    a, b = socket.socketpair()
    writable = threading.Event()
    calls = []
    async with open_io_thread() as io:

        def on_writable() -> None:
            calls.append(1)
            io.want_writable(a.fileno(), False)
            writable.set()

        io.register(a.fileno(), lambda: None, on_writable)
        io.want_writable(a.fileno(), True)
        await wait(writable)
        ping, pong = waiter()
        io.call_soon(pong)  # one more loop round: no further writable call
        await wait(ping)
        io.unregister(a.fileno())
    assert calls == [1]
    a.close()
    b.close()


async def test_unregister_waits_for_a_running_handler() -> None:
    a, b = socket.socketpair()
    entered, proceed = threading.Event(), threading.Event()
    finished: list[str] = []
    async with open_io_thread() as io:

        def slow() -> None:
            b.recv(100)
            entered.set()
            proceed.wait(5.0)
            finished.append("handler")

        io.register(b.fileno(), slow)
        a.send(b"x")
        await wait(entered)

        def remove() -> None:
            io.unregister(b.fileno())
            finished.append("unregister")

        remover = threading.Thread(target=remove)
        remover.start()
        proceed.set()
        await trio.to_thread.run_sync(remover.join, 5.0)
    assert finished == ["handler", "unregister"]
    a.close()
    b.close()


@pytest.mark.allow_traceback  # a handler's bug is logged with its traceback
async def test_a_failing_handler_loses_its_descriptor_and_the_thread_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    fine, fine_set = waiter()
    async with open_io_thread() as io:

        def broken() -> None:
            b.recv(100)
            raise RuntimeError("bug")

        io.register(b.fileno(), broken)
        io.register(d.fileno(), lambda: (d.recv(100), fine_set()))
        a.send(b"x")
        trio_done, set_done = waiter()
        io.call_soon(set_done)
        await wait(trio_done)
        c.send(b"y")
        await wait(fine)
        a.send(b"again")  # no handler any more: nothing runs, nothing breaks
        again, set_again = waiter()
        io.call_soon(set_again)
        await wait(again)
        io.unregister(d.fileno())
    assert "fd removed" in caplog.text
    for sock in (a, b, c, d):
        sock.close()


async def test_stop_ends_the_thread() -> None:
    io = IoThread()
    io.start()
    await trio.to_thread.run_sync(io.stop)
    assert not io.running


@pytest.mark.parametrize("role", ["bulk", "latency", ""])
async def test_the_thread_tells_the_scheduler_its_role(role: str) -> None:
    seen: list[tuple[int, int]] = []
    done = threading.Event()

    def probe() -> None:
        tid = threading.get_native_id()
        seen.append((os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, tid)))
        done.set()

    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    async with open_io_thread(role=role) as io:
        io.call_soon(probe)
        with trio.fail_after(5):
            await trio.to_thread.run_sync(done.wait)
    policy, nice = seen[0]
    assert policy == (os.SCHED_BATCH if role == "bulk" else os.SCHED_OTHER)
    if role == "latency" and os.geteuid() == 0:
        assert nice == -5  # raised for the thread that serves lone frames
    elif role != "latency":
        assert nice == base
