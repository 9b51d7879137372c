"""The datagram path's probe machine (`proto.datagram`), on the pure core: unit tests and a
`RuleBasedStateMachine` against a model of when UDP may be used, with direct candidates and
relay candidates (a relay's UDP address and the circuit's token prefix)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshcore.errors import DecodeError
from meshcore.proto.datagram import (
    DatagramPath,
    DatagramSettings,
    DatagramState,
    decode_probe_untrusted,
    encode_probe,
    max_payload,
)

S = DatagramSettings(probe_s=0.2, quick_probes=3, keepalive_s=2.0, trust_s=6.5)
PEER = ("10.0.0.2", 4000)
NAT = ("198.51.100.7", 61000)
RELAY = ("203.0.113.5", 7443)
TOKEN = b"\x08" + bytes(range(16))
OTHER_TOKEN = b"\x08" + bytes(range(1, 17))


def test_a_relay_candidate_probes_with_its_prefix_and_keeps_the_relays_address() -> None:
    path = DatagramPath(S)
    path.start(RELAY, 0.0, TOKEN)
    assert path.prefix == TOKEN
    probe = path.due_probe(0.0)
    assert probe is not None and probe.address == RELAY and probe.prefix == TOKEN
    assert path.replied(probe.payload, NAT, 0.05)  # authenticated, from wherever
    assert path.usable(0.05) == RELAY  # datagrams still go to the relay
    again = path.due_probe(path.timer or 0.0)
    assert again is not None and again.address == RELAY and again.prefix == TOKEN
    path.start(RELAY, 0.1, TOKEN)  # the same route: nothing changes
    assert path.usable(0.1) == RELAY
    path.start(RELAY, 0.1, OTHER_TOKEN)  # a new circuit on the same relay: probe afresh
    assert path.usable(0.1) is None and path.prefix == OTHER_TOKEN


def test_moving_between_direct_and_relay_candidates_changes_address_and_prefix() -> None:
    path = DatagramPath(S)
    path.start(PEER, 0.0)
    probe = path.due_probe(0.0)
    assert probe is not None and probe.prefix == b""
    assert path.replied(probe.payload, NAT, 0.0) and path.usable(0.0) == NAT
    path.start(RELAY, 1.0, TOKEN)  # back on the relay
    assert path.usable(1.0) is None
    relayed = path.due_probe(1.0)
    assert relayed is not None and (relayed.address, relayed.prefix) == (RELAY, TOKEN)
    assert not path.replied(probe.payload, NAT, 1.0)  # the direct probe's late reply
    path.start(PEER, 2.0)
    assert path.prefix == b"" and path.usable(2.0) is None
    path.stop()
    assert path.prefix == b"" and path.candidate is None


def test_max_payload_leaves_room_for_the_prefix() -> None:
    assert max_payload(RELAY, len(TOKEN)) == max_payload(RELAY) - 17 == 1500 - 20 - 8 - 32 - 17


def test_a_started_path_probes_at_once_and_is_usable_only_after_a_reply() -> None:
    path = DatagramPath(S)
    assert path.state(0.0) is DatagramState.OFF and path.timer is None
    path.start(PEER, 0.0)
    probe = path.due_probe(0.0)
    assert probe is not None and probe.address == PEER
    assert path.usable(0.1) is None and path.state(0.1) is DatagramState.PROBING
    assert path.replied(probe.payload, NAT, 0.1)
    assert path.usable(0.1) == NAT  # where the reply came from: the NAT's mapping
    assert path.rtt_s == pytest.approx(0.1)
    assert path.timer == pytest.approx(0.1 + S.keepalive_s)


def test_unanswered_probes_slow_down_after_the_quick_ones() -> None:
    path = DatagramPath(S)
    path.start(PEER, 0.0)
    times = []
    now = 0.0
    for _ in range(6):
        assert path.due_probe(now) is not None
        times.append(now)
        assert path.timer is not None
        now = path.timer
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(times)]
    assert gaps == [0.2, 0.2, 0.2, 2.0, 2.0]  # quick_probes=3 gaps of probe_s, then keepalives


def test_the_path_expires_without_replies_and_recovers_with_one() -> None:
    path = DatagramPath(S)
    path.start(PEER, 0.0)
    first = path.due_probe(0.0)
    assert first is not None and path.replied(first.payload, PEER, 0.0)
    assert path.usable(S.trust_s) == PEER
    assert path.usable(S.trust_s + 0.001) is None
    probe = path.due_probe(10.0)
    assert probe is not None and probe.address == PEER
    assert path.replied(probe.payload, PEER, 10.0)
    assert path.usable(10.0) == PEER


def test_stale_duplicate_and_foreign_replies_are_ignored() -> None:
    path = DatagramPath(S)
    path.start(PEER, 0.0)
    a = path.due_probe(0.0)
    b = path.due_probe(0.2)
    assert a is not None and b is not None
    assert path.replied(b.payload, PEER, 0.3)
    assert not path.replied(a.payload, PEER, 0.3)  # older than an answered one
    assert not path.replied(b.payload, PEER, 0.3)  # a duplicate
    assert not path.replied(encode_probe(999), PEER, 0.3)  # never sent
    with pytest.raises(DecodeError):
        path.replied(b"short", PEER, 0.3)


def test_stop_ends_it_at_once_and_a_new_candidate_starts_over() -> None:
    path = DatagramPath(S)
    path.start(PEER, 0.0)
    probe = path.due_probe(0.0)
    assert probe is not None and path.replied(probe.payload, PEER, 0.0)
    path.start(PEER, 1.0)  # the same candidate: nothing changes
    assert path.usable(1.0) == PEER
    path.start(NAT, 1.0)
    assert path.usable(1.0) is None and path.timer == 1.0
    path.stop()
    assert path.state(1.0) is DatagramState.OFF and path.due_probe(5.0) is None
    assert not path.replied(probe.payload, PEER, 1.0)


def test_payload_limits_fit_a_1500_byte_path() -> None:
    assert max_payload(("10.0.0.1", 1)) == 1500 - 20 - 8 - 32
    assert max_payload(("::ffff:10.0.0.1", 1)) == 1500 - 20 - 8 - 32
    assert max_payload(("fd00::1", 1)) == 1500 - 40 - 8 - 32


@given(st.binary(max_size=20))
def test_every_probe_payload_decodes_or_raises_decode_error(data: bytes) -> None:
    try:
        sequence = decode_probe_untrusted(data)
    except DecodeError:
        return
    assert encode_probe(sequence) == data


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="probe_s <= keepalive_s < trust_s"):
        DatagramSettings(probe_s=1.0, keepalive_s=2.0, trust_s=2.0)


class DatagramPathMachine(RuleBasedStateMachine):
    """Probes sent, answered late, lost or duplicated; candidates that change; time moving.

    The model: usable exactly while a candidate is set and a reply to a probe sent for the
    current candidate arrived within the trust time; the address is the last reply's source.
    """

    def __init__(self) -> None:
        super().__init__()
        self.path = DatagramPath(S)
        self.now = 0.0
        self.candidate: tuple[str, int] | None = None
        self.prefix = b""
        self.in_flight: list[tuple[bytes, float]] = []  # probes of the current candidate
        self.stale: list[bytes] = []  # probes of an earlier candidate
        self.replied_at: float | None = None
        self.address: tuple[str, int] | None = None

    @rule(
        route=st.sampled_from(
            [(PEER, b""), (NAT, b""), (RELAY, TOKEN), (RELAY, OTHER_TOKEN), (PEER, TOKEN)]
        )
    )
    def start(self, route: tuple[tuple[str, int], bytes]) -> None:
        candidate, prefix = route
        self.path.start(candidate, self.now, prefix)
        if (candidate, prefix) != (self.candidate, self.prefix):
            self.candidate, self.prefix = candidate, prefix
            self.stale += [p for p, _ in self.in_flight]
            self.in_flight = []
            self.replied_at = self.address = None

    @rule()
    def stop(self) -> None:
        self.path.stop()
        self.candidate, self.prefix = None, b""
        self.stale += [p for p, _ in self.in_flight]
        self.in_flight = []
        self.replied_at = self.address = None

    @rule(dt=st.floats(0.0, 4.0))
    def wait(self, dt: float) -> None:
        self.now += dt

    @rule()
    def tick(self) -> None:
        timer = self.path.timer
        probe = self.path.due_probe(self.now)
        if timer is None or self.now < timer:
            assert probe is None
            return
        assert probe is not None
        expected = self.address if self.usable() else self.candidate
        assert probe.address == expected and probe.prefix == self.prefix
        self.in_flight.append((probe.payload, self.now))
        if len(self.in_flight) > 8:  # the path remembers the last eight probes
            self.stale.append(self.in_flight.pop(0)[0])
        assert self.path.timer is not None and self.path.timer > self.now

    @precondition(lambda self: self.in_flight)
    @rule(which=st.integers(0, 20), source=st.sampled_from([PEER, NAT]))
    def reply(self, which: int, source: tuple[str, int]) -> None:
        index = which % len(self.in_flight)
        payload, sent = self.in_flight[index]
        assert self.path.replied(payload, source, self.now)
        assert self.path.rtt_s == pytest.approx(self.now - sent)
        self.stale += [p for p, _ in self.in_flight[: index + 1]]  # answered, or older
        self.in_flight = self.in_flight[index + 1 :]
        # through a relay datagrams keep going to the relay, else to the reply's source
        self.replied_at = self.now
        self.address = self.candidate if self.prefix else source

    @precondition(lambda self: self.stale)
    @rule(which=st.integers(0, 20))
    def stale_reply(self, which: int) -> None:
        assert not self.path.replied(self.stale[which % len(self.stale)], PEER, self.now)

    def usable(self) -> bool:
        return (
            self.candidate is not None
            and self.replied_at is not None
            and self.now - self.replied_at <= S.trust_s
        )

    @invariant()
    def matches_the_model(self) -> None:
        assert self.path.usable(self.now) == (self.address if self.usable() else None)
        assert self.path.candidate == self.candidate
        assert self.path.prefix == self.prefix
        if self.candidate is None:
            assert self.path.state(self.now) is DatagramState.OFF and self.path.timer is None
        else:
            assert self.path.timer is not None


DatagramPathMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40)
TestDatagramPath = DatagramPathMachine.TestCase
