"""The data-path trace: off by default, on with MESHCORE_TRACE, marks written at exit."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

from meshcore import _trace


def echo_frame(kind: int, ident: int, seq: int) -> bytes:
    """virtio-net header + Ethernet + IPv4 + ICMP echo (type `kind`)."""
    vnet = bytes(10)
    ethernet = bytes(6) + bytes([2, 0, 0, 0, 0, 1]) + struct.pack(">H", 0x0800)
    ip = bytes([0x45, 0]) + struct.pack(">H", 84) + bytes(4) + bytes([64, 1]) + bytes(10)
    icmp = bytes([kind, 0, 0, 0]) + struct.pack(">HH", ident, seq) + bytes(56)
    return vnet + ethernet + ip + icmp


def test_tracing_is_off_unless_asked_for() -> None:
    assert os.environ.get(_trace.TRACE_ENV) is None
    assert not _trace.ENABLED


def test_echo_frames_are_labelled_with_kind_id_and_sequence() -> None:
    assert _trace.frame_label(echo_frame(8, 7, 3)) == "req:7:3"
    assert _trace.frame_label(echo_frame(0, 7, 3)) == "rep:7:3"
    assert _trace.frame_label(echo_frame(3, 7, 3)) == ""  # unreachable, not an echo
    assert _trace.frame_label(b"\x00" * 20) == ""


def test_message_parent_is_the_key_of_the_first_packed_frame() -> None:
    frame = echo_frame(8, 1, 1)
    message = struct.pack(">I", len(frame)) + frame + struct.pack(">I", 3) + b"abc"
    assert _trace.message_parent(message) == _trace.key(frame)
    assert _trace.message_parent(b"\x00") == 0


def test_marks_are_written_per_process_at_exit(tmp_path: Path) -> None:
    code = (
        "from meshcore import _trace\n"
        "assert _trace.ENABLED\n"
        "_trace.mark('sock.sent', b'sealed', parent=5)\n"
        f"_trace.mark_frame('tap.read', {echo_frame(8, 9, 4)!r})\n"
    )
    env = {**os.environ, _trace.TRACE_ENV: str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    (path,) = tmp_path.glob("trace-*.tsv")
    rows = [line.split("\t") for line in path.read_text().splitlines()]
    assert [(r[1], int(r[2]), int(r[3]), r[4]) for r in rows] == [
        ("sock.sent", _trace.key(b"sealed"), 5, ""),
        ("tap.read", _trace.key(echo_frame(8, 9, 4)), 0, "req:9:4"),
    ]
    assert int(rows[0][0]) <= int(rows[1][0])
