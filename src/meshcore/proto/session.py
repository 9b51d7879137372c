"""Sans-IO session state: sequence numbers, cumulative acks, the bounded retransmit buffer,
reorder and dedup on receive, and the ack, keepalive, retransmit and dead-peer timers.

The core is path-agnostic: frames from any path go into `receive_frame`, and `outbox` says
what to transmit, either on the active path (`ACTIVE`) or on the path a frame came from
(path validation replies). Moving to a new path is `retransmit_unacked(now)`: every
unacknowledged message is sent again, as the same sealed bytes while its key is current,
and the receiver's replay window and sequence numbers drop whatever arrives twice.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable
from typing import Final

import attrs

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
    Ack,
    Close,
    Data,
    Endpoints,
    InnerMessage,
    Keepalive,
    PathChallenge,
    PathResponse,
    RekeyFragment,
    decode_inner_untrusted,
    encode_data,
    encode_inner,
)
from meshcore.proto.rekey import RekeyInitiator, RekeyOutput, RekeyResponder, install_result
from meshcore.proto.sessiontypes import (
    EndpointsReceived,
    FrameResult,
    MessageReceived,
    PathChallengeReceived,
    PathResponseReceived,
    PeerClosed,
    RekeyFragmentReceived,
    SessionEvent,
    SessionFailed,
    SessionSettings,
    SessionState,
    SessionStats,
)
from meshcore.proto.window import WindowSizer
from meshcore.proto.wire import clip_reason

__all__ = [
    "ACTIVE",
    "EndpointsReceived",
    "FrameResult",
    "MessageReceived",
    "PathChallengeReceived",
    "PathResponseReceived",
    "PeerClosed",
    "RekeyFragmentReceived",
    "SessionCore",
    "SessionEvent",
    "SessionFailed",
    "SessionSettings",
    "SessionState",
    "SessionStats",
]

ACTIVE: Final = None
"""Outbox destination meaning "whatever path is active now"."""

_MAX_RTO_S: Final = 8.0
_FAST_RETRANSMIT_DUP_ACKS: Final = 3


@attrs.define(slots=True)
class _Pending:
    seq: int
    payload: bytes
    frame: bytes
    first_sent: float
    retransmitted: bool = False


class SessionCore:
    """Reliable, ordered, exactly-once delivery of messages over sealed frames.

    Feed it frames with `receive_frame`, application messages with `send`, and the clock with
    `handle_timer`; take what it decided from `events()` and `outbox()`.
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
        self._pending: deque[_Pending] = deque()
        self._pending_bytes = 0
        self._peer_acked = 0
        self._recv_next = 0
        self._reorder: dict[int, bytes] = {}
        self._ack_sent = 0
        self._ack_owed_since: float | None = None
        self._ack_owed_frames = 0
        self._ack_owed_bytes = 0
        self._last_sent = now
        self._last_received = now
        self._rto = self.settings.retransmit_timeout_s
        self._retransmit_at: float | None = None
        self._events: list[SessionEvent] = []
        self._outbox: list[tuple[Hashable, bytes]] = []
        self._acks_held = False
        self._dup_acks = 0
        self._window_frames = self.settings.window_frames
        self._window_cap = self.settings.window_bytes
        self._sizer = (
            WindowSizer(min_bytes=self.settings.min_window_bytes)
            if self.settings.adaptive_window
            else None
        )
        self._window_bytes = self._window_now()
        self._unsent = 0  # the tail of _pending waiting to be (re)sent within the window
        self._unsent_bytes = 0
        self._rekey_initiator: Callable[[], RekeyInitiator] | None = None
        self._rekey_responder: RekeyResponder | None = None
        self._rekey_attempt: RekeyInitiator | None = None
        self._rekey_next_try = -math.inf
        self.rekeys = 0

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
        self._rekey_initiator = initiator
        self._rekey_responder = responder

    def _maybe_start_rekey(self, now: float) -> None:
        factory = self._rekey_initiator
        if factory is None or now < self._rekey_next_try or not self.keys.needs_rekey(now):
            return
        if self._rekey_attempt is not None:
            self._rekey_attempt.close()
        attempt = factory()
        self._rekey_attempt = attempt
        self._rekey_next_try = now + C.REKEY_TIMEOUT_S
        self._apply_rekey(attempt.start(now), now)

    def _on_rekey_fragment(self, fragment: RekeyFragment, now: float) -> None:
        try:
            if self._rekey_responder is not None:
                self._apply_rekey(self._rekey_responder.receive(fragment, now), now)
            elif self._rekey_attempt is not None:
                self._apply_rekey(self._rekey_attempt.receive(fragment, now), now)
        except HandshakeError:
            # the peer is authenticated (the fragment was sealed), so this is a bug on its
            # side or a stale attempt: drop it; the initiator retries after REKEY_TIMEOUT_S
            self.stats.rejected += 1

    def _apply_rekey(self, output: RekeyOutput, now: float) -> None:
        for fragment in output.fragments:
            self.queue_control(fragment, now)
        if output.result is not None:
            install_result(self.keys, output.result, now)
            self.rekeys += 1
            self._rekey_attempt = None

    # ------------------------------------------------------------------ application side
    def can_send(self) -> bool:
        """True while the send window has room for another message."""
        return (
            self.state is SessionState.OPEN
            and len(self._pending) < self._window_frames
            and self._pending_bytes < self._window_bytes
        )

    def use_direct_window(self, direct: bool, now: float) -> None:
        """Size the send window for the active path: wide on a direct path, narrow enough
        for the relay's per-circuit queue on the relay (its drop-tail would cost
        retransmissions). Set it before `retransmit_unacked` when the path changes."""
        s = self.settings
        if direct:
            frames, nbytes = s.direct_window_frames, s.direct_window_bytes
        else:
            frames, nbytes = s.window_frames, s.window_bytes
        if (frames, nbytes) != (self._window_frames, self._window_cap):
            self._window_frames, self._window_cap = frames, nbytes
            if self._sizer is not None:
                self._sizer.reset()  # another path: measure it afresh
            self._window_bytes = self._window_now()
            self._send_unsent(now)

    @property
    def window_bytes(self) -> int:
        """Bytes that may be unacknowledged now (the adaptive window, or the path's cap)."""
        return self._window_bytes

    @property
    def window_sizer(self) -> WindowSizer | None:
        """The estimates behind the adaptive window (None when it is off)."""
        return self._sizer

    def _window_now(self) -> int:
        sizer = self._sizer
        return self._window_cap if sizer is None else sizer.window(self._window_cap)

    @property
    def all_acked(self) -> bool:
        """True when the peer has acknowledged every message sent so far."""
        return not self._pending

    @property
    def unacked(self) -> int:
        """Messages sent but not yet acknowledged."""
        return len(self._pending)

    @property
    def acks_held(self) -> bool:
        """True while acknowledgements are withheld (the application is not reading)."""
        return self._acks_held

    def hold_acks(self, held: bool, now: float) -> None:
        """Withhold acks while the application's inbox is full; release sends one at once.

        This is the receiver's flow control: the peer's send window fills and its `send`
        waits, while keepalives keep flowing so the path never looks dead.
        """
        self._acks_held = held
        if not held and self._ack_owed_since is not None:
            self._send_ack(now)

    def send(self, payload: bytes, now: float) -> None:
        """Seal `payload` as the next message and queue it for the active path.

        Raises `SessionClosed` after close, and `MeshError` if the window is full (wait
        until `can_send()`).
        """
        if self.state is not SessionState.OPEN:
            raise SessionClosed(self.close_reason or "session closed")
        if not self.can_send():
            raise MeshError("send window full: wait until the peer acknowledges")
        if len(payload) > C.MAX_MESSAGE_BYTES:
            raise MeshError(
                f"message of {len(payload)} bytes is larger than the "
                f"{C.MAX_MESSAGE_BYTES}-byte limit: split it"
            )
        seq = self._next_seq
        self._next_seq = seq + 1
        waiting = self._unsent > 0  # keep the buffer's unsent part a tail: queue behind it
        frame = self._seal_data(seq, payload, now, transmit=not waiting)
        if self._sizer is not None and not waiting:
            self._sizer.on_sent(seq, now, idle=not self._pending)
        self._pending.append(_Pending(seq, payload, frame, now))
        self._pending_bytes += len(payload)
        if waiting:
            self._unsent += 1
            self._unsent_bytes += len(payload)
            self._send_unsent(now)
        if self._retransmit_at is None:
            self._retransmit_at = now + self._rto
        self.stats.messages_sent += 1
        self.stats.bytes_sent += len(payload)

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
            if self._rekey_initiator is None and self._rekey_responder is None:
                self._events.append(RekeyFragmentReceived(message))
            else:
                self._on_rekey_fragment(message, now)
        elif isinstance(message, Close):
            self._events.append(PeerClosed(message.code, message.reason))
            why = message.reason or "no reason given"
            self._finish(f"closed by peer: {why}")

    def _on_data(self, seq: int, payload: bytes, now: float) -> None:
        if seq < self._recv_next:
            # the sender missed our ack (e.g. across a path switch): ack again at once
            self.stats.duplicates += 1
            self._owe_ack(now, urgent=True)
            return
        if seq >= self._recv_next + self.settings.reorder_frames:
            self.stats.duplicates += 1
            return
        if seq == self._recv_next:
            self._deliver(payload)
            nxt = self._recv_next
            while nxt in self._reorder:
                self._deliver(self._reorder.pop(nxt))
                nxt = self._recv_next
        elif seq not in self._reorder:
            # a gap: ack at once, so the sender learns of the loss (fast retransmit)
            self._reorder[seq] = payload
            self._ack_owed_bytes += len(payload)
            self._owe_ack(now, urgent=True)
            return
        else:
            self.stats.duplicates += 1
        self._ack_owed_bytes += len(payload)
        self._owe_ack(now, urgent=False)

    def _deliver(self, payload: bytes) -> None:
        self._recv_next += 1
        self.stats.messages_received += 1
        self.stats.bytes_received += len(payload)
        self._events.append(MessageReceived(payload))

    def _owe_ack(self, now: float, *, urgent: bool) -> None:
        self._ack_owed_frames += 1
        if self._ack_owed_since is None:
            self._ack_owed_since = now
        s = self.settings
        if (
            urgent
            or self._ack_owed_frames >= s.ack_every_frames
            or self._ack_owed_bytes >= s.ack_every_bytes
        ):
            self._send_ack(now)

    def _send_ack(self, now: float) -> None:
        if self._acks_held:
            return
        self._mark_acked()
        self._transmit(ACTIVE, self._seal(encode_inner(Ack(self._recv_next)), now), now)

    def _mark_acked(self) -> None:
        self._ack_sent = self._recv_next
        self._ack_owed_since = None
        self._ack_owed_frames = 0
        self._ack_owed_bytes = 0

    def _on_ack(self, ack: int, now: float, *, pure: bool = True) -> None:
        if ack < self._peer_acked:
            return
        if ack == self._peer_acked:
            # only an ack without data is a duplicate ack (RFC 5681 §2): a burst of the
            # peer's data frames all carry the same piggybacked ack and say nothing of loss
            if self._pending and pure:
                self._dup_acks += 1
                if self._dup_acks == _FAST_RETRANSMIT_DUP_ACKS:
                    self._resend(self._pending[0], now)
            return
        self._dup_acks = 0
        if ack > self._next_seq:
            self._fail(f"peer acknowledged message {ack - 1}, which was never sent")
            return
        self._peer_acked = ack
        pending = self._pending
        sample: float | None = None
        sizer = self._sizer
        while pending and pending[0].seq < ack:
            entry = pending.popleft()
            self._pending_bytes -= len(entry.payload)
            if sizer is not None:
                sizer.on_acked(entry.seq, len(entry.payload), now)
            if self._unsent > len(pending):  # acked while waiting to be resent
                self._unsent -= 1
                self._unsent_bytes -= len(entry.payload)
            if not entry.retransmitted:
                sample = now - entry.first_sent
        if sample is not None:
            rtt = self.stats.rtt_s
            self.stats.rtt_s = sample if rtt is None else 0.875 * rtt + 0.125 * sample
        self._rto = self.settings.retransmit_timeout_s
        self._retransmit_at = now + self._rto if pending else None
        if sizer is not None:
            self._window_bytes = sizer.window(self._window_cap)
        if self._unsent:
            self._send_unsent(now)

    # ------------------------------------------------------------------ paths and timers
    def retransmit_unacked(self, now: float) -> int:
        """Send every unacknowledged message again on the active path; returns how many.

        Used when the session moves to a new path and by the retransmission timer. A frame
        whose key is still the current send key goes out as the same sealed bytes; one
        sealed under a replaced key is sealed again under the current key (new counter,
        same sequence number), so no nonce is ever reused. What we received is acknowledged
        again too: an ack sent on the path just lost (the peer moved first and resent) would
        otherwise cost the peer a retransmission timeout.
        """
        if self.state is not SessionState.OPEN:
            return 0
        if self._recv_next:
            self._send_ack(now)
        self._unsent = len(self._pending)
        self._unsent_bytes = self._pending_bytes
        sent = self._send_unsent(now)
        if self._pending:
            self._retransmit_at = now + self._rto
        return sent

    def _send_unsent(self, now: float) -> int:
        """Resend the waiting tail of the buffer, oldest first, as far as the window allows
        (what is already in flight counts); the rest goes out as acks make room."""
        sent = 0
        pending = self._pending
        while self._unsent:
            entry = pending[len(pending) - self._unsent]
            in_flight = self._pending_bytes - self._unsent_bytes
            frames_in_flight = len(pending) - self._unsent
            if frames_in_flight and (
                in_flight + len(entry.payload) > self._window_bytes
                or frames_in_flight >= self._window_frames
            ):
                break
            self._unsent -= 1
            self._unsent_bytes -= len(entry.payload)
            self._resend(entry, now)
            sent += 1
        return sent

    def _resend(self, entry: _Pending, now: float) -> None:
        send_key = self.keys.send_key
        if send_key is not None and _receiver_index(entry.frame) != send_key.remote_index:
            entry.frame = self._seal_data(entry.seq, entry.payload, now, transmit=False)
        entry.retransmitted = True
        if self._sizer is not None:
            self._sizer.forget(entry.seq)
        self._transmit(ACTIVE, entry.frame, now)
        self.stats.retransmitted += 1

    def get_timer(self) -> float | None:
        """When `handle_timer` next needs to run (absolute time), or None."""
        if self.state is not SessionState.OPEN:
            return None
        s = self.settings
        deadlines = [self._last_sent + s.keepalive_s]
        if s.dead_after_s is not None:
            deadlines.append(self._last_received + s.dead_after_s)
        if self._ack_owed_since is not None and not self._acks_held:
            deadlines.append(self._ack_owed_since + s.ack_delay_s)
        if self._retransmit_at is not None:
            deadlines.append(self._retransmit_at)
        send_key = self.keys.send_key
        if send_key is not None:
            deadlines.append(send_key.created_at + C.REJECT_AFTER_S)
            if self._rekey_initiator is not None:
                rekey_at = send_key.created_at + C.REKEY_AFTER_S
                deadlines.append(max(rekey_at, self._rekey_next_try))
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        """Run whatever timers are due at `now`."""
        try:
            self._handle_timer(now)
        except SessionClosed:
            pass  # a send needed a key that expired; the session failed with that reason

    def _handle_timer(self, now: float) -> None:
        if self.state is not SessionState.OPEN:
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
        if (
            self._ack_owed_since is not None
            and not self._acks_held
            and now >= self._ack_owed_since + s.ack_delay_s
        ):
            self._send_ack(now)
        if self._retransmit_at is not None and now >= self._retransmit_at:
            self._rto = min(self._rto * 2, _MAX_RTO_S)
            self.retransmit_unacked(now)
        if now >= self._last_sent + s.keepalive_s:
            self._transmit(ACTIVE, self._seal(encode_inner(Keepalive()), now), now)
        self._maybe_start_rekey(now)

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
    def _seal_data(self, seq: int, payload: bytes, now: float, *, transmit: bool = True) -> bytes:
        ack = self._ack_sent if self._acks_held else self._recv_next
        frame = self._seal(encode_data(seq, ack, payload, self.settings.pad_to), now)
        if self._ack_owed_since is not None and not self._acks_held:
            self._mark_acked()
        if transmit:
            self._transmit(ACTIVE, frame, now)
        return frame

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
        self._reorder.clear()


def _receiver_index(frame: bytes) -> int:
    return int.from_bytes(frame[4:8], "little")
