"""The peer's relay-client machine, one rule per test: registration and the challenge, each
request and its deadline, invitations across reconnects, REPLACED, malformed input, pings, and
the reconnect backoff (its circuits: test_relayclient_circuits)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from random import Random
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.errors import DecodeError, HandshakeError, ProtocolError, RelayError, TransportClosed
from meshcore.proto import wire
from meshcore.proto.constants import MAX_CANDIDATES
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity, PublicBundle
from meshcore.proto.packet import PacketType
from meshcore.proto.reconnect import shutdown_reason
from meshcore.proto.relayauth import make_challenge
from meshcore.proto.relayclient import RelayClientCore, RelayClientState
from meshcore.proto.relayclient_outputs import (
    CircuitClosed,
    CircuitReopened,
    CloseConnection,
    Closed,
    ConnectionLost,
    InvitationAccepted,
    Invited,
    Output,
    PairingCompleted,
    PairingFailed,
    Reconnect,
    Registered,
    RegistrationFailed,
    RelayedReceived,
    SendBytes,
)

M = TypeVar("M")

ALICE, BOB, CAROL = (Identity.generate() for _ in range(3))
URL = "ws://relay.test/"
OBSERVED = Endpoint("198.51.100.7", 40000)
BOB_SEEN = Endpoint("203.0.113.9", 50000)
FRAME = bytes([PacketType.FRAME]) + bytes(40)
HANDSHAKE = bytes([PacketType.HANDSHAKE_INIT]) + bytes(40)


class HalfRandom(Random):
    """`random()` is always 0.5: the jitter factor is exactly 1."""

    def random(self) -> float:
        return 0.5


def sent(outputs: Sequence[Output]) -> list[wire.ControlMessage]:
    """The control messages the outputs send, decoded, in order."""
    return [wire.decode_control_untrusted(o.data) for o in outputs if isinstance(o, SendBytes)]


def only(items: Sequence[object], cls: type[M]) -> M:
    matching = [item for item in items if isinstance(item, cls)]
    assert len(matching) == 1, f"expected one {cls.__name__} in {items}"
    return matching[0]


def events(outputs: Sequence[Output]) -> list[Output]:
    return [o for o in outputs if not isinstance(o, SendBytes)]


class Client:
    """A machine under test, the clock, and the relay's side spoken by hand."""

    def __init__(self, identity: Identity = ALICE, **kwargs: object) -> None:
        self.identity = identity
        kwargs.setdefault("random", Random(7))
        self.core = RelayClientCore(identity, URL, **kwargs)  # type: ignore[arg-type]
        self.now = 100.0
        self.tickets = iter(range(1, 1_000_000))
        self.credited = False

    def feed(self, msg: wire.ControlMessage) -> list[Output]:
        return self.core.receive_data(wire.encode_control(msg), self.now)

    def advance(self, seconds: float) -> list[Output]:
        self.now += seconds
        return self.core.handle_timer(self.now)

    def open(self, local: Sequence[Endpoint] = ()) -> wire.Hello:
        out = self.core.connection_opened(local, self.now, credited=self.credited)
        return only(sent(out), wire.Hello)

    def register(self, observed: Endpoint = OBSERVED) -> list[Output]:
        """Connect (or reconnect) and register with a real challenge."""
        if self.core.state is RelayClientState.LOST:
            assert Reconnect() in self.advance(60.0)
        hello = self.open()
        bundle = PublicBundle(hello.x25519_public, hello.kem_public)
        challenge, pending = make_challenge(bundle)
        auth = only(sent(self.feed(challenge)), wire.Auth)
        assert pending.verify(auth), "the answer does not prove our keys"
        return self.feed(wire.Registered(self.identity.peer_id.digest, observed))

    def connect(self, peer: Identity = BOB, timeout: float = 5.0) -> tuple[int, int]:
        """Start a connect: (ticket, the wire request id it was sent with)."""
        ticket = next(self.tickets)
        out = self.core.connect(ticket, peer.peer_id, timeout, self.now)
        return ticket, only(sent(out), wire.Connect).request_id

    def paired(
        self, rid: int, cid: int, peer: Identity = BOB, role: wire.Role = wire.Role.INITIATOR
    ) -> list[Output]:
        keys = peer.public
        msg = wire.Paired(
            rid, cid, role, peer.peer_id.digest, keys.x25519_public, keys.kem_public, BOB_SEEN, ()
        )
        return self.feed(msg)

    def pair(self, peer: Identity = BOB, cid: int = 77) -> PairingCompleted:
        ticket, rid = self.connect(peer)
        pairing = only(self.paired(rid, cid, peer), PairingCompleted)
        assert pairing.ticket == ticket
        return pairing

    def invite(self, peer: Identity = BOB, rid: int = 900) -> Invited:
        keys = peer.public
        msg = wire.Invite(
            rid, peer.peer_id.digest, keys.x25519_public, keys.kem_public, BOB_SEEN, ()
        )
        return only(self.feed(msg), Invited)

    def lose(self, reason: str = "network down") -> list[Output]:
        return self.core.connection_lost(reason, self.now)


@pytest.fixture
def client() -> Client:
    c = Client()
    c.register()
    return c


# --- registration ------------------------------------------------------------------------------


def test_hello_carries_our_keys_and_the_candidates_deduplicated_and_capped() -> None:
    configured = [Endpoint("10.0.0.1", 7000), Endpoint("10.0.0.2", 7000)]
    local = [Endpoint("10.0.0.2", 7000)] + [Endpoint(f"10.1.0.{i}", 7000) for i in range(20)]
    c = Client(candidates=configured)
    hello = c.open(local)
    assert (hello.x25519_public, hello.kem_public) == (
        ALICE.public.x25519_public,
        ALICE.public.kem_public,
    )
    assert hello.candidates[:3] == (configured[0], configured[1], local[1])
    assert len(hello.candidates) == MAX_CANDIDATES
    assert c.core.state is RelayClientState.HELLO_SENT


def test_answering_the_challenge_and_being_registered_registers_the_client() -> None:
    c = Client(candidates=[Endpoint("10.0.0.1", 7000)])
    out = c.register()
    assert out == [Registered(OBSERVED, (Endpoint("10.0.0.1", 7000),), 1)]
    assert c.core.state is RelayClientState.REGISTERED
    assert (c.core.registrations, c.core.observed) == (1, OBSERVED)
    assert c.core.get_timer() is not None  # the registration deadline (stale), the heartbeat
    assert c.advance(4.9) == []


def test_being_registered_under_another_peer_id_fails_the_first_attempt_for_good() -> None:
    c = Client()
    hello = c.open()
    challenge, _ = make_challenge(PublicBundle(hello.x25519_public, hello.kem_public))
    c.feed(challenge)
    out = c.feed(wire.Registered(BOB.peer_id.digest, OBSERVED))
    failed = only(out, RegistrationFailed)
    assert isinstance(failed.error, ProtocolError) and failed.retry_in_s is None
    assert "another peer id" in only(out, CloseConnection).reason
    assert c.core.state is RelayClientState.CLOSED
    assert c.advance(3600.0) == []  # never retried


def test_a_refusal_instead_of_the_challenge_fails_with_the_relay_s_code() -> None:
    c = Client()
    c.open()
    out = c.feed(wire.Error(wire.ErrorCode.CAPACITY, "the relay is full"))
    error = only(out, RegistrationFailed).error
    assert isinstance(error, RelayError)
    assert str(error) == "relay refused us: the relay is full"
    assert error.code == wire.ErrorCode.CAPACITY


def test_another_message_instead_of_the_challenge_is_a_protocol_error() -> None:
    c = Client()
    c.open()
    error = only(c.feed(wire.Pong(1)), RegistrationFailed).error
    assert isinstance(error, ProtocolError)
    assert str(error) == "relay sent Pong instead of a challenge"


def test_malformed_bytes_during_registration_close_the_connection_with_the_reason() -> None:
    c = Client()
    c.open()
    out = c.core.receive_data(b"\x01\xff garbage", c.now)
    assert isinstance(only(out, RegistrationFailed).error, DecodeError)
    assert only(out, CloseConnection).reason.startswith("relay sent a malformed message: ")


def test_registration_must_complete_within_the_timeout() -> None:
    c = Client(timeout=3.0)
    c.open()
    assert c.advance(2.9) == []
    out = c.advance(0.2)
    error = only(out, RegistrationFailed).error
    assert str(error) == f"relay at {URL} did not complete registration in 3 s"
    assert isinstance(only(out, CloseConnection), CloseConnection)


def test_a_connection_that_breaks_during_registration_fails_with_its_reason() -> None:
    c = Client()
    c.open()
    error = only(c.lose("reset by peer"), RegistrationFailed).error
    assert isinstance(error, TransportClosed) and error.reason == "reset by peer"


def test_a_failed_reconnect_attempt_is_retried_after_the_backoff(client: Client) -> None:
    client.lose()
    assert client.advance(60.0) == [Reconnect()]
    out = client.core.connection_failed(TransportClosed("connection refused"), client.now)
    failed = only(out, RegistrationFailed)
    assert failed.retry_in_s is not None and failed.retry_in_s > 0
    assert client.core.state is RelayClientState.LOST
    assert client.advance(failed.retry_in_s) == [Reconnect()]


def test_reconnect_waits_double_from_half_a_second_to_thirty_seconds() -> None:
    c = Client(random=HalfRandom())
    c.register()
    waits = [only(c.lose(), ConnectionLost).retry_in_s]
    for _ in range(8):
        assert c.advance(waits[-1]) == [Reconnect()]
        waits.append(
            only(c.core.connection_failed(OSError(), c.now), RegistrationFailed).retry_in_s
        )
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert c.advance(30.0) == [Reconnect()]
    c.open()
    c.core.connection_lost("gone again", c.now)  # an attempt, not a registration: still backing off
    c.register()
    assert only(c.lose(), ConnectionLost).retry_in_s == 0.5  # registering reset the backoff


def test_reconnect_waits_are_jittered_by_half_either_way() -> None:
    low, high = Random(), Random()
    low.random = lambda: 0.0  # type: ignore[method-assign]
    high.random = lambda: 0.999999  # type: ignore[method-assign]
    for rng, expected in ((low, 0.25), (high, 0.75)):
        c = Client(random=rng)
        c.register()
        assert only(c.lose(), ConnectionLost).retry_in_s == pytest.approx(expected, rel=1e-5)


def test_the_reconnect_is_not_dialled_before_the_wait_is_over() -> None:
    c = Client(random=HalfRandom())
    c.register()
    c.lose()
    assert c.advance(0.49) == []
    assert c.core.state is RelayClientState.LOST
    assert c.advance(0.01) == [Reconnect()]
    assert c.core.state is RelayClientState.CONNECTING


def test_a_reconnect_registers_again_and_counts_it(client: Client) -> None:
    client.lose()
    out = client.register(Endpoint("198.51.100.7", 40001))
    assert only(out, Registered).registrations == 2
    assert client.core.lost_reason is None


# --- pairing -----------------------------------------------------------------------------------


def test_connect_pairs_once_the_relay_says_paired(client: Client) -> None:
    pairing = client.pair(BOB, cid=77)
    assert pairing.peer.peer_id == BOB.peer_id
    assert (pairing.circuit_id, pairing.peer_observed, pairing.role) == (
        77,
        BOB_SEEN,
        wire.Role.INITIATOR,
    )
    assert client.core.circuit_peers() == {77: BOB.peer_id}
    assert client.core.is_paired(BOB.peer_id)


def test_a_refused_connect_fails_with_the_relay_s_reason_and_code(client: Client) -> None:
    ticket, rid = client.connect(BOB)
    out = client.feed(wire.Reject(rid, wire.ErrorCode.PEER_OFFLINE, "not here"))
    failed = only(out, PairingFailed)
    assert failed.ticket == ticket and isinstance(failed.error, RelayError)
    assert str(failed.error) == f"pairing with {BOB.peer_id} refused: not here"
    assert failed.error.code == wire.ErrorCode.PEER_OFFLINE


def test_a_connect_without_an_answer_fails_at_its_deadline(client: Client) -> None:
    ticket, _ = client.connect(BOB, timeout=2.0)
    assert client.advance(1.9) == []
    failed = only(client.advance(0.1), PairingFailed)
    assert failed.ticket == ticket
    assert str(failed.error) == "no answer from the relay within 2 s"


def test_a_pairing_that_comes_after_its_deadline_is_closed_at_the_relay(client: Client) -> None:
    _, rid = client.connect(BOB, timeout=2.0)
    client.advance(2.0)
    out = client.paired(rid, 55)
    assert events(out) == []
    close = only(sent(out), wire.CircuitClose)
    assert close.circuit_id == 55
    assert client.core.circuit_peers() == {}


def test_a_cancelled_connect_closes_the_circuit_of_its_late_pairing(client: Client) -> None:
    ticket, rid = client.connect(BOB)
    assert client.core.cancel(ticket) == []
    assert only(sent(client.paired(rid, 56)), wire.CircuitClose).circuit_id == 56


def test_keys_that_are_not_the_pinned_peer_s_fail_with_handshake_error(client: Client) -> None:
    ticket, rid = client.connect(BOB)
    out = client.paired(rid, 57, peer=CAROL)  # the relay serves Carol's keys for Bob
    failed = only(out, PairingFailed)
    assert failed.ticket == ticket and isinstance(failed.error, HandshakeError)
    assert only(sent(out), wire.CircuitClose).circuit_id == 57
    assert client.core.circuit_peers() == {} and not client.core.is_paired(BOB.peer_id)


def test_requests_while_not_registered_fail_with_transport_closed(client: Client) -> None:
    client.lose("cable pulled")
    failures = [
        client.core.connect(1, BOB.peer_id, 5.0, client.now),
        client.core.open_circuit(2, BOB.peer_id, 5.0, client.now),
        client.core.reopen_circuit(3, BOB.peer_id, 5.0, client.now),
    ]
    for out in failures:
        assert not sent(out)
        error = out[0].error  # type: ignore[union-attr]
        assert isinstance(error, TransportClosed)
        assert error.reason == "relay connection lost: cable pulled; reconnecting"


def test_a_ticket_in_use_is_a_driver_bug(client: Client) -> None:
    client.core.connect(1, BOB.peer_id, 5.0, client.now)
    with pytest.raises(ValueError, match="ticket 1"):
        client.core.open_circuit(1, BOB.peer_id, 5.0, client.now)


# --- invitations -------------------------------------------------------------------------------


def test_an_invitation_carries_the_initiator_and_the_registration_it_came_on(
    client: Client,
) -> None:
    invited = client.invite(BOB, rid=900)
    assert (invited.request_id, invited.initiator, invited.connection) == (900, BOB.peer_id, 1)


def test_accepting_an_invitation_pairs_us_as_responder(client: Client) -> None:
    invited = client.invite(BOB, rid=900)
    out = client.core.accept(5, invited, 5.0, client.now)
    assert only(sent(out), wire.Accept).request_id == 900
    pairing = only(client.paired(900, 88, role=wire.Role.RESPONDER), PairingCompleted)
    assert (pairing.ticket, pairing.role, pairing.peer.peer_id) == (
        5,
        wire.Role.RESPONDER,
        BOB.peer_id,
    )


def test_an_invitation_withdrawn_by_the_relay_fails_its_accept(client: Client) -> None:
    invited = client.invite(BOB, rid=900)
    client.core.accept(5, invited, 5.0, client.now)
    out = client.feed(wire.Reject(900, wire.ErrorCode.TIMEOUT, "invitation expired"))
    assert (
        str(only(out, PairingFailed).error)
        == f"pairing with {BOB.peer_id} failed: relay withdrew it"
    )


def test_an_accept_without_an_answer_fails_at_its_deadline(client: Client) -> None:
    client.core.accept(5, client.invite(BOB), 1.5, client.now)
    assert (
        str(only(client.advance(1.5), PairingFailed).error)
        == "no answer from the relay within 1.5 s"
    )


def test_an_invitation_from_a_lost_connection_cannot_be_accepted(client: Client) -> None:
    invited = client.invite(BOB)
    client.lose()
    client.register()
    out = client.core.accept(5, invited, 5.0, client.now)
    assert not sent(out)
    assert "has since been lost; the peer must ask again" in str(only(out, PairingFailed).error)
    assert client.invite(BOB).connection == 2


def test_accepting_the_same_invitation_twice_fails_the_second(client: Client) -> None:
    invited = client.invite(BOB)
    client.core.accept(5, invited, 5.0, client.now)
    out = client.core.accept(6, invited, 5.0, client.now)
    assert "being accepted" in str(only(out, PairingFailed).error)


def test_reject_tells_the_relay_and_is_silent_once_the_connection_is_gone(client: Client) -> None:
    invited = client.invite(BOB, rid=901)
    reject = only(sent(client.core.reject(invited, "not on the allow-list")), wire.Reject)
    assert (reject.request_id, reject.code, reject.reason) == (
        901,
        wire.ErrorCode.NOT_ALLOWED,
        "not on the allow-list",
    )
    capacity = client.core.reject(invited, "full", code=wire.ErrorCode.CAPACITY)
    assert only(sent(capacity), wire.Reject).code is wire.ErrorCode.CAPACITY
    client.lose()
    assert client.core.reject(invited, "too late") == []


def test_a_pairing_accepted_on_our_own_routes_a_sealed_frame_to_a_session(client: Client) -> None:
    invited = client.invite(BOB, rid=902)
    client.core.accept(5, invited, 5.0, client.now, route=True)
    assert client.paired(902, 89, role=wire.Role.RESPONDER) == []  # nobody waits for it
    assert client.feed(wire.Relayed(89, FRAME)) == [CircuitReopened(89, BOB.peer_id, FRAME)]
    assert client.feed(wire.Relayed(89, b"next")) == [RelayedReceived(89, b"next")]


def test_a_pairing_accepted_on_our_own_hands_a_handshake_on_as_an_invitation(
    client: Client,
) -> None:
    invited = client.invite(BOB, rid=903)
    client.core.accept(5, invited, 5.0, client.now, route=True)
    client.paired(903, 90, role=wire.Role.RESPONDER)
    accepted = only(client.feed(wire.Relayed(90, HANDSHAKE)), InvitationAccepted)
    assert accepted.invitation == invited and accepted.first_frame == HANDSHAKE
    assert (accepted.pairing.circuit_id, accepted.pairing.peer.peer_id) == (90, BOB.peer_id)


# --- the connection ----------------------------------------------------------------------------


def test_a_relay_ping_is_answered_with_its_nonce(client: Client) -> None:
    assert sent(client.feed(wire.Ping(12345))) == [wire.Pong(12345)]


def test_losing_the_connection_ends_its_circuits_requests_and_pairings(client: Client) -> None:
    client.pair(BOB, cid=77)
    ticket, _ = client.connect(CAROL)
    out = client.lose("reset")
    why = "relay connection lost: reset"
    assert CircuitClosed(77, why) in out
    failed = only(out, PairingFailed)
    assert failed.ticket == ticket and str(failed.error) == why
    assert isinstance(out[-1], ConnectionLost) and out[-1].reason == "reset"
    assert client.core.circuit_peers() == {} and not client.core.is_paired(BOB.peer_id)
    assert client.core.lost_reason == "reset"
    assert client.lose("twice") == []  # already known


def test_malformed_input_when_registered_closes_the_connection_and_reconnects(
    client: Client,
) -> None:
    out = client.core.receive_data(b"\x01\x63", client.now)
    reason = only(out, CloseConnection).reason
    assert reason.startswith("relay sent a malformed message: ")
    assert only(out, ConnectionLost).reason == reason
    assert client.core.state is RelayClientState.LOST


def test_a_relay_shutting_down_is_a_lost_connection_that_is_retried(client: Client) -> None:
    out = client.feed(wire.Close(wire.ErrorCode.SHUTDOWN, "the relay is shutting down"))
    lost = only(out, ConnectionLost)
    assert lost.reason == "relay closed the connection: the relay is shutting down"
    assert lost.graceful  # announced: the driver says so at info level, not as a warning
    assert isinstance(only(out, CloseConnection), CloseConnection)


def test_a_lost_connection_without_the_relays_word_is_not_graceful(client: Client) -> None:
    out = client.feed(wire.Error(wire.ErrorCode.BAD_MESSAGE, "what was that"))
    assert not only(out, ConnectionLost).graceful


def test_being_replaced_by_another_registration_closes_for_good(client: Client) -> None:
    client.pair(BOB, cid=77)
    out = client.feed(wire.Close(wire.ErrorCode.REPLACED, "a newer connection registered"))
    reason = "relay closed the connection: a newer connection registered"
    assert out[0] == CloseConnection(reason)
    assert CircuitClosed(77, f"relay connection lost: {reason}") in out
    assert out[-1] == Closed(reason)
    assert not any(isinstance(o, ConnectionLost) for o in out)
    assert client.core.state is RelayClientState.CLOSED and client.core.close_reason == reason
    assert client.advance(3600.0) == []
    error = client.core.connect(1, BOB.peer_id, 5.0, client.now)[0].error  # type: ignore[union-attr]
    assert isinstance(error, TransportClosed) and error.reason == reason


def test_close_ends_everything_once(client: Client) -> None:
    client.pair(BOB, cid=77)
    out = client.core.close("closed")
    assert out[0] == CloseConnection("closed") and out[-1] == Closed("closed")
    assert CircuitClosed(77, "relay connection lost: closed") in out
    assert client.core.close("again") == []
    assert client.core.receive_data(wire.encode_control(wire.Ping(1)), client.now) == []


def test_connection_opened_when_not_dialling_is_a_driver_bug(client: Client) -> None:
    with pytest.raises(ValueError, match="driver bug"):
        client.core.connection_opened([], client.now)


# --- properties --------------------------------------------------------------------------------


@pytest.mark.parametrize("registered", [False, True], ids=["registering", "registered"])
@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200) | st.builds(lambda b: b"\x01" + b, st.binary(max_size=200)))
def test_any_bytes_from_the_relay_are_handled_or_close_the_connection_with_a_reason(
    registered: bool, data: bytes
) -> None:
    c = Client()
    if registered:
        c.register()
        c.pair(BOB, cid=77)
    else:
        c.open()
    out = c.core.receive_data(data, c.now)
    try:
        wire.decode_control_untrusted(data)
    except DecodeError:
        assert only(out, CloseConnection).reason.startswith("relay sent a malformed message: ")
    for item in out:
        if isinstance(item, CloseConnection):
            assert item.reason


def test_the_machine_imports_no_io_library_in_a_fresh_interpreter() -> None:
    code = (
        "import sys\n"
        "import meshcore.proto.relayclient, meshcore.proto.relayclient_outputs\n"
        "bad = [m for m in ('trio', 'trio_websocket', 'socket') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --- the reconnect window of a relay shutting down --------------------------------------------


def test_a_shutdown_with_a_reconnect_window_spreads_the_first_wait_over_it() -> None:
    c = Client(random=HalfRandom())
    c.register()
    out = c.feed(wire.Close(wire.ErrorCode.SHUTDOWN, shutdown_reason(8.0)))
    lost = only(out, ConnectionLost)
    assert lost.graceful and lost.retry_in_s == 0.5 + 4.0  # the backoff, plus half the window
    assert c.advance(4.49) == [] and c.core.state is RelayClientState.LOST
    assert c.advance(0.01) == [Reconnect()]


@pytest.mark.parametrize(
    ("message", "options"),
    [
        (wire.Close(wire.ErrorCode.SHUTDOWN, "the relay is shutting down; reconnect later"), {}),
        (wire.Error(wire.ErrorCode.BAD_MESSAGE, "oops; reconnect within 8 s"), {}),  # no shutdown
        (wire.Close(wire.ErrorCode.SHUTDOWN, shutdown_reason(8.0)), {"reconnect_window_max_s": 0}),
    ],
    ids=["a relay of an earlier build", "not a shutdown", "windows ignored"],
)
def test_without_an_announced_window_the_first_wait_is_the_backoff_alone(
    message: wire.ControlMessage, options: dict[str, float]
) -> None:
    c = Client(random=HalfRandom(), **options)
    c.register()
    assert only(c.feed(message), ConnectionLost).retry_in_s == 0.5


def test_an_announced_window_is_honoured_up_to_the_cap() -> None:
    c = Client(random=HalfRandom(), reconnect_window_max_s=2.0)
    c.register()
    out = c.feed(wire.Close(wire.ErrorCode.SHUTDOWN, shutdown_reason(3600.0)))
    assert only(out, ConnectionLost).retry_in_s == 0.5 + 1.0
