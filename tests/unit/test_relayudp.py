"""The relay's UDP forwarding table and its CircuitUdp hand-out (`proto.relayudp`), pure."""

from __future__ import annotations

import itertools

import pytest

from meshcore.errors import DecodeError
from meshcore.proto import wire
from meshcore.proto.packet import decode_packet_untrusted
from meshcore.proto.relayrecords import Send
from meshcore.proto.relayudp import (
    RelayDatagram,
    RelayUdpCircuits,
    RelayUdpSettings,
    RelayUdpTable,
    UdpForward,
    decode_relay_datagram_untrusted,
    relay_datagram_prefix,
)

SEALED = b"\x07" + bytes(40)
A_AT = ("192.0.2.1", 5000)
B_AT = ("198.51.100.2", 6000)


def counting_random() -> object:
    counter = itertools.count(1)
    return lambda n: next(counter).to_bytes(n, "big")


def table(**settings: float) -> RelayUdpTable:
    return RelayUdpTable(RelayUdpSettings(**settings), random=counting_random())  # type: ignore[arg-type]


def test_the_packet_layout_round_trips_and_is_a_peer_to_peer_packet_type() -> None:
    token = bytes(range(16))
    packet = relay_datagram_prefix(token) + SEALED
    assert packet[0] == 8 and len(relay_datagram_prefix(token)) == 17
    assert decode_relay_datagram_untrusted(packet) == RelayDatagram(token, SEALED)
    assert decode_packet_untrusted(packet) == RelayDatagram(token, SEALED)
    assert "token" not in repr(RelayDatagram(token, SEALED))
    with pytest.raises(ValueError, match="16 bytes"):
        relay_datagram_prefix(b"short")


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x08" + bytes(16) + b"\x07" + bytes(30),  # a sealed part shorter than header + tag
        b"\x07" + bytes(16) + SEALED,  # another packet type
        b"\x08" + bytes(16) + b"\x04" + bytes(40),  # carries a frame, not a datagram
    ],
)
def test_malformed_packets_raise_decode_error(packet: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_relay_datagram_untrusted(packet)


def test_a_packet_goes_to_the_other_sides_last_address_once_it_sent() -> None:
    t = table()
    token_a, token_b = t.open(7)
    assert token_a != token_b and t.open(7) == (token_a, token_b)
    assert t.received(relay_datagram_prefix(token_a) + SEALED, A_AT, 0.0) is None
    assert t.counters.dropped["no_peer_address"] == 1
    assert t.received(relay_datagram_prefix(token_b) + SEALED, B_AT, 0.0) == UdpForward(
        SEALED, A_AT
    )
    assert t.received(relay_datagram_prefix(token_a) + SEALED, A_AT, 0.0) == UdpForward(
        SEALED, B_AT
    )
    moved = ("198.51.100.2", 6001)  # b's NAT rebound the port
    assert t.received(relay_datagram_prefix(token_b) + SEALED, moved, 0.0) is not None
    assert t.address_of(7) == (A_AT, moved)
    assert t.counters.forwarded == 3 and t.counters.forwarded_bytes == 3 * len(SEALED)


def test_unknown_closed_oversized_and_malformed_packets_are_counted() -> None:
    t = table(max_packet_bytes=100)
    token_a, token_b = t.open(1)
    t.received(relay_datagram_prefix(token_b) + SEALED, B_AT, 0.0)
    wrong = bytes([token_a[0] ^ 1]) + token_a[1:]
    assert t.received(relay_datagram_prefix(wrong) + SEALED, A_AT, 0.0) is None
    assert t.received(relay_datagram_prefix(token_a) + SEALED * 3, A_AT, 0.0) is None
    assert t.received(b"\x08" + token_a, A_AT, 0.0) is None
    t.close(1)
    assert 1 not in t and len(t) == 0
    assert t.received(relay_datagram_prefix(token_a) + SEALED, A_AT, 0.0) is None
    dropped = t.counters.dropped
    assert dropped == {"unknown_token": 2, "oversized": 1, "malformed": 1, "no_peer_address": 1}
    assert t.counters.received == 5 and t.counters.forwarded == 0


def test_each_side_is_held_to_its_packet_and_byte_rates() -> None:
    t = table(packets_per_s=100.0, bytes_per_s=1e9)
    token_a, token_b = t.open(1)
    t.received(relay_datagram_prefix(token_b) + SEALED, B_AT, 0.0)
    sent = [t.received(relay_datagram_prefix(token_a) + SEALED, A_AT, 0.0) for _ in range(10)]
    assert sum(f is not None for f in sent) == 5  # a burst of 50 ms at 100/s
    assert t.received(relay_datagram_prefix(token_a) + SEALED, A_AT, 0.01) is not None
    assert t.counters.dropped["rate"] == 5
    # b's budget is its own
    assert t.received(relay_datagram_prefix(token_b) + SEALED, B_AT, 0.0) is not None
    t2 = table(packets_per_s=1e6, bytes_per_s=2000.0)  # a byte bucket of one max packet
    token_a, token_b = t2.open(1)
    t2.received(relay_datagram_prefix(token_b) + SEALED, B_AT, 0.0)
    big = b"\x07" + bytes(1400)
    assert t2.received(relay_datagram_prefix(token_a) + big, A_AT, 0.0) is not None
    assert t2.received(relay_datagram_prefix(token_a) + big, A_AT, 0.0) is None
    assert t2.received(relay_datagram_prefix(token_a) + big, A_AT, 1.0) is not None


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="too small"):
        RelayUdpSettings(max_packet_bytes=40)
    with pytest.raises(ValueError, match="more than 0"):
        RelayUdpSettings(packets_per_s=0)


def members_of(circuits: dict[int, tuple[int, int]]) -> object:
    return circuits.get


def paired(conn: int, cid: int) -> Send:
    return Send(conn, wire.Paired(1, cid, wire.Role.INITIATOR, bytes(32), bytes(32),
                                  bytes(1184), wire_endpoint(), ()))  # fmt: skip


def wire_endpoint() -> object:
    from meshcore.proto.endpoint import Endpoint

    return Endpoint("192.0.2.1", 1)


def test_circuit_udp_goes_to_both_members_only_when_both_agreed_and_the_port_is_up() -> None:
    open_circuits = {5: (1, 2), 6: (1, 3)}
    t = table()
    udp = RelayUdpCircuits(t, open_circuits.get)
    udp.connection_opened(1, udp=True)
    udp.connection_opened(2, udp=True)
    udp.connection_opened(3, udp=False)
    assert udp.watch([paired(1, 5)]) == [paired(1, 5)]  # no port yet: nothing to offer
    udp.port = 7443
    out = udp.watch([paired(1, 5), paired(2, 5), paired(1, 6)])
    token_a, token_b = t.open(5)
    assert out == [
        paired(1, 5),
        Send(1, wire.CircuitUdp(5, token_a, 7443)),
        paired(2, 5),
        Send(2, wire.CircuitUdp(5, token_b, 7443)),
        paired(1, 6),  # conn 3 did not agree: no tokens for circuit 6
    ]
    assert 6 not in t
    close = Send(2, wire.CircuitClose(5, wire.ErrorCode.NONE, "bye"))
    assert udp.watch([close]) == [close]
    assert 5 in t  # the matchmaker still lists the circuit: not closed yet
    del open_circuits[5]
    udp.watch([close])
    assert 5 not in t


def test_a_closed_connection_frees_its_circuits_tokens_and_stop_frees_all() -> None:
    open_circuits = {5: (1, 2), 6: (2, 3)}
    t = table()
    udp = RelayUdpCircuits(t, open_circuits.get)
    udp.port = 1
    for conn in (1, 2, 3):
        udp.connection_opened(conn, udp=True)
    udp.watch([paired(1, 5), paired(3, 6)])
    assert len(t) == 2
    udp.connection_closed(1)
    assert 5 not in t and 6 in t
    udp.stop()
    assert len(t) == 0 and udp.port is None
    assert udp.watch([paired(2, 6)]) == [paired(2, 6)]
