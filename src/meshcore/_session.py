"""The trio driver of a session: drives `SessionCore` through `SessionPaths` over one or more
links (a reader and a writer task per link, and a timer task, in the session's own nursery or
its path driver's), once the handshake (`meshcore._handshake`) gave it keys.

A `Session` is a `trio.abc.Channel[bytes]` whose directions end separately, as in trio's
`HalfCloseableStream`: `send_eof` ends ours, and `receive` raises `trio.EndOfChannel` once the
peer ended its own (or closed the session) and every message was read. `send` raises
`trio.ClosedResourceError` after `send_eof` or `aclose`, and `trio.BrokenResourceError` with
the reason as its cause once the session is over: `ClosedByPeer` when the peer closed it
first, another `SessionClosed` when it failed. Once both directions ended and were
acknowledged, the session finishes by itself (docs/protocol.md).

A path driver (the `Migrator`) moves the session between links: it registers with
`Session.attach_driver` and acts through the `PathControl` it gets back; the session wakes it
through the small `PathDriver` protocol.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from typing import Final, cast

import attrs
import trio

from meshcore import _trace
from meshcore._counters import SessionCounters
from meshcore._direct import FramedTransport
from meshcore._handshake import handshake_as_initiator, handshake_as_responder
from meshcore._iothread import IoThread
from meshcore._link import LINK_QUEUE_BYTES, Link, LinkTraffic
from meshcore._nursery import open_hidden_nursery
from meshcore._pathcontrol import PathControl, PathDriver
from meshcore._sessiondatagram import SessionDatagrams
from meshcore._sessiondatapath import SessionDataPath
from meshcore._sessionstatus import SessionStatus, session_counters, session_status
from meshcore._threadlink import ThreadedLink
from meshcore._transport import Transport
from meshcore.errors import ClosedByPeer, NoUsablePath, SessionClosed
from meshcore.proto.framing import KeyRing, ReceiveKey, SendKey
from meshcore.proto.handshake import HandshakeResult, HandshakeRole, Responder
from meshcore.proto.identity import Identity, PeerId
from meshcore.proto.inner import CLOSE_APPLICATION
from meshcore.proto.packet import PacketType
from meshcore.proto.paths import (
    LinkKind,
    PathSettings,
    PathStats,
    PingAnswered,
    SessionPaths,
)
from meshcore.proto.rekey import RekeyInitiator, RekeyResponder
from meshcore.proto.session import (
    EndpointsReceived,
    EofReceived,
    MessageReceived,
    PeerClosed,
    SessionCore,
    SessionEvent,
    SessionFailed,
    SessionFinished,
    SessionSettings,
    SessionStats,
)

__all__ = [
    "LINK_QUEUE_BYTES",
    "Link",
    "PathControl",
    "PathDriver",
    "Session",
    "SessionStatus",
    "handshake_as_initiator",
    "handshake_as_responder",
    "open_session",
]

log = logging.getLogger("meshcore.session")

CLOSE_GRACE_S: Final = 1.0
"""The most `Session.aclose` waits (shielded) to get its Close out, or the finish confirmed."""

_FRAME: Final = int(PacketType.FRAME)
_THREADED_TIMER_TICK_S: Final = 0.02
"""While other threads drive the session (`send_nowait`, threaded links), the timer task
looks at the deadlines at least this often, so those threads need wake trio only for what
is due sooner; not at all while they have not since it last looked (docs/tap.md)."""


def _keyring_for(result: HandshakeResult, now: float) -> KeyRing:
    keys = KeyRing()
    keys.install(
        SendKey(result.send_key, result.remote_index, now),
        ReceiveKey(result.receive_key, result.local_index, now),
        now,
    )
    return keys


class Session(SessionDataPath, SessionDatagrams, trio.abc.Channel[bytes]):
    """An end-to-end encrypted, ordered, exactly-once message session with one peer.

    Create it with `open_session`; it lives inside that `async with`. Its frames travel over
    one or more links (the relay circuit, a direct connection): `open_migrator` moves it.
    """

    def __init__(
        self,
        transport: Transport,
        result: HandshakeResult,
        settings: SessionSettings,
        inbox_limit: int,
    ) -> None:
        now = trio.current_time()
        self._lock = threading.RLock()
        """Held by whichever thread touches the core and the paths (trio's, or the data
        path's): every call into them and the handling of what they return."""
        self._token = trio.lowlevel.current_trio_token()
        self._clock = trio.lowlevel.current_clock()
        self._trio_thread = threading.get_ident()
        self._io: IoThread | None = None
        self._receiver: Callable[[bytes], None] | None = None
        self._window_open: Callable[[], None] | None = None
        self._window_blocked = False
        self._stashed: list[SessionEvent | PingAnswered] = []
        self._kick_pending = False
        self._handoff: list[tuple[Link, bytes]] = []
        """Frames routed to trio links from other threads, not yet queued on them."""
        self._handoff_pending = False
        self._waiters = 0
        self._threaded = 0
        self._handshake = result
        self._peer_id = result.peer_id
        self._core = SessionCore(_keyring_for(result, now), now, settings)
        self._paths = SessionPaths(self._core, now)
        self._paths.relay_window = _relay_window
        self._started = now
        self._traffic = LinkTraffic()
        self._relay_url = transport.relay_url
        self._relay_link = Link(transport, "relay", self._traffic)
        self._paths.relay_up(self._relay_link, now)
        self._driver: PathDriver | None = None
        self._inbox: deque[bytes] = deque()
        self._inbox_limit = inbox_limit
        self._wake_timer = trio.Event()
        self._timer_at = -math.inf
        self._driven_off_trio = False
        """Another thread changed the core or the paths since the timer task last looked."""
        self._progress = trio.Event()
        self._closed_by_us = False
        self._eof_sent = False
        self._inbound_ended = False  # the peer's Eof, its Close, or the finish arrived
        self._peer_closed: ClosedByPeer | None = None
        self._finished = False
        self._failure: SessionClosed | None = None
        self._send_lock = trio.Lock()
        self._pings: dict[bytes, tuple[float, str] | None] = {}
        self._links: set[Link] = {self._relay_link}
        self._init_datagrams()

    # ----------------------------------------------------------------- public API
    @property
    def peer_id(self) -> PeerId:
        """The authenticated peer at the other end."""
        return self._peer_id

    @property
    def handshake(self) -> HandshakeResult:
        """The handshake that opened the session (its role, the peer's keys, `sas()`)."""
        return self._handshake

    @property
    def close_reason(self) -> str | None:
        """Why the session ended (None while it is open): "finished: both directions
        ended", "peer closed: ...", our own reason, or the failure."""
        return self._core.close_reason

    @property
    def finished(self) -> bool:
        """Both directions ended and were acknowledged: the session closed cleanly."""
        return self._finished

    @property
    def stats(self) -> SessionStats:
        """Counters: messages, bytes and frames each way, retransmissions, RTT."""
        return self._core.stats

    @property
    def path(self) -> str:
        """ "relay" or "direct": where the session's traffic goes now."""
        return self._paths.active.value

    @property
    def path_stats(self) -> PathStats:
        """The path policy now: the active path, a race running, migrations, fallbacks, races
        started, whether the direct path is distrusted, the latest path failure."""
        return self._paths.stats()

    def force_fallback(self, reason: str = "fallback forced") -> bool:
        """Cut the direct connection now (a TCP reset): both sides fall back to the relay
        at once and retry direct later. Returns False if the session is not direct."""
        return self._driver is not None and self._driver.abort_direct(reason)

    def status(self) -> SessionStatus:
        """A snapshot: path, remote address, round trip, counters, migrations, last error,
        the relay, and why the session is not direct."""
        now = trio.current_time()
        with self._lock:
            status = session_status(
                self.peer_id.to_text(),
                self._core,
                self._paths,
                path=self.path,
                driven=self._driver is not None,
                age_s=now - self._started,
                opened_on=self._relay_url,
                now=now,
            )
            return attrs.evolve(
                status,
                datagram_path=self._dpath.state(now).value,
                datagrams_sent=self.datagram_stats.sent,
                datagrams_received=self.datagram_stats.received,
            )

    def counters(self) -> SessionCounters:
        """Everything counted since the session opened (frames and bytes by path and
        direction, messages, retransmissions, drops, rekeys, races, moves): for metrics."""
        with self._lock:
            return session_counters(self._core, self._paths, self._traffic)

    async def ping(self, timeout: float = 5.0) -> tuple[float, str]:
        """Measure the round trip on the active path: (seconds, "relay" or "direct").

        A PATH_CHALLENGE under the session keys, answered by the peer's session core (not
        its application). Raises `NoUsablePath` if no answer arrives within `timeout`, and
        like `send` once the session has ended. Cancelled, the ping is forgotten (a late
        answer is ignored).
        """
        self._check_open()
        with self._lock:
            token = self._paths.ping(trio.current_time())
            self._pings[token] = None
            self._changed()
        try:
            with trio.move_on_after(timeout):
                while self._pings[token] is None:
                    self._check_open()
                    await self._wait_progress()
            answer = self._pings[token]
        finally:
            del self._pings[token]
        if answer is None:
            raise NoUsablePath(
                f"no answer to a ping within {timeout:g} s on the {self.path} path; the peer "
                "may be gone (the session ends once nothing arrives for its dead-peer time)"
            )
        return answer

    async def send(self, value: bytes) -> None:
        """Queue one message; waits while the send window is full (back-pressure).

        Raises `trio.ClosedResourceError` after `send_eof` or `aclose`, and
        `trio.BrokenResourceError` (cause: `ClosedByPeer` or another `SessionClosed`) once the
        session has ended. Cancelled while it waits, nothing was queued; once it returns,
        the message is the session's to deliver.
        """
        await self._send_sequenced(bytes(value))

    async def send_eof(self) -> None:
        """End our direction, as trio's `HalfCloseableStream.send_eof` does: the peer's
        `receive` raises `trio.EndOfChannel` once it has read every message sent before, and
        our `send` raises `trio.ClosedResourceError` from now on; messages from the peer keep
        arriving. Idempotent.

        The end of stream is sealed, sequenced and acknowledged like a message, so it arrives
        exactly once, after everything sent before it, across path moves. Once the peer ended
        its direction too and both were acknowledged, the session finishes by itself.
        Raises like `send` (but not after an earlier `send_eof`). Cancelled while it waits
        for room in the send window, nothing was sent.
        """
        if self._eof_sent and not self._closed_by_us:
            return
        await self._send_sequenced(None)

    async def _send_sequenced(self, value: bytes | None) -> None:
        lock = self._send_lock
        try:  # uncontended: no trip through the scheduler (a window's worth goes out at once)
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            core = self._core
            while not core.can_send():
                self._check_open(sending=True)
                await self._wait_progress(counted=True)
            self._check_open(sending=True)
            if _trace.ENABLED and value is not None:
                _trace.parent = _trace.key(value)
            with self._lock:
                try:
                    if value is None:
                        core.send_eof(trio.current_time())
                        self._eof_sent = True
                    else:
                        core.send(value, trio.current_time())
                except SessionClosed as exc:  # e.g. the keys expired this very moment
                    self._set_failure(exc.reason)
                    raise trio.BrokenResourceError(exc.reason) from exc
                self._changed()
        finally:
            _trace.parent = 0
            lock.release()

    async def receive(self) -> bytes:
        """The next message from the peer, in order.

        Raises `trio.EndOfChannel` once the peer ended its direction or closed the session
        (or both directions ended) and every message was read; `trio.ClosedResourceError`
        after our `aclose`; `trio.BrokenResourceError` (cause: `SessionClosed`) if the
        session failed. Cancel-safe: a cancelled receive loses no message.
        """
        while not self._inbox:
            if self._closed_by_us:
                raise trio.ClosedResourceError("session was closed")
            if self._inbound_ended:
                raise trio.EndOfChannel
            if self._failure is not None:
                raise trio.BrokenResourceError(str(self._failure)) from self._failure
            await self._wait_progress()
        payload = self._inbox.popleft()
        if len(self._inbox) <= self._inbox_limit // 2 and self._core.acks_held:
            with self._lock:
                self._core.hold_acks(False, trio.current_time())
                self._changed()
        return payload

    async def wait_acknowledged(self) -> None:
        """Wait until the peer has acknowledged every message (and an end of stream) sent so
        far. Raises like `send` once the session has ended with some of it unacknowledged.
        Cancelling it only stops the waiting."""
        while not self._core.all_acked:
            self._check_open()
            await self._wait_progress(counted=True)

    async def wait_finished(self) -> None:
        """Wait until the session finished: both directions ended (each side's `send_eof`)
        and were acknowledged, so nothing was lost either way.

        Raises `trio.BrokenResourceError` if it ended otherwise (cause: `ClosedByPeer` when
        the peer closed it first, another `SessionClosed` when it failed), and
        `trio.ClosedResourceError` after our `aclose`. Cancelling it only stops the waiting.
        """
        while not self._finished:
            self._check_open()
            await self._wait_progress(counted=True)

    async def aclose(self, reason: str = "closed") -> None:
        """Close the session: tell the peer (best effort) and stop. Idempotent.

        A session still open sends a Close (the peer's session ends with "peer closed:
        <reason>"); what was not acknowledged yet may then be lost, so end cleanly with
        `send_eof` and `wait_finished` where that matters. A finished session first waits
        for the peer to confirm the finish (about one round trip). Either happens under a
        shielded scope of at most CLOSE_GRACE_S, so cancellation does not cut it short.
        """
        if self._closed_by_us:
            return
        self._closed_by_us = True
        with trio.move_on_after(CLOSE_GRACE_S) as scope:
            scope.shield = True
            while self._core.lingering:
                await self._wait_progress(counted=True)
            with self._lock:
                self._core.close(CLOSE_APPLICATION, reason, trio.current_time())
                self._route()
            for link in list(self._links):
                await link.drain()
            await self._end_direct_links()
        self._notify()

    async def _end_direct_links(self) -> None:
        """Half-close each direct connection after the Close and read on until the peer ends
        its side: a TCP socket closed with unread data sends a reset, and the reset would
        take the Close (still in flight, or unread at the peer) with it."""
        direct = [link for link in self._links if link.kind != "relay" and not link.closed]
        for link in direct:
            await link.transport.send_eof()
        while any(not link.closed for link in direct):
            await self._wait_progress()

    # ----------------------------------------------------------------- path driver
    def attach_driver(
        self, driver: PathDriver, *, controlling: bool, settings: PathSettings
    ) -> PathControl:
        """Let `driver` (a Migrator) move this session between paths, under `settings`.

        `controlling`: this side nominates direct connections and re-opens the relay
        circuit (the lower peer id; docs/direct.md). From now on a lost link does not end
        the session by itself: the path policy falls back, re-opens the circuit, or ends the
        session when nothing carried it for its dead time. Raises `RuntimeError` if another
        driver is attached.
        """
        if self._driver is not None:
            raise RuntimeError("this session already has a path driver")
        with self._lock:
            self._paths.enable_direct(
                controlling=controlling,
                settings=settings,
                now=trio.current_time(),
                relay=driver.relay_of(self._relay_link.transport),
            )
            self._driver = driver
            self._changed()
        return PathControl(self, driver)

    # ----------------------------------------------------------------- links
    async def run_link(self, link: Link) -> None:
        """Carry this session's frames over `link` until it closes (its reader and writer).

        The owner of the link runs this in its own nursery; the link closes with its
        transport. Cancellation stops both tasks.
        """
        self._links.add(link)
        threaded = isinstance(link, ThreadedLink)
        self._threaded += threaded
        if threaded:
            self._wake_timer.set()  # its deadlines now come from another thread too
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run_writer, self._link_closed)
                await link.run_reader(self._on_frames, self._link_closed)
                nursery.cancel_scope.cancel()
        finally:
            link.closed = True
            self._links.discard(link)
            self._threaded -= threaded

    def _on_frames(self, link: Link, frames: list[bytes]) -> None:
        """Frames arrived on `link` (from its reader: trio's, or the data path's thread)."""
        with self._lock:
            now = self._clock.current_time()
            receive = self._paths.receive_frame
            self._core.coalesce_acks(True, now)
            try:
                for data in frames:
                    if data and data[0] == _FRAME:
                        if _trace.ENABLED:
                            _trace.parent = _trace.key(data)
                        receive(data, link, now)
                        if _trace.ENABLED:
                            _trace.mark("session.opened", data)
                    # anything else: late handshake retransmissions and the like
            finally:
                self._core.coalesce_acks(False, now)
            self._changed()
        _trace.parent = 0

    def _link_closed(self, link: Link, reason: str) -> None:
        if link.closed:
            return
        link.closed = True
        if self._driver is None:
            with self._lock:
                if self._core.close_reason is None:
                    self._set_failure(f"transport closed: {reason}")
            self._notify()
            return
        with self._lock:
            self._paths.link_down(link, reason, trio.current_time())
            self._changed()

    def _route(self) -> None:
        """Hand the core's frames to the links they go on (a trio link's queue is trio's:
        from another thread the frame is handed over in order through trio's token)."""
        off_trio = threading.get_ident() != self._trio_thread
        if not off_trio and self._handoff:  # what other threads routed first goes first
            self._push_handoff()
        handed: list[tuple[Link, bytes]] = []
        for link, frame in self._paths.outbox():
            if _trace.ENABLED:
                _trace.mark("session.sealed", frame, parent=_trace.parent)
            if off_trio and not isinstance(link, ThreadedLink):
                handed.append((cast(Link, link), frame))
            else:
                cast(Link, link).push(frame)
        if handed:  # one wakeup of trio for everything handed over until it runs
            self._handoff += handed
            if not self._handoff_pending:
                self._handoff_pending = True
                self._token.run_sync_soon(self._push_handoff)

    def _push_handoff(self) -> None:
        """Queue the frames other threads routed to trio links, in order (on trio)."""
        with self._lock:
            handed, self._handoff = self._handoff, []
            self._handoff_pending = False
        for link, frame in handed:
            link.push(frame)

    def _new_link(self, transport: Transport, kind: str) -> Link:
        """A link for `transport`: one the data path's thread serves, for a direct
        connection once `use_io_thread` was called; else one of trio tasks."""
        if self._io is not None and isinstance(transport, FramedTransport):
            return ThreadedLink(transport, kind, self._io, self._traffic)
        return Link(transport, kind, self._traffic)

    # ----------------------------------------------------------------- tasks
    async def _run_timers(self) -> None:
        while True:
            with self._lock:  # a thread moving a deadline earlier sees this `_timer_at`
                deadline = self._paths.get_timer()
                at = deadline if deadline is not None else math.inf
                probe_at = self._datagram_timer()
                if probe_at is not None:
                    at = min(at, probe_at)
                if self._driven_off_trio and (self._threaded or self._receiver is not None):
                    self._driven_off_trio = False
                    at = min(at, trio.current_time() + _THREADED_TIMER_TICK_S)
                self._timer_at = at
            with trio.move_on_at(at):
                await self._wake_timer.wait()
            self._wake_timer = trio.Event()
            now = trio.current_time()
            if deadline is not None and now >= deadline:
                with self._lock:
                    self._paths.handle_timer(now)
                    self._changed()
            if probe_at is not None and now >= probe_at:
                self._datagram_tick(now)

    # ----------------------------------------------------------------- helpers
    def _handle_events(self, events: list[SessionEvent | PingAnswered]) -> None:
        for event in events:
            if isinstance(event, MessageReceived):
                if _trace.ENABLED:
                    _trace.mark("session.deliver", event.payload, parent=_trace.parent)
                if self._receiver is not None:
                    self._receiver(event.payload)
                    continue
                self._inbox.append(event.payload)
                if len(self._inbox) >= self._inbox_limit and not self._core.acks_held:
                    self._core.hold_acks(True, trio.current_time())
            elif isinstance(event, PingAnswered):
                if event.token in self._pings:
                    kind = "direct" if event.kind is not LinkKind.RELAY else "relay"
                    self._pings[event.token] = (event.rtt_s, kind)
            elif isinstance(event, EndpointsReceived):
                if self._driver is not None:
                    self._driver.endpoints_received(event.endpoints)
            elif isinstance(event, EofReceived):
                log.debug("session %s: the peer ended its direction", self.peer_id)
                self._inbound_ended = True
            elif isinstance(event, SessionFinished):
                log.info("session %s finished: both directions ended", self.peer_id)
                self._finished = self._inbound_ended = True
            elif isinstance(event, PeerClosed):
                reason = self._core.close_reason or "peer closed"
                log.info("session %s ended: %s", self.peer_id, reason)
                self._peer_closed = ClosedByPeer(reason)
                self._inbound_ended = True
            elif isinstance(event, SessionFailed):
                self._set_failure(self._explain(event.reason))

    def _explain(self, reason: str) -> str:
        """`reason`, and why no path carried the session if none did (e.g. the relay was
        lost and its circuit could not be re-opened before the dead timer ran out)."""
        manager = self._paths.manager
        if self._driver is None or manager.relay is not None or manager.direct is not None:
            return reason
        why = manager.last_error or "no path to the peer"
        return f"{reason}; the relay circuit was lost and not re-opened in time ({why})"

    def _set_failure(self, reason: str) -> None:
        ended = self._finished or self._peer_closed is not None or self._closed_by_us
        if self._failure is None and not ended:
            log.warning("session %s failed: %s", self.peer_id, reason)
            self._failure = SessionClosed(reason)
            self._core.fail(reason)
        self._notify()

    def _changed(self) -> None:
        """Bring everything up to date after the core or the paths changed: events handled,
        frames routed, the driver and the timer woken, waiters notified. From another
        thread, only messages for the receiver are handled there; the rest waits for trio,
        which is woken if anything needs it."""
        on_trio = threading.get_ident() == self._trio_thread
        wake_trio = False
        with self._lock:
            paths = self._paths
            now = self._clock.current_time()
            if on_trio:
                paths.refresh_window(now)  # a relay circuit's credit window may have grown
            events = paths.events(now)
            if on_trio:
                if self._stashed:
                    events, self._stashed = self._stashed + events, []
                if events:
                    self._handle_events(events)
                self._follow_path(now)
            else:
                self._driven_off_trio = True
                if events:
                    wake_trio = self._deliver_off_trio(events)
            self._route()
            commands = paths.has_commands
            # most changes only push timers later; wake the timer task when one moved earlier
            deadline = paths.get_timer()
            timer_sooner = deadline is None or deadline < self._timer_at
            window_open = self._window_open
            if window_open is None or not self._window_blocked or not self._core.can_send():
                window_open = None
            else:
                self._window_blocked = False
        if on_trio:
            if commands and self._driver is not None:
                self._driver.wake()
            if timer_sooner:
                self._wake_timer.set()
            self._notify()
        else:
            if wake_trio or commands or self._waiters or timer_sooner:
                self._wake_trio()
        if window_open is not None:
            window_open()

    def _notify(self) -> None:
        # every waiter waits on the same event; a fresh one is made for the next round
        self._progress.set()
        self._progress = trio.Event()

    async def _wait_progress(self, *, counted: bool = False) -> None:
        """Wait for the next change; `counted`: for room in the window or acks, which other
        threads then wake trio for."""
        self._waiters += counted
        try:
            await self._progress.wait()
        finally:
            self._waiters -= counted

    def _check_open(self, *, sending: bool = False) -> None:
        """Raise what a call on an ended session (or direction, when `sending`) raises."""
        if self._closed_by_us:
            raise trio.ClosedResourceError("session was closed")
        if sending and self._eof_sent:
            raise trio.ClosedResourceError("the sending direction was ended with send_eof")
        if self._failure is not None:
            raise trio.BrokenResourceError(str(self._failure)) from self._failure
        if self._peer_closed is not None:
            raise trio.BrokenResourceError(str(self._peer_closed)) from self._peer_closed
        reason = self._core.close_reason
        if reason is not None:
            raise trio.BrokenResourceError(reason) from SessionClosed(reason)


@asynccontextmanager
async def open_session(
    transport: Transport,
    result: HandshakeResult,
    *,
    settings: SessionSettings | None = None,
    inbox_limit: int = 256,
    identity: Identity | None = None,
    responder: Responder | None = None,
) -> AsyncIterator[Session]:
    """Run a session over `transport` with the keys of a completed handshake.

    Give `identity` on the initiator's side and `responder` on the other to rekey with a
    fresh handshake every REKEY_AFTER_S (without them the keys expire after
    REJECT_AFTER_S and the session ends).

    The session's tasks live in a nursery inside this `async with`; leaving it closes the
    session (the peer is told) and cancels them. Cancellation leaves nothing half-done: the
    close message is sent under a shielded, bounded scope.
    """
    session = Session(transport, result, settings or SessionSettings(), inbox_limit)
    if identity is not None and result.role is HandshakeRole.INITIATOR:
        peer = result.peer
        session._core.enable_rekey(initiator=lambda: RekeyInitiator(identity, peer))
    elif responder is not None:
        session._core.enable_rekey(responder=RekeyResponder(responder, result.peer_id))
    async with open_hidden_nursery() as nursery:
        nursery.start_soon(session.run_link, session._relay_link)
        nursery.start_soon(session._run_timers)
        try:
            yield session
        finally:
            session.release_datagram_port()
            await session.aclose()
            nursery.cancel_scope.cancel()


def _relay_window(link: Hashable) -> int | None:
    """What a relay circuit link allows in flight (`Transport.max_window`)."""
    return link.transport.max_window if isinstance(link, Link) else None
