"""One transport carrying a session's frames (`Link`), with its own bounded send queue and
writer task, and the counters of what a session's links carried (`LinkTraffic`).

The `Session` (`meshcore._session`) runs each link's reader and writer and hears back through
two callbacks: frames arrived, the link closed. docs/direct.md has why each path has its own
queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import trio

from meshcore import _trace
from meshcore._transport import Transport
from meshcore.errors import TransportClosed
from meshcore.proto import constants as C

__all__ = ["LINK_QUEUE_BYTES", "Link", "LinkTraffic"]

LINK_QUEUE_BYTES = 8 * 1024 * 1024
"""Bytes queued for one link of a session (with `DIRECT_LINK_QUEUE_FRAMES`): a stalled
writer costs at most this much memory before the link drops like a lossy one."""


class LinkTraffic:
    """Sealed frames and their bytes that a session's links carried, by path and direction.

    Each entry is `[frames, bytes]`, counted by the links as they queue and read (a frame a
    full queue dropped is not counted as sent; `dropped` counts those). Only grows.
    """

    __slots__ = ("direct_received", "direct_sent", "dropped", "relay_received", "relay_sent")

    def __init__(self) -> None:
        self.relay_sent = [0, 0]
        self.relay_received = [0, 0]
        self.direct_sent = [0, 0]
        self.direct_received = [0, 0]
        self.dropped = 0
        """Frames dropped because a link's send queue was full (the session resends them)."""


class Link:
    """One transport carrying a session's frames, with its own send queue and writer task,
    so that a slow or dead path never holds up another (docs/direct.md).

    `kind` is "relay" or "direct" (a race's candidates are direct connections). The queue
    is bounded (`DIRECT_LINK_QUEUE_FRAMES`, `LINK_QUEUE_BYTES`); beyond it frames are dropped
    like on a lossy link, and the session retransmits them. The writer hands the transport
    whole batches (`Transport.send_many`: one write on the direct path). What the link
    carries is counted in `traffic` (shared by the session's links).
    """

    __slots__ = (
        "_drained",
        "_queue",
        "_queued_bytes",
        "_received",
        "_sent",
        "_wake",
        "closed",
        "dropped",
        "kind",
        "traffic",
        "transport",
    )

    def __init__(self, transport: Transport, kind: str, traffic: LinkTraffic | None = None) -> None:
        self.transport = transport
        self.kind = kind
        self.closed = False
        self.dropped = 0
        self.traffic = traffic if traffic is not None else LinkTraffic()
        direct = kind != "relay"
        self._sent = self.traffic.direct_sent if direct else self.traffic.relay_sent
        self._received = self.traffic.direct_received if direct else self.traffic.relay_received
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
        size = len(frame)
        if len(self._queue) >= C.DIRECT_LINK_QUEUE_FRAMES or self._queued_bytes + size > (
            LINK_QUEUE_BYTES
        ):
            self.dropped += 1
            self.traffic.dropped += 1
            return
        self._queue.append(frame)
        self._queued_bytes += size
        sent = self._sent
        sent[0] += 1
        sent[1] += size
        if self._drained.is_set():
            self._drained = trio.Event()
        self._wake.set()

    async def drain(self) -> None:
        """Wait until everything queued has been written (or the link closed)."""
        while not self._drained.is_set() and not self.closed:
            await self._drained.wait()

    async def run_writer(self, on_closed: Callable[[Link, str], None]) -> None:
        """Write what is queued until the transport closes, then call `on_closed(link,
        reason)` and close it. Cancellation stops the writing; what was queued is dropped."""
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
            on_closed(self, exc.reason)
            with trio.CancelScope(shield=True):
                await transport.aclose(exc.reason)
        finally:
            queue.clear()
            self._queued_bytes = 0
            self._drained.set()

    async def run_reader(
        self,
        on_frames: Callable[[Link, list[bytes]], None],
        on_closed: Callable[[Link, str], None],
    ) -> None:
        """Hand every batch of frames read to `on_frames(link, frames)` until the transport
        closes, then call `on_closed(link, reason)`. Cancellation stops the reading."""
        receive_batch = self.transport.receive_batch
        received = self._received
        try:
            while True:
                frames = await receive_batch()
                received[0] += len(frames)
                received[1] += sum(map(len, frames))
                if _trace.ENABLED:
                    for frame in frames:
                        _trace.mark("sock.read", frame)
                on_frames(self, frames)
        except TransportClosed as exc:
            on_closed(self, exc.reason)
