"""Splice a Session to byte streams or to a command, netcat style with half-close (as
`nc -N` or socat): what is read from the source goes to the peer in order, and when the source
ends our direction ends (`Session.send_eof`); what the peer sends is written to the sink, which
is closed when the peer's direction ends.

`pipe_session` returns only when both directions ended: every byte read from the source was
acknowledged by the peer, and the peer's bytes were written. So an exit status of 0 from a
program built on it means nothing was lost, either way.
"""

from __future__ import annotations

import subprocess
from typing import BinaryIO, Final

import trio

from meshcore._session import Session
from meshcore.errors import ClosedByPeer
from meshcore.proto.constants import MAX_MESSAGE_BYTES

__all__ = [
    "COMMAND_STOP_GRACE_S",
    "FileReceiveStream",
    "FileSendStream",
    "pipe_command",
    "pipe_session",
]

_CHUNK: Final = 60 * 1024
COMMAND_STOP_GRACE_S: Final = 1.0
"""A command whose session the peer closed (or that failed) gets this long to exit after
its stdin closed, then SIGTERM and as long again, then SIGKILL."""


class FileReceiveStream(trio.abc.ReceiveStream):
    """A blocking binary file (stdin, a regular file, a pipe) read in a worker thread.

    A cancelled `receive_some` abandons the thread's read: what it returns later is lost.
    `aclose` leaves the file open (it is the caller's).
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = max_bytes or _CHUNK
        read = getattr(self._file, "read1", self._file.read)
        data: bytes = await trio.to_thread.run_sync(read, size, abandon_on_cancel=True)
        return data

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class FileSendStream(trio.abc.SendStream):
    """A blocking binary file (stdout, a regular file, a pipe) written in a worker thread.

    `send_all` is not cancellable while the write runs (it finishes first, so nothing is
    half-written). `aclose` leaves the file open (it is the caller's).
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        def write() -> None:
            self._file.write(data)
            self._file.flush()

        await trio.to_thread.run_sync(write)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


class _CommandInput(trio.abc.SendStream):
    """A command's stdin: once the command closed it (or exited), the rest is dropped, so
    that what the peer still sends cannot block its session."""

    def __init__(self, stream: trio.abc.SendStream) -> None:
        self._stream = stream
        self._gone = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._gone:
            await trio.lowlevel.checkpoint()
            return
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._gone = True

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self._gone = True
        try:
            await self._stream.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


async def pipe_session(
    session: Session,
    source: trio.abc.ReceiveStream | None,
    sink: trio.abc.SendStream | None,
) -> tuple[int, int]:
    """Copy `source` to the peer and the peer to `sink`; returns (bytes sent, bytes received).

    When `source` hits EOF (None: at once) our direction ends (`send_eof`); when the peer's
    direction ends, `sink` is closed (None: the peer's bytes are read and dropped). Returns
    once both directions ended and our bytes were acknowledged, or once the peer closed the
    session after acknowledging all of them.

    Raises `trio.BrokenResourceError` with cause `ClosedByPeer` if the peer closed the
    session before our direction ended and was acknowledged ("peer closed first"), with
    another `SessionClosed` if the session failed. Errors of `source` and `sink` propagate
    as they are (e.g. `BrokenPipeError` from a closed stdout). Cancellation stops both
    directions at once; data sent may then be unacknowledged.
    """
    return await _splice(session, source, sink, sent=None)


async def _splice(
    session: Session,
    source: trio.abc.ReceiveStream | None,
    sink: trio.abc.SendStream | None,
    *,
    sent: trio.Event | None,
) -> tuple[int, int]:
    """`pipe_session`; `sent` is set once our direction ended and was acknowledged."""
    counts = [0, 0]
    failures: list[Exception] = []
    source_done = False

    async with trio.open_nursery() as nursery:

        def fail(exc: Exception) -> None:
            failures.append(exc)
            nursery.cancel_scope.cancel()

        async def outbound() -> None:
            nonlocal source_done
            try:
                if source is not None:
                    while data := await source.receive_some(min(_CHUNK, MAX_MESSAGE_BYTES)):
                        await session.send(bytes(data))
                        counts[0] += len(data)
                source_done = True
                await session.send_eof()
                await session.wait_acknowledged()
            except Exception as exc:
                fail(exc)
                return
            if sent is not None:
                sent.set()

        async def inbound() -> None:
            try:
                while True:
                    try:
                        data = await session.receive()
                    except trio.EndOfChannel:
                        break
                    if sink is not None:
                        await sink.send_all(data)
                    counts[1] += len(data)
                if sink is not None:
                    await sink.aclose()  # the peer's end of stream is the sink's (a stdin)
            except Exception as exc:
                fail(exc)

        async def watch() -> None:
            # the session ending otherwise than by both directions ends the copying at once
            try:
                await session.wait_finished()
            except trio.BrokenResourceError as exc:
                if source_done and isinstance(exc.__cause__, ClosedByPeer):
                    try:  # the peer closing after it acknowledged everything: its way to end
                        await session.wait_acknowledged()
                        return
                    except trio.BrokenResourceError:
                        pass
                fail(exc)
            except Exception as exc:
                fail(exc)

        nursery.start_soon(outbound)
        nursery.start_soon(inbound)
        nursery.start_soon(watch)
    if failures:
        raise failures[0]
    return counts[0], counts[1]


async def pipe_command(
    session: Session, argv: list[str], *, stop_grace_s: float = COMMAND_STOP_GRACE_S
) -> int:
    """Run `argv` with the session on its stdin and stdout; returns its exit status.

    The peer's bytes go to the command's stdin, closed when the peer's direction ends; the
    command's stdout goes to the peer, and our direction ends when it closes. Returns once
    the command exited and its output was acknowledged; if the peer's direction has not
    ended by then, the session is closed ("the command exited with N"): nothing would read
    the rest. If the peer closes the session first, the command's stdin is closed and it
    gets `stop_grace_s` to exit, then SIGTERM and as long again, then SIGKILL.

    Raises `trio.BrokenResourceError` (cause: `SessionClosed`) if the session failed (the
    command is stopped the same way). Cancellation kills the command at once.
    """
    process = await trio.lowlevel.open_process(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdin is not None and process.stdout is not None
    stdin = _CommandInput(process.stdin)
    sent = trio.Event()
    failure: BaseException | None = None
    done = False
    try:
        async with trio.open_nursery() as nursery:

            async def splice() -> None:
                nonlocal failure
                try:
                    await _splice(session, process.stdout, stdin, sent=sent)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    failure = exc
                nursery.cancel_scope.cancel()

            async def reap() -> None:
                code = await process.wait()
                await sent.wait()
                await session.aclose(f"the command exited with {code}")

            nursery.start_soon(splice)
            nursery.start_soon(reap)
        if failure is None:
            await process.wait()  # both directions ended: let it finish its work
        done = True
    finally:
        with trio.CancelScope(shield=True):
            await stdin.aclose()
            await _stop(process, stop_grace_s if done else 0.0)
    if isinstance(failure, trio.BrokenResourceError) and not isinstance(
        failure.__cause__, ClosedByPeer
    ):
        raise failure  # the session failed (the command was stopped)
    code = process.returncode
    assert code is not None
    return code


async def _stop(process: trio.Process, grace_s: float) -> None:
    """Wait up to `grace_s` for `process` to exit, SIGTERM it, wait again, then SIGKILL."""
    if process.returncode is None and grace_s > 0:
        with trio.move_on_after(grace_s):
            await process.wait()
        if process.returncode is None:
            process.terminate()
            with trio.move_on_after(grace_s):
                await process.wait()
    if process.returncode is None:
        process.kill()
    await process.wait()
