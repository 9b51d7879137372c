"""Properties of the relay's UDP forwarding (`proto.relayudp`): a decoder total over any
bytes, and a `RuleBasedStateMachine` of circuits opening and closing, sides sending from
moving addresses, and strangers guessing, against a model of where each packet may go."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshcore.errors import DecodeError
from meshcore.proto.relayudp import (
    RelayUdpSettings,
    RelayUdpTable,
    UdpForward,
    decode_relay_datagram_untrusted,
    relay_datagram_prefix,
)

SEALED = b"\x07" + bytes(40)
ADDRESSES = [("192.0.2.1", 1), ("192.0.2.1", 2), ("198.51.100.9", 3), ("::1", 4)]


@given(st.binary(max_size=120))
def test_every_byte_string_decodes_or_raises_decode_error(data: bytes) -> None:
    try:
        packet = decode_relay_datagram_untrusted(data)
    except DecodeError:
        return
    assert relay_datagram_prefix(packet.token) + packet.sealed == data


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=31, max_size=80))
def test_near_valid_packets_decode_or_raise_decode_error(token: bytes, rest: bytes) -> None:
    data = relay_datagram_prefix(token) + b"\x07" + rest
    assert decode_relay_datagram_untrusted(data).token == token


class RelayUdpMachine(RuleBasedStateMachine):
    """The model: a packet is forwarded iff its token is a side of an open circuit and the
    other side has sent since the circuit opened; then to the other side's last address.
    (The rates are far above what the machine sends: they are tested in the unit tests.)"""

    def __init__(self) -> None:
        super().__init__()
        self.table = RelayUdpTable(RelayUdpSettings(packets_per_s=1e9, bytes_per_s=1e12))
        self.now = 0.0
        self.next_circuit = 1
        self.open: dict[int, tuple[bytes, bytes]] = {}
        self.closed_tokens: list[bytes] = []
        self.last: dict[bytes, tuple[str, int]] = {}  # token -> its side's last address
        self.forwarded = 0

    @rule()
    def open_circuit(self) -> None:
        cid = self.next_circuit
        self.next_circuit += 1
        self.open[cid] = self.table.open(cid)

    @precondition(lambda self: self.open)
    @rule(which=st.integers(0, 50))
    def close_circuit(self, which: int) -> None:
        cid = sorted(self.open)[which % len(self.open)]
        tokens = self.open.pop(cid)
        self.table.close(cid)
        self.closed_tokens += tokens
        for token in tokens:
            self.last.pop(token, None)

    @precondition(lambda self: self.open)
    @rule(which=st.integers(0, 50), side=st.integers(0, 1), at=st.sampled_from(ADDRESSES))
    def send(self, which: int, side: int, at: tuple[str, int]) -> None:
        cid = sorted(self.open)[which % len(self.open)]
        tokens = self.open[cid]
        token, other = tokens[side], tokens[1 - side]
        self.now += 0.001
        out = self.table.received(relay_datagram_prefix(token) + SEALED, at, self.now)
        self.last[token] = at
        expected = self.last.get(other)
        assert out == (UdpForward(SEALED, expected) if expected is not None else None)
        self.forwarded += out is not None

    @rule(guess=st.binary(min_size=16, max_size=16), at=st.sampled_from(ADDRESSES))
    def stranger(self, guess: bytes, at: tuple[str, int]) -> None:
        known = any(guess in tokens for tokens in self.open.values())
        out = self.table.received(relay_datagram_prefix(guess) + SEALED, at, self.now)
        if not known:
            assert out is None

    @precondition(lambda self: self.closed_tokens)
    @rule(which=st.integers(0, 50), at=st.sampled_from(ADDRESSES))
    def closed_token(self, which: int, at: tuple[str, int]) -> None:
        token = self.closed_tokens[which % len(self.closed_tokens)]
        assert self.table.received(relay_datagram_prefix(token) + SEALED, at, self.now) is None

    @invariant()
    def matches_the_model(self) -> None:
        assert len(self.table) == len(self.open)
        assert self.table.counters.forwarded == self.forwarded
        for cid, (a, b) in self.open.items():
            assert self.table.address_of(cid) == (self.last.get(a), self.last.get(b))


RelayUdpMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=40)
TestRelayUdp = RelayUdpMachine.TestCase
