"""Shared-port TCP sockets for direct paths: dials from the port the relay connection
uses and the listener on it, all with SO_REUSEADDR|SO_REUSEPORT, so that two peers' SYNs can
cross their NATs (TCP simultaneous open, docs/direct.md). The listener is dual-stack."""

from __future__ import annotations

import errno

import trio

from meshcore.errors import ConnectFailed
from meshcore.proto.endpoint import Endpoint

__all__ = [
    "connect_from",
    "open_reuseport_listener",
    "open_shared_port_listener",
    "open_tcp_socket_from",
    "reuse_socket",
]


def reuse_socket(family: int) -> trio.socket.SocketType:
    """A TCP socket of `family` with SO_REUSEADDR and SO_REUSEPORT set."""
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEADDR, 1)
        sock.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_REUSEPORT, 1)
    except BaseException:
        sock.close()
        raise
    return sock


async def connect_from(local_port: int, remote: Endpoint) -> trio.SocketStream:
    """Connect to `remote` from a socket bound to `local_port`; raises OSError."""
    family = trio.socket.AF_INET6 if remote.family == 6 else trio.socket.AF_INET
    sock = reuse_socket(family)
    try:
        if remote.family == 6:  # beside an IPv4 socket on the same port, not over it
            sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, 1)
        await sock.bind(("::" if remote.family == 6 else "0.0.0.0", local_port))
        await sock.connect((remote.host, remote.port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def open_tcp_socket_from(local_port: int, remote: Endpoint) -> trio.SocketStream:
    """Connect to `remote` from local port `local_port`, shared via SO_REUSEADDR|SO_REUSEPORT.

    Several such sockets, and a listener from `open_reuseport_listener`, can use the same
    local port at once (as long as their remote ends differ): that is what lets two peers'
    SYNs cross their NATs (TCP simultaneous open). Raises ConnectFailed with `errno` set
    (ECONNREFUSED is expected while the far NAT has no mapping yet: re-dial).
    """
    try:
        return await connect_from(local_port, remote)
    except OSError as exc:
        raise ConnectFailed(
            f"TCP connect from local port {local_port} to {remote} failed: {exc.strerror or exc}",
            errno=exc.errno,
        ) from None


async def open_reuseport_listener(
    host: str, port: int, *, backlog: int = 128, dual_stack: bool = False
) -> trio.SocketListener:
    """Listen on `host:port` with SO_REUSEADDR|SO_REUSEPORT so dials can share the port.

    An IPv6 `host` listens for IPv6 only, unless `dual_stack` (IPV6_V6ONLY off: "::" then
    takes IPv4 connections too, as IPv4-mapped addresses). `port` 0 picks a free port (read
    it from `listener.socket.getsockname()`). Raises OSError if the address cannot be bound.
    """
    infos = await trio.socket.getaddrinfo(
        host or None, port, type=trio.socket.SOCK_STREAM, flags=trio.socket.AI_PASSIVE
    )
    family, *_, sockaddr = infos[0]
    sock = reuse_socket(family)
    try:
        if family == trio.socket.AF_INET6:
            v6only = 0 if dual_stack else 1
            sock.setsockopt(trio.socket.IPPROTO_IPV6, trio.socket.IPV6_V6ONLY, v6only)
        await sock.bind(sockaddr)
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return trio.SocketListener(sock)


async def open_shared_port_listener(port: int) -> trio.SocketListener:
    """The direct-path listener on the shared `port` (0: a free one), for IPv4 and IPv6 at
    once: one dual-stack socket on "::" (docs/direct.md), or IPv4 alone on a host without
    IPv6. Raises OSError if the port cannot be bound."""
    try:
        return await open_reuseport_listener("::", port, dual_stack=True)
    except OSError as exc:
        if exc.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT):
            raise
    return await open_reuseport_listener("0.0.0.0", port)
