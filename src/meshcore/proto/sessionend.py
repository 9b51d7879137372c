"""A finished session's last duty (docs/wire-control.md): the side whose acknowledgement
completed the finish lingers briefly, answering a peer that missed it (a resent message or
Eof) with the finish again, until the peer's own Close(CLOSE_FINISHED) arrives."""

from __future__ import annotations

from collections.abc import Callable

from meshcore.errors import MeshError, ReplayError
from meshcore.proto.framing import KeyRing
from meshcore.proto.inner import CLOSE_FINISHED, Close, Data, Eof, decode_inner_untrusted

__all__ = ["linger_answer"]


def linger_answer(
    keys: KeyRing, frame: bytes, now: float, say_finished: Callable[[float], None]
) -> bool:
    """Handle one frame that reached a lingering session; False once the linger is over
    (the peer said it finished). Frames that do not authenticate change nothing."""
    try:
        message = decode_inner_untrusted(keys.open(frame, now))
    except ReplayError:
        say_finished(now)  # our ack of it was lost
        return True
    except MeshError:
        return True
    if type(message) is Close:
        return message.code != CLOSE_FINISHED
    if type(message) is Data or type(message) is Eof:
        say_finished(now)
    return True
