"""The session's datagram path, sans-IO: which UDP address a session's unreliable datagrams
go to, found and kept by authenticated probes (docs/datagram.md).

A session on a direct TCP path knows its peer's address; `start` makes that address the
candidate and the path probes it (a sealed `DATAGRAM_PROBE` carrying a sequence number).
The first authenticated reply from the peer makes the path usable, at the address the reply
came from (a NAT may have mapped the port). While usable it keeps probing slowly: a probe
answered within `trust_s` keeps it usable, so a path that stops carrying UDP (a firewall, a
NAT that forgot the mapping) is no longer used after at most `trust_s`; its datagrams then go
the reliable way again. `stop` (the session left the direct path) ends it at once.

A session on a relay circuit whose relay forwards datagrams by UDP probes the relay's UDP
address instead, with a prefix (the circuit side's token) in front of every packet: the
relay forwards them to the peer and the peer's answers come back from the relay's address.
Such a candidate keeps its address (replies do not move it: the relay's port is fixed).

Nothing here sends or seals: the caller asks `due_probe(now)` what to send and when to ask
again (`timer`), and feeds the authenticated replies in.
"""

from __future__ import annotations

import enum
import struct
from typing import Final

import attrs

from meshcore.errors import DecodeError

__all__ = [
    "DATAGRAM_OVERHEAD_BYTES",
    "DatagramPath",
    "DatagramSettings",
    "DatagramState",
    "Probe",
    "decode_probe_untrusted",
    "encode_probe",
    "max_payload",
]

Address = tuple[str, int]
"""A UDP address as the socket module gives it: (host, port) (IPv6 may add flow info)."""

DATAGRAM_OVERHEAD_BYTES: Final = 32
"""Header and tag a sealed datagram adds to its payload (`framing.py`)."""
_UDP_IPV4_BYTES: Final = 1500 - 20 - 8
"""The largest UDP payload a 1500-byte IPv4 path carries unfragmented."""
_UDP_IPV6_BYTES: Final = 1500 - 40 - 8
"""The same for IPv6."""
_PROBE: Final = struct.Struct("<Q")
_OUTSTANDING: Final = 8
"""Probes remembered for their reply (older replies are ignored)."""


def max_payload(address: Address, prefix: int = 0) -> int:
    """The largest datagram payload sent to `address` (a 1500-byte path, no fragments),
    behind a `prefix` of that many bytes (a relay's token)."""
    host = address[0]
    ipv4 = ":" not in host or host.startswith("::ffff:")
    return (_UDP_IPV4_BYTES if ipv4 else _UDP_IPV6_BYTES) - DATAGRAM_OVERHEAD_BYTES - prefix


def encode_probe(sequence: int) -> bytes:
    """The plaintext of a probe (and of its reply, which echoes it)."""
    return _PROBE.pack(sequence)


def decode_probe_untrusted(plaintext: bytes) -> int:
    """The sequence number of a probe or reply; raises DecodeError if it is not 8 bytes."""
    if len(plaintext) != _PROBE.size:
        raise DecodeError(f"datagram probe of {len(plaintext)} bytes, expected {_PROBE.size}")
    return int(_PROBE.unpack(plaintext)[0])


class DatagramState(enum.Enum):
    OFF = "off"
    """Not on a direct path: datagrams go the reliable way."""
    PROBING = "probing"
    """A candidate address, not (or no longer) answered within the trust time."""
    UP = "up"
    """Probes are answered: datagrams go to `address` by UDP."""


@attrs.frozen
class DatagramSettings:
    """Timing of the probes, in seconds."""

    probe_s: float = 0.2
    """Between probes while no reply came (the first goes at once)..."""
    quick_probes: int = 10
    """...for this many probes; after that, every `keepalive_s` (a path without UDP costs
    one probe per keepalive, not five a second)."""
    keepalive_s: float = 1.0
    """Between probes while usable."""
    trust_s: float = 3.5
    """Usable while the last reply is at most this old (three keepalives lost in a row)."""

    def __attrs_post_init__(self) -> None:
        if not 0 < self.probe_s <= self.keepalive_s < self.trust_s:
            raise ValueError(
                "datagram timing needs 0 < probe_s <= keepalive_s < trust_s, got "
                f"{self.probe_s}, {self.keepalive_s}, {self.trust_s}"
            )


@attrs.frozen
class Probe:
    """A probe to seal (kind DATAGRAM_PROBE) and send to `address`, behind `prefix`."""

    address: Address
    payload: bytes
    prefix: bytes = b""


class DatagramPath:
    """The datagram path of one session (see the module docstring)."""

    __slots__ = (
        "_address",
        "_candidate",
        "_next_probe",
        "_prefix",
        "_replied_at",
        "_sent",
        "_sequence",
        "_settings",
        "_unanswered",
        "rtt_s",
    )

    def __init__(self, settings: DatagramSettings | None = None) -> None:
        self._settings = settings or DatagramSettings()
        self._candidate: Address | None = None
        self._prefix = b""
        self._address: Address | None = None
        self._replied_at = float("-inf")
        self._next_probe: float | None = None
        self._sent: dict[int, float] = {}
        self._sequence = 0
        self._unanswered = 0
        self.rtt_s: float | None = None
        """The last probe's round trip, or None."""

    # ----------------------------------------------------------------- queries
    @property
    def candidate(self) -> Address | None:
        """The address being probed (the direct path's peer, or a relay), or None when off."""
        return self._candidate

    @property
    def prefix(self) -> bytes:
        """What goes in front of every packet to the candidate (b"" for a direct peer)."""
        return self._prefix

    def state(self, now: float) -> DatagramState:
        if self._candidate is None:
            return DatagramState.OFF
        if self.usable(now) is None:
            return DatagramState.PROBING
        return DatagramState.UP

    def usable(self, now: float) -> Address | None:
        """Where datagrams go now, or None (send them the reliable way)."""
        if self._address is None or now - self._replied_at > self._settings.trust_s:
            return None
        return self._address

    @property
    def usable_until(self) -> float:
        """When `usable` turns None unless another reply comes (-inf: not usable)."""
        if self._address is None:
            return float("-inf")
        return self._replied_at + self._settings.trust_s

    @property
    def timer(self) -> float | None:
        """When to call `due_probe` next, or None (off)."""
        return self._next_probe

    # ----------------------------------------------------------------- inputs
    def start(self, candidate: Address, now: float, prefix: bytes = b"") -> None:
        """Probe `candidate` (the direct path's peer address, or a relay's UDP address with
        the circuit's `prefix`); a new candidate forgets the old one's answers, the same one
        changes nothing."""
        if candidate == self._candidate and prefix == self._prefix:
            return
        self._candidate = candidate
        self._prefix = prefix
        self._address = None
        self._replied_at = float("-inf")
        self._sent.clear()
        self._unanswered = 0
        self._next_probe = now

    def stop(self) -> None:
        """The session left the direct path: no more datagrams by UDP, no more probes."""
        self._candidate = self._address = None
        self._prefix = b""
        self._replied_at = float("-inf")
        self._sent.clear()
        self._next_probe = None

    def due_probe(self, now: float) -> Probe | None:
        """The probe to send now, if one is due (then the timer moves on)."""
        at = self._next_probe
        if at is None or now < at or self._candidate is None:
            return None
        self._sequence += 1
        self._sent[self._sequence] = now
        while len(self._sent) > _OUTSTANDING:
            del self._sent[min(self._sent)]
        usable = self.usable(now) is not None
        settings = self._settings
        self._unanswered += 1
        quick = not usable and self._unanswered <= settings.quick_probes
        self._next_probe = now + (settings.probe_s if quick else settings.keepalive_s)
        target = self._address if usable and self._address is not None else self._candidate
        return Probe(target, encode_probe(self._sequence), self._prefix)

    def replied(self, plaintext: bytes, source: Address, now: float) -> bool:
        """An authenticated DATAGRAM_REPLY from `source`: True if it answers one of our
        outstanding probes (the path is usable at `source` from now on; through a relay, at
        the relay's address, wherever the reply came from). Raises
        DecodeError for a malformed one."""
        sequence = decode_probe_untrusted(plaintext)
        sent = self._sent.pop(sequence, None)
        if sent is None or self._candidate is None:
            return False  # too old, a duplicate, or after a stop
        for older in [s for s in self._sent if s < sequence]:
            del self._sent[older]
        self.rtt_s = max(now - sent, 0.0)
        self._unanswered = 0
        became_usable = self.usable(now) is None
        self._address = self._candidate if self._prefix else source
        self._replied_at = now
        if became_usable:
            self._next_probe = now + self._settings.keepalive_s
        return True
