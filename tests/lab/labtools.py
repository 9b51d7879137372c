"""The lab's traffic tools, run as `python labtools.py TOOL ...` inside a lab namespace.

`dial` (a re-dialling TCP connect from a fixed port, for simultaneous open), `whoami` and
`serve-whoami` (which address a server saw), `forward` (a plain TCP relay) and `delay` (a
cable with a constant delay between two TAP devices). Stdlib only: it runs under any Python.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import random
import select
import socket
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _tool_dial(args: argparse.Namespace) -> int:
    """TCP connect from a fixed local port to a fixed remote, re-dialling on every refusal.

    Both ends of a simultaneous open run this against each other. The first attempt starts
    at `--start-at` (wall clock, shared by all namespaces) or at once; after a refusal the
    next one follows `--redial` seconds later, jittered by +-50% so that two dialers that
    started out of step do not stay out of step. Prints one JSON line; exits 0 once
    connected and a greeting went both ways, 1 at the deadline.
    """
    local, remote = _hostport(args.bind), _hostport(args.to)
    if args.start_at is not None:
        time.sleep(max(0.0, args.start_at - time.time()))
    start = time.monotonic()
    deadline = start + args.deadline
    attempts, refused, last_error = 0, 0, ""
    while time.monotonic() < deadline:
        attempts += 1
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind(local)
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            sock.connect(remote)
            sock.sendall(f"hello from {args.name}\n".encode())
            greeting = sock.makefile("rb").readline().decode().strip()
        except OSError as exc:
            refused += isinstance(exc, ConnectionRefusedError)
            last_error = f"{type(exc).__name__}: {exc}"
            sock.close()
            time.sleep(args.redial * random.uniform(0.5, 1.5))  # the re-dial under test
            continue
        report = {
            "connected": True,
            "attempts": attempts,
            "refused": refused,
            "elapsed_s": round(time.monotonic() - start, 3),
            "local": "{}:{}".format(*sock.getsockname()),
            "remote": "{}:{}".format(*sock.getpeername()),
            "greeting": greeting,
        }
        print(json.dumps(report), flush=True)
        sock.close()
        return 0
    report = {
        "connected": False,
        "attempts": attempts,
        "refused": refused,
        "last_error": last_error,
    }
    print(json.dumps(report), flush=True)
    return 1


def _tool_serve_whoami(args: argparse.Namespace) -> int:
    """Accept `count` connections; answer each with the address it came from."""
    with socket.create_server(_hostport(args.listen), reuse_port=True) as server:
        print("listening", flush=True)
        for _ in range(args.count):
            conn, peer = server.accept()
            with conn:
                conn.sendall(f"{peer[0]}:{peer[1]}\n".encode())
            print(f"peer {peer[0]}:{peer[1]}", flush=True)
    return 0


def _tool_whoami(args: argparse.Namespace) -> int:
    """Connect from a fixed local port and print the address the server saw."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(_hostport(args.bind))
        sock.settimeout(10)
        sock.connect(_hostport(args.to))
        print(sock.makefile("rb").readline().decode().strip(), flush=True)
    return 0


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _tool_forward(args: argparse.Namespace) -> int:
    """A plain TCP relay: accept on `--listen`, connect to `--to`, copy bytes both ways."""
    with socket.create_server(_hostport(args.listen), reuse_port=True) as server:
        print("listening", flush=True)
        while True:
            client, _ = server.accept()
            upstream = socket.create_connection(_hostport(args.to), timeout=10)
            upstream.settimeout(None)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pipe, args=(src, dst), daemon=True).start()


_TUNSETIFF = 0x400454CA
_TUNSETOFFLOAD = 0x400454D0
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000
_TUN_F_CSUM, _TUN_F_TSO4, _TUN_F_TSO6 = 0x01, 0x02, 0x04
_CLONE_NEWNET = 0x40000000
_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_TIMER_ABSTIME = 1
_FRAME_BYTES = 65536 + 256
"""A GSO frame (up to 64 KiB of IP) plus its virtio-net header and Ethernet header."""
_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _open_tap(ns: str, name: str) -> int:
    """Attach to the existing TAP device `name` in namespace `ns`; return its fd.

    With a virtio-net header and TSO/checksum offloads, the kernel hands over whole GSO
    frames (up to 64 KiB) and takes them back as they are: one read and one write per
    64 KiB instead of per 1.5 KiB, which is what lets a Python forwarder carry Gbit/s.
    """
    with open(f"/run/netns/{ns}") as nsfile:
        _check(_libc.setns(nsfile.fileno(), _CLONE_NEWNET), f"setns into {ns}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    flags = _IFF_TAP | _IFF_NO_PI | _IFF_VNET_HDR
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    fcntl.ioctl(fd, _TUNSETOFFLOAD, _TUN_F_CSUM | _TUN_F_TSO4 | _TUN_F_TSO6)
    return fd


class _Timer:
    """A timerfd on CLOCK_MONOTONIC (the clock of `time.monotonic`): epoll wakes when it
    fires, to the microsecond, where epoll's own timeout rounds up to whole milliseconds."""

    def __init__(self) -> None:
        self.fd = _check(_libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK), "timerfd")

    def arm(self, at: float) -> None:
        """Fire at monotonic time `at` (0 disarms)."""
        sec, nsec = int(at), int((at - int(at)) * 1e9)
        spec = struct.pack("4q", 0, 0, sec, max(nsec, 1) if at else 0)
        buf = ctypes.create_string_buffer(spec)
        _check(_libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, buf, None), "timerfd_settime")

    def clear(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)


def _tool_delay(args: argparse.Namespace) -> int:
    """Join TAP pairs in (possibly different) namespaces, holding every frame `--ms`.

    Each `--link NS:TAP=NS:TAP` is a cable with a constant one-way delay; a constant delay
    keeps each direction first-in first-out, so a deque per direction is the whole queue.
    A frame is stamped when read and written once its time has come, never earlier.
    """
    delay = args.ms / 1000.0
    peer_of: dict[int, int] = {}
    for link in args.link:
        left, right = (side.split(":", 1) for side in link.split("="))
        fd_left, fd_right = _open_tap(*left), _open_tap(*right)
        peer_of[fd_left], peer_of[fd_right] = fd_right, fd_left
    queues: dict[int, deque[tuple[float, bytes]]] = {fd: deque() for fd in peer_of}
    timer = _Timer()
    poller = select.epoll()
    for fd in (*peer_of, timer.fd):
        poller.register(fd, select.EPOLLIN)
    print("ready", flush=True)
    armed = 0.0
    while True:
        for fd, _ in poller.poll():
            if fd == timer.fd:
                timer.clear()
                armed = 0.0
                continue
            queue = queues[peer_of[fd]]
            for _ in range(64):  # drain a burst, but let the other links have their turn
                try:
                    frame = os.read(fd, _FRAME_BYTES)
                except BlockingIOError:
                    break
                queue.append((time.monotonic() + delay, frame))
        now = time.monotonic()
        for fd, queue in queues.items():
            while queue and queue[0][0] <= now:
                with contextlib.suppress(OSError):  # a full or downed device drops, as a wire
                    os.write(fd, queue.popleft()[1])
        due = min((q[0][0] for q in queues.values() if q), default=0.0)
        if due != armed:
            timer.arm(due)
            armed = due


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netlab", description="the lab's traffic tools")
    sub = parser.add_subparsers(dest="tool", required=True)
    dial = sub.add_parser("dial", help="re-dialling TCP connect from a fixed port")
    dial.add_argument("--bind", required=True, help="local HOST:PORT")
    dial.add_argument("--to", required=True, help="remote HOST:PORT")
    dial.add_argument("--deadline", type=float, default=5.0, help="seconds to keep trying")
    dial.add_argument("--redial", type=float, default=0.05, help="seconds between attempts")
    dial.add_argument("--start-at", type=float, help="wall-clock time of the first attempt")
    dial.add_argument("--name", default="dialer")
    serve = sub.add_parser("serve-whoami", help="tell each client its address")
    serve.add_argument("--listen", required=True, help="HOST:PORT")
    serve.add_argument("--count", type=int, default=1)
    whoami = sub.add_parser("whoami", help="ask a serve-whoami who we are")
    whoami.add_argument("--bind", required=True, help="local HOST:PORT")
    whoami.add_argument("--to", required=True, help="server HOST:PORT")
    forward = sub.add_parser("forward", help="relay TCP connections to another address")
    forward.add_argument("--listen", required=True, help="HOST:PORT")
    forward.add_argument("--to", required=True, help="HOST:PORT")
    delay = sub.add_parser("delay", help="join TAP pairs with a constant delay")
    delay.add_argument("--ms", type=float, required=True, help="one-way delay")
    delay.add_argument("--link", action="append", required=True, help="NS:TAP=NS:TAP")
    args = parser.parse_args(argv)
    tools = {
        "dial": _tool_dial,
        "serve-whoami": _tool_serve_whoami,
        "whoami": _tool_whoami,
        "forward": _tool_forward,
        "delay": _tool_delay,
    }
    return tools[args.tool](args)


if __name__ == "__main__":
    sys.exit(main())
