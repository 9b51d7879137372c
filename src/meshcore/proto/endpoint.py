"""Network endpoints (IPv4 or IPv6 address and port) with one canonical text and binary form.

Peers announce endpoints as direct-connection candidates and the relay reports the address it
observed; both travel in control messages and inner frames, so the binary form is canonical.

Binary layout (big-endian)::

    family u8 (4 | 6) | address (4 | 16 bytes) | port u16 (1..65535)
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Final

import attrs

from meshcore.errors import ConfigError, DecodeError

__all__ = [
    "ENDPOINT_V4_BYTES",
    "ENDPOINT_V6_BYTES",
    "Endpoint",
    "decode_endpoint_untrusted",
]

_FAMILY_V4: Final = 4
_FAMILY_V6: Final = 6
ENDPOINT_V4_BYTES: Final = 1 + 4 + 2
"""Encoded size of an IPv4 endpoint."""
ENDPOINT_V6_BYTES: Final = 1 + 16 + 2
"""Encoded size of an IPv6 endpoint."""

_PORT: Final = struct.Struct(">H")


def _canonical_host(host: str) -> str:
    """Return the canonical text form of an IP address; IPv4-mapped IPv6 becomes IPv4.

    Raises ValueError (a caller bug: untrusted text goes through `Endpoint.parse`).
    """
    if not isinstance(host, str):
        raise TypeError(f"Endpoint host must be a str, not {type(host).__name__}")
    if "%" in host:
        # A scope id (fe80::1%eth0) means nothing to the remote side and cannot be encoded.
        raise ValueError(f"endpoint host {host!r} has an IPv6 scope id; give the bare address")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"endpoint host {host!r} is not an IPv4 or IPv6 address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # Dual-stack sockets report IPv4 peers as ::ffff:a.b.c.d; one address, one form.
        return str(ip.ipv4_mapped)
    return str(ip)


def _check_port(_inst: object, _attr: object, port: int) -> None:
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"Endpoint port must be an int, not {type(port).__name__}")
    if not 1 <= port <= 0xFFFF:
        raise ValueError(f"endpoint port {port} is outside 1..65535")


@attrs.frozen
class Endpoint:
    """An IPv4 or IPv6 address and a port; `host` is always in canonical text form.

    Invalid values raise ValueError/TypeError (a bug in the caller); text typed by a user goes
    through `Endpoint.parse`, which raises ConfigError.
    """

    host: str = attrs.field(converter=_canonical_host)
    port: int = attrs.field(validator=_check_port)
    # The packed address, derived from `host` once: encoding is then a concatenation.
    _packed: bytes = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_packed", ipaddress.ip_address(self.host).packed)

    @property
    def family(self) -> int:
        """4 for IPv4, 6 for IPv6."""
        return _FAMILY_V6 if ":" in self.host else _FAMILY_V4

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        """The address as an `ipaddress` object."""
        return ipaddress.ip_address(self.host)

    def __str__(self) -> str:
        if self.family == _FAMILY_V6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def encode(self) -> bytes:
        """Return the canonical binary form (see the module docstring)."""
        family = _FAMILY_V6 if len(self._packed) == 16 else _FAMILY_V4
        return b"".join((bytes((family,)), self._packed, _PORT.pack(self.port)))

    @property
    def encoded_size(self) -> int:
        """Length of `encode()` in bytes."""
        return ENDPOINT_V6_BYTES if self.family == _FAMILY_V6 else ENDPOINT_V4_BYTES

    @classmethod
    def from_sockaddr(cls, sockaddr: tuple[object, ...]) -> Endpoint:
        """Build from a socket address tuple (host, port[, flowinfo, scope_id]).

        The IPv6 scope id is dropped: it is local to this host and means nothing to a peer.
        An IPv4-mapped IPv6 address (an IPv4 peer of a dual-stack socket) becomes the IPv4
        address it stands for.
        """
        host, port = sockaddr[0], sockaddr[1]
        if not isinstance(host, str) or not isinstance(port, int):
            raise TypeError(f"not an IP socket address: {sockaddr!r}")
        host = host.split("%", 1)[0]
        if host.startswith("::ffff:"):
            mapped = ipaddress.ip_address(host)
            if isinstance(mapped, ipaddress.IPv6Address) and mapped.ipv4_mapped is not None:
                host = str(mapped.ipv4_mapped)
        return cls(host, port)

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """Parse user input "1.2.3.4:5" or "[::1]:5".

        Raises ConfigError naming the problem and the expected form.
        """
        form = (
            'expected "IPv4:PORT" or "[IPv6]:PORT", e.g. "192.0.2.1:7000" or "[2001:db8::1]:7000"'
        )
        text = text.strip()
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or not rest.startswith(":"):
                raise ConfigError(
                    f"endpoint {text!r}: missing ']:PORT' after the IPv6 address; {form}"
                )
            port_text = rest[1:]
            if ":" not in host:
                raise ConfigError(
                    f"endpoint {text!r}: brackets are only for IPv6 addresses; {form}"
                )
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ConfigError(f"endpoint {text!r}: missing ':PORT'; {form}")
            if ":" in host:
                raise ConfigError(
                    f"endpoint {text!r}: an IPv6 address needs brackets, as in [{host}]:PORT"
                )
        if not port_text.isdigit() or not port_text.isascii():
            raise ConfigError(f"endpoint {text!r}: port {port_text!r} is not a number; {form}")
        port = int(port_text)
        if not 1 <= port <= 0xFFFF:
            raise ConfigError(f"endpoint {text!r}: port {port} is outside 1..65535")
        try:
            return cls(host, port)
        except ValueError as exc:
            raise ConfigError(f"endpoint {text!r}: {exc}") from None


def decode_endpoint_untrusted(
    buf: bytes | bytearray | memoryview, offset: int
) -> tuple[Endpoint, int]:
    """Decode one endpoint from `buf` at `offset`; return it and the offset just past it.

    Never reads outside `buf`. Raises DecodeError (and nothing else) on an unknown family, a
    truncated field, port 0, or an IPv4-mapped IPv6 address (non-canonical: IPv4 is family 4).
    """
    if isinstance(buf, memoryview) and (buf.format != "B" or buf.ndim != 1 or not buf.c_contiguous):
        buf = buf.tobytes()  # an unusual view: read a flat copy of its bytes
    if offset < 0:
        raise ValueError(f"offset {offset} is negative")
    end = len(buf)
    if offset >= end:
        raise DecodeError("truncated endpoint: missing the address family byte")
    family = buf[offset]
    if family == _FAMILY_V4:
        size = 4
    elif family == _FAMILY_V6:
        size = 16
    else:
        raise DecodeError(f"endpoint has unknown address family {family} (expected 4 or 6)")
    addr_end = offset + 1 + size
    if addr_end + 2 > end:
        raise DecodeError(f"truncated IPv{family} endpoint: needs {size + 3} bytes")
    packed = bytes(buf[offset + 1 : addr_end])
    (port,) = _PORT.unpack_from(buf, addr_end)
    if port == 0:
        raise DecodeError("endpoint has port 0")
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    if size == 4:
        ip = ipaddress.IPv4Address(packed)
    else:
        ip = ipaddress.IPv6Address(packed)
        if ip.ipv4_mapped is not None:
            raise DecodeError("non-canonical endpoint: IPv4-mapped IPv6 address (use family 4)")
    # Every field is checked and str(ip) is canonical: skip the constructor's second parse,
    # which would double the cost of a Hello with 16 IPv6 candidates.
    ep: Endpoint = _new(Endpoint)
    _set(ep, "host", str(ip))
    _set(ep, "port", port)
    _set(ep, "_packed", packed)
    return ep, addr_end + 2


_new: Final = object.__new__
_set: Final = object.__setattr__
