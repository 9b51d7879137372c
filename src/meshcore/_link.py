"""One transport carrying a session's frames (`Link`): its own bounded send queue and writer
task, and a reader that hands each batch to the session, so that a slow or dead path never
holds up another (docs/direct.md).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio

from meshcore import _trace
from meshcore._transport import Transport
from meshcore.errors import TransportClosed
from meshcore.proto import constants as C

__all__ = ["LINK_QUEUE_BYTES", "Link"]

LINK_QUEUE_BYTES = 8 * 1024 * 1024
"""Bytes queued for one link of a session (with `DIRECT_LINK_QUEUE_FRAMES`): a stalled
writer costs at most this much memory before the link drops like a lossy one."""


class Link:
    """One transport carrying a session's frames, with its own send queue and writer task,
    so that a slow or dead path never holds up another (docs/direct.md).

    The queue is bounded (`DIRECT_LINK_QUEUE_FRAMES`, `LINK_QUEUE_BYTES`); beyond it frames
    are dropped like on a lossy link, and the session retransmits them. The writer hands the
    transport whole batches (`Transport.send_many`: one write on the direct path).
    """

    __slots__ = (
        "_drained",
        "_queue",
        "_queued_bytes",
        "_wake",
        "closed",
        "dropped",
        "kind",
        "transport",
    )

    def __init__(self, transport: Transport, kind: str) -> None:
        self.transport = transport
        self.kind = kind
        self.closed = False
        self.dropped = 0
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._wake = trio.Event()
        self._drained = trio.Event()
        self._drained.set()

    def __repr__(self) -> str:
        return f"<Link {self.kind} {self.transport.remote_address}>"

    def push(self, frame: bytes) -> None:
        """Queue `frame` for this link (never blocks; trio thread only)."""
        if self.closed:
            return
        if (
            len(self._queue) >= C.DIRECT_LINK_QUEUE_FRAMES
            or self._queued_bytes + len(frame) > LINK_QUEUE_BYTES
        ):
            self.dropped += 1
            return
        self._queue.append(frame)
        self._queued_bytes += len(frame)
        if self._drained.is_set():
            self._drained = trio.Event()
        self._wake.set()

    async def drain(self) -> None:
        """Wait until everything queued has been written (or the link closed)."""
        while not self._drained.is_set() and not self.closed:
            await self._drained.wait()

    async def run_writer(self, closed: Callable[[Link, str], None]) -> None:
        """Write what is queued until the transport fails (then `closed(self, reason)`)."""
        queue = self._queue
        transport = self.transport
        send_many = transport.send_many
        try:
            while True:
                if not queue:
                    self._drained.set()
                    await self._wake.wait()
                    self._wake = trio.Event()
                    continue
                batch = list(queue)
                queue.clear()
                self._queued_bytes = 0
                if _trace.ENABLED:
                    for frame in batch:
                        _trace.mark("link.take", frame)
                await send_many(batch)
                if _trace.ENABLED:
                    for frame in batch:
                        _trace.mark("sock.sent", frame)
        except TransportClosed as exc:
            closed(self, exc.reason)
            with trio.CancelScope(shield=True):
                await transport.aclose(exc.reason)
        finally:
            queue.clear()
            self._queued_bytes = 0
            self._drained.set()

    async def run_reader(
        self,
        frames: Callable[[Link, list[bytes]], None],
        closed: Callable[[Link, str], None],
    ) -> None:
        """Hand every batch read to `frames(self, batch)` until the transport fails (then
        `closed(self, reason)`)."""
        receive_batch = self.transport.receive_batch
        try:
            while True:
                batch = await receive_batch()
                if _trace.ENABLED:
                    for frame in batch:
                        _trace.mark("sock.read", frame)
                frames(self, batch)
        except TransportClosed as exc:
            closed(self, exc.reason)
