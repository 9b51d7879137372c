"""The relay client's circuits: relayed frames both ways, credit on credited connections, one
open in flight at a time, circuits the peer opened, and reopening after a loss. The helpers live
in test_relayclient."""

from __future__ import annotations

import pytest
from test_relayclient import BOB, CAROL, FRAME, Client, events, only, sent

from meshcore.errors import TransportClosed
from meshcore.proto import wire
from meshcore.proto.constants import RELAY_UNCREDITED_WINDOW_BYTES
from meshcore.proto.relayclient import NO_SESSION
from meshcore.proto.relayclient_outputs import (
    CircuitClosed,
    CircuitOpened,
    CircuitOpenFailed,
    CircuitReopened,
    CreditGranted,
    PairingCompleted,
    PairingFailed,
    RelayedReceived,
)


@pytest.fixture
def client() -> Client:
    c = Client()
    c.register()
    return c


# --- circuits ----------------------------------------------------------------------------------


def test_relayed_frames_arrive_on_their_circuit_and_unknown_circuits_are_ignored(
    client: Client,
) -> None:
    client.pair(BOB, cid=77)
    assert client.feed(wire.Relayed(77, b"hi")) == [RelayedReceived(77, b"hi")]
    assert client.feed(wire.Relayed(78, b"stray")) == []


def test_send_relayed_encodes_on_open_circuits_only(client: Client) -> None:
    client.pair(BOB, cid=77)
    data = client.core.send_relayed(77, b"x")
    assert data is not None and wire.decode_control_untrusted(data) == wire.Relayed(77, b"x")
    with pytest.raises(TransportClosed):
        client.core.send_relayed(78, b"x")


@pytest.fixture
def credited() -> Client:
    c = Client()
    c.credited = True
    c.register()
    return c


def test_on_a_credited_connection_a_frame_waits_for_credit(credited: Client) -> None:
    credited.pair(BOB, cid=77)
    assert credited.core.credited
    assert credited.core.send_relayed(77, b"abc") is None
    assert credited.feed(wire.CircuitCredit(77, 5)) == [CreditGranted(77)]
    data = credited.core.send_relayed(77, b"abc")
    assert data is not None and wire.decode_control_untrusted(data) == wire.Relayed(77, b"abc")
    assert credited.core.send_relayed(77, b"abc") is None  # 2 bytes left: not enough
    assert credited.core.send_relayed(77, b"ab") is not None


def test_the_window_a_credited_circuit_may_use_is_the_relays(credited: Client) -> None:
    credited.pair(BOB, cid=77)
    assert credited.core.max_window(77) == RELAY_UNCREDITED_WINDOW_BYTES  # not told yet
    assert credited.feed(wire.CircuitWindow(77, 4_000_000)) == []
    assert credited.core.max_window(77) == 4_000_000


def test_credit_for_unknown_circuits_is_ignored(credited: Client) -> None:
    assert credited.feed(wire.CircuitCredit(78, 5)) == []
    assert credited.feed(wire.CircuitWindow(78, 5)) == []


def test_without_credits_frames_go_at_once_and_credit_messages_change_nothing(
    client: Client,
) -> None:
    client.pair(BOB, cid=77)
    assert not client.core.credited
    assert client.feed(wire.CircuitWindow(77, 4_000_000)) == []
    assert client.feed(wire.CircuitCredit(77, 5)) == []
    assert client.core.send_relayed(77, bytes(60_000)) is not None
    assert client.core.max_window(77) == RELAY_UNCREDITED_WINDOW_BYTES


def test_a_reconnect_without_credits_turns_them_off(credited: Client) -> None:
    credited.core.connection_lost("gone", credited.now)
    credited.credited = False
    credited.register()
    assert not credited.core.credited


def test_closing_a_circuit_tells_the_relay_once(client: Client) -> None:
    client.pair(BOB, cid=77)
    out = client.core.close_circuit(77, "session ended")
    assert sent(out) == [wire.CircuitClose(77, wire.ErrorCode.NONE, "session ended")]
    assert CircuitClosed(77, "session ended") in out
    assert client.core.close_circuit(77, "again") == []


def test_the_relay_closing_a_circuit_reports_its_reason(client: Client) -> None:
    client.pair(BOB, cid=77)
    out = client.feed(wire.CircuitClose(77, wire.ErrorCode.PEER_OFFLINE, ""))
    assert out == [CircuitClosed(77, "relay closed the circuit: PEER_OFFLINE")]
    assert client.core.is_paired(BOB.peer_id)  # the pairing outlives its circuit


def test_one_circuit_open_is_in_flight_at_a_time(client: Client) -> None:
    client.pair(BOB, cid=77)
    client.pair(CAROL, cid=78)
    first = client.core.open_circuit(1001, BOB.peer_id, 5.0, client.now)
    assert sent(first) == [wire.CircuitOpen(0, BOB.peer_id.digest)]
    assert client.core.open_circuit(1002, CAROL.peer_id, 5.0, client.now) == []
    out = client.feed(wire.CircuitOpen(91, BOB.peer_id.digest))
    assert CircuitOpened(1001, 91, BOB.peer_id) in out
    assert sent(out) == [wire.CircuitOpen(0, CAROL.peer_id.digest)]  # the next one's turn
    refused = client.feed(wire.CircuitClose(0, wire.ErrorCode.RATE_LIMITED, "slow down"))
    failed = only(refused, CircuitOpenFailed)
    assert failed.ticket == 1002
    assert str(failed.error) == f"the relay refused a circuit to {CAROL.peer_id}: slow down"


def test_an_open_without_an_answer_fails_at_its_deadline_and_lets_the_next_go(
    client: Client,
) -> None:
    client.pair(BOB, cid=77)
    client.core.open_circuit(1001, BOB.peer_id, 1.0, client.now)
    client.core.open_circuit(1002, BOB.peer_id, 3.0, client.now)
    out = client.advance(1.0)
    failed = only(out, CircuitOpenFailed)
    assert failed.ticket == 1001
    assert str(failed.error) == f"the relay did not open a circuit to {BOB.peer_id} within 1 s"
    assert sent(out) == [wire.CircuitOpen(0, BOB.peer_id.digest)]
    assert only(client.advance(2.0), CircuitOpenFailed).ticket == 1002


def test_a_cancelled_open_in_flight_holds_its_slot_and_its_late_circuit_is_closed(
    client: Client,
) -> None:
    client.pair(BOB, cid=77)
    client.core.open_circuit(1001, BOB.peer_id, 5.0, client.now)
    client.core.open_circuit(1002, BOB.peer_id, 5.0, client.now)
    client.core.cancel(1001)
    out = client.feed(wire.CircuitOpen(92, BOB.peer_id.digest))
    assert events(out) == []
    assert sent(out) == [
        wire.CircuitClose(92, wire.ErrorCode.NONE, "nobody waits for this circuit"),
        wire.CircuitOpen(0, BOB.peer_id.digest),
    ]
    assert CircuitOpened(1002, 93, BOB.peer_id) in client.feed(
        wire.CircuitOpen(93, BOB.peer_id.digest)
    )


def test_a_circuit_the_peer_opened_is_routed_by_its_first_frame(client: Client) -> None:
    client.pair(BOB, cid=77)
    assert client.feed(wire.CircuitOpen(94, BOB.peer_id.digest)) == []
    assert client.core.circuit_peers()[94] == BOB.peer_id
    assert client.feed(wire.Relayed(94, FRAME)) == [CircuitReopened(94, BOB.peer_id, FRAME)]


def test_a_circuit_the_peer_opened_is_closed_if_its_first_frame_is_late(client: Client) -> None:
    c = Client(route_timeout_s=5.0, heartbeat_s=30.0, dead_after_s=60.0)
    c.register()
    c.feed(wire.CircuitOpen(94, BOB.peer_id.digest))
    assert c.advance(4.9) == []
    out = c.advance(0.1)
    assert sent(out) == [wire.CircuitClose(94, wire.ErrorCode.NONE, NO_SESSION)]
    assert c.core.circuit_peers() == {}


def test_reopen_opens_while_paired_and_pairs_again_if_the_relay_refuses(client: Client) -> None:
    client.pair(BOB, cid=77)
    out = client.core.reopen_circuit(1001, BOB.peer_id, 5.0, client.now)
    assert sent(out) == [wire.CircuitOpen(0, BOB.peer_id.digest)]
    out = client.feed(wire.CircuitClose(0, wire.ErrorCode.NOT_ALLOWED, "not paired"))
    assert events(out) == []
    rid = only(sent(out), wire.Connect).request_id
    assert not client.core.is_paired(BOB.peer_id)
    pairing = only(client.paired(rid, 95), PairingCompleted)
    assert pairing.ticket == 1001


def test_reopen_pairs_again_after_a_reconnect(client: Client) -> None:
    client.pair(BOB, cid=77)
    client.lose()
    client.register()
    assert not client.core.is_paired(BOB.peer_id)  # pairings belong to connections
    out = client.core.reopen_circuit(1001, BOB.peer_id, 5.0, client.now)
    assert isinstance(only(sent(out), wire.Connect), wire.Connect)


def test_reopen_pairs_again_if_the_open_times_out(client: Client) -> None:
    client.pair(BOB, cid=77)
    client.core.reopen_circuit(1001, BOB.peer_id, 2.0, client.now)
    out = client.advance(2.0)
    assert events(out) == [] and isinstance(only(sent(out), wire.Connect), wire.Connect)
    assert (
        str(only(client.advance(2.0), PairingFailed).error) == "no answer from the relay within 2 s"
    )
