"""The relay's UDP forwarding of sealed datagrams, sans-IO (docs/datagram.md, "Through the
relay"): per circuit side a random token, the address each side last sent from, a rate
limit, and the decision where each packet goes.

A peer sends `RELAY_DATAGRAM | token[16] | sealed datagram` to the relay's UDP port; the
relay looks the token up, learns the sender's address from it (so a NAT that rebinds the
port is followed), and forwards the sealed datagram alone to the other side's last learned
address. It never opens anything: the datagram stays sealed end to end. `RelayUdpCircuits`
watches the matchmaker's outputs (as `relayflow.RelayFlow` does) to hand out tokens when a
circuit opens between two connections that agreed to UDP and to free them when it closes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import Counter
from collections.abc import Callable
from typing import Final, NamedTuple

import attrs

from meshcore.errors import DecodeError
from meshcore.proto.circuitwatch import CircuitWatcher, Members
from meshcore.proto.constants import (
    RELAY_UDP_CIRCUIT_BYTES_PER_S,
    RELAY_UDP_CIRCUIT_PACKETS_PER_S,
    RELAY_UDP_MAX_PACKET_BYTES,
    RELAY_UDP_TOKEN_BYTES,
)
from meshcore.proto.packet import PacketType
from meshcore.proto.relayrecords import Output, Send
from meshcore.proto.wire import CircuitUdp

__all__ = [
    "DROP_REASONS",
    "RELAY_DATAGRAM_PREFIX_BYTES",
    "RelayDatagram",
    "RelayUdpCircuits",
    "RelayUdpCounters",
    "RelayUdpSettings",
    "RelayUdpTable",
    "UdpForward",
    "decode_relay_datagram_untrusted",
    "relay_datagram_prefix",
]

Address = tuple[str, int]
"""A UDP address as the socket module gives it (host, port)."""

RELAY_DATAGRAM_PREFIX_BYTES: Final = 1 + RELAY_UDP_TOKEN_BYTES
"""What a peer puts in front of a sealed datagram for the relay: type byte and token."""
_MIN_SEALED_BYTES: Final = 32
"""A sealed datagram's header and tag (`datagram.DATAGRAM_OVERHEAD_BYTES`): anything shorter
cannot be one."""
_RELAY_DATAGRAM: Final = int(PacketType.RELAY_DATAGRAM)
_DATAGRAM: Final = int(PacketType.DATAGRAM)
_BURST_S: Final = 0.05
"""A side's bucket holds this many seconds of its rate (a burst of a busy tunnel)."""
DROP_REASONS: Final = ("malformed", "oversized", "unknown_token", "no_peer_address", "rate")
"""Why the relay drops a UDP packet (`RelayUdpCounters.dropped`)."""


def relay_datagram_prefix(token: bytes) -> bytes:
    """The 17 bytes a peer puts in front of each sealed datagram sent via the relay."""
    if len(token) != RELAY_UDP_TOKEN_BYTES:
        raise ValueError(f"a relay UDP token is {RELAY_UDP_TOKEN_BYTES} bytes, not {len(token)}")
    return bytes((_RELAY_DATAGRAM,)) + token


@attrs.frozen
class RelayDatagram:
    """A packet to the relay's UDP port: the sender's token and the sealed datagram."""

    token: bytes = attrs.field(repr=False)
    sealed: bytes = attrs.field(repr=lambda sealed: f"<{len(sealed)} bytes>")


def decode_relay_datagram_untrusted(data: bytes | bytearray | memoryview) -> RelayDatagram:
    """Split a packet to the relay's UDP port (layout above). Raises DecodeError, and nothing
    else, if it is not `RELAY_DATAGRAM | token | a sealed datagram (type 7, >= 32 bytes)`."""
    raw = bytes(data)
    if len(raw) < RELAY_DATAGRAM_PREFIX_BYTES + _MIN_SEALED_BYTES:
        raise DecodeError(f"relay datagram of {len(raw)} bytes is too short")
    if raw[0] != _RELAY_DATAGRAM:
        raise DecodeError(f"packet type {raw[0]} is not a relay datagram ({_RELAY_DATAGRAM})")
    if raw[RELAY_DATAGRAM_PREFIX_BYTES] != _DATAGRAM:
        raise DecodeError("a relay datagram must carry a sealed datagram (type 7)")
    return RelayDatagram(raw[1:RELAY_DATAGRAM_PREFIX_BYTES], raw[RELAY_DATAGRAM_PREFIX_BYTES:])


@attrs.frozen
class RelayUdpSettings:
    """The bounds of the relay's UDP work, per circuit side."""

    max_packet_bytes: int = RELAY_UDP_MAX_PACKET_BYTES
    """Larger packets are counted and dropped."""
    packets_per_s: float = RELAY_UDP_CIRCUIT_PACKETS_PER_S
    bytes_per_s: float = RELAY_UDP_CIRCUIT_BYTES_PER_S

    def __attrs_post_init__(self) -> None:
        if self.max_packet_bytes < RELAY_DATAGRAM_PREFIX_BYTES + _MIN_SEALED_BYTES:
            raise ValueError(f"max_packet_bytes is too small: {self.max_packet_bytes}")
        if not (self.packets_per_s > 0 and self.bytes_per_s > 0):
            raise ValueError("the relay's UDP rates must be more than 0")


class UdpForward(NamedTuple):
    """Send `data` (a sealed datagram, no prefix) to `address` from the relay's UDP port (a
    tuple: made once per forwarded packet, cheaper than a frozen class)."""

    data: bytes
    address: Address

    def __repr__(self) -> str:
        return f"UdpForward(data=<{len(self.data)} bytes>, address={self.address!r})"


@attrs.define
class RelayUdpCounters:
    """Totals of the relay's UDP port, each only growing (docs/observability.md)."""

    received: int = 0
    forwarded: int = 0
    forwarded_bytes: int = 0
    dropped: Counter[str] = attrs.field(factory=Counter)
    """Packets dropped, by reason (`DROP_REASONS`)."""


def _packet_burst(settings: RelayUdpSettings) -> float:
    return max(settings.packets_per_s * _BURST_S, 1.0)


def _byte_burst(settings: RelayUdpSettings) -> float:
    return max(settings.bytes_per_s * _BURST_S, float(settings.max_packet_bytes))


class _Side:
    """One circuit side: its token, where it last sent from, its rate budget."""

    __slots__ = (
        "address",
        "byte_burst",
        "bytes",
        "circuit_id",
        "other",
        "packet_burst",
        "packets",
        "stamp",
        "token",
    )

    def __init__(self, circuit_id: int, token: bytes, settings: RelayUdpSettings) -> None:
        self.circuit_id = circuit_id
        self.token = token
        self.address: Address | None = None
        self.other: _Side | None = None
        self.packet_burst = self.packets = _packet_burst(settings)
        self.byte_burst = self.bytes = _byte_burst(settings)
        self.stamp: float | None = None
        """When the buckets were last filled (None: full, never used)."""

    def spend(self, size: int, now: float, settings: RelayUdpSettings) -> bool:
        """Take one packet of `size` bytes from both buckets; False if either is short."""
        elapsed = 0.0 if self.stamp is None else now - self.stamp
        if elapsed > 0 or self.stamp is None:
            self.stamp = now
            rate_p, rate_b = settings.packets_per_s, settings.bytes_per_s
            self.packets = min(self.packet_burst, self.packets + elapsed * rate_p)
            self.bytes = min(self.byte_burst, self.bytes + elapsed * rate_b)
        if self.packets < 1.0 or self.bytes < size:
            return False
        self.packets -= 1.0
        self.bytes -= size
        return True


class RelayUdpTable:
    """The tokens of every circuit with UDP, and where each packet goes (`received`)."""

    def __init__(
        self,
        settings: RelayUdpSettings | None = None,
        *,
        random: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        self.settings = settings or RelayUdpSettings()
        self.counters = RelayUdpCounters()
        self._random = random
        self._key = random(32)
        """Keys the index of tokens, so that how long a lookup takes says nothing about them."""
        self._by_index: dict[bytes, _Side] = {}
        self._circuits: dict[int, tuple[_Side, _Side]] = {}

    def __len__(self) -> int:
        """Circuits with tokens now."""
        return len(self._circuits)

    def __contains__(self, circuit_id: object) -> bool:
        return circuit_id in self._circuits

    def _index(self, token: bytes) -> bytes:
        return hashlib.blake2b(token, key=self._key, digest_size=16).digest()

    def open(self, circuit_id: int) -> tuple[bytes, bytes]:
        """The tokens of circuit `circuit_id`'s initiator and responder sides (new random
        ones the first time, the same ones again while it stays open)."""
        sides = self._circuits.get(circuit_id)
        if sides is None:
            made: list[_Side] = []
            while len(made) < 2:
                token = self._random(RELAY_UDP_TOKEN_BYTES)
                index = self._index(token)
                if index in self._by_index or any(s.token == token for s in made):
                    continue  # 2^-128: but a repeat must never join two circuits
                made.append(_Side(circuit_id, token, self.settings))
            a, b = made
            a.other, b.other = b, a
            for side in made:
                self._by_index[self._index(side.token)] = side
            sides = self._circuits[circuit_id] = (a, b)
        return sides[0].token, sides[1].token

    def close(self, circuit_id: int) -> None:
        """The circuit closed: its tokens are forgotten (packets with them are dropped)."""
        sides = self._circuits.pop(circuit_id, None)
        for side in sides or ():
            self._by_index.pop(self._index(side.token), None)
            side.other = None

    def clear(self) -> None:
        """Forget every circuit (the relay's UDP port closed)."""
        for circuit_id in list(self._circuits):
            self.close(circuit_id)

    def address_of(self, circuit_id: int) -> tuple[Address | None, Address | None]:
        """The last learned addresses of the circuit's two sides (None: nothing yet)."""
        sides = self._circuits.get(circuit_id)
        if sides is None:
            return None, None
        return sides[0].address, sides[1].address

    def received(self, data: bytes, source: Address, now: float) -> UdpForward | None:
        """A packet arrived at the relay's UDP port from `source`: what to send where, or
        None (dropped, and counted by reason)."""
        counters = self.counters
        counters.received += 1
        size = len(data)
        if size > self.settings.max_packet_bytes:
            counters.dropped["oversized"] += 1
            return None
        # decode_relay_datagram_untrusted's checks, without its copies (once per packet)
        if (
            size < RELAY_DATAGRAM_PREFIX_BYTES + _MIN_SEALED_BYTES
            or data[0] != _RELAY_DATAGRAM
            or data[RELAY_DATAGRAM_PREFIX_BYTES] != _DATAGRAM
        ):
            counters.dropped["malformed"] += 1
            return None
        token = data[1:RELAY_DATAGRAM_PREFIX_BYTES]
        side = self._by_index.get(self._index(token))
        if side is None or not hmac.compare_digest(side.token, token):
            counters.dropped["unknown_token"] += 1
            return None
        size -= RELAY_DATAGRAM_PREFIX_BYTES
        if not side.spend(size, now, self.settings):
            counters.dropped["rate"] += 1
            return None
        side.address = source  # a valid token: this is where the side is now
        other = side.other
        to = other.address if other is not None else None
        if to is None:
            counters.dropped["no_peer_address"] += 1
            return None
        counters.forwarded += 1
        counters.forwarded_bytes += size
        return UdpForward(data[RELAY_DATAGRAM_PREFIX_BYTES:], to)


class RelayUdpCircuits(CircuitWatcher[Output]):
    """Which connections agreed to UDP, and the `CircuitUdp` each side of a new circuit
    between two of them is sent (the relay's port must be known: `port`, None while the
    relay has no UDP socket); `watch` (`CircuitWatcher`) adds them as circuits open."""

    def __init__(self, table: RelayUdpTable, members: Members) -> None:
        super().__init__(members)
        self.table = table
        self.port: int | None = None
        self._udp: set[int] = set()
        self._of_conn: dict[int, set[int]] = {}  # conn id -> circuits with tokens
        self._members_of: dict[int, tuple[int, int]] = {}  # circuit with tokens -> its conns

    def connection_opened(self, conn_id: int, *, udp: bool) -> None:
        """A connection arrived; `udp` if it agreed to UDP in the upgrade."""
        if udp:
            self._udp.add(conn_id)

    def connection_closed(self, conn_id: int) -> None:
        """The connection is gone: the tokens of its circuits are freed."""
        self._udp.discard(conn_id)
        for circuit_id in self._of_conn.pop(conn_id, set()):
            self._free(circuit_id)

    def stop(self) -> None:
        """The relay's UDP port closed: every token is freed, no new ones are given."""
        self.port = None
        self.table.clear()
        self._of_conn.clear()
        self._members_of.clear()

    def circuit_opened(self, conn_id: int, circuit_id: int, out: list[Output]) -> None:
        """A `CircuitUdp` to `conn_id` if both members of the new circuit agreed to UDP."""
        udp = self._grant(conn_id, circuit_id)
        if udp is not None:
            out.append(Send(conn_id, udp))

    def circuit_gone(self, circuit_id: int, out: list[Output]) -> None:
        """A closed circuit's tokens are freed."""
        if circuit_id in self.table:
            self._free(circuit_id)

    def _grant(self, conn_id: int, circuit_id: int) -> CircuitUdp | None:
        members = self._members(circuit_id)
        if self.port is None or members is None or conn_id not in members:
            return None
        if not (members[0] in self._udp and members[1] in self._udp):
            return None
        tokens = self.table.open(circuit_id)
        self._members_of[circuit_id] = members
        for member in members:
            self._of_conn.setdefault(member, set()).add(circuit_id)
        token = tokens[0] if members[0] == conn_id else tokens[1]
        return CircuitUdp(circuit_id, token, self.port)

    def _free(self, circuit_id: int) -> None:
        self.table.close(circuit_id)
        for member in self._members_of.pop(circuit_id, ()):
            circuits = self._of_conn.get(member)
            if circuits is not None:
                circuits.discard(circuit_id)
                if not circuits:
                    del self._of_conn[member]
