"""The heartbeat of a relay connection: a Ping after 5 s without news, death after 15 s of
silence (a relay that vanished without a close or RST), on the pure `Heartbeat` and on
`RelayClientCore` with virtual time."""

from __future__ import annotations

from collections.abc import Sequence
from random import Random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto import wire
from meshcore.proto.constants import RELAY_DEAD_AFTER_S, RELAY_HEARTBEAT_S, RELAY_IDLE_TIMEOUT_S
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.heartbeat import Heartbeat
from meshcore.proto.identity import Identity, PublicBundle
from meshcore.proto.relayauth import make_challenge
from meshcore.proto.relayclient import RelayClientCore, RelayClientState
from meshcore.proto.relayclient_outputs import (
    CloseConnection,
    ConnectionLost,
    Output,
    Reconnect,
    SendBytes,
)

ALICE = Identity.generate()


def sent(outputs: Sequence[Output]) -> list[wire.ControlMessage]:
    return [wire.decode_control_untrusted(o.data) for o in outputs if isinstance(o, SendBytes)]


class Client:
    def __init__(self, **kwargs: object) -> None:
        kwargs.setdefault("random", Random(3))
        self.core = RelayClientCore(ALICE, "ws://relay.test/", **kwargs)  # type: ignore[arg-type]
        self.now = 0.0

    def register(self) -> None:
        out = self.core.connection_opened([], self.now)
        hello = sent(out)[0]
        assert isinstance(hello, wire.Hello)
        challenge, _ = make_challenge(PublicBundle(hello.x25519_public, hello.kem_public))
        self.feed(challenge)
        self.feed(wire.Registered(ALICE.peer_id.digest, Endpoint("192.0.2.9", 9)))
        assert self.core.state is RelayClientState.REGISTERED

    def feed(self, msg: wire.ControlMessage) -> list[Output]:
        return self.core.receive_data(wire.encode_control(msg), self.now)

    def advance_to(self, when: float) -> list[Output]:
        """Run the timers as a driver does: at every deadline up to `when`."""
        out: list[Output] = []
        while (deadline := self.core.get_timer()) is not None and deadline <= when:
            self.now = max(self.now, deadline)
            out += self.core.handle_timer(self.now)
        self.now = when
        return out + self.core.handle_timer(when)


@pytest.fixture
def client() -> Client:
    c = Client()
    c.register()
    return c


# --- the pure heartbeat -----------------------------------------------------------------------


def test_defaults_are_five_and_fifteen_seconds_within_the_relays_idle_timeout() -> None:
    beat = Heartbeat()
    assert (beat.interval_s, beat.dead_after_s) == (RELAY_HEARTBEAT_S, RELAY_DEAD_AFTER_S)
    assert (RELAY_HEARTBEAT_S, RELAY_DEAD_AFTER_S) == (5.0, 15.0)
    assert RELAY_DEAD_AFTER_S < RELAY_IDLE_TIMEOUT_S  # our pings keep the relay's side alive


@pytest.mark.parametrize(("interval", "dead"), [(0.0, 15.0), (5.0, 5.0), (6.0, 5.0), (-1, 3)])
def test_settings_that_cannot_work_are_refused(interval: float, dead: float) -> None:
    with pytest.raises(ValueError, match="interval < dead-after"):
        Heartbeat(interval, dead)


def test_pings_after_each_quiet_interval_then_dies() -> None:
    beat = Heartbeat(5.0, 15.0)
    beat.start(100.0)
    assert beat.next_check() == 105.0 and beat.ping_due(104.9) is None
    assert beat.ping_due(105.0) == 1 and beat.ping_due(105.0) is None
    assert beat.next_check() == 110.0
    assert beat.ping_due(110.0) == 2 and beat.next_check() == 115.0
    assert not beat.is_dead(114.9) and beat.is_dead(115.0)


def test_anything_received_postpones_the_ping_and_death() -> None:
    beat = Heartbeat(5.0, 15.0)
    beat.start(0.0)
    beat.received(4.0)
    assert beat.ping_due(5.0) is None and beat.next_check() == 9.0
    assert not beat.is_dead(18.9) and beat.is_dead(19.0)


def test_a_pong_to_the_latest_ping_measures_the_round_trip() -> None:
    beat = Heartbeat(5.0, 15.0)
    beat.start(0.0, rtt_s=0.05)
    assert beat.rtt_s == 0.05
    nonce = beat.ping_due(5.0)
    assert nonce is not None
    beat.pong(nonce + 1, 5.1)  # not ours
    assert beat.rtt_s == 0.05
    beat.pong(nonce, 5.02)
    assert beat.rtt_s == pytest.approx(0.02)
    beat.pong(nonce, 6.0)  # answered already
    assert beat.rtt_s == pytest.approx(0.02)


@given(st.lists(st.floats(0.0, 30.0, allow_nan=False), max_size=30))
def test_death_comes_exactly_when_a_silence_reaches_the_limit(gaps: list[float]) -> None:
    # Messages arrive after `gaps`; the driver wakes at every next_check. The connection is
    # declared dead at the first silence of 15 s, never earlier, with a ping every 5 s.
    beat = Heartbeat(5.0, 15.0)
    beat.start(0.0)
    now, last_rx, pings = 0.0, 0.0, 0
    for gap in [*gaps, 1_000.0]:
        arrival = now + gap
        while beat.next_check() <= arrival:
            now = beat.next_check()
            if beat.is_dead(now):
                assert now == last_rx + 15.0
                assert pings == 2, "a silence of 15 s brings exactly two pings"
                return
            if beat.ping_due(now) is not None:
                pings += 1
        assert arrival - last_rx < 15.0
        now = last_rx = arrival
        beat.received(now)
        pings = 0
    raise AssertionError("the final silence of 1000 s was not noticed")


# --- on the relay client ---------------------------------------------------------------------


def test_a_quiet_connection_is_pinged_after_five_seconds(client: Client) -> None:
    assert client.advance_to(4.9) == []
    assert sent(client.advance_to(5.0)) == [wire.Ping(1)]
    assert sent(client.advance_to(9.9)) == []
    assert sent(client.advance_to(10.0)) == [wire.Ping(2)]


def test_the_pong_keeps_the_connection_and_measures_the_rtt(client: Client) -> None:
    client.advance_to(5.0)
    client.now = 5.04
    assert client.feed(wire.Pong(1)) == []
    assert client.core.rtt_s == pytest.approx(0.04)
    assert sent(client.advance_to(10.04)) == [wire.Ping(2)]  # quiet again since the Pong
    client.advance_to(20.0)
    assert client.core.state is RelayClientState.REGISTERED
    client.advance_to(20.04)
    assert client.core.state is RelayClientState.LOST


def test_a_relay_silent_for_fifteen_seconds_is_given_up_and_dialled_again(client: Client) -> None:
    assert len(sent(client.advance_to(14.99))) == 2  # the two pings
    out = client.advance_to(15.0)
    reason = "no answer from the relay for 15 s"
    assert CloseConnection(reason) in out
    lost = [o for o in out if isinstance(o, ConnectionLost)]
    assert len(lost) == 1 and lost[0].reason == reason
    assert client.core.state is RelayClientState.LOST and client.core.lost_reason == reason
    assert Reconnect() in client.advance_to(15.0 + lost[0].retry_in_s)


def test_any_message_from_the_relay_keeps_the_connection(client: Client) -> None:
    for second in range(1, 60):
        client.advance_to(float(second))
        client.feed(wire.Ping(second))  # the relay's pings count as much as anything
    assert client.core.state is RelayClientState.REGISTERED
    assert [m for m in sent(client.advance_to(60.0)) if isinstance(m, wire.Ping)] == []


def test_the_dead_after_setting_is_used() -> None:
    c = Client(heartbeat_s=1.0, dead_after_s=2.5)
    c.register()
    assert c.advance_to(2.49) != [] and c.core.state is RelayClientState.REGISTERED
    out = c.advance_to(2.5)
    assert CloseConnection("no answer from the relay for 2.5 s") in out


def test_the_heartbeat_of_a_lost_connection_does_not_follow_the_next_one(client: Client) -> None:
    client.advance_to(3.0)
    client.core.connection_lost("reset", client.now)
    client.advance_to(4.0)  # the reconnect wait ends
    client.register()
    start = client.now
    assert sent(client.advance_to(start + 4.9)) == []  # the old 5 s ping would be at 5.0
    assert sent(client.advance_to(start + 5.0)) == [wire.Ping(1)]


def test_nothing_is_pinged_before_registration() -> None:
    c = Client(timeout=30.0)
    c.core.connection_opened([], c.now)
    assert sent(c.advance_to(20.0)) == []
