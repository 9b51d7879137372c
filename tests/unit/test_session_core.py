"""SessionCore: ordered exactly-once delivery, acks, windows, timers, closing."""

from __future__ import annotations

import os

import pytest

from meshcore.errors import MeshError, SessionClosed
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.framing import KeyRing, ReceiveKey, SendKey
from meshcore.proto.inner import Endpoints, PathChallenge
from meshcore.proto.session import (
    ACTIVE,
    EndpointsReceived,
    MessageReceived,
    PathChallengeReceived,
    PathResponseReceived,
    PeerClosed,
    SessionCore,
    SessionFailed,
    SessionSettings,
    SessionState,
)


def make_pair(
    settings: SessionSettings | None = None, now: float = 0.0
) -> tuple[SessionCore, SessionCore]:
    k_ab, k_ba = os.urandom(32), os.urandom(32)
    ring_a, ring_b = KeyRing(), KeyRing()
    ring_a.install(SendKey(k_ab, 2, now), ReceiveKey(k_ba, 1, now), now)
    ring_b.install(SendKey(k_ba, 1, now), ReceiveKey(k_ab, 2, now), now)
    return SessionCore(ring_a, now, settings), SessionCore(ring_b, now, settings)


def pump(src: SessionCore, dst: SessionCore, now: float) -> int:
    frames = src.outbox()
    for _path, frame in frames:
        dst.receive_frame(frame, now)
    return len(frames)


def received(core: SessionCore) -> list[bytes]:
    return [e.payload for e in core.events() if isinstance(e, MessageReceived)]


def test_messages_arrive_in_order_exactly_once() -> None:
    a, b = make_pair()
    for i in range(10):
        a.send(b"m%d" % i, 0.0)
    pump(a, b, 0.0)
    assert received(b) == [b"m%d" % i for i in range(10)]


def test_out_of_order_frames_are_reordered() -> None:
    a, b = make_pair()
    for i in range(5):
        a.send(bytes([i]), 0.0)
    frames = [f for _, f in a.outbox()]
    for frame in reversed(frames):
        b.receive_frame(frame, 0.0)
    assert received(b) == [bytes([i]) for i in range(5)]


def test_duplicate_frames_are_delivered_once() -> None:
    a, b = make_pair()
    a.send(b"x", 0.0)
    ((_, frame),) = a.outbox()
    b.receive_frame(frame, 0.0)
    b.receive_frame(frame, 0.0)
    assert received(b) == [b"x"]
    assert b.stats.duplicates == 1


def test_ack_empties_the_retransmit_buffer() -> None:
    a, b = make_pair(SessionSettings(ack_every_frames=1))
    a.send(b"x", 0.0)
    pump(a, b, 0.0)
    assert a.unacked == 1
    pump(b, a, 0.0)
    assert a.all_acked


def test_delayed_ack_goes_out_on_the_timer() -> None:
    a, b = make_pair(SessionSettings(ack_every_frames=100, ack_delay_s=0.02))
    a.send(b"x", 0.0)
    pump(a, b, 0.0)
    assert b.outbox() == []
    assert b.get_timer() == pytest.approx(0.02)
    b.handle_timer(0.02)
    pump(b, a, 0.02)
    assert a.all_acked


def test_window_full_applies_back_pressure() -> None:
    a, _ = make_pair(SessionSettings(window_frames=3))
    for _ in range(3):
        a.send(b"x", 0.0)
    assert not a.can_send()
    with pytest.raises(MeshError, match="window full"):
        a.send(b"x", 0.0)


def test_retransmit_timer_resends_lost_frames() -> None:
    a, b = make_pair(SessionSettings(retransmit_timeout_s=1.0, ack_every_frames=1))
    a.send(b"lost", 0.0)
    a.outbox()  # dropped by the network
    a.handle_timer(1.0)
    pump(a, b, 1.0)
    assert received(b) == [b"lost"]
    assert a.stats.retransmitted == 1


def test_retransmit_after_path_switch_is_deduplicated() -> None:
    a, b = make_pair(SessionSettings(ack_every_frames=1000))
    for i in range(4):
        a.send(bytes([i]), 0.0)
    pump(a, b, 0.0)  # delivered, but the acks are lost with the old path
    assert a.retransmit_unacked(0.1) == 4
    pump(a, b, 0.1)
    assert received(b) == [bytes([i]) for i in range(4)]


def test_resealed_after_rekey_when_old_key_is_gone() -> None:
    a, b = make_pair(SessionSettings(ack_every_frames=1000))
    a.send(b"before", 0.0)
    a.outbox()  # lost
    k_ab, k_ba = os.urandom(32), os.urandom(32)
    a.keys.install(SendKey(k_ab, 20, 1.0), ReceiveKey(k_ba, 10, 1.0), 1.0)
    b.keys.install(SendKey(k_ba, 10, 1.0), ReceiveKey(k_ab, 20, 1.0), 1.0)
    a.retransmit_unacked(100.0)  # far past the old keys' overlap
    pump(a, b, 100.0)
    assert received(b) == [b"before"]


def test_keepalive_sent_when_idle() -> None:
    a, _ = make_pair(SessionSettings(keepalive_s=3.0))
    assert a.get_timer() == pytest.approx(3.0)
    a.handle_timer(3.0)
    assert len(a.outbox()) == 1


def test_silence_fails_the_session() -> None:
    a, _ = make_pair(SessionSettings(dead_after_s=15.0, keepalive_s=3.0))
    for t in (3.0, 6.0, 9.0, 12.0):
        a.handle_timer(t)
    assert a.state is SessionState.OPEN
    a.handle_timer(15.0)
    (event,) = [e for e in a.events() if isinstance(e, SessionFailed)]
    assert "15 s" in event.reason
    with pytest.raises(SessionClosed):
        a.send(b"x", 15.0)


def test_close_reaches_the_peer() -> None:
    a, b = make_pair()
    a.close(0, "bye", 0.0)
    pump(a, b, 0.0)
    events = b.events()
    assert PeerClosed(0, "bye") in events
    assert b.state is SessionState.CLOSED
    assert b.close_reason == "closed by peer: bye"


def test_tampered_frame_is_dropped_and_genuine_still_accepted() -> None:
    a, b = make_pair()
    a.send(b"genuine", 0.0)
    ((_, frame),) = a.outbox()
    bad = bytearray(frame)
    bad[-1] ^= 1
    b.receive_frame(bytes(bad), 0.0)
    assert b.stats.rejected == 1
    b.receive_frame(frame, 0.0)
    assert received(b) == [b"genuine"]


def test_ack_of_unsent_message_fails_session() -> None:
    a, b = make_pair()
    from meshcore.proto.inner import Ack

    b.queue_control(Ack(5), 0.0)
    pump(b, a, 0.0)
    assert any(isinstance(e, SessionFailed) for e in a.events())


def test_path_challenge_is_answered_on_the_same_path() -> None:
    a, b = make_pair()
    frame = a.seal_control(PathChallenge(b"c" * 16), 0.0)
    b.receive_frame(frame, 0.0, path="direct")
    ((path, reply),) = b.outbox()
    assert path == "direct"
    assert b.events() == [PathChallengeReceived("direct", b"c" * 16)]
    a.receive_frame(reply, 0.0, path="direct")
    assert a.events() == [PathResponseReceived("direct", b"c" * 16)]


def test_endpoints_are_reported() -> None:
    a, b = make_pair()
    eps = (Endpoint("10.0.0.1", 7443),)
    a.queue_control(Endpoints(eps), 0.0)
    pump(a, b, 0.0)
    assert b.events() == [EndpointsReceived(eps)]


def test_held_acks_stop_the_sender_and_release_resumes() -> None:
    a, b = make_pair(SessionSettings(window_frames=2, ack_every_frames=1))
    b.hold_acks(True, 0.0)
    a.send(b"1", 0.0)
    a.send(b"2", 0.0)
    pump(a, b, 0.0)
    assert pump(b, a, 0.0) == 0
    assert not a.can_send()
    b.hold_acks(False, 0.1)
    pump(b, a, 0.1)
    assert a.can_send()


def test_outbox_destination_is_active_by_default() -> None:
    a, _ = make_pair()
    a.send(b"x", 0.0)
    ((path, _),) = a.outbox()
    assert path is ACTIVE


def test_lost_acks_are_recovered_when_the_sender_retransmits() -> None:
    a, b = make_pair(SessionSettings(ack_every_frames=1))
    a.send(b"x", 0.0)
    pump(a, b, 0.0)
    b.outbox()  # the ack is lost
    a.handle_timer(1.0)  # retransmission: same sealed bytes, a replay for b
    pump(a, b, 1.0)
    pump(b, a, 1.0)
    assert a.all_acked
    assert received(b) == [b"x"]


def test_a_move_acknowledges_again_so_the_peer_needs_no_retransmission_timeout() -> None:
    # a moved first and resent; b's ack went out on the path b had not yet seen die
    a, b = make_pair(SessionSettings(ack_every_frames=1, retransmit_timeout_s=1.0))
    a.send(b"x", 0.0)
    pump(a, b, 0.0)
    b.outbox()  # the ack is lost with the old path
    assert not a.all_acked
    b.retransmit_unacked(0.01)  # b moves to the new path: nothing of its own to resend
    pump(b, a, 0.01)
    assert a.all_acked  # long before a's retransmission timer (1 s)
    assert received(b) == [b"x"]
