"""Splice a Session to byte streams, netcat style: what is read from the source goes to the
peer in order, what the peer sends is written to the sink.

`pipe_session` returns only when the source ended, every byte of it was acknowledged by the
peer, and the peer's data was written (or the peer closed); so an exit status of 0 from a
program built on it means nothing was lost.
"""

from __future__ import annotations

from typing import BinaryIO

import trio

from meshcore._session import Session
from meshcore.proto.constants import MAX_MESSAGE_BYTES

__all__ = ["FileReceiveStream", "FileSendStream", "pipe_command", "pipe_session"]

_CHUNK = 60 * 1024


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


async def _source_to_session(source: trio.abc.ReceiveStream, session: Session) -> int:
    sent = 0
    while True:
        data = await source.receive_some(min(_CHUNK, MAX_MESSAGE_BYTES))
        if not data:
            break
        await session.send(bytes(data))
        sent += len(data)
    await session.wait_acknowledged()
    return sent


async def _session_to_sink(session: Session, sink: trio.abc.SendStream) -> int:
    received = 0
    while True:
        try:
            data = await session.receive()
        except trio.EndOfChannel:
            break
        await sink.send_all(data)
        received += len(data)
    await sink.aclose()  # the peer's EOF becomes the sink's EOF (a command's stdin)
    return received


async def pipe_session(
    session: Session,
    source: trio.abc.ReceiveStream | None,
    sink: trio.abc.SendStream | None,
    *,
    wait_for_peer: bool = False,
) -> tuple[int, int]:
    """Copy `source` to the peer and the peer to `sink`; returns (bytes sent, bytes received).

    Returns once the source hit EOF and the peer acknowledged all of it (unless
    `wait_for_peer`, which also waits for the peer to close), or once the peer closed when
    there is no source. Raises `trio.BrokenResourceError` (cause: `SessionClosed`) if the
    session fails first. Cancellation stops both directions at once; data sent may then be
    unacknowledged.
    """
    results = [0, 0]

    async def outbound(done: trio.CancelScope) -> None:
        assert source is not None
        results[0] = await _source_to_session(source, session)
        if not wait_for_peer:
            done.cancel()

    async def inbound(done: trio.CancelScope) -> None:
        if sink is None:
            while True:
                await session.receive()
        results[1] = await _session_to_sink(session, sink)
        if source is None or wait_for_peer:
            done.cancel()

    async with trio.open_nursery() as nursery:
        if source is not None:
            nursery.start_soon(outbound, nursery.cancel_scope)
        nursery.start_soon(inbound, nursery.cancel_scope)
    return results[0], results[1]


async def pipe_command(session: Session, argv: list[str]) -> int:
    """Run `argv` with the session on its stdin and stdout; returns its exit status.

    The peer's data goes to the command's stdin (closed when the peer closes); the
    command's stdout goes to the peer, and this returns once it ended, was acknowledged,
    and the command exited. Cancellation kills the command.
    """
    process = await trio.lowlevel.open_process(argv, stdin=-1, stdout=-1)
    finished = False
    try:
        assert process.stdin is not None and process.stdout is not None
        await pipe_session(session, process.stdout, process.stdin)
        finished = True
    finally:
        with trio.CancelScope(shield=True):
            if not finished and process.returncode is None:
                process.kill()
            code = await process.wait()
    return code
