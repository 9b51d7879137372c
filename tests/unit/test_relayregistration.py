"""Registering with a relay whose id we know: the relay proves that id (its keys, our
challenge, its proof) before anything of ours is sent, and a relay that cannot is refused with
an error naming its URL and the id it had to prove. Driven through `RelayClientCore`, the
relay's side spoken by hand with real keys."""

from __future__ import annotations

from collections.abc import Sequence
from random import Random
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.errors import ProtocolError, RelayError, RelayNotVerified
from meshcore.proto import wire
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity, PeerId, PublicBundle
from meshcore.proto.relayauth import challenge_relay, make_challenge, prove_relay
from meshcore.proto.relayclient import RelayClientCore, RelayClientState
from meshcore.proto.relayclient_outputs import (
    CloseConnection,
    Output,
    Reconnect,
    Registered,
    RegistrationFailed,
    SendBytes,
)
from meshcore.proto.relayregistration import Registration
from meshcore.testing import _wire_strategies as ws

M = TypeVar("M")

ALICE = Identity.generate()
RELAY, OTHER_RELAY = Identity.generate(), Identity.generate()
URL = "ws://192.0.2.1:7443/"
OBSERVED = Endpoint("198.51.100.7", 40000)


def sent(outputs: Sequence[Output]) -> list[wire.ControlMessage]:
    return [wire.decode_control_untrusted(o.data) for o in outputs if isinstance(o, SendBytes)]


def only(items: Sequence[object], cls: type[M]) -> M:
    matching = [item for item in items if isinstance(item, cls)]
    assert len(matching) == 1, f"expected one {cls.__name__} in {items}"
    return matching[0]


def keys_of(identity: Identity) -> wire.RelayIdentity:
    return wire.RelayIdentity(identity.public.x25519_public, identity.public.kem_public)


class Client:
    """A machine that expects `relay_id`, everything it sent, and the relay spoken by hand."""

    def __init__(self, relay_id: PeerId | None = RELAY.peer_id, **kwargs: object) -> None:
        kwargs.setdefault("random", Random(7))
        self.core = RelayClientCore(ALICE, URL, relay_id=relay_id, **kwargs)  # type: ignore[arg-type]
        self.now = 100.0
        self.wire: list[bytes] = []
        """Every byte string the client sent, on every connection."""

    def run(self, outputs: list[Output]) -> list[Output]:
        self.wire += [o.data for o in outputs if isinstance(o, SendBytes)]
        return outputs

    def open(self) -> list[Output]:
        return self.run(self.core.connection_opened([], self.now))

    def feed(self, msg: wire.ControlMessage | bytes) -> list[Output]:
        data = msg if isinstance(msg, bytes) else wire.encode_control(msg)
        return self.run(self.core.receive_data(data, self.now))

    def advance(self, seconds: float) -> list[Output]:
        self.now += seconds
        return self.run(self.core.handle_timer(self.now))

    def challenged(self, relay: Identity = RELAY) -> wire.RelayChallenge:
        """Open and present `relay`'s keys: the client's challenge to them."""
        assert self.open() == []
        return only(sent(self.feed(keys_of(relay))), wire.RelayChallenge)

    def finish(self, hello: wire.Hello) -> list[Output]:
        """The relay's side of registration after the client's Hello."""
        challenge, pending = make_challenge(PublicBundle(hello.x25519_public, hello.kem_public))
        auth = only(sent(self.feed(challenge)), wire.Auth)
        assert pending.verify(auth)
        return self.feed(wire.Registered(ALICE.peer_id.digest, OBSERVED))

    def register(self) -> list[Output]:
        challenge = self.challenged()
        hello = only(sent(self.feed(prove_relay(RELAY, challenge))), wire.Hello)
        return self.finish(hello)

    def our_keys_were_sent(self) -> bool:
        return any(ALICE.public.x25519_public in data for data in self.wire)

    def refusal(self, outputs: Sequence[Output]) -> RelayNotVerified:
        error = only(outputs, RegistrationFailed).error
        assert isinstance(error, RelayNotVerified), error
        assert only(outputs, CloseConnection).reason == str(error)
        assert not self.our_keys_were_sent(), "our keys went to a relay that did not prove its id"
        return error


def expected_words(error: RelayNotVerified) -> None:
    text = str(error)
    assert text.startswith(f"relay at {URL} is not relay {RELAY.peer_id.to_text()}: ")
    assert text.endswith("; check the relay list entry (its URL and id)")
    assert (error.url, error.expected) == (URL, RELAY.peer_id.to_text())


# --- the relay proves its id ------------------------------------------------------------------


def test_a_client_that_knows_the_relay_id_waits_for_the_relays_keys_first() -> None:
    c = Client()
    assert c.open() == []
    assert c.core.state is RelayClientState.VERIFYING


def test_the_relays_keys_are_challenged_and_nothing_of_ours_is_sent_before_the_proof() -> None:
    c = Client()
    challenge = c.challenged()
    assert isinstance(challenge, wire.RelayChallenge)
    assert c.core.state is RelayClientState.VERIFYING
    assert not c.our_keys_were_sent()


def test_a_correct_proof_is_followed_by_our_hello_and_registration() -> None:
    c = Client()
    challenge = c.challenged()
    out = c.feed(prove_relay(RELAY, challenge))
    hello = only(sent(out), wire.Hello)
    assert (hello.x25519_public, hello.kem_public) == (
        ALICE.public.x25519_public,
        ALICE.public.kem_public,
    )
    assert c.core.state is RelayClientState.HELLO_SENT
    assert only(c.finish(hello), Registered).registrations == 1
    assert c.core.verified and c.core.relay_keys == RELAY.public


def test_a_relay_presenting_another_relays_keys_is_refused_naming_both_ids() -> None:
    c = Client()
    c.open()
    error = c.refusal(c.feed(keys_of(OTHER_RELAY)))
    expected_words(error)
    assert f"it presented the keys of relay {OTHER_RELAY.peer_id}" in str(error)
    assert c.core.state is RelayClientState.CLOSED  # the first attempt: not retried


def test_a_stranger_with_the_relays_public_keys_cannot_prove_them() -> None:
    c = Client()
    challenge = c.challenged()  # the stranger shows the real relay's (public) keys
    error = c.refusal(c.feed(prove_relay(OTHER_RELAY, challenge)))
    expected_words(error)
    assert "it could not prove that identity" in str(error)


def test_a_proof_replayed_from_an_earlier_connection_is_refused() -> None:
    # A man in the middle recorded the relay's proof on an earlier connection.
    earlier = Client()
    recorded = prove_relay(RELAY, earlier.challenged())
    c = Client()
    c.challenged()
    assert "could not prove" in str(c.refusal(c.feed(recorded)))


def test_a_proof_made_for_another_clients_challenge_is_refused() -> None:
    # A relay in the middle passes our challenge nowhere, and answers with a proof the real
    # relay made for someone else's challenge at the same moment.
    c = Client()
    c.challenged()
    theirs, _ = challenge_relay(RELAY.public)
    assert "could not prove" in str(c.refusal(c.feed(prove_relay(RELAY, theirs))))


def test_a_relay_that_challenges_us_instead_of_showing_its_keys_is_refused() -> None:
    c = Client()
    c.open()
    challenge, _ = make_challenge(ALICE.public)
    error = c.refusal(c.feed(challenge))
    assert "it sent Challenge instead of its keys" in str(error)


def test_a_relay_that_answers_our_challenge_with_something_else_is_refused() -> None:
    c = Client()
    c.challenged()
    assert "it sent Pong instead of its proof" in str(c.refusal(c.feed(wire.Pong(1))))


def test_a_relay_presenting_keys_that_are_not_valid_keys_is_refused() -> None:
    c = Client()
    c.open()
    bad = wire.RelayIdentity(bytes(32), RELAY.public.kem_public)  # a small-order point
    assert "not valid keys" in str(c.refusal(c.feed(bad)))


def test_garbage_instead_of_the_keys_is_refused_naming_the_relay() -> None:
    c = Client()
    c.open()
    error = c.refusal(c.feed(b"\x01\xee garbage"))
    expected_words(error)
    assert "it sent a malformed message" in str(error)


def test_a_relay_that_never_proves_its_id_is_refused_at_the_registration_timeout() -> None:
    c = Client(timeout=3.0)
    c.challenged()
    assert c.advance(2.9) == []
    error = c.refusal(c.advance(0.2))
    assert "it did not prove that identity within 3 s" in str(error)


def test_a_refusal_by_the_relay_while_verifying_is_an_ordinary_refusal() -> None:
    c = Client()
    c.open()
    error = only(c.feed(wire.Error(wire.ErrorCode.RATE_LIMITED, "slow down")), RegistrationFailed)
    assert type(error.error) is RelayError and str(error.error) == "relay refused us: slow down"


def test_every_reconnect_is_verified_again_and_a_failure_then_backs_off() -> None:
    c = Client()
    c.register()
    c.run(c.core.connection_lost("reset", c.now))
    assert Reconnect() in c.advance(60.0)
    c.open()
    assert c.core.state is RelayClientState.VERIFYING and not c.core.verified
    c.wire.clear()
    failed = only(c.feed(keys_of(OTHER_RELAY)), RegistrationFailed)
    assert isinstance(failed.error, RelayNotVerified)
    assert failed.retry_in_s is not None and c.core.state is RelayClientState.LOST
    assert not c.our_keys_were_sent()
    assert c.core.relay_keys == OTHER_RELAY.public


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=200)
    | st.builds(lambda b: b"\x01" + b, st.binary(max_size=200))
    | ws.mutated_encodings(ws.control_messages(), wire.encode_control),
    proved=st.booleans(),
)
def test_any_bytes_while_verifying_are_handled_and_never_bring_our_hello(
    data: bytes, proved: bool
) -> None:
    c = Client()
    if proved:
        c.challenged()
    else:
        c.open()
    out = c.feed(data)
    failed = [o for o in out if isinstance(o, RegistrationFailed)]
    if failed:
        assert isinstance(failed[0].error, RelayError)
        assert only(out, CloseConnection).reason
    assert not c.our_keys_were_sent()


# --- without a relay id ---------------------------------------------------------------------


def test_a_client_without_a_relay_id_sends_hello_at_once_and_notes_the_relays_keys() -> None:
    c = Client(relay_id=None)
    hello = only(sent(c.open()), wire.Hello)
    assert c.core.state is RelayClientState.HELLO_SENT
    assert c.feed(keys_of(OTHER_RELAY)) == []  # told unasked, after our Hello went out
    assert only(c.finish(hello), Registered).registrations == 1
    assert c.core.relay_keys == OTHER_RELAY.public and not c.core.verified


def test_a_client_without_a_relay_id_refuses_the_relays_keys_twice() -> None:
    c = Client(relay_id=None)
    c.open()
    c.feed(keys_of(RELAY))
    error = only(c.feed(keys_of(RELAY)), RegistrationFailed).error
    assert isinstance(error, ProtocolError)
    assert str(error) == "relay sent RelayIdentity instead of a challenge"


# --- what registration measures ----------------------------------------------------------------


def test_registration_measures_the_round_trip_from_auth_to_registered() -> None:
    c = Client(relay_id=None)
    hello = only(sent(c.open()), wire.Hello)
    challenge, _ = make_challenge(PublicBundle(hello.x25519_public, hello.kem_public))
    c.feed(challenge)
    c.now += 0.25
    c.feed(wire.Registered(ALICE.peer_id.digest, OBSERVED))
    assert c.core.rtt_s == pytest.approx(0.25)


def test_the_timeout_error_says_what_was_awaited() -> None:
    verifying = Registration(ALICE, URL, RELAY.peer_id, ())
    assert isinstance(verifying.timed_out(2.0), RelayNotVerified)
    registering = Registration(ALICE, URL, None, ())
    error = registering.timed_out(2.0)
    assert type(error) is RelayError
    assert str(error) == f"relay at {URL} did not complete registration in 2 s"
