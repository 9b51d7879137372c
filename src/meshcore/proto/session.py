"""Sans-IO session state: sequence numbers, cumulative acks, the bounded retransmit buffer,
reorder and dedup on receive, and the ack, keepalive, retransmit and dead-peer timers.

The core is path-agnostic: frames from any path go into `receive_frame`, and `outbox` says
what to transmit, either on the active path (`ACTIVE`) or on the path a frame came from
(path validation replies). Moving to a new path is `retransmit_unacked(now)`: every
unacknowledged message is sent again, as the same sealed bytes while its key is current,
and the receiver's replay window and sequence numbers drop whatever arrives twice.

Either direction can end on its own (`send_eof`, a half-close): the Eof takes the next
sequence number, so it arrives exactly once, after every message before it, and is
acknowledged like one. Once both directions ended and each was acknowledged, the session
finishes by itself: the side that completes it sends `Close(CLOSE_FINISHED)`, which also
acknowledges the other's Eof (docs/protocol.md). Its settings, states, events and counters
live in `meshcore.proto.sessiontypes` and are re-exported here; its sending half (the buffer
of unacknowledged messages, the send window, retransmission and acks) is its base,
`meshcore.proto.sessionsend.SessionSend`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Final

from meshcore.errors import (
    AuthenticationError,
    DecodeError,
    HandshakeError,
    MeshError,
    ReplayError,
    SessionClosed,
)
from meshcore.proto import constants as C
from meshcore.proto.framing import KeyRing
from meshcore.proto.inner import (
    CLOSE_FINISHED,
    Ack,
    Close,
    Data,
    Endpoints,
    Eof,
    InnerMessage,
    Keepalive,
    PathChallenge,
    PathResponse,
    RekeyFragment,
    decode_inner_untrusted,
    encode_inner,
)
from meshcore.proto.rekey import RekeyInitiator, RekeyResponder
from meshcore.proto.sessionend import linger_answer
from meshcore.proto.sessionrecv import Arrival, Inbound
from meshcore.proto.sessionrekey import RekeySchedule
from meshcore.proto.sessionsend import SessionSend, Unacked
from meshcore.proto.sessiontypes import (
    ACTIVE,
    FINISHED_REASON,
    EndpointsReceived,
    EofReceived,
    FrameResult,
    MessageReceived,
    PathChallengeReceived,
    PathResponseReceived,
    PeerClosed,
    RekeyFragmentReceived,
    SessionEvent,
    SessionFailed,
    SessionFinished,
    SessionSettings,
    SessionState,
    SessionStats,
)
from meshcore.proto.window import WindowSizer
from meshcore.proto.wire import clip_reason

__all__ = [
    "ACTIVE",
    "FINISHED_REASON",
    "EndpointsReceived",
    "EofReceived",
    "FrameResult",
    "MessageReceived",
    "PathChallengeReceived",
    "PathResponseReceived",
    "PeerClosed",
    "RekeyFragmentReceived",
    "SessionCore",
    "SessionEvent",
    "SessionFailed",
    "SessionFinished",
    "SessionSettings",
    "SessionState",
    "SessionStats",
]

_MAX_RTO_S: Final = 8.0


class SessionCore(SessionSend):
    """Reliable, ordered, exactly-once delivery of messages over sealed frames.

    Feed it frames with `receive_frame`, application messages with `send` (and the end of
    them with `send_eof`), and the clock with `handle_timer`; take what it decided from
    `events()` and `outbox()`.
    """

    def __init__(
        self,
        keys: KeyRing,
        now: float,
        settings: SessionSettings | None = None,
    ) -> None:
        self.keys = keys
        self.settings = settings or SessionSettings()
        self.state = SessionState.OPEN
        self.stats = SessionStats()
        self.close_reason: str | None = None
        self._next_seq = 0
        self._pending: deque[Unacked] = deque()
        self._pending_bytes = 0
        self._peer_acked = 0
        self._in = Inbound(self.settings.reorder_frames)
        self._eof_seq: int | None = None  # our Eof's sequence number, once sent
        self._linger_until: float | None = None
        self._last_sent = now
        self._last_received = now
        self._rto = self.settings.retransmit_timeout_s
        self._retransmit_at: float | None = None
        self._events: list[SessionEvent] = []
        self._outbox: list[tuple[Hashable, bytes]] = []
        self._dup_acks = 0
        self._coalescing = False
        self._window_frames = self.settings.window_frames
        self._window_cap = self.settings.window_bytes
        self._window_direct = False
        self._sizer = (
            WindowSizer(min_bytes=self.settings.min_window_bytes)
            if self.settings.adaptive_window
            else None
        )
        self._window_bytes = self._window_now()
        self._unsent = 0  # the tail of _pending waiting to be (re)sent within the window
        self._unsent_bytes = 0
        self._rekey: RekeySchedule | None = None

    # ------------------------------------------------------------------ rekeying
    def enable_rekey(
        self,
        *,
        initiator: Callable[[], RekeyInitiator] | None = None,
        responder: RekeyResponder | None = None,
    ) -> None:
        """Rekey with a fresh full handshake inside the session (docs/crypto-spec.md §3.8).

        The session's original initiator passes `initiator` (a factory of one attempt) and
        starts a handshake when the keys reach REKEY_AFTER_S, at most one attempt per
        REKEY_TIMEOUT_S; the other side passes `responder`. Fragments travel as sealed
        control messages; the new keys are installed once the handshake completes.
        """
        self._rekey = RekeySchedule(
            self.keys, self.queue_control, initiator=initiator, responder=responder
        )

    @property
    def rekeys(self) -> int:
        """Rekey handshakes completed in this session."""
        return 0 if self._rekey is None else self._rekey.rekeys

    # ------------------------------------------------------------------ application side
    def can_send(self) -> bool:
        """True while the send window has room for another message (or the Eof), and our
        direction has not ended."""
        return (
            self.state is SessionState.OPEN
            and self._eof_seq is None
            and len(self._pending) < self._window_frames
            and self._pending_bytes < self._window_bytes
        )

    @property
    def eof_sent(self) -> bool:
        """Our direction ended (`send_eof`)."""
        return self._eof_seq is not None

    @property
    def eof_received(self) -> bool:
        """The peer's Eof was delivered: every message it sent has arrived."""
        return self._in.eof_delivered

    @property
    def eof_acked(self) -> bool:
        """The peer acknowledged our Eof, and with it every message before it."""
        return self._eof_seq is not None and self._peer_acked > self._eof_seq

    @property
    def acks_held(self) -> bool:
        """True while acknowledgements are withheld (the application is not reading)."""
        return self._in.held

    def hold_acks(self, held: bool, now: float) -> None:
        """Withhold acks while the application's inbox is full; release sends one at once.

        This is the receiver's flow control: the peer's send window fills and its `send`
        waits, while keepalives keep flowing so the path never looks dead.
        """
        self._in.held = held
        if not held and self._in.owed_since is not None:
            self._send_ack(now)

    def send(self, payload: bytes, now: float) -> None:
        """Seal `payload` as the next message and queue it for the active path.

        Raises `SessionClosed` after close, and `MeshError` if the window is full (wait
        until `can_send()`).
        """
        if self.state is not SessionState.OPEN:
            raise SessionClosed(self.close_reason or "session closed")
        if self._eof_seq is not None:
            raise SessionClosed("the sending direction was ended with send_eof")
        if not self.can_send():
            raise MeshError("send window full: wait until the peer acknowledges")
        if len(payload) > C.MAX_MESSAGE_BYTES:
            raise MeshError(
                f"message of {len(payload)} bytes is larger than the "
                f"{C.MAX_MESSAGE_BYTES}-byte limit: split it"
            )
        self._queue_sequenced(payload, now)
        self.stats.messages_sent += 1
        self.stats.bytes_sent += len(payload)

    def send_eof(self, now: float) -> None:
        """End our direction (a half-close): an Eof follows every message sent so far, and
        `send` raises from now on; the peer's messages still arrive. Idempotent.

        Raises `SessionClosed` after close, and `MeshError` if the window is full (wait
        until `can_send()`).
        """
        if self.state is not SessionState.OPEN:
            raise SessionClosed(self.close_reason or "session closed")
        if self._eof_seq is not None:
            return
        if not (len(self._pending) < self._window_frames):
            raise MeshError("send window full: wait until the peer acknowledges")
        self._eof_seq = self._next_seq
        self._queue_sequenced(None, now)

    def close(self, code: int, reason: str, now: float) -> None:
        """Tell the peer we are closing (best effort) and stop; idempotent."""
        if self.state is not SessionState.OPEN:
            return
        try:
            frame = self._seal(encode_inner(Close(code, clip_reason(reason))), now)
        except SessionClosed:
            return  # the keys expired: the session already failed, nothing to tell
        self._transmit(ACTIVE, frame, now)
        self._finish(reason)

    def seal_control(self, message: InnerMessage, now: float) -> bytes:
        """Seal an unreliable control message (path challenge, endpoints, rekey fragment).

        The caller sends the returned frame on the path of its choice.
        """
        if self.state is not SessionState.OPEN:
            raise SessionClosed(self.close_reason or "session closed")
        return self._seal(encode_inner(message, self.settings.pad_to), now)

    def queue_control(self, message: InnerMessage, now: float, path: Hashable = ACTIVE) -> None:
        """Seal an unreliable control message and queue it for `path`."""
        self._transmit(path, self.seal_control(message, now), now)

    # ------------------------------------------------------------------ network side
    def receive_frame(self, frame: bytes, now: float, path: Hashable = ACTIVE) -> FrameResult:
        """Authenticate, decrypt and process one frame from `path`; say what it was.

        Forged, tampered and replayed frames are counted and dropped without changing any
        state; an authenticated but malformed message fails the session.
        """
        if self.state is not SessionState.OPEN:
            if self._linger_until is not None:
                self._linger_receive(frame, now)
            return FrameResult.DROPPED
        try:
            plaintext = self.keys.open(frame, now)
        except ReplayError:
            # a retransmission we already have: the sender missed our ack, so ack again
            self.stats.duplicates += 1
            self.stats.replayed += 1
            self._send_ack(now)
            return FrameResult.DROPPED
        except (AuthenticationError, DecodeError):
            self.stats.rejected += 1
            return FrameResult.DROPPED
        except MeshError:
            # an expired key or the forgery budget: nothing authenticated arrived
            self.stats.rejected += 1
            return FrameResult.DROPPED
        self._last_received = now
        self.stats.frames_received += 1
        try:
            message = decode_inner_untrusted(plaintext)
        except DecodeError as exc:
            self._fail(f"peer sent a malformed message: {exc}")
            return FrameResult.DROPPED
        try:
            self._dispatch(message, now, path)
        except SessionClosed:
            pass  # replying needed a key that expired; the session failed with that reason
        if type(message) is PathChallenge or type(message) is PathResponse:
            return FrameResult.PROBE
        return FrameResult.ACCEPTED

    def _dispatch(self, message: InnerMessage, now: float, path: Hashable) -> None:
        if isinstance(message, Data):
            self._on_ack(message.ack, now, pure=False)
            if self.state is SessionState.OPEN:
                self._on_data(message.seq, message.payload, now)
        elif isinstance(message, Eof):
            self._on_ack(message.ack, now, pure=False)
            if self.state is SessionState.OPEN:
                self._on_peer_eof(message.seq, now)
        elif isinstance(message, Ack):
            self._on_ack(message.ack, now)
        elif isinstance(message, Keepalive):
            pass
        elif isinstance(message, PathChallenge):
            self._transmit(path, self.seal_control(PathResponse(message.data), now), now)
            self._events.append(PathChallengeReceived(path, message.data))
        elif isinstance(message, PathResponse):
            self._events.append(PathResponseReceived(path, message.data))
        elif isinstance(message, Endpoints):
            self._events.append(EndpointsReceived(message.endpoints))
        elif isinstance(message, RekeyFragment):
            if self._rekey is None:
                self._events.append(RekeyFragmentReceived(message))
                return
            try:
                self._rekey.receive(message, now)
            except HandshakeError:
                # the peer is authenticated (the fragment was sealed), so this is a bug on
                # its side or a stale attempt: drop it; the initiator retries later
                self.stats.rejected += 1
        elif isinstance(message, Close):
            self._on_close(message, now)

    def _on_close(self, message: Close, now: float) -> None:
        if message.code == CLOSE_FINISHED and self.eof_received and self._eof_seq is not None:
            # the peer finished: it has all we sent, our Eof included (its ack may be lost);
            # it lingers until it hears that we finished too
            self._acknowledge_everything()
            self._events.append(SessionFinished())
            self._finish(FINISHED_REASON)
            self._say_finished(now)
            return
        self._events.append(PeerClosed(message.code, message.reason))
        self._finish(f"peer closed: {message.reason}" if message.reason else "peer closed")

    def _on_peer_eof(self, seq: int, now: float) -> None:
        problem = self._in.end_at(seq)
        if problem is not None:
            self._fail(problem)
            return
        self._on_data(seq, None, now)

    def _on_data(self, seq: int, payload: bytes | None, now: float) -> None:
        eof = self._in.eof_seq
        if eof is not None and seq > eof:
            self._fail(f"peer sent message {seq} after ending its stream at {eof}")
            return
        arrival = self._in.accept(seq, payload, self._deliver)
        if arrival is Arrival.OLD or arrival is Arrival.BEYOND:
            self.stats.duplicates += 1
            if arrival is Arrival.OLD:  # the sender missed our ack (e.g. across a path switch)
                self._owe_ack(now, urgent=True)
            return
        size = 0 if payload is None else len(payload)
        if arrival is Arrival.EARLY:
            # a gap: ack at once, so the sender learns of the loss (fast retransmit)
            self._owe_ack(now, urgent=True, nbytes=size)
            return
        if arrival is Arrival.REPEAT:
            self.stats.duplicates += 1
        if self.eof_received and self.eof_acked:
            self._check_finished(now)  # which acknowledges it
        else:  # the Eof at once: the peer waits for it to know that everything arrived
            self._owe_ack(now, urgent=self.eof_received, nbytes=size)

    def _deliver(self, payload: bytes | None) -> None:
        if payload is None:
            self._events.append(EofReceived())
            return
        self.stats.messages_received += 1
        self.stats.bytes_received += len(payload)
        self._events.append(MessageReceived(payload))

    def _check_finished(self, now: float) -> None:
        """Both directions ended and our Eof was acknowledged: finish, tell the peer, and
        linger until it says it finished too (or a little while): a peer that missed our
        last ack resends its Eof, and is answered again."""
        if self.state is not SessionState.OPEN or not (self.eof_received and self.eof_acked):
            return
        self._events.append(SessionFinished())
        self._finish(FINISHED_REASON)
        self._linger_until = now + 2 * self.settings.retransmit_timeout_s
        self._say_finished(now)

    def _say_finished(self, now: float) -> None:
        """Acknowledge everything the peer sent, then Close(CLOSE_FINISHED), freshly sealed."""
        try:
            ack = self._seal(encode_inner(Ack(self._in.next_seq), self.settings.pad_to), now)
            close = self._seal(encode_inner(Close(CLOSE_FINISHED, "finished")), now)
        except SessionClosed:
            return  # the keys expired this very moment: nothing more to say
        self._mark_acked()
        self._transmit(ACTIVE, ack, now)
        self._transmit(ACTIVE, close, now)

    def _linger_receive(self, frame: bytes, now: float) -> None:
        if not linger_answer(self.keys, frame, now, self._say_finished):
            self._linger_until = None

    @property
    def lingering(self) -> bool:
        """Finished, and waiting (briefly) for the peer to say it finished too."""
        return self._linger_until is not None

    # ------------------------------------------------------------------ paths and timers
    def get_timer(self) -> float | None:
        """When `handle_timer` next needs to run (absolute time), or None."""
        if self.state is not SessionState.OPEN:
            return self._linger_until
        s = self.settings
        deadlines = [self._last_sent + s.keepalive_s]
        if s.dead_after_s is not None:
            deadlines.append(self._last_received + s.dead_after_s)
        ack_at = self._in.ack_due_at(s.ack_delay_s)
        if ack_at is not None:
            deadlines.append(ack_at)
        if self._retransmit_at is not None:
            deadlines.append(self._retransmit_at)
        send_key = self.keys.send_key
        if send_key is not None:
            deadlines.append(send_key.created_at + C.REJECT_AFTER_S)
        rekey_at = None if self._rekey is None else self._rekey.next_at()
        if rekey_at is not None:
            deadlines.append(rekey_at)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        """Run whatever timers are due at `now`."""
        try:
            self._handle_timer(now)
        except SessionClosed:
            pass  # a send needed a key that expired; the session failed with that reason

    def _handle_timer(self, now: float) -> None:
        if self.state is not SessionState.OPEN:
            if self._linger_until is not None and now >= self._linger_until:
                self._linger_until = None
            return
        if self.keys.expired(now):
            self._fail(
                f"session keys expired: no new handshake completed within {C.REJECT_AFTER_S:g} s"
            )
            return
        s = self.settings
        if s.dead_after_s is not None and now >= self._last_received + s.dead_after_s:
            self._fail(f"no authenticated frame from the peer for {s.dead_after_s:g} s")
            return
        ack_at = self._in.ack_due_at(s.ack_delay_s)
        if ack_at is not None and now >= ack_at:
            self._send_ack(now)
        if self._retransmit_at is not None and now >= self._retransmit_at:
            self._rto = min(self._rto * 2, _MAX_RTO_S)
            self.retransmit_unacked(now)
        if now >= self._last_sent + s.keepalive_s:
            self._transmit(ACTIVE, self._seal(encode_inner(Keepalive()), now), now)
        if self._rekey is not None:
            self._rekey.maybe_start(now)

    @property
    def last_received(self) -> float:
        """When the last authenticated frame arrived (any path)."""
        return self._last_received

    # ------------------------------------------------------------------ results
    def events(self) -> list[SessionEvent]:
        """Take the events produced since the last call."""
        events, self._events = self._events, []
        return events

    def outbox(self) -> list[tuple[Hashable, bytes]]:
        """Take the frames to transmit: `(path, frame)`, path `ACTIVE` for the active one."""
        out, self._outbox = self._outbox, []
        return out

    def fail(self, reason: str) -> None:
        """Mark the session failed from outside (e.g. every path is gone)."""
        self._fail(reason)

    # ------------------------------------------------------------------ internals
    def _seal(self, plaintext: bytes, now: float) -> bytes:
        try:
            return self.keys.seal(plaintext, now)
        except MeshError as exc:
            self._fail(f"cannot send: {exc}")
            raise SessionClosed(self.close_reason or str(exc)) from exc

    def _transmit(self, path: Hashable, frame: bytes, now: float) -> None:
        self._outbox.append((path, frame))
        self._last_sent = now
        self.stats.frames_sent += 1

    def _fail(self, reason: str) -> None:
        if self.state is SessionState.OPEN:
            self._events.append(SessionFailed(reason))
            self._finish(reason)

    def _finish(self, reason: str) -> None:
        self.state = SessionState.CLOSED
        self.close_reason = reason
        self._in.buffered.clear()
