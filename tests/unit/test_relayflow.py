"""The relay's flow control beside the matchmaker: credited connections get CircuitWindow and
their first CircuitCredit right after the circuit's Paired or CircuitOpen, uncredited ones
nothing; a closed circuit or connection gives its credit back."""

from __future__ import annotations

from meshcore.proto.constants import MAX_FRAME_BYTES, RELAY_INITIAL_CREDIT_BYTES
from meshcore.proto.credits import CreditGrant
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.limits import RelayLimits
from meshcore.proto.relayflow import RelayFlow
from meshcore.proto.relayrecords import Output, Send
from meshcore.proto.wire import (
    CircuitClose,
    CircuitCredit,
    CircuitOpen,
    CircuitWindow,
    ErrorCode,
    Paired,
    Role,
)

PEER = bytes(32)
KEM = bytes(1184)
WINDOW = 1024 * 1024
LIMITS = RelayLimits(max_buffer_bytes=8 * WINDOW, circuit_window_bytes=WINDOW)


class Circuits:
    """The matchmaker's circuit table, as far as flow control asks."""

    def __init__(self) -> None:
        self.open: dict[int, tuple[int, int]] = {}

    def members(self, circuit_id: int) -> tuple[int, int] | None:
        return self.open.get(circuit_id)


def paired(conn: int, cid: int) -> Send:
    return Send(conn, Paired(1, cid, Role.INITIATOR, PEER, PEER, KEM, Endpoint("192.0.2.1", 1), ()))


def setup(*credited: int) -> tuple[RelayFlow, Circuits]:
    circuits = Circuits()
    flow = RelayFlow(LIMITS, circuits.members)
    for conn in (1, 2, 3):
        flow.connection_opened(conn, credited=conn in credited)
    return flow, circuits


def test_a_credited_member_hears_the_window_and_its_first_credit_after_paired() -> None:
    flow, circuits = setup(1, 2)
    circuits.open[7] = (1, 2)
    out = flow.watch([paired(1, 7), paired(2, 7)])
    first = RELAY_INITIAL_CREDIT_BYTES
    assert out == [
        paired(1, 7),
        Send(1, CircuitWindow(7, WINDOW)),
        Send(1, CircuitCredit(7, first)),
        paired(2, 7),
        Send(2, CircuitWindow(7, WINDOW)),
        Send(2, CircuitCredit(7, first)),
    ]
    assert flow.ledger.held == 2 * first


def test_an_uncredited_member_hears_nothing_new_and_its_frames_are_not_counted() -> None:
    flow, circuits = setup(1)
    circuits.open[7] = (1, 2)
    out = flow.watch([paired(1, 7), paired(2, 7)])
    assert [o for o in out if isinstance(o, Send) and o.conn_id == 2] == [paired(2, 7)]
    assert flow.arrived(1, 7, 100) is None  # 2 sends to 1 without credit
    assert flow.arrived(2, 7, 100) is True  # 1 sends to 2 under credit


def test_a_reopened_circuit_is_credited_too() -> None:
    flow, circuits = setup(1, 2)
    circuits.open[9] = (1, 2)
    out = flow.watch([Send(1, CircuitOpen(9, PEER))])
    assert Send(1, CircuitWindow(9, WINDOW)) in out


def test_credit_comes_back_as_the_receivers_queue_drains() -> None:
    flow, circuits = setup(1, 2)
    circuits.open[7] = (1, 2)
    flow.watch([paired(1, 7)])
    assert flow.arrived(2, 7, MAX_FRAME_BYTES) is True
    grown = 2 * MAX_FRAME_BYTES  # what drained, and as much again: the lane grows
    assert flow.drained(2, 7, MAX_FRAME_BYTES) == [CreditGrant(1, 7, grown)]


def test_a_frame_beyond_the_credit_is_refused() -> None:
    flow, circuits = setup(1, 2)
    circuits.open[7] = (1, 2)
    flow.watch([paired(1, 7)])
    assert flow.arrived(2, 7, RELAY_INITIAL_CREDIT_BYTES + 1) is False


def test_a_closed_circuit_gives_its_credit_back() -> None:
    flow, circuits = setup(1, 2)
    circuits.open[7] = (1, 2)
    flow.watch([paired(1, 7), paired(2, 7)])
    del circuits.open[7]
    flow.watch(
        [Send(1, CircuitClose(7, ErrorCode.NONE, "")), Send(2, CircuitClose(7, ErrorCode.NONE, ""))]
    )
    assert flow.ledger.held == 0 and len(flow.ledger) == 0


def test_a_close_answer_for_someone_elses_circuit_keeps_its_lanes() -> None:
    flow, circuits = setup(1, 2, 3)
    circuits.open[7] = (1, 2)
    flow.watch([paired(1, 7)])
    out: list[Output] = [Send(3, CircuitClose(7, ErrorCode.CIRCUIT_UNKNOWN, "no such circuit"))]
    flow.watch(out)
    assert len(flow.ledger) == 1


def test_a_lost_connection_gives_back_every_lane_it_had() -> None:
    flow, circuits = setup(1, 2)
    circuits.open[7] = (1, 2)
    circuits.open[8] = (2, 1)
    flow.watch([paired(1, 7), paired(2, 7), paired(1, 8)])
    assert len(flow.ledger) == 3
    flow.connection_closed(1)
    assert len(flow.ledger) == 0 and flow.ledger.held == 0
    assert not flow.credited(1) and flow.credited(2)
