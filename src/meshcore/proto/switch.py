"""The layer-2 core of the TAP tunnel: a MAC-learning switch that picks the peers each frame
goes to, and the packing of frames into session messages (batched; split when too large).

Sans-IO: frames and `now` in, decisions and bytes out. `now` must never decrease.
"""

from __future__ import annotations

import struct
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterable
from typing import Final, Generic, TypeVar

from meshcore.errors import DecodeError
from meshcore.proto.constants import (
    MAX_MESSAGE_BYTES,
    SWITCH_AGEING_S,
    SWITCH_MAX_ENTRIES,
    TUNNEL_CHUNK_HEADER_BYTES,
    TUNNEL_MAX_RECORD_BYTES,
)

__all__ = [
    "ETHERNET_HEADER_BYTES",
    "LOCAL",
    "FrameAssembler",
    "FramePacker",
    "Local",
    "Switch",
]

P = TypeVar("P", bound=Hashable)
Buffer = bytes | bytearray | memoryview

ETHERNET_HEADER_BYTES: Final = 14
"""Destination MAC, source MAC, EtherType: the least a frame must carry."""
_ZERO_MAC: Final = bytes(6)


class Local:
    """The type of `LOCAL`, the switch port of the local TAP device."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "LOCAL"


LOCAL: Final = Local()


class _Entry:
    """Where a MAC address was last seen, and when."""

    __slots__ = ("port", "seen")

    def __init__(self, port: object, seen: float) -> None:
        self.port = port
        self.seen = seen


class Switch(Generic[P]):
    """A learning switch between the local TAP (port `LOCAL`) and peers (any hashable ports).

    Every valid frame teaches it "source MAC is behind this port". A frame from the TAP goes
    to the peer behind its destination, or to every peer (flood) when the destination is a
    group address (broadcast, multicast), unknown or aged out; to none when the destination is
    local. A frame from a peer always goes to the TAP and never on to other peers: every peer
    talks to every other directly (full mesh), so re-flooding would only duplicate frames.

    Frames shorter than an Ethernet header, or whose source is a group or all-zero address,
    are dropped (counted in `dropped`). The table holds at most `capacity` addresses; when it
    is full the least recently seen is forgotten. An address not seen for `ageing_s` is unknown.
    """

    __slots__ = ("_ageing", "_all", "_capacity", "_single", "_table", "dropped", "flooded")

    def __init__(
        self,
        ports: Iterable[P] = (),
        *,
        capacity: int = SWITCH_MAX_ENTRIES,
        ageing_s: float = SWITCH_AGEING_S,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if ageing_s <= 0:
            raise ValueError(f"ageing_s must be positive, got {ageing_s}")
        self._capacity = capacity
        self._ageing = ageing_s
        # ordered by last sighting (move_to_end on every learn): the front is the oldest
        self._table: OrderedDict[bytes, _Entry] = OrderedDict()
        self._single: dict[P, tuple[P]] = {}
        self._all: tuple[P, ...] = ()
        self.dropped = 0
        """Frames refused: too short, or a group or all-zero source address."""
        self.flooded = 0
        """Frames from the TAP sent to every peer (group or unknown destination)."""
        for port in ports:
            self.add_port(port)

    # ----------------------------------------------------------------- ports
    @property
    def ports(self) -> tuple[P, ...]:
        """The peers, in the order they were added."""
        return self._all

    def add_port(self, port: P) -> None:
        """Add a peer; floods reach it from now on. Adding a known port does nothing."""
        if port not in self._single:
            self._single[port] = (port,)
            self._all = (*self._all, port)

    def remove_port(self, port: P) -> None:
        """Remove a peer and forget every address learned behind it."""
        if self._single.pop(port, None) is None:
            return
        self._all = tuple(p for p in self._all if p != port)
        for mac in [m for m, e in self._table.items() if e.port == port]:
            del self._table[mac]

    def forget_port(self, port: P) -> None:
        """Forget the addresses learned behind `port` (its session ended), keeping the port."""
        for mac in [m for m, e in self._table.items() if e.port == port]:
            del self._table[mac]

    # ----------------------------------------------------------------- frames
    def from_local(self, frame: Buffer, now: float) -> tuple[P, ...]:
        """The peers a frame read from the TAP goes to (empty: nowhere). Learns its source."""
        if len(frame) < ETHERNET_HEADER_BYTES or frame[6] & 1:
            self.dropped += 1
            return ()
        src = bytes(frame[6:12])
        if src == _ZERO_MAC:
            self.dropped += 1
            return ()
        self._learn(src, LOCAL, now)
        if frame[0] & 1:  # broadcast or multicast
            self.flooded += 1
            return self._all
        entry = self._table.get(bytes(frame[0:6]))
        if entry is None or now - entry.seen >= self._ageing:
            self.flooded += 1
            return self._all
        port = entry.port
        if port is LOCAL:
            return ()
        return self._single[port]  # type: ignore[index]

    def from_peer(self, port: P, frame: Buffer, now: float) -> bool:
        """Whether a frame from peer `port` goes to the TAP. Learns its source behind `port`
        (only while `port` is one of the switch's ports)."""
        if len(frame) < ETHERNET_HEADER_BYTES or frame[6] & 1:
            self.dropped += 1
            return False
        src = bytes(frame[6:12])
        if src == _ZERO_MAC:
            self.dropped += 1
            return False
        if port in self._single:
            self._learn(src, port, now)
        return True

    def lookup(self, mac: bytes, now: float) -> P | Local | None:
        """The port behind `mac`, or None if unknown or aged out."""
        entry = self._table.get(bytes(mac))
        if entry is None or now - entry.seen >= self._ageing:
            return None
        return entry.port  # type: ignore[return-value]

    def __len__(self) -> int:
        """Addresses in the table (aged-out ones included until they are evicted)."""
        return len(self._table)

    def _learn(self, mac: bytes, port: object, now: float) -> None:
        table = self._table
        entry = table.get(mac)
        if entry is not None:
            entry.port = port
            entry.seen = now
            table.move_to_end(mac)
            return
        if len(table) >= self._capacity:
            self._evict(now)
        table[mac] = _Entry(port, now)

    def _evict(self, now: float) -> None:
        """Make room for one entry: drop every aged-out entry, else the least recently seen."""
        table = self._table
        while table:
            entry = next(iter(table.values()))
            if now - entry.seen < self._ageing:
                break
            table.popitem(last=False)
        if len(table) >= self._capacity:
            table.popitem(last=False)


# --- frames in session messages -------------------------------------------------------------
#
# A session message is a sequence of chunks:
#
#   u32 big-endian: bit 31 = MORE (the frame continues in the next chunk), bits 0-30 = length
#   length bytes of the frame (with its virtio-net header)
#
# A frame is one chunk, or several of which all but the last carry MORE. The packer puts as
# many whole frames in a message as fit and splits only a frame that fits no message; as the
# session is ordered and exactly-once, a split frame's chunks simply follow each other.

_CHUNK: Final = struct.Struct(">I")
_MORE: Final = 0x8000_0000
_LENGTH_MASK: Final = 0x7FFF_FFFF
_MIN_SPLIT_BYTES: Final = 1024
"""A split frame starts in the current message only if this much of it fits there."""


class FramePacker:
    """Packs frames into session messages of at most `limit` bytes (see the layout above).

    `add` appends a frame; `take` hands out the oldest message: a full one if there is one,
    else the one being filled. So a busy sender gets large messages and an idle one gets each
    frame at once.
    """

    __slots__ = ("_current", "_full", "_limit", "queued_bytes")

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        if limit < TUNNEL_CHUNK_HEADER_BYTES + _MIN_SPLIT_BYTES:
            raise ValueError(f"limit {limit} is too small for a chunk")
        self._limit = limit
        self._current = bytearray()
        self._full: deque[bytes] = deque()
        self.queued_bytes = 0
        """Bytes waiting in messages (chunk headers included)."""

    def add(self, frame: Buffer) -> None:
        """Append one frame (not empty)."""
        size = len(frame)
        if not size:
            raise ValueError("an empty frame cannot be packed")
        current = self._current
        need = TUNNEL_CHUNK_HEADER_BYTES + size
        self.queued_bytes += need
        if need <= self._limit - len(current):
            current += _CHUNK.pack(size)
            current += frame
            return
        if need <= self._limit:
            self._seal()
            self._current += _CHUNK.pack(size)
            self._current += frame
            return
        self._split(memoryview(frame).cast("B"))

    def _split(self, view: memoryview) -> None:
        offset, size = 0, len(view)
        while True:
            room = self._limit - len(self._current) - TUNNEL_CHUNK_HEADER_BYTES
            if size - offset <= room:
                self._current += _CHUNK.pack(size - offset)
                self._current += view[offset:]
                return
            if room >= _MIN_SPLIT_BYTES:
                self._current += _CHUNK.pack(room | _MORE)
                self._current += view[offset : offset + room]
                self.queued_bytes += TUNNEL_CHUNK_HEADER_BYTES
                offset += room
            self._seal()

    def _seal(self) -> None:
        if self._current:
            self._full.append(bytes(self._current))
            self._current.clear()

    @property
    def full(self) -> bool:
        """Whether a full message is waiting (more frames would start another)."""
        return bool(self._full)

    def take(self) -> bytes | None:
        """The next message to send, or None when nothing is queued."""
        if self._full:
            message = self._full.popleft()
        elif self._current:
            message = bytes(self._current)
            self._current.clear()
        else:
            return None
        self.queued_bytes -= len(message)
        return message

    def clear(self) -> None:
        """Drop everything queued."""
        self._full.clear()
        self._current.clear()
        self.queued_bytes = 0


class FrameAssembler:
    """Takes session messages from one peer apart into frames (see the layout above)."""

    __slots__ = ("_max", "_partial")

    def __init__(self, max_frame: int = TUNNEL_MAX_RECORD_BYTES) -> None:
        self._max = max_frame
        self._partial: bytearray | None = None

    def decode_untrusted(self, message: Buffer) -> list[memoryview | bytes]:
        """The complete frames in `message`, in order (views into it where possible).

        A frame split over several messages comes out with the message that ends it. Raises
        `DecodeError` (and forgets any partial frame) on a truncated chunk header, an empty or
        overlong chunk, or a frame larger than `max_frame`; nothing else.
        """
        view = memoryview(message).cast("B")
        frames: list[memoryview | bytes] = []
        offset, end = 0, len(view)
        try:
            while offset < end:
                if end - offset < TUNNEL_CHUNK_HEADER_BYTES:
                    raise DecodeError(f"truncated chunk header at byte {offset} of {end}")
                (word,) = _CHUNK.unpack_from(view, offset)
                offset += TUNNEL_CHUNK_HEADER_BYTES
                length = word & _LENGTH_MASK
                if length == 0 or length > end - offset:
                    raise DecodeError(
                        f"chunk of {length} bytes at byte {offset} of a {end}-byte message"
                    )
                chunk = view[offset : offset + length]
                offset += length
                partial = self._partial
                if partial is None and not word & _MORE:
                    if length > self._max:
                        raise DecodeError(f"frame of {length} bytes exceeds {self._max}")
                    frames.append(chunk)
                    continue
                if partial is None:
                    partial = self._partial = bytearray()
                if len(partial) + length > self._max:
                    raise DecodeError(f"split frame exceeds {self._max} bytes")
                partial += chunk
                if not word & _MORE:
                    frames.append(bytes(partial))
                    self._partial = None
        except DecodeError:
            self._partial = None
            raise
        return frames

    @property
    def pending_bytes(self) -> int:
        """Bytes of a split frame still waiting for its last chunk."""
        return 0 if self._partial is None else len(self._partial)
