"""The data path's own thread: an epoll loop that reads and writes the TAP device and the
direct connections outside the trio thread, so that a frame never waits for trio's scheduler
and the second core does the I/O and the AEAD (both release the GIL) while trio keeps the
control, timers and path decisions (docs/tap.md).

Handlers run in the thread, one at a time. Other threads talk to it with `call_soon` (wakes
the loop through an eventfd) and may register, change and remove file descriptors at any
time; a removal returns only once no handler of that descriptor runs or will run.
"""

from __future__ import annotations

import logging
import os
import select
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Final

import trio

__all__ = ["IoThread", "open_io_thread"]

log = logging.getLogger("meshcore.iothread")

_IN: Final = select.EPOLLIN
_OUT: Final = select.EPOLLOUT
_ERRORS: Final = select.EPOLLERR | select.EPOLLHUP
_READABLE: Final = _IN | _ERRORS
_MAX_EVENTS: Final = 64
_LATENCY_NICE: Final = -5

Handler = Callable[[], None]


class _Entry:
    __slots__ = ("on_readable", "on_writable", "removed", "writing")

    def __init__(self, on_readable: Handler, on_writable: Handler | None) -> None:
        self.on_readable = on_readable
        self.on_writable = on_writable
        self.writing = False
        self.removed = False


class IoThread:
    """One worker thread polling file descriptors for the data path.

    Create it with `open_io_thread()`. `register(fd, on_readable, on_writable)` has
    `on_readable()` called in the thread whenever `fd` is readable (or in error: the handler
    finds out by reading), and `on_writable()` whenever it is writable while
    `want_writable(fd, True)` is in force. A handler that raises is logged and its descriptor
    removed; the thread goes on.
    """

    def __init__(self, name: str = "meshcore-data", *, role: str = "") -> None:
        self._epoll = select.epoll()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._wake_fd, _IN)
        self._entries: dict[int, _Entry] = {}
        self._calls: deque[tuple[Callable[..., object], tuple[object, ...]]] = deque()
        self._lock = threading.Lock()
        """Held while a handler runs and while the table changes: a removal waits for it."""
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._role = role
        self.ident: int | None = None

    # ----------------------------------------------------------------- any thread
    def in_thread(self) -> bool:
        """Whether the caller is this thread."""
        return threading.get_ident() == self.ident

    def call_soon(self, fn: Callable[..., object], *args: object) -> None:
        """Run `fn(*args)` in the thread soon (in order with other calls). Thread-safe."""
        self._calls.append((fn, args))
        os.eventfd_write(self._wake_fd, 1)

    def register(self, fd: int, on_readable: Handler, on_writable: Handler | None = None) -> None:
        """Watch `fd` for reading (and, on request, writing). Thread-safe."""
        with self._lock:
            self._entries[fd] = _Entry(on_readable, on_writable)
            self._epoll.register(fd, _IN)

    def want_writable(self, fd: int, wanted: bool) -> None:
        """Start or stop calling `fd`'s `on_writable` while it is writable. Thread-safe; a
        descriptor no longer registered is ignored."""
        entry = self._entries.get(fd)
        if entry is None or entry.removed or entry.writing == wanted:
            return
        entry.writing = wanted
        try:
            self._epoll.modify(fd, _IN | _OUT if wanted else _IN)
        except (OSError, ValueError):
            pass  # closed meanwhile: its removal follows

    def unregister(self, fd: int) -> None:
        """Stop watching `fd`. From another thread it returns once no handler of `fd` runs
        (they run under the lock it takes); from a handler, at once."""
        if self.in_thread():
            self._remove(fd)
            return
        with self._lock:
            self._remove(fd)

    # ----------------------------------------------------------------- lifetime
    @property
    def running(self) -> bool:
        """Whether the thread is running."""
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end and wait for it (blocking: call it from a worker thread)."""
        self._stopping = True
        os.eventfd_write(self._wake_fd, 1)
        if self._thread.is_alive() and not self.in_thread():
            self._thread.join()
        self._epoll.close()
        os.close(self._wake_fd)

    # ----------------------------------------------------------------- the loop
    def _remove(self, fd: int) -> None:
        entry = self._entries.pop(fd, None)
        if entry is None:
            return
        entry.removed = True
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass  # already closed: the kernel forgot it

    def _run(self) -> None:
        self.ident = threading.get_ident()
        _schedule(self._role)
        poll, wake_fd, entries, lock = self._epoll.poll, self._wake_fd, self._entries, self._lock
        while not self._stopping:
            try:
                events = poll(-1, _MAX_EVENTS)
            except InterruptedError:
                continue
            with lock:
                for fd, mask in events:
                    if fd == wake_fd:
                        try:
                            os.eventfd_read(wake_fd)
                        except BlockingIOError:
                            pass
                        continue
                    entry = entries.get(fd)
                    if entry is None:
                        continue
                    try:
                        if mask & _READABLE:
                            entry.on_readable()
                        if mask & _OUT and entry.on_writable is not None and not entry.removed:
                            entry.on_writable()
                    except Exception:
                        log.exception("data path handler for fd %d failed; fd removed", fd)
                        self._remove(fd)
                calls = self._calls
                while calls:
                    fn, args = calls.popleft()
                    try:
                        fn(*args)
                    except Exception:
                        log.exception("data path call %r failed", fn)


def _schedule(role: str) -> None:
    """Tell the kernel's scheduler what the calling thread is: "bulk" (SCHED_BATCH: the same
    CPU share, but its wakeups do not preempt others) or "latency" (a nice level of -5 when
    the process may raise priorities, else unchanged), so that a lone frame's thread gets a
    core before a bulk stream's on a busy machine (docs/tap.md)."""
    try:
        if role == "bulk":
            os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        elif role == "latency":
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _LATENCY_NICE)
    except (OSError, AttributeError):
        pass  # not permitted here, or not Linux: the default scheduling is fine


@asynccontextmanager
async def open_io_thread(name: str = "meshcore-data", *, role: str = "") -> AsyncIterator[IoThread]:
    """Run an `IoThread` for the duration of the block; `role` ("bulk", "latency" or "")
    tells the scheduler what kind of work the thread does.

    Leaving the block (or cancellation) stops the thread and waits for it, in a worker
    thread so that trio is not blocked; this wait is shielded and short (one loop
    iteration).
    """
    io = IoThread(name, role=role)
    io.start()
    try:
        yield io
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(io.stop)
