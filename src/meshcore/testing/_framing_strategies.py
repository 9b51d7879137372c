"""Hypothesis strategies for transport frames, replay windows and resumption messages.

Shared by meshcore's own property tests and by anyone testing code built on `meshcore.proto`.
"""

from __future__ import annotations

from types import TracebackType
from typing import Final

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import strategies as st

from meshcore.proto import framing
from meshcore.proto.constants import (
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_S,
    REPLAY_WINDOW_BITS,
    REPLAY_WINDOW_USABLE,
)

__all__ = [
    "NonceLedger",
    "ReferenceReplayWindow",
    "bit_flips",
    "counter_sequences",
    "frame_keys",
    "key_event_schedules",
    "payloads",
    "receiver_indices",
]

_EDGE_DELTAS: Final = (
    REPLAY_WINDOW_USABLE - 1,
    REPLAY_WINDOW_USABLE,
    REPLAY_WINDOW_USABLE + 1,
    REPLAY_WINDOW_BITS - 1,
    REPLAY_WINDOW_BITS,
    REPLAY_WINDOW_BITS + 1,
    63,
    64,
    65,
)


class ReferenceReplayWindow:
    """The obviously-correct model of the replay window: a set of seen counters plus the top.

    A counter is accepted iff it is in [0, REJECT_AFTER_MESSAGES), was never accepted, and is
    above the highest accepted counter or less than REPLAY_WINDOW_USABLE below it.
    """

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.top = -1

    def check(self, counter: int) -> bool:
        if not 0 <= counter < REJECT_AFTER_MESSAGES or counter in self.seen:
            return False
        return counter > self.top or self.top - counter < REPLAY_WINDOW_USABLE

    def accept(self, counter: int) -> bool:
        if not self.check(counter):
            return False
        self.seen.add(counter)
        self.top = max(self.top, counter)
        return True


def frame_keys() -> st.SearchStrategy[bytes]:
    """32-byte ChaCha20-Poly1305 keys."""
    return st.binary(min_size=32, max_size=32)


def receiver_indices() -> st.SearchStrategy[int]:
    """u32 receiver indices, edges included."""
    return st.one_of(st.sampled_from([0, 1, 0xFFFFFFFF]), st.integers(0, 0xFFFFFFFF))


def payloads(max_size: int = 2048) -> st.SearchStrategy[bytes]:
    """Plaintexts for one frame (empty included)."""
    return st.binary(max_size=max_size)


@st.composite
def counter_sequences(draw: st.DrawFn, max_size: int = 200) -> list[int]:
    """Arrival orders of counters that stress the window: in order, reordered, duplicated, at
    the window edges (8128 / 8192 / block boundaries), huge jumps and the message limit."""
    base = draw(st.sampled_from([0, 1, 1 << 40, REJECT_AFTER_MESSAGES - 3 * REPLAY_WINDOW_BITS]))
    top = base
    out: list[int] = []
    for _ in range(draw(st.integers(0, max_size))):
        kind = draw(st.integers(0, 11))
        if kind <= 2:  # next in order
            top += 1
            value = top
        elif kind <= 4:  # reordered, inside or just outside the window
            value = top - draw(st.integers(0, REPLAY_WINDOW_BITS + 70))
        elif kind == 5:  # exactly at an edge, behind or ahead
            delta = draw(st.sampled_from(_EDGE_DELTAS))
            value = top - delta if draw(st.booleans()) else top + delta
        elif kind == 6:  # duplicate of something already drawn
            value = draw(st.sampled_from(out)) if out else top
        elif kind == 7:  # a big jump forward
            value = top + draw(st.integers(1, 1 << 20))
        elif kind == 8 and out:  # a ring alias of an earlier counter (same u64 slot)
            laps = draw(st.integers(1, 2))
            value = draw(st.sampled_from(out)) + laps * REPLAY_WINDOW_BITS
            value += draw(st.sampled_from([0, 0, 1, -1, 64, -64]))
        elif kind == 9:  # forward by less than one lap of the ring
            value = top + draw(st.integers(1, REPLAY_WINDOW_BITS))
        elif kind == 10:  # at or around the message limit
            value = REJECT_AFTER_MESSAGES + draw(st.integers(-2, 2))
        else:
            value = draw(st.integers(-5, (1 << 64) + 5))
        if value > top and value < REJECT_AFTER_MESSAGES:
            top = value
        out.append(value)
    return out


@st.composite
def bit_flips(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` with exactly one bit flipped anywhere (header, ciphertext or tag)."""
    position = draw(st.integers(0, len(data) * 8 - 1))
    flipped = bytearray(data)
    flipped[position // 8] ^= 1 << (position % 8)
    return bytes(flipped)


def key_event_schedules(max_size: int = 40) -> st.SearchStrategy[list[tuple[str, float, int]]]:
    """Random schedules of (event, seconds since the previous event, pick) for key lifetimes.

    Events: "seal", "open" (deliver in-flight frame number `pick` modulo their count),
    "install" (new keys), "idle". Gaps cluster around REJECT_AFTER_S so expiry is hit often.
    """
    gaps = st.one_of(
        st.sampled_from([0.0, 0.5, 1.0, 5.0, 60.0, REJECT_AFTER_S - 0.5, REJECT_AFTER_S]),
        st.floats(0, 5, allow_nan=False),
        st.floats(REJECT_AFTER_S - 1, REJECT_AFTER_S + 1, allow_nan=False),
        st.floats(0, 2 * REJECT_AFTER_S, allow_nan=False),
    )
    events = st.sampled_from(["seal", "seal", "open", "open", "install", "idle"])
    return st.lists(st.tuples(events, gaps, st.integers(0, 7)), max_size=max_size)


_AEAD_NAME: Final = "ChaCha20Poly1305"


class _RecordingAead:
    """A ChaCha20Poly1305 that tells a NonceLedger every (key, nonce) it encrypts with."""

    def __init__(self, ledger: NonceLedger, key: bytes) -> None:
        self._aead = ChaCha20Poly1305(key)
        self._key = bytes(key)
        self._ledger = ledger

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        self._ledger.record(self._key, bytes(nonce))
        return self._aead.encrypt(nonce, data, associated_data)

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes:
        return self._aead.decrypt(nonce, data, associated_data)


class NonceLedger:
    """Records every (key, nonce) pair transport frames are sealed with (docs/crypto-spec.md row 9).

    Use as a context manager: keys created inside it (SendKey, ResumedKeys, handshake
    results turned into SendKeys) report each seal; `repeats` lists any pair used twice.
    """

    def __init__(self) -> None:
        self.seen: set[tuple[bytes, bytes]] = set()
        self.repeats: list[tuple[bytes, bytes]] = []
        self.count = 0
        self._saved: object = None

    def record(self, key: bytes, nonce: bytes) -> None:
        self.count += 1
        pair = (key, nonce)
        if pair in self.seen:
            self.repeats.append(pair)
        self.seen.add(pair)

    def __enter__(self) -> NonceLedger:
        # framing looks the AEAD class up at key creation, so swapping the name is enough.
        self._saved = getattr(framing, _AEAD_NAME)
        setattr(framing, _AEAD_NAME, lambda key: _RecordingAead(self, bytes(key)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        setattr(framing, _AEAD_NAME, self._saved)
