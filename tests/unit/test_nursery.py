"""open_hidden_nursery: one meaningful exception out, never a group, never a lost Cancelled."""

from __future__ import annotations

import threading

import pytest
import trio
import trio.testing

from meshcore._nursery import collapse_exception_group, open_hidden_nursery
from meshcore.errors import MeshError, TransportClosed


async def _fail_soon(exc: BaseException) -> None:
    await trio.sleep(0)
    raise exc


async def test_user_error_in_body_is_raised_alone_and_background_is_cancelled() -> None:
    background_cancelled = trio.Event()

    async def background() -> None:
        try:
            await trio.sleep_forever()
        finally:
            background_cancelled.set()

    with pytest.raises(ValueError, match="user mistake") as info:
        async with open_hidden_nursery() as nursery:
            nursery.start_soon(background)
            await trio.sleep(0)
            raise ValueError("user mistake")
    assert not isinstance(info.value, BaseExceptionGroup)
    assert background_cancelled.is_set()


async def test_outer_cancel_propagates_as_cancelled_and_is_not_swallowed() -> None:
    after_block = False
    with trio.CancelScope() as scope:
        async with open_hidden_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            scope.cancel()
            await trio.sleep_forever()
        after_block = True  # must not run: the Cancelled goes through the block
    assert scope.cancelled_caught
    assert not after_block


async def test_outer_cancel_while_body_is_finishing_still_propagates() -> None:
    after_block = False
    with trio.CancelScope() as scope:
        async with open_hidden_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            scope.cancel()
            # The body ends normally, but the background task only stops by cancellation,
            # which the outer scope asked for: it must stay visible.
        after_block = True
    assert scope.cancelled_caught
    assert not after_block


async def test_background_tasks_serve_the_body_while_it_shuts_down_after_an_outer_cancel() -> None:
    # a body that says goodbye on its way out (a session's Close) needs the task that sends
    send, receive = trio.open_memory_channel[str](1)
    sent: list[str] = []
    after_block = False

    async def writer() -> None:
        async for message in receive:
            sent.append(message)

    with trio.CancelScope() as scope:
        async with open_hidden_nursery() as nursery:
            nursery.start_soon(writer)
            scope.cancel()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True), trio.fail_after(1):
                    await send.send("goodbye")
                    await trio.testing.wait_all_tasks_blocked()
        after_block = True
    assert sent == ["goodbye"]
    assert scope.cancelled_caught
    assert not after_block


async def test_background_crash_cancels_body_and_raises_the_mesh_error_alone() -> None:
    body_cancelled = False
    with pytest.raises(TransportClosed, match="peer vanished") as info:
        async with open_hidden_nursery() as nursery:
            nursery.start_soon(_fail_soon, TransportClosed("peer vanished"))
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                body_cancelled = True
                raise
    assert body_cancelled
    assert not isinstance(info.value, BaseExceptionGroup)
    assert info.value.__context__ is None


async def test_keyboard_interrupt_in_background_is_raised_as_keyboard_interrupt() -> None:
    with pytest.raises(KeyboardInterrupt):
        async with open_hidden_nursery() as nursery:
            nursery.start_soon(_fail_soon, KeyboardInterrupt())
            await trio.sleep_forever()


async def test_keyboard_interrupt_wins_over_a_user_error() -> None:
    async def interrupt_then_wait() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        async with open_hidden_nursery() as nursery:
            nursery.start_soon(interrupt_then_wait)
            try:
                await trio.sleep_forever()
            except trio.Cancelled:
                raise ValueError("raised while being cancelled") from None


async def test_body_ending_normally_cancels_background_tasks() -> None:
    async with open_hidden_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)
    # Reaching here (bounded by the test's own timeout) means the task was cancelled.


async def test_user_error_wins_and_background_failure_is_kept_in_a_note() -> None:
    async def crash_when_cancelled() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise RuntimeError("cleanup failed")

    with pytest.raises(ValueError, match="user mistake") as info:
        async with open_hidden_nursery() as nursery:
            nursery.start_soon(crash_when_cancelled)
            await trio.sleep(0)
            raise ValueError("user mistake")
    assert any("cleanup failed" in note for note in info.value.__notes__)


async def test_a_group_raised_by_the_body_stays_whole() -> None:
    own = ExceptionGroup("mine", [ValueError("a"), KeyError("b")])
    with pytest.raises(ExceptionGroup) as info:
        async with open_hidden_nursery():
            raise own
    assert info.value is own


def test_mesh_error_is_preferred_among_background_failures() -> None:
    mesh = MeshError("meaningful")
    group = BaseExceptionGroup("g", [RuntimeError("noise"), trio.Cancelled._create(), mesh])
    assert collapse_exception_group(group) is mesh


def test_only_cancellations_collapse_to_one_cancelled() -> None:
    group = BaseExceptionGroup("g", [trio.Cancelled._create(), trio.Cancelled._create()])
    assert isinstance(collapse_exception_group(group), trio.Cancelled)


def test_public_api_is_pinned() -> None:
    import meshcore._nursery as module

    assert sorted(module.__all__) == ["collapse_exception_group", "open_hidden_nursery"]


def test_a_cancellation_that_comes_while_it_opens_does_not_hang_it() -> None:
    # the hidden tasks' host is shielded; cancelled before it started, it must not be
    # (a signal arriving while a relay client or a tunnel was starting hung the process)
    async def open_cancelled() -> bool:
        with trio.CancelScope() as scope:
            scope.cancel()
            async with open_hidden_nursery():
                await trio.sleep_forever()
        return scope.cancelled_caught

    results: list[bool] = []
    runner = threading.Thread(target=lambda: results.append(trio.run(open_cancelled)))
    runner.daemon = True  # a hung run must not hang the test run as well
    runner.start()
    runner.join(10)
    assert results == [True]
