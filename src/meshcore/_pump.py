"""The frame pump of the layer-2 tunnel: frames from the TAP device are switched by MAC
address and queued per peer under FQ-CoDel (`proto.fqcodel`), then packed into session
messages as the peer's session can take them; messages from sessions are written to the
device (docs/tap.md).

The queue in front of each session is the one place where the tunnel drops (or ECN-marks)
frames, by how long they waited: the session below delivers exactly once whatever it is
given, and its window (`proto.window`) keeps itself about one round trip deep.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from functools import partial

import attrs
import trio

from meshcore import _trace
from meshcore._datagramport import DatagramPort
from meshcore._iothread import IoThread
from meshcore._session import Session
from meshcore.errors import DecodeError, MeshError
from meshcore.proto.constants import (
    LONE_PACKET_GAP_S,
    TUNNEL_MAX_RECORD_BYTES,
    TUNNEL_QUEUE_BYTES,
    TUNNEL_READ_BATCH_FRAMES,
)
from meshcore.proto.flowsplit import FlowSplit
from meshcore.proto.fqcodel import FqCodel, FqCodelSettings
from meshcore.proto.identity import PeerId
from meshcore.proto.readpace import ReadPace
from meshcore.proto.switch import FrameAssembler, FramePacker, Switch

__all__ = ["FramePump", "LinkStats"]

log = logging.getLogger("meshcore.tunnel")

_SMALLEST_DATAGRAM_LIMIT = 1400
"""Frames above this count as large for `FlowSplit` while no datagram path is up (the
smallest limit a path has is 1403 bytes: IPv6 through the relay)."""

_clock = time.monotonic
"""The queue's clock (any thread may read it; sojourn times need nothing else)."""


@attrs.define
class LinkStats:
    """Counters of one peer's traffic (since the tunnel started, over all its sessions)."""

    frames_out: int = 0
    bytes_out: int = 0
    messages_out: int = 0
    frames_in: int = 0
    bytes_in: int = 0
    messages_in: int = 0
    dropped_queue_full: int = 0
    """Frames for this peer dropped because its queue held TUNNEL_QUEUE_BYTES (overflow)."""
    dropped_late: int = 0
    """Frames CoDel dropped: their flow had waited longer than the target for too long."""
    ecn_marked: int = 0
    """Frames CoDel marked Congestion Experienced instead of dropping them."""
    dropped_invalid: int = 0
    """Frames from this peer refused by the switch (too short, bad source address)."""
    dropped_write: int = 0
    """Frames from this peer the device refused (bad virtio-net header, device down)."""
    bad_messages: int = 0
    """Messages from this peer that did not decode into frames."""
    sessions: int = 0
    datagrams_out: int = 0
    """Frames sent by UDP (the session's datagram path), past the queue."""
    datagrams_in: int = 0
    """Frames that arrived by UDP."""


class _Link:
    """One live session with one peer: the queue of frames towards it and its packer."""

    __slots__ = (
        "again",
        "assembler",
        "channel",
        "done",
        "draining",
        "idle",
        "lock",
        "packer",
        "peer",
        "queue",
        "scope",
        "session",
        "split",
        "stats",
        "wake",
    )

    def __init__(
        self,
        peer: PeerId,
        channel: trio.abc.Channel[bytes],
        stats: LinkStats,
        queue: FqCodelSettings,
        header: int,
    ) -> None:
        self.peer = peer
        self.channel = channel
        self.stats = stats
        self.queue = FqCodel(queue, offset=header)
        self.packer = FramePacker()
        self.assembler = FrameAssembler()
        self.split = FlowSplit(header)
        """Which flows' small frames may go by UDP (only the device thread uses it)."""
        self.scope = trio.CancelScope()
        self.wake = trio.Event()
        self.idle = False
        self.done = trio.Event()
        self.session: Session | None = None
        """Set when the channel is a Session driven without a task (`Session.send_nowait`)."""
        self.lock = threading.Lock()
        """Guards the queue and the packer (the device reader and the sender may be in
        different threads)."""
        self.draining = False
        self.again = False

    @property
    def queued_bytes(self) -> int:
        return self.queue.queued_bytes + self.packer.queued_bytes

    def next_message(self, now: float) -> bytes | None:
        """The next session message: frames from the queue, packed up to a full message."""
        with self.lock:
            return self._next_message(now)

    def _next_message(self, now: float) -> bytes | None:
        packer, queue = self.packer, self.queue
        if not packer.full:
            while True:
                frame = queue.dequeue(now)
                if frame is None:
                    break
                packer.add(frame)
                if packer.full:
                    break
            stats, qstats = self.stats, queue.stats
            stats.dropped_late, stats.ecn_marked = qstats.codel_drops, qstats.ecn_marks
        return packer.take()


class FramePump:
    """Moves frames between a packet file descriptor (a TAP device) and peers' sessions.

    `fd` must be non-blocking and return one frame per read, each behind a virtio-net header
    of `vnet_header_bytes`. Run `run_device_reader` once, and `run_link(peer, channel)` for
    each session (a `trio.abc.Channel[bytes]`, such as a `Session`).

    Frames read from the device are switched (`proto.switch.Switch`) and queued per peer
    under FQ-CoDel, at most `queue_bytes` each; one task per peer packs them into messages
    (many frames per message when the session is busy, each frame at once when it is idle)
    and sends them. The device is read a batch at a time while frames keep coming, and one
    frame per wakeup after `lone_gap_s` without one (a lone frame is not followed by a read
    that fails). A slow peer's queue drops by sojourn time, so it never stalls the others.
    Frames from a session are written to the device.
    """

    def __init__(
        self,
        fd: int,
        vnet_header_bytes: int,
        peers: Iterable[PeerId],
        *,
        queue_bytes: int = TUNNEL_QUEUE_BYTES,
        batch_frames: int = TUNNEL_READ_BATCH_FRAMES,
        queue: FqCodelSettings | None = None,
        io: IoThread | None = None,
        device_io: IoThread | None = None,
        lone_gap_s: float = LONE_PACKET_GAP_S,
    ) -> None:
        self._fd = fd
        self._io = io
        self._device_io = device_io or io
        """The thread that reads the device (and, in the tunnel, the datagram port): a
        second one beside `io` keeps a lone frame from waiting behind `io`'s bulk work."""
        self._switch_lock = threading.Lock()
        self._header = vnet_header_bytes
        self._queue = attrs.evolve(queue or FqCodelSettings(), limit_bytes=queue_bytes)
        self.switch: Switch[PeerId] = Switch(peers)
        self._links: dict[PeerId, _Link] = {}
        self.stats: dict[PeerId, LinkStats] = {p: LinkStats() for p in self.switch.ports}
        self.dropped_no_session = 0
        """Frames for a configured peer that had no session at the time."""
        self.frames_read = 0
        self._pace = ReadPace(batch_frames, lone_gap_s)
        """Frames per wakeup of the device reader: one after `lone_gap_s` without any (a
        lone frame is not followed by a read that fails), else a batch."""
        self._changed = trio.Event()
        self._token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.get_ident()
        self.datagram_port: DatagramPort | None = None
        """Where sessions send small frames by UDP while their path is direct (set by
        `run_tunnel` once the shared port is known; None: every frame goes reliably)."""

    # ----------------------------------------------------------------- queries
    @property
    def linked(self) -> frozenset[PeerId]:
        """The peers with a live session now."""
        return frozenset(self._links)

    async def wait_linked(self, peers: Collection[PeerId]) -> None:
        """Wait until every one of `peers` has a live session; cancelling it only stops the
        waiting."""
        while not set(peers) <= self._links.keys():
            await self._changed.wait()

    async def wait_unlinked(self, peers: Collection[PeerId]) -> None:
        """Wait until none of `peers` has a live session; cancelling it only stops the
        waiting."""
        while not self._links.keys().isdisjoint(peers):
            await self._changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # ----------------------------------------------------------------- device -> peers
    async def run_device_reader(self) -> None:
        """Read frames from the device until cancelled, several per wakeup: in the data
        path's thread when the pump has one (this task then only waits), else in this task.

        Raises `MeshError` if the device fails (it was removed under us).
        """
        buffer = bytearray(self._header + TUNNEL_MAX_RECORD_BYTES)
        io = self._device_io
        if io is None:
            while True:
                await trio.lowlevel.wait_readable(self._fd)
                self._read_device(buffer)
        failed: list[MeshError] = []
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def on_readable() -> None:
            try:
                self._read_device(buffer)
            except MeshError as exc:
                failed.append(exc)
                io.unregister(self._fd)
                token.run_sync_soon(done.set)

        io.register(self._fd, on_readable)
        try:
            await done.wait()
            raise failed[0]
        finally:
            io.unregister(self._fd)

    def _read_device(self, buffer: bytearray) -> None:
        """Read what the device has (up to a batch; one frame after a quiet spell, see
        `proto.readpace`), queue it, and wake the senders."""
        fd, view = self._fd, memoryview(buffer)
        woke = _trace.now_ns() if _trace.ENABLED else 0
        touched: set[_Link] = set()
        for _ in range(self._pace.reads(_clock())):
            try:
                size = os.readv(fd, (buffer,))
            except BlockingIOError:
                break
            except OSError as exc:
                raise MeshError(f"reading the TAP device failed: {exc.strerror}") from None
            if _trace.ENABLED:
                _trace.mark_frame("tap.wake", view[:size], at=woke)
                _trace.mark_frame("tap.read", view[:size])
            self._admit(bytes(view[:size]), touched)
        bulk = self._io
        handed = bulk is not None and bulk is not self._device_io
        for link in touched:
            if link.session is not None:
                if handed:  # sealing and writing whole messages is the bulk thread's work
                    bulk.call_soon(self._drain, link)  # type: ignore[union-attr]
                else:
                    self._drain(link)
            elif link.idle:
                link.idle = False
                if threading.get_ident() == self._trio_thread:
                    link.wake.set()
                else:
                    self._token.run_sync_soon(link.wake.set)

    def _admit(self, frame: bytes, touched: set[_Link]) -> None:
        """Switch one frame from the device and queue it for each peer it goes to."""
        self.frames_read += 1
        header = self._header
        now = _clock()
        with self._switch_lock:
            peers = self.switch.from_local(memoryview(frame)[header:], now)
        for peer in peers:
            link = self._links.get(peer)
            if link is None:
                self.dropped_no_session += 1
                continue
            stats = link.stats
            session = link.session
            if session is not None:
                limit = session.datagram_limit
                if len(frame) > (limit or _SMALLEST_DATAGRAM_LIMIT):
                    link.split.sent_large(frame, now)  # also without a path: it may come up
                elif (
                    limit
                    and link.split.may_send_datagram(frame, now)
                    and session.send_datagram(frame)
                ):
                    # by UDP, past the queue: nothing waits, the path's loss is the frame's
                    stats.frames_out += 1
                    stats.bytes_out += len(frame)
                    stats.datagrams_out += 1
                    continue
            with link.lock:
                stats.dropped_queue_full += link.queue.enqueue(frame, now)
            stats.frames_out += 1
            stats.bytes_out += len(frame)
            touched.add(link)

    def _drain(self, link: _Link) -> None:
        """Send `link`'s queued frames while its session's window has room (from any
        thread: the device reader's, or the one that saw the window open)."""
        with link.lock:
            if link.draining:
                link.again = True
                return
            link.draining = True
        session, stats = link.session, link.stats
        assert session is not None
        try:
            while True:
                while session.ready_to_send():
                    message = link.next_message(_clock())
                    if message is None:
                        break
                    if _trace.ENABLED:
                        _trace.mark("pump.take", message, parent=_trace.message_parent(message))
                    session.send_nowait(message)
                    stats.messages_out += 1
                with link.lock:
                    if not link.again:
                        link.draining = False
                        return
                    link.again = False
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            with link.lock:  # the session ended: its link ends too, nothing more to send
                link.draining = False
                link.queue.clear()
                link.packer.clear()

    async def _send_loop(self, link: _Link) -> None:
        channel, stats = link.channel, link.stats
        while True:
            message = link.next_message(_clock())
            if message is None:
                link.wake = trio.Event()
                link.idle = True
                await link.wake.wait()
                continue
            if _trace.ENABLED:
                _trace.mark("pump.take", message, parent=_trace.message_parent(message))
            await channel.send(message)
            stats.messages_out += 1

    # ----------------------------------------------------------------- peers -> device
    def _deliver(self, link: _Link, message: bytes) -> None:
        """Write the frames of one message from `link`'s peer to the device."""
        stats = link.stats
        stats.messages_in += 1
        try:
            frames = link.assembler.decode_untrusted(message)
        except DecodeError as exc:
            if not stats.bad_messages:
                log.warning("peer %s sent a malformed tunnel message: %s", link.peer.short(), exc)
            stats.bad_messages += 1
            return
        fd, header, peer, switch = self._fd, self._header, link.peer, self.switch
        now = _clock()
        for frame in frames:
            with self._switch_lock:
                accepted = switch.from_peer(peer, frame[header:], now)
            if not accepted:
                stats.dropped_invalid += 1
                continue
            try:
                os.write(fd, frame)
            except OSError:
                stats.dropped_write += 1
                continue
            if _trace.ENABLED:
                _trace.mark_frame("tap.write", frame, parent=_trace.key(message))
            stats.frames_in += 1
            stats.bytes_in += len(frame)

    def _deliver_datagram(self, link: _Link, frame: bytes) -> None:
        """Write one frame that came by datagram from `link`'s peer to the device."""
        stats = link.stats
        stats.datagrams_in += 1
        with self._switch_lock:
            accepted = self.switch.from_peer(link.peer, memoryview(frame)[self._header :], _clock())
        if not accepted:
            stats.dropped_invalid += 1
            return
        try:
            os.write(self._fd, frame)
        except OSError:
            stats.dropped_write += 1
            return
        if _trace.ENABLED:
            _trace.mark_frame("tap.write", frame)
        stats.frames_in += 1
        stats.bytes_in += len(frame)

    async def _receive_loop(self, link: _Link) -> None:
        channel = link.channel
        while True:
            message = await channel.receive()
            if _trace.ENABLED:
                _trace.mark("pump.receive", message)
            self._deliver(link, message)

    def _delivered(self, link: _Link, message: bytes) -> None:
        if _trace.ENABLED:
            _trace.mark("pump.receive", message)
        self._deliver(link, message)

    async def _run_session(self, link: _Link) -> None:
        """Drive a Session without tasks: its messages come to `_deliver` as they arrive,
        frames go out by `_drain` when queued or when its window opens; this only waits for
        the session to end (`receive` raises then)."""
        session = link.session
        assert session is not None
        if self._io is not None:
            session.use_io_thread(self._io)
        session.attach_receiver(partial(self._delivered, link), partial(self._drain, link))
        session.attach_datagram_receiver(partial(self._deliver_datagram, link))
        if self.datagram_port is not None:
            session.use_datagram_port(self.datagram_port)
        try:
            self._drain(link)
            while True:
                await session.receive()  # nothing arrives here while the receiver is set
        finally:
            session.release_datagram_port()
            session.attach_datagram_receiver(None)
            session.detach_receiver()

    # ----------------------------------------------------------------- links
    async def run_link(self, peer: PeerId, channel: trio.abc.Channel[bytes]) -> str:
        """Carry `peer`'s frames over `channel` until it ends; returns why it ended.

        A newer link for the same peer replaces this one (this call then returns). Never
        raises for the channel's failure; cancellation propagates as usual.
        """
        if peer not in self.stats:
            raise ValueError(f"peer {peer.short()} is not one of this tunnel's peers")
        old = self._links.get(peer)
        if old is not None:
            old.scope.cancel()
        link = _Link(peer, channel, self.stats[peer], self._queue, self._header)
        if isinstance(channel, Session):
            link.session = channel
        link.stats.sessions += 1
        self._links[peer] = link
        self._notify()
        reason = "replaced by a newer session"
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    outcome: list[str] = []

                    async def guard(loop: Callable[[_Link], Awaitable[None]]) -> None:
                        try:
                            await loop(link)
                        except trio.EndOfChannel:
                            outcome.append("closed by the peer")
                        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                            outcome.append(str(exc.__cause__ or exc) or type(exc).__name__)
                        nursery.cancel_scope.cancel()

                    if link.session is not None:
                        nursery.start_soon(guard, self._run_session)
                    else:
                        nursery.start_soon(guard, self._send_loop)
                        nursery.start_soon(guard, self._receive_loop)
                if outcome:
                    reason = outcome[0]
        finally:
            with link.lock:
                link.packer.clear()
                link.queue.clear()
            if self._links.get(peer) is link:
                del self._links[peer]
                with self._switch_lock:
                    self.switch.forget_port(peer)
                self._notify()
            link.done.set()
        return reason
