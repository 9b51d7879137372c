"""The loop over the matchmaker's outputs that the relay's credits and UDP tokens extend:
every output passes through in order, each followed by what its circuit's opening or
closing adds; a CircuitClose of a circuit still open (one of several closes) adds nothing."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto.circuitwatch import CircuitWatcher
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.relayrecords import CloseConnection, Output, Send
from meshcore.proto.wire import CircuitClose, CircuitOpen, ErrorCode, Paired, Pong, Role

PEER = bytes(32)


class Recorder(CircuitWatcher[str]):
    """Appends a marker after each opening and closing it is told of."""

    def circuit_opened(self, conn_id: int, circuit_id: int, out: list[Output | str]) -> None:
        out.append(f"opened {circuit_id} to {conn_id}")

    def circuit_gone(self, circuit_id: int, out: list[Output | str]) -> None:
        out.append(f"gone {circuit_id}")


def paired(conn: int, cid: int) -> Send:
    kem = bytes(1184)
    return Send(conn, Paired(1, cid, Role.INITIATOR, PEER, PEER, kem, Endpoint("192.0.2.1", 1), ()))


def test_openings_and_closings_follow_their_output() -> None:
    still_open = {7: (1, 2)}
    watcher = Recorder(still_open.get)
    outputs: list[Output] = [
        paired(1, 7),
        Send(2, CircuitOpen(7, PEER)),
        Send(1, CircuitClose(7, ErrorCode.PEER_OFFLINE, "")),  # 7 is still open: nothing
        Send(2, CircuitClose(9, ErrorCode.PEER_OFFLINE, "")),  # 9 is gone
        CloseConnection(3, ErrorCode.PEER_OFFLINE, "bye"),
    ]
    assert watcher.watch(outputs) == [
        outputs[0], "opened 7 to 1", outputs[1], "opened 7 to 2", outputs[2], outputs[3],
        "gone 9", outputs[4],
    ]  # fmt: skip


@given(st.lists(st.sampled_from(["paired", "open", "close", "pong", "closeconn"]), max_size=30))
def test_every_output_passes_through_in_order(kinds: list[str]) -> None:
    make = {
        "paired": lambda: paired(1, 5),
        "open": lambda: Send(2, CircuitOpen(5, PEER)),
        "close": lambda: Send(1, CircuitClose(5, ErrorCode.PEER_OFFLINE, "")),
        "pong": lambda: Send(1, Pong(0)),
        "closeconn": lambda: CloseConnection(1, ErrorCode.PEER_OFFLINE, "x"),
    }
    outputs = [make[k]() for k in kinds]
    plain = CircuitWatcher[str](lambda _cid: None).watch(outputs)
    assert plain == outputs
    marked = Recorder(lambda _cid: None).watch(outputs)
    assert [x for x in marked if not isinstance(x, str)] == outputs
    assert len(marked) - len(outputs) == sum(k in ("paired", "open", "close") for k in kinds)
