"""A direct connection served by the data path's thread (`ThreadedLink`): its frames are read
and handed to the session, and written, in the `IoThread`, never waiting for trio; trio only
starts it, and hears when it ends (docs/tap.md, docs/direct.md).

Writes go out at once from the thread that routes the frame (a non-blocking `sendmsg` of the
length prefix and the frame, no copy); what the socket does not take waits in the link's
bounded queue until the `IoThread` sees the socket writable. Reads fill one buffer; every
complete frame in it goes to the session in one batch.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import Final

import trio

from meshcore import _trace
from meshcore._direct import FramedTransport
from meshcore._iothread import IoThread
from meshcore._link import LINK_QUEUE_BYTES, Link, LinkTraffic
from meshcore.proto import constants as C
from meshcore.proto.constants import MAX_FRAME_BYTES
from meshcore.proto.framing import MIN_FRAME_BYTES

__all__ = ["ThreadedLink"]

_LENGTH: Final = struct.Struct(">I")
_READ_BYTES: Final = 512 * 1024
_BUFFER_BYTES: Final = _READ_BYTES + 4 + MAX_FRAME_BYTES
_SENDMSG_PARTS: Final = 512
"""Buffers handed to one sendmsg (the kernel takes at most IOV_MAX = 1024)."""


class ThreadedLink(Link):
    """A `Link` over a `FramedTransport` whose I/O runs in an `IoThread`.

    `push` may be called from any thread (the session calls it under its lock). The reader
    and writer that `Session.run_link` runs only register the socket with the thread and
    wait for the connection to end; cancelling them removes it from the thread (at once:
    no handler of it runs after that) and leaves the transport to its owner.
    """

    __slots__ = (
        "_buffer",
        "_end",
        "_failed",
        "_fd",
        "_flushed",
        "_frames",
        "_io",
        "_out",
        "_out_bytes",
        "_start",
        "_token",
        "_wlock",
        "_writable_wanted",
        "sock",
    )

    def __init__(
        self,
        transport: FramedTransport,
        kind: str,
        io: IoThread,
        traffic: LinkTraffic | None = None,
    ) -> None:
        super().__init__(transport, kind, traffic)
        self._io = io
        self._token = trio.lowlevel.current_trio_token()
        fileno = transport.stream.socket.fileno()
        self.sock = socket.socket(fileno=os.dup(fileno))
        """Our own descriptor of the connection (the transport keeps and closes its own)."""
        self._fd = self.sock.fileno()
        self._wlock = threading.Lock()
        self._out: deque[bytes | memoryview] = deque()
        self._out_bytes = 0
        self._writable_wanted = False
        self._failed: str | None = None
        self._flushed = trio.Event()
        self._flushed.set()
        self._buffer = bytearray(_BUFFER_BYTES)
        self._start = self._end = 0
        self._frames: Callable[[Link, list[bytes]], None] | None = None
        leftover = transport.take_buffered()
        self._buffer[: len(leftover)] = leftover
        self._end = len(leftover)
        transport.on_close(self._fail)  # closed by its owner: let go of the connection

    # ----------------------------------------------------------------- any thread
    def push(self, frame: bytes) -> None:
        """Send `frame` now, or queue it while the socket is full (never blocks)."""
        with self._wlock:
            if self.closed or self._failed is not None:
                return
            if (
                len(self._out) >= 2 * C.DIRECT_LINK_QUEUE_FRAMES
                or self._out_bytes + len(frame) > LINK_QUEUE_BYTES
            ):
                self.dropped += 1
                self.traffic.dropped += 1
                return
            self._out.append(_LENGTH.pack(len(frame)))
            self._out.append(frame)
            self._out_bytes += 4 + len(frame)
            sent = self._sent
            sent[0] += 1
            sent[1] += len(frame)
            if self._writable_wanted:
                return  # the socket is full: the thread writes once it drains
            self._flush()
            written = not self._out
        if _trace.ENABLED and written:
            _trace.mark("link.take", frame)
            _trace.mark("sock.sent", frame)

    def _flush(self) -> None:
        """Write what is queued until done or the socket is full (caller holds _wlock)."""
        out, sendmsg = self._out, self.sock.sendmsg
        while out:
            parts = list(out) if len(out) <= _SENDMSG_PARTS else [out[i] for i in range(512)]
            try:
                sent = sendmsg(parts)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._fail(f"direct connection lost: {(exc.strerror or str(exc)).lower()}")
                out.clear()
                self._out_bytes = 0
                return
            self._out_bytes -= sent
            while sent:
                head = out[0]
                if len(head) <= sent:
                    sent -= len(head)
                    out.popleft()
                else:
                    out[0] = memoryview(head)[sent:]
                    sent = 0
        wanted = bool(out)
        if wanted != self._writable_wanted:
            self._writable_wanted = wanted
            self._io.want_writable(self._fd, wanted)
        if not out and not self._flushed.is_set():
            self._call_trio(self._flushed.set)

    def _fail(self, reason: str) -> None:
        """The connection is over (any thread): the reader tells the session, in trio."""
        if self._failed is None:
            self._failed = reason
            self._call_trio(self._wake.set)

    def _call_trio(self, fn: Callable[[], object]) -> None:
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            pass

    # ----------------------------------------------------------------- the I/O thread
    def _on_writable(self) -> None:
        with self._wlock:
            self._flush()

    def _on_readable(self) -> None:
        buffer, end = self._buffer, self._end
        try:
            got = self.sock.recv_into(memoryview(buffer)[end:], _READ_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(f"direct connection lost: {(exc.strerror or str(exc)).lower()}")
            self._io.unregister(self._fd)
            return
        if not got:
            self._fail("direct connection closed by the peer")
            self._io.unregister(self._fd)
            return
        self._end = end + got
        frames = self._take_frames()
        if frames is None:
            self._io.unregister(self._fd)
            return
        if frames:
            self._hand(frames)

    def _hand(self, frames: list[bytes]) -> None:
        """Count the frames read and give them to the session (in the I/O thread)."""
        if self._frames is None:
            return
        received = self._received
        received[0] += len(frames)
        received[1] += sum(map(len, frames))
        if _trace.ENABLED:
            for frame in frames:
                _trace.mark("sock.read", frame)
        self._frames(self, frames)

    def _take_frames(self) -> list[bytes] | None:
        """Every complete frame buffered (None: the peer broke the framing)."""
        buffer, start, end = self._buffer, self._start, self._end
        frames: list[bytes] = []
        unpack = _LENGTH.unpack_from
        while end - start >= 4:
            (size,) = unpack(buffer, start)
            if not MIN_FRAME_BYTES <= size <= MAX_FRAME_BYTES:
                self._fail(
                    f"protocol error on the direct connection: frame length {size} is "
                    f"outside {MIN_FRAME_BYTES}..{MAX_FRAME_BYTES}"
                )
                return None
            if end - start - 4 < size:
                break
            frames.append(bytes(buffer[start + 4 : start + 4 + size]))
            start += 4 + size
        if start == end:
            start = end = 0
        elif len(buffer) - end < _READ_BYTES:  # make room: move the partial frame to the front
            buffer[: end - start] = buffer[start:end]
            start, end = 0, end - start
        self._start, self._end = start, end
        return frames

    # ----------------------------------------------------------------- trio
    async def drain(self) -> None:
        """Wait until everything queued has been written (or the link failed or closed)."""
        while True:
            with self._wlock:
                if not self._out or self.closed or self._failed is not None:
                    return
                if self._flushed.is_set():
                    self._flushed = trio.Event()
                flushed = self._flushed
            await flushed.wait()

    async def run_writer(self, closed: Callable[[Link, str], None]) -> None:
        """The thread writes; this only waits (cancel it with the reader)."""
        await trio.sleep_forever()

    async def run_reader(
        self,
        frames: Callable[[Link, list[bytes]], None],
        closed: Callable[[Link, str], None],
    ) -> None:
        """Have the thread read the connection, handing every batch to `frames(self, batch)`
        (in the thread), until it fails: then `closed(self, reason)` (in trio)."""
        self._frames = frames
        io, fd = self._io, self._fd
        try:
            if self._end:  # bytes the transport had read already
                io.call_soon(self._on_buffered)
            io.register(fd, self._on_readable, self._on_writable)
            with self._wlock:
                if self._out:
                    self._writable_wanted = True
                    io.want_writable(fd, True)
            while self._failed is None:
                await self._wake.wait()
                self._wake = trio.Event()
            closed(self, self._failed)
            with trio.CancelScope(shield=True):
                await self.transport.aclose(self._failed)
        finally:
            with self._wlock:
                self.closed = True
                self._out.clear()
                self._out_bytes = 0
            io.unregister(fd)
            self._frames = None
            self.sock.close()
            self._flushed.set()

    def _on_buffered(self) -> None:
        frames = self._take_frames()
        if frames:
            self._hand(frames)
