"""The part of a `Session` that other threads drive (docs/tap.md): the data path's
`IoThread` serves its direct connections, a receiver callback takes messages as they arrive
in whichever thread handled their frames, and `send_nowait` seals and sends without trio.

The calls other threads make (`ready_to_send`, `send_nowait`, the links' frames) hold the
session's lock; `use_io_thread` and `attach_receiver` are set-up calls made on trio before
the traffic starts. What only trio may do (handling events other than messages, waking
waiters) is stashed and trio is woken for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from meshcore import _trace
from meshcore._iothread import IoThread
from meshcore.errors import SessionClosed
from meshcore.proto.paths import PingAnswered
from meshcore.proto.session import MessageReceived, SessionCore, SessionEvent

__all__ = ["SessionDataPath"]


class SessionDataPath:
    """The thread-facing calls of `meshcore._session.Session` (a base class of it)."""

    if TYPE_CHECKING:  # set by Session.__init__
        _lock: threading.RLock
        _core: SessionCore
        _token: trio.lowlevel.TrioToken
        _clock: trio.abc.Clock
        _io: IoThread | None
        _receiver: Callable[[bytes], None] | None
        _window_open: Callable[[], None] | None
        _window_blocked: bool
        _stashed: list[SessionEvent | PingAnswered]
        _kick_pending: bool
        _wake_timer: trio.Event

        def _changed(self) -> None: ...

        def _check_open(self, *, sending: bool = False) -> None: ...

    def use_io_thread(self, io: IoThread) -> None:
        """Let the data path's thread serve this session's direct connections from now on:
        their frames are read, opened, sealed and written there (docs/tap.md)."""
        self._io = io

    def attach_receiver(
        self, deliver: Callable[[bytes], None], window_open: Callable[[], None]
    ) -> None:
        """Hand each message to `deliver(payload)` as it arrives, in order, instead of
        queueing it for `receive` (which then only reports the end of the session), and call
        `window_open()` once `send_nowait` may succeed again after `ready_to_send` said no.

        Both run in whichever thread handled the frames (trio's, or the data path's);
        `deliver` under the session's lock, so it must not block and must not call into
        the session; `window_open` outside it.
        """
        self._receiver = deliver
        self._window_open = window_open
        self._wake_timer.set()

    def detach_receiver(self) -> None:
        """Undo `attach_receiver`: messages queue for `receive` again."""
        with self._lock:
            self._receiver = None
            self._window_open = None

    def ready_to_send(self) -> bool:
        """Whether `send_nowait` would take a message now; if not, the `window_open`
        callback of `attach_receiver` is called once it would. Thread-safe."""
        with self._lock:
            if self._core.can_send():
                return True
            self._window_blocked = True
            return False

    def send_nowait(self, value: bytes) -> bool:
        """Seal and send one message now if the window has room (False if not: see
        `ready_to_send`). Thread-safe, never blocks.

        Raises like `send` once the session is closed or has failed.
        """
        with self._lock:
            self._check_open(sending=True)
            core = self._core
            if not core.can_send():
                self._window_blocked = True
                return False
            if _trace.ENABLED:
                _trace.parent = _trace.key(value)
            try:
                core.send(value, self._clock.current_time())
            except SessionClosed as exc:  # the keys expired this very moment
                self._changed()
                raise trio.BrokenResourceError(exc.reason) from exc
            self._changed()
        _trace.parent = 0
        return True

    def _deliver_off_trio(self, events: list[SessionEvent | PingAnswered]) -> bool:
        """Hand messages to the receiver; keep everything else for trio (True if any)."""
        receiver = self._receiver
        kept = False
        for event in events:
            if receiver is not None and type(event) is MessageReceived:
                if _trace.ENABLED:
                    _trace.mark("session.deliver", event.payload, parent=_trace.parent)
                receiver(event.payload)
            else:
                self._stashed.append(event)
                kept = True
        return kept

    def _wake_trio(self) -> None:
        if self._kick_pending:
            return
        self._kick_pending = True
        try:
            self._token.run_sync_soon(self._woken)
        except trio.RunFinishedError:
            pass

    def _woken(self) -> None:
        self._kick_pending = False
        self._changed()
