"""SessionCore: ordered exactly-once delivery, acks, windows, timers, closing, and the
half-close (Eof) and the clean finish once both directions ended."""

from __future__ import annotations

import os

import pytest

from meshcore.errors import MeshError, SessionClosed
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.framing import KeyRing, ReceiveKey, SendKey
from meshcore.proto.inner import (
    CLOSE_FINISHED,
    Close,
    Endpoints,
    Eof,
    PathChallenge,
    decode_inner_untrusted,
    encode_data,
    encode_inner,
)
from meshcore.proto.session import (
    ACTIVE,
    FINISHED_REASON,
    EndpointsReceived,
    EofReceived,
    MessageReceived,
    PathChallengeReceived,
    PathResponseReceived,
    PeerClosed,
    SessionCore,
    SessionFailed,
    SessionFinished,
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


def test_a_batch_of_frames_is_acknowledged_once_at_its_end() -> None:
    a, b = make_pair(SessionSettings(ack_every_frames=1, dead_after_s=None))
    for i in range(6):
        a.send(b"m%d" % i, 0.0)
    frames = [f for _, f in a.outbox()]
    b.coalesce_acks(True, 0.0)
    for frame in frames:
        b.receive_frame(frame, 0.0)
    assert b.outbox() == []  # each frame was due an ack; none went out during the batch
    b.coalesce_acks(False, 0.0)
    (ack,) = [f for _, f in b.outbox()]
    a.receive_frame(ack, 0.0)
    assert a.all_acked  # the one ack covers all six
    assert received(b) == [b"m%d" % i for i in range(6)]
    b.coalesce_acks(True, 0.0)
    b.coalesce_acks(False, 0.0)
    assert b.outbox() == []  # nothing owed: nothing sent


def test_an_urgent_ack_is_not_held_for_the_end_of_a_batch() -> None:
    a, b = make_pair(SessionSettings(ack_every_frames=100, dead_after_s=None))
    for i in range(3):
        a.send(bytes([i]), 0.0)
    first, _, third = [f for _, f in a.outbox()]
    b.coalesce_acks(True, 0.0)
    b.receive_frame(first, 0.0)
    b.receive_frame(third, 0.0)  # a gap: the sender must hear of it at once
    assert len(b.outbox()) == 1
    b.coalesce_acks(False, 0.0)
    assert b.outbox() == []  # below ack_every_frames: the delayed ack's timer covers it


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
    assert b.close_reason == "peer closed: bye"


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


# --- half-close and the clean finish -----------------------------------------------------------


def stream(core: SessionCore) -> list[bytes | str]:
    """The application's view of `core`'s events: payloads, "eof", "finished", "closed"."""
    out: list[bytes | str] = []
    for event in core.events():
        if isinstance(event, MessageReceived):
            out.append(event.payload)
        elif isinstance(event, EofReceived):
            out.append("eof")
        elif isinstance(event, SessionFinished):
            out.append("finished")
        elif isinstance(event, PeerClosed):
            out.append("closed")
    return out


def converse(a: SessionCore, b: SessionCore, now: float = 0.0) -> None:
    """Deliver frames both ways until neither side has anything more to say."""
    while pump(a, b, now) + pump(b, a, now):
        pass


def test_eof_arrives_once_after_every_message_before_it_even_reordered() -> None:
    a, b = make_pair()
    for i in range(5):
        a.send(bytes([i]), 0.0)
    a.send_eof(0.0)
    frames = [f for _, f in a.outbox()]
    for frame in [*reversed(frames), *frames]:  # reordered, then every frame again
        b.receive_frame(frame, 0.0)
    assert stream(b) == [bytes([i]) for i in range(5)] + ["eof"]
    assert b.eof_received and b.state is SessionState.OPEN


def test_after_send_eof_sending_is_refused_and_receiving_goes_on() -> None:
    a, b = make_pair()
    a.send_eof(0.0)
    a.send_eof(0.0)  # idempotent: one Eof
    assert len(a.outbox()) == 1 and a.eof_sent
    assert not a.can_send()
    with pytest.raises(SessionClosed, match="send_eof"):
        a.send(b"late", 0.0)
    a._outbox.append((ACTIVE, a._seal(encode_inner(Eof(0, 0)), 0.0)))  # sent again
    pump(a, b, 0.0)
    b.send(b"answer", 0.0)
    pump(b, a, 0.0)
    assert stream(b) == ["eof"]
    assert stream(a) == [b"answer"]


def test_an_eof_is_acknowledged_at_once_and_resent_until_it_is() -> None:
    a, b = make_pair(SessionSettings(retransmit_timeout_s=1.0))
    a.send_eof(0.0)
    a.outbox()  # lost
    assert not a.eof_acked
    a.handle_timer(1.0)
    pump(a, b, 1.0)
    assert stream(b) == ["eof"]
    assert pump(b, a, 1.0) == 1  # the ack, without waiting for the ack delay
    assert a.eof_acked and a.all_acked


def test_both_directions_ended_finish_both_sides_cleanly() -> None:
    a, b = make_pair()
    a.send(b"request", 0.0)
    a.send_eof(0.0)
    converse(a, b)
    b.send(b"response", 0.0)
    b.send_eof(0.0)
    converse(a, b)
    assert stream(b) == [b"request", "eof", "finished"]
    assert stream(a) == [b"response", "eof", "finished"]
    for core in (a, b):
        assert core.state is SessionState.CLOSED
        assert core.close_reason == FINISHED_REASON
        assert core.all_acked


def test_eofs_that_cross_finish_both_sides() -> None:
    a, b = make_pair()
    a.send_eof(0.0)
    b.send_eof(0.0)
    converse(a, b)
    assert stream(a)[-1] == stream(b)[-1] == "finished"
    assert a.close_reason == b.close_reason == FINISHED_REASON


def test_the_finishing_close_acknowledges_the_eof_whose_ack_was_lost() -> None:
    a, b = make_pair()
    a.send_eof(0.0)
    converse(a, b)  # a's Eof arrived and was acknowledged
    b.send_eof(0.0)
    pump(b, a, 0.0)  # a now has both: it finishes, acking b's Eof and closing
    out = [decode_inner_untrusted(b.keys.open(f, 0.0)) for _, f in a.outbox()]
    assert [type(m).__name__ for m in out] == ["Ack", "Close"]
    assert out[1] == Close(CLOSE_FINISHED, "finished")
    b.receive_frame(a.keys.seal(encode_inner(out[1]), 0.0), 0.0)  # the ack was lost
    assert stream(b) == ["eof", "finished"]
    assert b.all_acked and b.close_reason == FINISHED_REASON


def test_a_close_before_both_directions_ended_is_the_peer_closing() -> None:
    a, b = make_pair()
    a.send(b"unanswered", 0.0)
    a.send_eof(0.0)
    pump(a, b, 0.0)
    b.close(0, "bye", 0.0)
    pump(b, a, 0.0)
    assert stream(a) == ["closed"]
    assert a.close_reason == "peer closed: bye"


def test_a_finished_close_from_a_peer_that_never_got_our_eof_is_a_close() -> None:
    a, b = make_pair()
    b.receive_frame(a.keys.seal(encode_inner(Close(CLOSE_FINISHED, "finished")), 0.0), 0.0)
    assert stream(b) == ["closed"]  # b sent no Eof: the peer cannot be finished with it


def test_a_message_after_the_peer_eof_fails_the_session() -> None:
    a, b = make_pair()
    a.send_eof(0.0)
    pump(a, b, 0.0)
    b.receive_frame(a._seal(encode_data(1, 0, b"after the end"), 0.0), 0.0)
    (failed,) = [e for e in b.events() if isinstance(e, SessionFailed)]
    assert "after ending its stream" in failed.reason


def test_an_eof_before_messages_the_peer_already_sent_fails_the_session() -> None:
    a, b = make_pair()
    a.send(b"one", 0.0)
    a.send(b"two", 0.0)
    (_, second) = a.outbox()[1]
    b.receive_frame(second, 0.0)  # message 1 waits for message 0
    b.receive_frame(a._seal(encode_inner(Eof(0, 0)), 0.0), 0.0)
    (failed,) = [e for e in b.events() if isinstance(e, SessionFailed)]
    assert "before messages it sent" in failed.reason


def test_a_second_eof_at_another_position_fails_the_session() -> None:
    a, b = make_pair()
    b.receive_frame(a._seal(encode_inner(Eof(3, 0)), 0.0), 0.0)
    b.receive_frame(a._seal(encode_inner(Eof(5, 0)), 0.0), 0.0)
    (failed,) = [e for e in b.events() if isinstance(e, SessionFailed)]
    assert "twice" in failed.reason


def test_both_sides_stop_lingering_once_each_heard_the_other_finish() -> None:
    a, b = make_pair()
    a.send_eof(0.0)
    b.send_eof(0.0)
    converse(a, b)
    assert not a.lingering and not b.lingering
    assert a.get_timer() is None and b.get_timer() is None


def test_a_lingering_side_answers_the_eof_resent_by_a_peer_that_missed_its_finish() -> None:
    a, b = make_pair(SessionSettings(retransmit_timeout_s=1.0))
    a.send_eof(0.0)
    converse(a, b)
    b.send_eof(0.0)
    pump(b, a, 0.0)
    assert a.state is SessionState.CLOSED and a.lingering
    a.outbox()  # its ack and Close are lost
    b.handle_timer(1.0)  # b resends its Eof
    pump(b, a, 1.0)
    pump(a, b, 1.0)  # answered again
    assert stream(b) == ["eof", "finished"]
    pump(b, a, 1.0)  # b's own Close(finished) ends a's linger
    assert not a.lingering


def test_the_linger_ends_by_itself_when_the_peer_says_nothing() -> None:
    a, b = make_pair(SessionSettings(retransmit_timeout_s=0.5))
    a.send_eof(0.0)
    converse(a, b)
    b.send_eof(0.0)
    pump(b, a, 0.0)
    assert a.lingering and a.get_timer() == 1.0
    a.handle_timer(1.0)
    assert not a.lingering and a.get_timer() is None
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
