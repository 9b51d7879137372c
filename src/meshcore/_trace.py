"""Per-stage timestamps of packets through the peer's data path, to find where a lone packet
waits (`benchmarks/bench_trace.py` prints the breakdown; docs/tap.md shows it).

Off unless the environment variable `MESHCORE_TRACE` names a directory when this module is
first imported; then each process writes `trace-<pid>.tsv` there as it exits (and whenever
many marks are held). While off, a stage costs one test of `ENABLED`.

A mark is the time (CLOCK_MONOTONIC, shared by every process and network namespace of the
machine), the stage, a key (CRC-32 of the bytes at that stage: a frame read from the device,
a session message, a sealed transport frame, the same bytes on both peers) and, where one
form becomes another, the key it came from. A frame read from or written to the device also
gets a label naming an ICMP echo (`req:<id>:<seq>` or `rep:<id>:<seq>`).
"""

from __future__ import annotations

import atexit
import os
import struct
import threading
import time
import zlib
from typing import Final

__all__ = [
    "ENABLED",
    "TRACE_ENV",
    "frame_label",
    "key",
    "mark",
    "mark_frame",
    "message_parent",
    "now_ns",
]

TRACE_ENV: Final = "MESHCORE_TRACE"

Buffer = bytes | bytearray | memoryview

_DIRECTORY: Final = os.environ.get(TRACE_ENV, "")
ENABLED: Final = bool(_DIRECTORY)
"""Whether marks are recorded in this process (fixed at import)."""

_FLUSH_MARKS: Final = 100_000
_VNET_HEADER: Final = 10
_ETH_IPV4: Final = 0x0800
_ICMP: Final = 1
_ECHO_TYPES: Final = {8: "req", 0: "rep"}

_marks: list[tuple[int, str, int, int, str, int]] = []
_lock = threading.Lock()
now_ns = time.perf_counter_ns
"""The clock of every mark (CLOCK_MONOTONIC on Linux), for callers passing `at`."""
parent = 0
"""The key of what is being turned into other bytes right now (a message being sealed, a
sealed frame being opened), for the marks of what it becomes; 0 when nothing is."""


def key(data: Buffer) -> int:
    """The key of `data` at any stage: its CRC-32."""
    return zlib.crc32(data)


def mark(stage: str, data: Buffer, *, parent: int = 0, at: int = 0, label: str = "") -> None:
    """Record that `data` reached `stage` now (or at `at`, from `now_ns`); `parent` is the key
    of the bytes it was made from (0: none)."""
    record = (at or now_ns(), stage, zlib.crc32(data), parent, label, threading.get_ident())
    with _lock:
        _marks.append(record)
        full = len(_marks) >= _FLUSH_MARKS
    if full:
        _flush()


def mark_frame(stage: str, frame: Buffer, *, parent: int = 0, at: int = 0) -> None:
    """`mark` for a device frame (virtio-net header + Ethernet), labelled if it is an echo."""
    mark(stage, frame, parent=parent, at=at, label=frame_label(frame))


def frame_label(frame: Buffer) -> str:
    """`req:<id>:<seq>` / `rep:<id>:<seq>` for an ICMP echo request / reply in an Ethernet
    frame behind a virtio-net header, else ""."""
    view = memoryview(frame).cast("B")
    ip = _VNET_HEADER + 14
    if len(view) < ip + 28 or struct.unpack_from(">H", view, ip - 2)[0] != _ETH_IPV4:
        return ""
    if view[ip + 9] != _ICMP:
        return ""
    icmp = ip + (view[ip] & 0x0F) * 4
    if len(view) < icmp + 8:
        return ""
    kind = _ECHO_TYPES.get(view[icmp])
    if kind is None:
        return ""
    ident, seq = struct.unpack_from(">HH", view, icmp + 4)
    return f"{kind}:{ident}:{seq}"


def message_parent(message: Buffer) -> int:
    """The key of the first device frame packed in tunnel message `message` (0 if none)."""
    view = memoryview(message).cast("B")
    if len(view) < 4:
        return 0
    (word,) = struct.unpack_from(">I", view)
    length = word & 0x7FFF_FFFF
    return zlib.crc32(view[4 : 4 + length]) if 4 + length <= len(view) else 0


def _flush() -> None:
    with _lock:
        records = _marks[:]
        _marks.clear()
    if not records:
        return
    path = os.path.join(_DIRECTORY, f"trace-{os.getpid()}.tsv")
    with open(path, "a", encoding="ascii") as out:
        out.writelines(
            f"{t}\t{stage}\t{k}\t{parent}\t{label}\t{thread}\n"
            for t, stage, k, parent, label, thread in records
        )


if ENABLED:
    os.makedirs(_DIRECTORY, exist_ok=True)
    atexit.register(_flush)
