"""The relay's circuit table: ids, caps, forwarding between exactly two members, closing."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto import circuits
from meshcore.proto.circuits import CircuitIds, CircuitStats, CircuitTable, circuit_text
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.relayrecords import ConnRecord, Forward, LogEvent, Output, Send
from meshcore.proto.wire import CircuitClose, ErrorCode


def conn(conn_id: int, name: str = "") -> ConnRecord:
    record = ConnRecord(conn_id, Endpoint("192.0.2.1", 1000 + conn_id), 0.0, 5.0)
    record.peer_text = name or f"peer{conn_id}"
    return record


def table(max_circuits: int = 10, max_per_peer: int = 3) -> CircuitTable:
    return CircuitTable(bytes(32), max_circuits=max_circuits, max_per_peer=max_per_peer)


@given(st.binary(min_size=32, max_size=32))
def test_circuit_ids_never_repeat_and_are_never_zero(key: bytes) -> None:
    ids = CircuitIds(key)
    drawn = [ids.next() for _ in range(300)]
    assert len(set(drawn)) == len(drawn) and 0 not in drawn
    assert all(0 < cid < 2**64 for cid in drawn)


def test_circuit_ids_depend_on_the_key() -> None:
    assert CircuitIds(bytes(32)).next() != CircuitIds(os.urandom(32)).next()
    assert CircuitIds(bytes(32)).next() == CircuitIds(bytes(32)).next()


def test_an_open_circuit_is_known_to_both_members() -> None:
    t, a, b = table(), conn(1), conn(2)
    circuit = t.open(a, b, 7.0)
    assert t.get(circuit.circuit_id) is circuit and len(t) == 1
    assert a.circuits == b.circuits == {circuit.circuit_id}
    assert t.stats() == [CircuitStats(circuit.circuit_id, "peer1", "peer2", 7.0, 0, 0, 0, 0)]


def test_frames_go_to_the_other_member_and_are_counted_each_way() -> None:
    t, a, b = table(), conn(1), conn(2)
    cid = t.open(a, b, 0.0).circuit_id
    assert t.forward(a, cid, b"frame-ab", 5) == [Forward(2, cid, b"frame-ab")]
    assert t.forward(b, cid, b"frame-ba", 3) == [Forward(1, cid, b"frame-ba")]
    assert t.forward(b, cid, b"again", 4) == [Forward(1, cid, b"again")]
    (stats,) = t.stats()
    assert (stats.frames_ab, stats.bytes_ab, stats.frames_ba, stats.bytes_ba) == (1, 5, 2, 7)


def test_an_outsider_gets_one_circuit_unknown_answer_per_circuit_id() -> None:
    t, a, b, mallory = table(), conn(1), conn(2), conn(3)
    cid = t.open(a, b, 0.0).circuit_id
    (answer,) = t.forward(mallory, cid, b"x", 1)
    assert isinstance(answer, Send) and answer.conn_id == 3
    assert isinstance(answer.message, CircuitClose)
    assert answer.message.code is ErrorCode.CIRCUIT_UNKNOWN
    assert t.forward(mallory, cid, b"x", 1) == []
    assert t.forward(mallory, 12345, b"x", 1) != []  # an id never open: the same answer
    assert t.stats()[0].frames_ab == 0


def test_unknown_ids_answered_are_remembered_only_up_to_a_bound() -> None:
    t, mallory = table(), conn(3)
    for cid in range(1, 40):
        t.forward(mallory, cid, b"x", 1)
    assert len(mallory.told_unknown) == 16
    assert t.forward(mallory, 1, b"x", 1) != []  # long forgotten: answered again


def test_capacity_names_which_cap_is_reached() -> None:
    t, a, b, c = table(max_circuits=2, max_per_peer=1), conn(1), conn(2), conn(3)
    assert t.capacity(a, b) == ""
    t.open(a, b, 0.0)
    assert "you are already in 1 circuits" in t.capacity(a, c)
    assert "the peer is already in 1 circuits" in t.capacity(c, b)
    t.open(c, conn(4), 0.0)
    assert "limit of 2 circuits" in t.capacity(conn(5), conn(6))


def test_closing_tells_whom_it_is_told_to_and_logs_the_counters() -> None:
    t, a, b = table(), conn(1), conn(2)
    circuit = t.open(a, b, 0.0)
    cid = circuit.circuit_id
    t.forward(a, cid, b"abc", 3)
    out: list[Output] = []
    t.close(circuit, ErrorCode.PEER_OFFLINE, "gone", out, tell=(b,))
    assert out[0] == Send(2, CircuitClose(cid, ErrorCode.PEER_OFFLINE, "gone"))
    assert isinstance(out[1], LogEvent) and out[1].name == "circuit closed"
    assert out[1].fields["circuit"] == circuit_text(cid)
    assert (out[1].fields["bytes_ab"], out[1].fields["code"]) == (3, "PEER_OFFLINE")
    assert t.get(cid) is None and len(t) == 0 and a.circuits == b.circuits == set()
    assert t.forward(a, cid, b"late", 4) != [Forward(2, cid, b"late")]


def test_snapshot_is_a_copy_safe_to_close_from() -> None:
    t = table()
    for n in range(3):
        t.open(conn(2 * n + 1), conn(2 * n + 2), 0.0)
    out: list[Output] = []
    for circuit in t.snapshot():
        t.close(circuit, ErrorCode.SHUTDOWN, "bye", out, tell=())
    assert len(t) == 0 and len(out) == 3


def test_circuit_text_is_sixteen_hex_digits() -> None:
    assert circuit_text(0xAB) == "00000000000000ab"


def test_public_api_is_pinned() -> None:
    assert sorted(circuits.__all__) == [
        "CircuitIds", "CircuitRecord", "CircuitStats", "CircuitTable", "circuit_text",
    ]  # fmt: skip
