"""The sending half of a session core (`meshcore.proto.session`): the buffer of messages
sent and not yet acknowledged, the send window over it (the path's cap, or the adaptive
window), retransmission (the timer's, fast retransmit on duplicate acks, and all of it on a
path switch), and the acknowledgements we send for what arrived (docs/protocol.md).

`SessionSend` is the base of `SessionCore`, which initialises the state declared here and
provides sealing, transmitting and failing; the split keeps each module one job.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Final

import attrs

from meshcore.proto.framing import KeyRing
from meshcore.proto.inner import Ack, Eof, encode_data, encode_inner
from meshcore.proto.sessionrecv import Inbound
from meshcore.proto.sessiontypes import ACTIVE, SessionSettings, SessionState, SessionStats
from meshcore.proto.window import WindowSizer, path_caps

__all__ = ["SessionSend", "Unacked"]

_FAST_RETRANSMIT_DUP_ACKS: Final = 3


@attrs.define(slots=True)
class Unacked:
    """A message sent and not yet acknowledged, as its sealed frame."""

    seq: int
    payload: bytes | None
    """None for our Eof."""
    frame: bytes
    first_sent: float
    retransmitted: bool = False


class SessionSend:
    """Send buffer, window, retransmission and acks of one `SessionCore`."""

    keys: KeyRing
    settings: SessionSettings
    state: SessionState
    stats: SessionStats
    _in: Inbound
    _next_seq: int
    _eof_seq: int | None
    _pending: deque[Unacked]
    _pending_bytes: int
    _peer_acked: int
    _rto: float
    _retransmit_at: float | None
    _dup_acks: int
    _coalescing: bool
    _window_frames: int
    _window_cap: int
    _window_direct: bool
    _sizer: WindowSizer | None
    _window_bytes: int
    _unsent: int
    """The tail of `_pending` waiting to be (re)sent within the window."""
    _unsent_bytes: int

    if TYPE_CHECKING:  # provided by SessionCore

        @property
        def eof_received(self) -> bool: ...

        def _check_finished(self, now: float) -> None: ...

        def _fail(self, reason: str) -> None: ...

        def _seal(self, plaintext: bytes, now: float) -> bytes: ...

        def _transmit(self, path: Hashable, frame: bytes, now: float) -> None: ...

    def use_direct_window(self, direct: bool, now: float, relay_cap: int | None = None) -> None:
        """Size the send window for the active path: wide on a direct path; on the relay,
        `relay_cap` (the circuit's credit window) if the relay grants credits, else narrow
        enough for its drop-tail circuit queue. Set it before `retransmit_unacked` when the
        path changes; a new path is measured afresh, a new cap on the same path is not."""
        s = self.settings
        frames, nbytes = path_caps(
            direct,
            (s.direct_window_frames, s.direct_window_bytes),
            (s.window_frames, s.window_bytes),
            relay_cap,
        )
        if (frames, nbytes) != (self._window_frames, self._window_cap):
            if self._sizer is not None and direct != self._window_direct:
                self._sizer.reset()  # another path: measure it afresh
            self._window_direct = direct
            self._window_frames, self._window_cap = frames, nbytes
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

    def _queue_sequenced(self, payload: bytes | None, now: float) -> None:
        """Seal the next sequence number (a message, or None: our Eof) and queue it."""
        seq = self._next_seq
        self._next_seq = seq + 1
        waiting = self._unsent > 0  # keep the buffer's unsent part a tail: queue behind it
        frame = self._seal_sequenced(seq, payload, now, transmit=not waiting)
        size = 0 if payload is None else len(payload)
        if self._sizer is not None and not waiting:
            self._sizer.on_sent(seq, now, idle=not self._pending)
        self._pending.append(Unacked(seq, payload, frame, now))
        self._pending_bytes += size
        if waiting:
            self._unsent += 1
            self._unsent_bytes += size
            self._send_unsent(now)
        if self._retransmit_at is None:
            self._retransmit_at = now + self._rto

    def _acknowledge_everything(self) -> None:
        self._peer_acked = self._next_seq
        self._pending.clear()
        self._pending_bytes = 0
        self._unsent = self._unsent_bytes = 0
        self._retransmit_at = None

    def _owe_ack(self, now: float, *, urgent: bool, nbytes: int = 0) -> None:
        inbound = self._in
        inbound.owe(now, nbytes)
        if urgent or (not self._coalescing and self._ack_due()):
            self._send_ack(now)

    def _ack_due(self) -> bool:
        s, inbound = self.settings, self._in
        return inbound.owed_frames >= s.ack_every_frames or inbound.owed_bytes >= s.ack_every_bytes

    def coalesce_acks(self, on: bool, now: float) -> None:
        """From `coalesce_acks(True, now)` to `coalesce_acks(False, now)` (around a batch of
        frames read at once), acknowledgements due by count wait, and the end sends one for
        all of them: one ack per batch instead of one per 16 KiB (urgent ones still go)."""
        self._coalescing = on
        if not on and self.state is SessionState.OPEN and self._ack_due():
            self._send_ack(now)

    def _send_ack(self, now: float) -> None:
        if self._in.held:
            return
        self._mark_acked()
        self._transmit(ACTIVE, self._seal(encode_inner(Ack(self._in.next_seq)), now), now)

    def _mark_acked(self) -> None:
        self._in.mark_acked()

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
            size = 0 if entry.payload is None else len(entry.payload)
            self._pending_bytes -= size
            if sizer is not None:
                sizer.on_acked(entry.seq, size, now)
            if self._unsent > len(pending):  # acked while waiting to be resent
                self._unsent -= 1
                self._unsent_bytes -= size
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
        if self.eof_received and self._eof_seq is not None:
            self._check_finished(now)

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
        if self._in.next_seq:
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
            size = 0 if entry.payload is None else len(entry.payload)
            in_flight = self._pending_bytes - self._unsent_bytes
            frames_in_flight = len(pending) - self._unsent
            if frames_in_flight and (
                in_flight + size > self._window_bytes or frames_in_flight >= self._window_frames
            ):
                break
            self._unsent -= 1
            self._unsent_bytes -= size
            self._resend(entry, now)
            sent += 1
        return sent

    def _resend(self, entry: Unacked, now: float) -> None:
        send_key = self.keys.send_key
        if send_key is not None and _receiver_index(entry.frame) != send_key.remote_index:
            entry.frame = self._seal_sequenced(entry.seq, entry.payload, now, transmit=False)
        entry.retransmitted = True
        if self._sizer is not None:
            self._sizer.forget(entry.seq)
        self._transmit(ACTIVE, entry.frame, now)
        self.stats.retransmitted += 1

    def _seal_sequenced(
        self, seq: int, payload: bytes | None, now: float, *, transmit: bool = True
    ) -> bytes:
        """Seal message `seq` (None: our Eof) with the piggybacked ack."""
        ack = self._in.ack
        pad_to = self.settings.pad_to
        if payload is None:
            plaintext = encode_inner(Eof(seq, ack), pad_to)
        else:
            plaintext = encode_data(seq, ack, payload, pad_to)
        frame = self._seal(plaintext, now)
        if self._in.ack_owed:
            self._mark_acked()
        if transmit:
            self._transmit(ACTIVE, frame, now)
        return frame


def _receiver_index(frame: bytes) -> int:
    return int.from_bytes(frame[4:8], "little")
