"""A free port for a test that must name its port before binding it (a shared port a peer
dials from and listens on): one below the ephemeral range, which every connection on a busy
machine draws from, checked free with a dual-stack bind as the shared-port listener makes."""

from __future__ import annotations

import random
import socket
from contextlib import closing
from pathlib import Path

__all__ = ["free_port_outside_ephemeral_range"]


def free_port_outside_ephemeral_range() -> int:
    """A TCP port no socket holds now, below `ip_local_port_range`."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(10000, low)
        try:
            sock = socket.socket(socket.AF_INET6)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            where = "::"
        except OSError:  # no IPv6 here: the listener takes IPv4 alone
            sock, where = socket.socket(), "0.0.0.0"
        with closing(sock):
            try:
                sock.bind((where, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")
