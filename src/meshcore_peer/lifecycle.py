"""How meshcore-peer's long-running commands (`connect`, `listen`, `up`) end: on a signal,
and with which exit status.

SIGHUP, SIGTERM and SIGINT all end a command cleanly: its work is cancelled, and the
cancellation closes every session with a Close frame (each under a shielded scope of at
most a second, so the peer's session ends at once with "peer closed"), closes the relay
connection with a WebSocket close and removes the control socket. `connect` then exits
128 + N (its transfer was interrupted: the shell's convention), `listen` and `up` exit 0 (a
service asked to stop did so). A second signal while that runs ends the process at once
with 128 + N.

`connect`'s other statuses follow netcat (`connect_status`): 0 when everything read from
stdin was acknowledged by the peer and the peer's answer was written whole; 1 when the
session failed (the peer was lost); 3 when the peer closed the session first; 4 when the
relay or the peer refused the pairing (offline, not allowed, not the key we pinned); 5 when
no relay could be reached (down, silent, or not the relay its entry names). 2 is a usage
error, as everywhere.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final

import attrs
import trio

from meshcore import (
    ClosedByPeer,
    HandshakeError,
    RelayError,
    RelayNotVerified,
    TransportClosed,
    open_hidden_nursery,
)
from meshcore.logs import describe_error

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_PEER_CLOSED",
    "EXIT_REFUSED",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "SIGNALS",
    "Ending",
    "Stopping",
    "connect_status",
    "interrupted_status",
    "leaf_error",
    "run_until_signalled",
]

log = logging.getLogger("meshcore.peer")

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_PEER_CLOSED: Final = 3
EXIT_REFUSED: Final = 4
EXIT_UNREACHABLE: Final = 5

SIGNALS: Final = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
"""The signals that end a command cleanly (ssh ends a ProxyCommand with SIGHUP)."""

EXIT_STATUS_HELP: Final = """\
exit status of connect (netcat style):
  0    everything read from stdin was acknowledged by the peer and its answer written whole
  1    the session failed (the peer was lost) or another error
  2    usage error (a flag, setting or key file is wrong)
  3    the peer closed the session first
  4    the relay or the peer refused the pairing (offline, not allowed, wrong key)
  5    no relay could be reached (each was down, silent, or not the relay its entry names)
  128+N  interrupted by signal N (129 SIGHUP, 130 SIGINT, 143 SIGTERM): the session was
       closed with a Close frame first
listen and up end cleanly on SIGHUP, SIGTERM or SIGINT (sessions closed, control socket
removed) and exit 0.
"""


@attrs.define
class Stopping:
    """What the work sees of its own end: `reason` is set ("interrupted by SIGHUP") once a
    signal asked it to stop, for the Close it sends its peers."""

    reason: str | None = None


@attrs.frozen
class Ending:
    """How a command's work ended: it returned `status`, or `signal` interrupted it."""

    status: int | None
    signal: signal.Signals | None


def interrupted_status(signum: int) -> int:
    """The shell's exit status for a program ended by signal `signum`: 128 + N."""
    return 128 + signum


def leaf_error(exc: BaseException) -> BaseException:
    """The one error inside nested single-error exception groups (else `exc` itself)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def connect_status(exc: BaseException) -> tuple[int, str] | None:
    """`connect`'s exit status and one line for an expected error `exc`; None if unexpected."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    if isinstance(cause, ClosedByPeer):
        return EXIT_PEER_CLOSED, f"session ended: {cause}"
    if isinstance(exc, trio.BrokenResourceError | trio.ClosedResourceError):
        return EXIT_FAILED, f"session failed: {describe_error(exc)}"
    if isinstance(exc, RelayNotVerified) or (isinstance(exc, RelayError) and exc.unreachable):
        return EXIT_UNREACHABLE, str(exc)
    if isinstance(exc, RelayError | HandshakeError):
        return EXIT_REFUSED, str(exc)
    if isinstance(exc, TransportClosed):
        return EXIT_UNREACHABLE, f"relay unreachable: {exc}"
    return None


async def run_until_signalled(work: Callable[[Stopping], Awaitable[int]], *, name: str) -> Ending:
    """Run `work(stopping)` until it returns or one of `SIGNALS` arrives, then cancel it and
    wait for its graceful end (its sessions' Close frames, the relay's WebSocket close, the
    control socket removed; every one of those is bounded).

    Errors of `work` propagate as they are. A second signal during the graceful end exits
    the process at once. Cancellation from outside cancels `work` the same way.
    """
    stopping = Stopping()
    received: list[signal.Signals] = []
    with trio.open_signal_receiver(*SIGNALS) as signals, trio.CancelScope() as scope:
        async with open_hidden_nursery() as nursery:
            nursery.start_soon(_watch, signals, scope, received, stopping, name)
            status = await work(stopping)
            nursery.cancel_scope.cancel()
            return Ending(status, None)
    return Ending(None, received[0])  # only a signal cancels `scope`


async def _watch(
    signals: AsyncIterator[int],
    scope: trio.CancelScope,
    received: list[signal.Signals],
    stopping: Stopping,
    name: str,
) -> None:
    async for signum in signals:
        sig = signal.Signals(signum)
        if received:
            log.warning("%s: %s again: exiting at once", name, sig.name)
            os._exit(interrupted_status(sig))
        received.append(sig)
        stopping.reason = f"interrupted by {sig.name}"
        log.info("%s: %s: closing the sessions and exiting", name, sig.name)
        scope.cancel()
