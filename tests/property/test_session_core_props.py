"""Stateful property: over any interleaving of sends, losses, duplicates, reordering, path
switches and timers, each side receives exactly the other's messages, once, in order, and
every buffer stays within its bound."""

from __future__ import annotations

import os

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshcore.proto.framing import KeyRing, ReceiveKey, SendKey
from meshcore.proto.session import MessageReceived, SessionCore, SessionSettings

SETTINGS = SessionSettings(
    window_frames=8,
    window_bytes=4096,
    ack_every_frames=3,
    retransmit_timeout_s=0.5,
    dead_after_s=None,
    reorder_frames=64,
    direct_window_frames=32,
    direct_window_bytes=16384,
)


class LossyLink(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        k1, k2 = os.urandom(32), os.urandom(32)
        ra, rb = KeyRing(), KeyRing()
        ra.install(SendKey(k1, 2, 0.0), ReceiveKey(k2, 1, 0.0), 0.0)
        rb.install(SendKey(k2, 1, 0.0), ReceiveKey(k1, 2, 0.0), 0.0)
        self.cores = {"a": SessionCore(ra, 0.0, SETTINGS), "b": SessionCore(rb, 0.0, SETTINGS)}
        self.wire: dict[str, list[bytes]] = {"a": [], "b": []}  # frames in flight *to* key
        self.sent: dict[str, list[bytes]] = {"a": [], "b": []}
        self.got: dict[str, list[bytes]] = {"a": [], "b": []}
        self.counter = 0

    def _other(self, side: str) -> str:
        return "b" if side == "a" else "a"

    def _collect(self, side: str) -> None:
        core = self.cores[side]
        for _path, frame in core.outbox():
            self.wire[self._other(side)].append(frame)
        for event in core.events():
            assert isinstance(event, MessageReceived), event
            self.got[side].append(event.payload)

    @rule(side=st.sampled_from("ab"), size=st.integers(0, 600))
    def send(self, side: str, size: int) -> None:
        core = self.cores[side]
        if not core.can_send():
            return
        self.counter += 1
        payload = self.counter.to_bytes(4, "big") + os.urandom(size)
        core.send(payload, self.now)
        self.sent[side].append(payload)
        self._collect(side)

    @precondition(lambda self: self.wire["a"] or self.wire["b"])
    @rule(data=st.data(), side=st.sampled_from("ab"))
    def deliver(self, data: st.DataObject, side: str) -> None:
        queue = self.wire[side]
        if not queue:
            return
        i = data.draw(st.integers(0, len(queue) - 1), label="which frame")
        frame = queue.pop(i)
        self.cores[side].receive_frame(frame, self.now)
        self._collect(side)

    @rule(side=st.sampled_from("ab"), data=st.data())
    def drop(self, side: str, data: st.DataObject) -> None:
        queue = self.wire[side]
        if queue:
            queue.pop(data.draw(st.integers(0, len(queue) - 1)))

    @rule(side=st.sampled_from("ab"), data=st.data())
    def duplicate(self, side: str, data: st.DataObject) -> None:
        queue = self.wire[side]
        if queue:
            queue.append(queue[data.draw(st.integers(0, len(queue) - 1))])

    @rule(side=st.sampled_from("ab"))
    def path_down_then_up(self, side: str) -> None:
        # everything in flight towards `side` is lost, the sender moves to a new path
        self.wire[side].clear()
        self.cores[self._other(side)].retransmit_unacked(self.now)
        self._collect(self._other(side))

    @rule(side=st.sampled_from("ab"), direct=st.booleans())
    def path_changes_window(self, side: str, direct: bool) -> None:
        # e.g. a fallback from direct (wide window) to the relay (narrow) with a full buffer
        core = self.cores[side]
        core.use_direct_window(direct, self.now)
        core.retransmit_unacked(self.now)
        self._collect(side)

    @rule(dt=st.floats(0.001, 2.0))
    def advance(self, dt: float) -> None:
        self.now += dt
        for side in "ab":
            core = self.cores[side]
            deadline = core.get_timer()
            if deadline is not None and deadline <= self.now:
                core.handle_timer(self.now)
            self._collect(side)

    @invariant()
    def exactly_once_in_order(self) -> None:
        for side in "ab":
            got = self.got[side]
            assert got == self.sent[self._other(side)][: len(got)]

    @invariant()
    def buffers_bounded(self) -> None:
        for core in self.cores.values():
            assert core.unacked <= SETTINGS.direct_window_frames
            in_flight = core.unacked - core._unsent
            assert in_flight <= max(core._window_frames, 1)
            assert len(core._reorder) <= SETTINGS.reorder_frames

    def teardown(self) -> None:
        # a clean network from here on: everything sent must arrive
        for _ in range(200):
            self.now += 0.6
            for side in "ab":
                while self.wire[side]:
                    self.cores[side].receive_frame(self.wire[side].pop(0), self.now)
                    self._collect(side)
                self.cores[side].handle_timer(self.now)
                self._collect(side)
            if all(self.cores[s].all_acked for s in "ab") and not any(self.wire.values()):
                break
        for side in "ab":
            assert self.got[side] == self.sent[self._other(side)]


TestLossyLink = LossyLink.TestCase
