"""The trio driver of a session: runs the handshake over a Transport, then drives
`SessionCore` (reader, writer and timer tasks in the session's own nursery).

A `Session` is a `trio.abc.Channel[bytes]`: `receive` raises `trio.EndOfChannel` after the
peer closed cleanly, `trio.ClosedResourceError` after we closed it, and
`trio.BrokenResourceError` (with a `SessionClosed` as its cause) when the session failed.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager

import trio

from meshcore._nursery import open_hidden_nursery
from meshcore._transport import Transport
from meshcore.errors import HandshakeError, SessionClosed, TransportClosed
from meshcore.proto import constants as C
from meshcore.proto.framing import KeyRing, ReceiveKey, SendKey
from meshcore.proto.handshake import HandshakeResult, HandshakeRole, Initiator, Responder
from meshcore.proto.identity import Identity, PublicBundle
from meshcore.proto.rekey import RekeyInitiator, RekeyResponder
from meshcore.proto.session import (
    ACTIVE,
    MessageReceived,
    PeerClosed,
    SessionCore,
    SessionEvent,
    SessionFailed,
    SessionSettings,
)

__all__ = ["Session", "handshake_as_initiator", "handshake_as_responder", "open_session"]

log = logging.getLogger("meshcore.session")

_TYPE_INIT = 1
_TYPE_RESPONSE = 2
_TYPE_CONFIRM = 3
_TYPE_FRAME = 4


async def handshake_as_initiator(
    transport: Transport,
    identity: Identity,
    peer: PublicBundle,
    *,
    timeout: float = 2 * C.HANDSHAKE_TIMEOUT_S,
    network_id: bytes = b"",
) -> HandshakeResult:
    """Run the three-message handshake as initiator over `transport`.

    msg1 is sent again (fresh) every `HANDSHAKE_TIMEOUT_S` until msg2 arrives. Raises
    `HandshakeError` when the peer cannot be authenticated or nothing valid arrives within
    `timeout`, and `TransportClosed` if the transport closes.
    """
    with trio.move_on_after(timeout):
        while True:
            initiator = Initiator(identity, peer, network_id=network_id)
            await transport.send(initiator.start(trio.current_time()))
            with trio.move_on_after(C.HANDSHAKE_TIMEOUT_S):
                while True:
                    data = await transport.receive()
                    if not data or data[0] != _TYPE_RESPONSE:
                        continue
                    msg3, result = initiator.receive_response(data, trio.current_time())
                    await transport.send(msg3)
                    return result
    raise HandshakeError(f"handshake failed: no valid response from the peer within {timeout:g} s")


async def handshake_as_responder(
    transport: Transport,
    responder: Responder,
    *,
    timeout: float = 2 * C.HANDSHAKE_TIMEOUT_S,
) -> HandshakeResult:
    """Answer handshakes on `transport` until one completes (msg3 authenticates).

    Raises `HandshakeError` if none completes within `timeout`.
    """
    with trio.move_on_after(timeout):
        while True:
            data = await transport.receive()
            if not data:
                continue
            if data[0] == _TYPE_INIT:
                try:
                    await transport.send(responder.respond(data, trio.current_time()))
                except HandshakeError:
                    continue  # junk or a replay: stateless, nothing to undo
            elif data[0] == _TYPE_CONFIRM:
                try:
                    return responder.confirm(data, trio.current_time())
                except HandshakeError:
                    continue
    raise HandshakeError(f"handshake failed: the peer did not complete it within {timeout:g} s")


def _keyring_for(result: HandshakeResult, now: float) -> KeyRing:
    keys = KeyRing()
    keys.install(
        SendKey(result.send_key, result.remote_index, now),
        ReceiveKey(result.receive_key, result.local_index, now),
        now,
    )
    return keys


class Session(trio.abc.Channel[bytes]):
    """An end-to-end encrypted, ordered, exactly-once message session with one peer.

    Create it with `open_session`; it lives inside that `async with`.
    """

    def __init__(
        self,
        transport: Transport,
        result: HandshakeResult,
        settings: SessionSettings,
        inbox_limit: int,
    ) -> None:
        now = trio.current_time()
        self.handshake = result
        self.peer_id = result.peer_id
        self.transport = transport
        self.core = SessionCore(_keyring_for(result, now), now, settings)
        self._inbox: deque[bytes] = deque()
        self._inbox_limit = inbox_limit
        self._wake_writer = trio.Event()
        self._wake_timer = trio.Event()
        self._progress = trio.Event()
        self._closed_by_us = False
        self._eof = False
        self._failure: SessionClosed | None = None
        self._send_lock = trio.Lock()

    # ----------------------------------------------------------------- public API
    @property
    def close_reason(self) -> str | None:
        """Why the session ended (None while it is open)."""
        return self.core.close_reason

    @property
    def stats(self) -> object:
        """Counters: messages, bytes and frames each way, retransmissions, RTT."""
        return self.core.stats

    async def send(self, value: bytes) -> None:
        """Queue one message; waits while the send window is full (back-pressure).

        Raises `trio.ClosedResourceError` after `aclose`, `trio.BrokenResourceError`
        (cause: `SessionClosed`) once the session has ended.
        """
        async with self._send_lock:
            while not self.core.can_send():
                self._check_open()
                await self._wait_progress()
            self._check_open()
            self.core.send(bytes(value), trio.current_time())
            self._changed()

    async def receive(self) -> bytes:
        """The next message from the peer, in order.

        Raises `trio.EndOfChannel` once the peer closed cleanly and every message was read.
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
        if len(self._inbox) <= self._inbox_limit // 2 and self.core.acks_held:
            self.core.hold_acks(False, trio.current_time())
            self._changed()
        return payload

    async def wait_acknowledged(self) -> None:
        """Wait until the peer has acknowledged every message sent so far."""
        while not self.core.all_acked:
            self._check_open()
            await self._wait_progress()

    async def aclose(self, reason: str = "closed") -> None:
        """Close the session: tell the peer (best effort) and stop. Idempotent."""
        if self._closed_by_us:
            return
        self._closed_by_us = True
        self.core.close(0, reason, trio.current_time())
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            await self._flush()
        self._notify()

    # ----------------------------------------------------------------- tasks
    async def _run_reader(self) -> None:
        try:
            while True:
                data = await self.transport.receive()
                if not data or data[0] != _TYPE_FRAME:
                    continue  # late handshake retransmissions and the like
                self.core.receive_frame(data, trio.current_time())
                self._handle_events(self.core.events())
                self._changed()
        except TransportClosed as exc:
            self._set_failure(f"transport closed: {exc.reason}")

    async def _run_writer(self) -> None:
        while True:
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            try:
                await self._flush()
            except TransportClosed as exc:
                self._set_failure(f"transport closed: {exc.reason}")
                return

    async def _flush(self) -> None:
        for path, frame in self.core.outbox():
            if path is ACTIVE or path is self.transport:
                await self.transport.send(frame)
            else:
                await self._send_on_path(path, frame)

    async def _send_on_path(self, path: Hashable, frame: bytes) -> None:
        """Send on a specific path; overridden by the migrator that knows more than one."""
        await self.transport.send(frame)

    async def _run_timers(self) -> None:
        while True:
            deadline = self.core.get_timer()
            with trio.move_on_at(deadline if deadline is not None else math.inf):
                await self._wake_timer.wait()
            self._wake_timer = trio.Event()
            now = trio.current_time()
            if deadline is not None and now >= deadline:
                self.core.handle_timer(now)
                self._handle_events(self.core.events())
                self._changed()

    # ----------------------------------------------------------------- helpers
    def _handle_events(self, events: list[SessionEvent]) -> None:
        for event in events:
            if isinstance(event, MessageReceived):
                self._inbox.append(event.payload)
                if len(self._inbox) >= self._inbox_limit and not self.core.acks_held:
                    self.core.hold_acks(True, trio.current_time())
            elif isinstance(event, PeerClosed):
                log.info("session %s closed by peer: %s", self.peer_id, event.reason or "no reason")
                self._eof = True
            elif isinstance(event, SessionFailed):
                self._set_failure(event.reason)

    def _set_failure(self, reason: str) -> None:
        if self._failure is None and not self._eof and not self._closed_by_us:
            log.warning("session %s failed: %s", self.peer_id, reason)
            self._failure = SessionClosed(reason)
            self.core.fail(reason)
        self._notify()

    def _changed(self) -> None:
        self._wake_writer.set()
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
        if self._eof or self.core.close_reason is not None:
            reason = self.core.close_reason or "closed by peer"
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
        session.core.enable_rekey(initiator=lambda: RekeyInitiator(identity, peer))
    elif responder is not None:
        session.core.enable_rekey(responder=RekeyResponder(responder, result.peer_id))
    async with open_hidden_nursery() as nursery:
        nursery.start_soon(session._run_reader)
        nursery.start_soon(session._run_writer)
        nursery.start_soon(session._run_timers)
        try:
            yield session
        finally:
            await session.aclose()
            nursery.cancel_scope.cancel()
