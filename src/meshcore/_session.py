"""The trio driver of a session: drives `SessionCore` through `SessionPaths` over one or more
links (a reader and a writer task per link, and a timer task, in the session's own nursery or
its path driver's), once the handshake (`meshcore._handshake`) gave it keys.

A `Session` is a `trio.abc.Channel[bytes]`: `receive` raises `trio.EndOfChannel` after the
peer closed cleanly, `trio.ClosedResourceError` after we closed it, and
`trio.BrokenResourceError` (with a `SessionClosed` as its cause) when the session failed.

A path driver (the `Migrator`) moves the session between links: it registers with
`Session.attach_driver` and acts through the `PathControl` it gets back; the session wakes it
through the small `PathDriver` protocol.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Final, Protocol, cast

import attrs
import trio

from meshcore._counters import SessionCounters
from meshcore._handshake import handshake_as_initiator, handshake_as_responder
from meshcore._link import LINK_QUEUE_BYTES, Link, LinkTraffic
from meshcore._nursery import open_hidden_nursery
from meshcore._transport import Transport
from meshcore.errors import NoUsablePath, SessionClosed
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.framing import KeyRing, ReceiveKey, SendKey
from meshcore.proto.handshake import HandshakeResult, HandshakeRole, Responder
from meshcore.proto.identity import Identity, PeerId
from meshcore.proto.packet import PacketType
from meshcore.proto.paths import (
    DirectMode,
    LinkKind,
    PathCommand,
    PathSettings,
    PathStats,
    PingAnswered,
    SessionPaths,
)
from meshcore.proto.rekey import RekeyInitiator, RekeyResponder
from meshcore.proto.session import (
    EndpointsReceived,
    MessageReceived,
    PeerClosed,
    SessionCore,
    SessionEvent,
    SessionFailed,
    SessionSettings,
    SessionState,
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

_FRAME: Final = int(PacketType.FRAME)


def _keyring_for(result: HandshakeResult, now: float) -> KeyRing:
    keys = KeyRing()
    keys.install(
        SendKey(result.send_key, result.remote_index, now),
        ReceiveKey(result.receive_key, result.local_index, now),
        now,
    )
    return keys


@attrs.frozen
class SessionStatus:
    """A snapshot of one session for status displays (`Session.status()`)."""

    peer_id: str
    path: str
    """"relay" or "direct": where the session's traffic goes now."""
    remote_address: str | None
    """The other end of the active path: the relay for "relay", the peer for "direct"."""
    rtt_s: float | None
    """Latest round trip on the active path (ping or validation), else the data RTT."""
    bytes_sent: int
    bytes_received: int
    frames_sent: int
    frames_received: int
    migrations: int
    """Moves from the relay onto a direct path."""
    last_error: str | None
    """The latest path failure (failed race, fallback), or why the session ended."""
    age_s: float = 0.0
    """Seconds since the session opened."""
    relay: str | None = None
    """The URL of the relay whose circuit carries the session (None while it is direct, or if
    unknown)."""
    relay_moves: int = 0
    """Moves from one relay's circuit to another's (a relay died, left the list, was slower)."""
    not_direct_reason: str | None = None
    """Why the session is not on a direct path now (None while it is)."""


class Session(trio.abc.Channel[bytes]):
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
        self._handshake = result
        self._peer_id = result.peer_id
        self._core = SessionCore(_keyring_for(result, now), now, settings)
        self._paths = SessionPaths(self._core, now)
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
        self._progress = trio.Event()
        self._closed_by_us = False
        self._eof = False
        self._failure: SessionClosed | None = None
        self._send_lock = trio.Lock()
        self._pings: dict[bytes, tuple[float, str] | None] = {}
        self._links: set[Link] = {self._relay_link}

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
        """Why the session ended (None while it is open)."""
        return self._core.close_reason

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
        """A snapshot: path, remote address, round trip, counters, migrations, last error."""
        paths = self._paths
        link = paths.active_link
        remote: str | None = None
        rtt = self._core.stats.rtt_s
        if isinstance(link, Link):
            address = link.transport.remote_address
            remote = str(address) if address is not None else None
            rtt = paths.rtt.get(link, rtt)
        stats = self._core.stats
        relay = paths.relay
        if relay is None and self.path == "relay":
            relay = self._relay_url  # a session without a path driver: the relay it opened on
        now = trio.current_time()
        return SessionStatus(
            peer_id=self.peer_id.to_text(),
            path=self.path,
            remote_address=remote,
            rtt_s=rtt,
            bytes_sent=stats.bytes_sent,
            bytes_received=stats.bytes_received,
            frames_sent=stats.frames_sent,
            frames_received=stats.frames_received,
            migrations=paths.manager.migrations,
            last_error=self._core.close_reason or paths.manager.last_error,
            age_s=now - self._started,
            relay=relay if isinstance(relay, str) else None,
            relay_moves=paths.manager.relay_moves,
            not_direct_reason=self._not_direct(now),
        )

    def counters(self) -> SessionCounters:
        """Everything counted since the session opened (frames and bytes by path and
        direction, messages, retransmissions, drops, rekeys, races, moves): for metrics."""
        stats, traffic, manager = self._core.stats, self._traffic, self._paths.manager
        return SessionCounters(
            relay_frames_sent=traffic.relay_sent[0],
            relay_bytes_sent=traffic.relay_sent[1],
            relay_frames_received=traffic.relay_received[0],
            relay_bytes_received=traffic.relay_received[1],
            direct_frames_sent=traffic.direct_sent[0],
            direct_bytes_sent=traffic.direct_sent[1],
            direct_frames_received=traffic.direct_received[0],
            direct_bytes_received=traffic.direct_received[1],
            messages_sent=stats.messages_sent,
            messages_received=stats.messages_received,
            message_bytes_sent=stats.bytes_sent,
            message_bytes_received=stats.bytes_received,
            retransmitted=stats.retransmitted,
            link_queue_drops=traffic.dropped,
            replayed=stats.replayed,
            rejected=stats.rejected,
            rekeys=self._core.rekeys,
            direct_attempts=manager.attempts,
            migrations=manager.migrations,
            fallbacks=manager.fallbacks,
            fallbacks_silent=manager.fallbacks_silent,
            relay_moves=manager.relay_moves,
        )

    def _not_direct(self, now: float) -> str | None:
        """Why the session is not on a direct path, for status displays."""
        if self.path == "direct":
            return None
        manager = self._paths.manager
        if self._driver is None:
            return "no path driver: this session stays on the transport it opened on"
        if manager.mode is DirectMode.NEVER:
            return "direct paths are off (direct='never')"
        if manager.racing:
            return "a direct attempt is running" + (
                f" (the last one failed: {manager.last_error})" if manager.last_error else ""
            )
        reason = manager.last_error or "no direct attempt yet"
        if manager.next_race is not None:
            reason += f"; next attempt in {max(0.0, manager.next_race - now):.0f} s"
        return reason

    async def ping(self, timeout: float = 5.0) -> tuple[float, str]:
        """Measure the round trip on the active path: (seconds, "relay" or "direct").

        A PATH_CHALLENGE under the session keys, answered by the peer's session core (not
        its application). Raises `NoUsablePath` if no answer arrives within `timeout`, and
        like `send` once the session has ended. Cancelled, the ping is forgotten (a late
        answer is ignored).
        """
        self._check_open()
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

        Raises `trio.ClosedResourceError` after `aclose`, `trio.BrokenResourceError`
        (cause: `SessionClosed`) once the session has ended. Cancelled while it waits,
        nothing was queued; once it returns, the message is the session's to deliver.
        """
        lock = self._send_lock
        try:  # uncontended: no trip through the scheduler (a window's worth goes out at once)
            lock.acquire_nowait()
        except trio.WouldBlock:
            await lock.acquire()
        try:
            core = self._core
            while not core.can_send():
                self._check_open()
                await self._wait_progress()
            self._check_open()
            try:
                core.send(bytes(value), trio.current_time())
            except SessionClosed as exc:  # e.g. the keys expired this very moment
                self._set_failure(exc.reason)
                raise trio.BrokenResourceError(exc.reason) from exc
            self._changed()
        finally:
            lock.release()

    async def receive(self) -> bytes:
        """The next message from the peer, in order.

        Raises `trio.EndOfChannel` once the peer closed cleanly and every message was read.
        Cancel-safe: a cancelled receive loses no message.
        """
        while not self._inbox:
            if self._closed_by_us:
                raise trio.ClosedResourceError("session was closed")
            if self._eof:
                raise trio.EndOfChannel
            if self._failure is not None:
                raise trio.BrokenResourceError(str(self._failure)) from self._failure
            await self._wait_progress()
        payload = self._inbox.popleft()
        if len(self._inbox) <= self._inbox_limit // 2 and self._core.acks_held:
            self._core.hold_acks(False, trio.current_time())
            self._changed()
        return payload

    async def wait_acknowledged(self) -> None:
        """Wait until the peer has acknowledged every message sent so far (raises like `send`
        once the session has ended). Cancelling it only stops the waiting."""
        while not self._core.all_acked:
            self._check_open()
            await self._wait_progress()

    async def aclose(self, reason: str = "closed") -> None:
        """Close the session: tell the peer (best effort) and stop. Idempotent.

        The Close goes out under a shielded scope of at most 1 s, so cancellation does not
        cut it short.
        """
        if self._closed_by_us:
            return
        self._closed_by_us = True
        self._core.close(0, reason, trio.current_time())
        self._route()
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            for link in list(self._links):
                await link.drain()
        self._notify()

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
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.run_writer, self._link_closed)
                await link.run_reader(self._on_frames, self._link_closed)
                nursery.cancel_scope.cancel()
        finally:
            link.closed = True
            self._links.discard(link)

    def _on_frames(self, link: Link, frames: list[bytes]) -> None:
        now = trio.current_time()
        receive = self._paths.receive_frame
        for data in frames:
            if data and data[0] == _FRAME:
                receive(data, link, now)
            # anything else: late handshake retransmissions and the like
        self._changed()

    def _link_closed(self, link: Link, reason: str) -> None:
        if link.closed:
            return
        link.closed = True
        if self._driver is None:
            self._set_failure(f"transport closed: {reason}")
            return
        self._paths.link_down(link, reason, trio.current_time())
        self._changed()

    def _route(self) -> None:
        """Hand the core's frames to the links they go on."""
        for link, frame in self._paths.outbox():
            cast(Link, link).push(frame)

    # ----------------------------------------------------------------- tasks
    async def _run_timers(self) -> None:
        while True:
            deadline = self._paths.get_timer()
            self._timer_at = deadline if deadline is not None else math.inf
            with trio.move_on_at(self._timer_at):
                await self._wake_timer.wait()
            self._wake_timer = trio.Event()
            now = trio.current_time()
            if deadline is not None and now >= deadline:
                self._paths.handle_timer(now)
                self._changed()

    # ----------------------------------------------------------------- helpers
    def _handle_events(self, events: list[SessionEvent | PingAnswered]) -> None:
        for event in events:
            if isinstance(event, MessageReceived):
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
            elif isinstance(event, PeerClosed):
                log.info("session %s closed by peer: %s", self.peer_id, event.reason or "no reason")
                self._eof = True
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
        if self._failure is None and not self._eof and not self._closed_by_us:
            log.warning("session %s failed: %s", self.peer_id, reason)
            self._failure = SessionClosed(reason)
            self._core.fail(reason)
        self._notify()

    def _changed(self) -> None:
        paths = self._paths
        events = paths.events(trio.current_time())
        if events:
            self._handle_events(events)
        self._route()
        if paths.has_commands and self._driver is not None:
            self._driver.wake()
        # most changes only push timers later; wake the timer task when one moved earlier
        deadline = paths.get_timer()
        if deadline is None or deadline < self._timer_at:
            self._wake_timer.set()
        self._notify()

    def _notify(self) -> None:
        # every waiter waits on the same event; a fresh one is made for the next round
        self._progress.set()
        self._progress = trio.Event()

    async def _wait_progress(self) -> None:
        await self._progress.wait()

    def _check_open(self) -> None:
        if self._closed_by_us:
            raise trio.ClosedResourceError("session was closed")
        if self._failure is not None:
            raise trio.BrokenResourceError(str(self._failure)) from self._failure
        if self._eof or self._core.close_reason is not None:
            reason = self._core.close_reason or "closed by peer"
            raise trio.BrokenResourceError(reason) from SessionClosed(reason)


class PathDriver(Protocol):
    """What a Session asks of the driver that moves it between paths (a `Migrator`), which
    registers with `Session.attach_driver`."""

    def wake(self) -> None:
        """The session's path policy has commands: take them soon with
        `PathControl.commands()` (not from inside this call)."""

    def endpoints_received(self, endpoints: tuple[Endpoint, ...]) -> None:
        """The peer announced its direct-path candidates (an ENDPOINTS frame)."""

    def abort_direct(self, reason: str) -> bool:
        """Cut the direct connection now (`Session.force_fallback`); False if there is none."""

    def relay_of(self, transport: Transport) -> str | None:
        """The relay a relay circuit runs through (its URL; None: unknown). A session keeps
        at most one circuit per relay."""


class PathControl:
    """A path driver's hold on one session, from `Session.attach_driver`: the races, the links
    it brings, the commands of the session's path policy.

    Every call that changes the path state brings the session up to date at once (events,
    frames to send, timers). Nothing here blocks; the driver runs each link it brings with
    `Session.run_link` in a nursery of its own.
    """

    __slots__ = ("_driver", "_session")

    def __init__(self, session: Session, driver: PathDriver) -> None:
        self._session = session
        self._driver = driver

    @property
    def racing(self) -> bool:
        """A race for a direct path is running."""
        return self._session._paths.race is not None

    @property
    def may_race(self) -> bool:
        """A race may start now: none is running, there is no direct path, the mode allows."""
        return self._session._paths.manager.may_race()

    @property
    def direct_link(self) -> Link | None:
        """The direct connection carrying the session, if any."""
        direct = self._session._paths.manager.direct
        return direct if isinstance(direct, Link) else None

    def commands(self) -> list[PathCommand]:
        """Take the I/O the path policy asks for (races, closing links, re-opening the relay
        circuit, log lines)."""
        return self._session._paths.commands()

    def owns_receiver_index(self, receiver_index: int) -> bool:
        """Is `receiver_index` one of this open session's (a connection's first frame names
        the index its sender chose for us)?"""
        core = self._session._core
        return core.state is SessionState.OPEN and receiver_index in core.keys.receiver_indices(
            trio.current_time()
        )

    def start_race(self, endpoints: Sequence[Endpoint]) -> bool:
        """A race starts: `endpoints` (ours) are announced to the peer in ENDPOINTS. False if
        a race is running already or the session has ended."""
        session = self._session
        paths = session._paths
        if paths.racing or session._core.state is not SessionState.OPEN:
            return False
        paths.race_started(trio.current_time(), endpoints)
        session._changed()
        return True

    def race_failed(self, reason: str) -> None:
        """The race's deadline passed without a winner: its candidates are closed."""
        session = self._session
        if session._paths.race is None:
            return
        session._paths.race_failed(reason, trio.current_time())
        session._changed()

    def attach_candidate(
        self, transport: Transport, *, first_frame: bytes | None = None
    ) -> Link | None:
        """A direct connection for the running race, dialled or accepted (with the
        `first_frame` it arrived with): it is challenged at once.

        Returns the link to run with `Session.run_link`, or None if no race takes it (none
        running, the race is full, the session ended): then close `transport`.
        """
        session = self._session
        link = Link(transport, "direct", session._traffic)
        if not session._paths.candidate_up(link, trio.current_time()):
            return None
        self._arrived(link, first_frame)
        return link

    def attach_relay(
        self,
        transport: Transport,
        *,
        first_frame: bytes | None = None,
        opened_here: bool = False,
        spare: bool = False,
    ) -> Link | None:
        """A new relay circuit for the session: one the peer opened (with the `first_frame`
        it arrived with), or one we opened (`opened_here`: a keepalive goes out on it first,
        so that the peer can route it; `spare`: for an `OpenRelay(spare=True)`). It replaces
        the session's circuit on the same relay (`PathDriver.relay_of`), and carries the
        session if no other circuit does.

        Returns the link to run with `Session.run_link`, or None if the session has ended:
        then close `transport`.
        """
        session = self._session
        if session._core.state is not SessionState.OPEN:
            return None
        link = Link(transport, "relay", session._traffic)
        if transport.relay_url is not None:
            session._relay_url = transport.relay_url
        session._paths.relay_up(
            link,
            trio.current_time(),
            opened_here=opened_here,
            relay=self._driver.relay_of(transport),
            spare=spare,
        )
        self._arrived(link, first_frame)
        return link

    def relay_open_failed(self, reason: str, *, spare: bool = False) -> None:
        """Opening a relay circuit failed; the policy tries again while it is needed."""
        self._session._paths.relay_open_failed(reason, trio.current_time(), spare=spare)
        self._session._changed()

    def detach(self) -> None:
        """The driver is done: the session no longer wakes it, and a lost link ends it."""
        if self._session._driver is self._driver:
            self._session._driver = None

    def _arrived(self, link: Link, first_frame: bytes | None) -> None:
        if first_frame is None:
            self._session._changed()
        else:
            self._session._on_frames(link, [first_frame])


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
            await session.aclose()
            nursery.cancel_scope.cancel()
