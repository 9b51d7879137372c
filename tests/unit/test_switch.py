"""The tunnel's layer-2 core: MAC learning, flooding, ageing, eviction, and frames packed
into session messages."""

from __future__ import annotations

import struct

import pytest

from meshcore.errors import DecodeError
from meshcore.proto.constants import MAX_MESSAGE_BYTES
from meshcore.proto.switch import LOCAL, FrameAssembler, FramePacker, Switch

BROADCAST = b"\xff" * 6
MULTICAST = bytes.fromhex("01005e000001")
A = bytes.fromhex("02000000000a")
B = bytes.fromhex("02000000000b")
C = bytes.fromhex("02000000000c")
HOST = bytes.fromhex("020000000001")


def frame(dst: bytes, src: bytes, payload: bytes = b"\x08\x00payload") -> bytes:
    return dst + src + payload


def test_broadcast_from_the_tap_floods_to_every_peer() -> None:
    switch = Switch(["p", "q", "r"])
    assert switch.from_local(frame(BROADCAST, HOST), 0.0) == ("p", "q", "r")


def test_multicast_from_the_tap_floods_to_every_peer() -> None:
    switch = Switch(["p", "q"])
    assert switch.from_local(frame(MULTICAST, HOST), 0.0) == ("p", "q")


def test_unknown_unicast_from_the_tap_floods() -> None:
    switch = Switch(["p", "q"])
    assert switch.from_local(frame(A, HOST), 0.0) == ("p", "q")
    assert switch.flooded == 1


def test_learned_destination_goes_only_to_its_peer() -> None:
    switch = Switch(["p", "q", "r"])
    assert switch.from_peer("q", frame(HOST, A), 0.0)
    assert switch.from_local(frame(A, HOST), 1.0) == ("q",)


def test_frames_from_peers_always_go_to_the_tap() -> None:
    switch = Switch(["p", "q"])
    assert switch.from_peer("p", frame(BROADCAST, A), 0.0)
    assert switch.from_peer("p", frame(B, A), 0.0)
    assert switch.from_peer("p", frame(HOST, A), 0.0)


def test_destination_on_the_local_side_goes_nowhere() -> None:
    switch = Switch(["p"])
    switch.from_local(frame(BROADCAST, HOST), 0.0)
    assert switch.from_local(frame(HOST, bytes.fromhex("020000000002")), 1.0) == ()
    assert switch.lookup(HOST, 1.0) is LOCAL


def test_address_moves_to_the_peer_it_was_last_seen_behind() -> None:
    switch = Switch(["p", "q"])
    switch.from_peer("p", frame(HOST, A), 0.0)
    switch.from_peer("q", frame(HOST, A), 1.0)
    assert switch.lookup(A, 1.0) == "q"


def test_learned_address_ages_out_and_floods_again() -> None:
    switch = Switch(["p", "q"], ageing_s=10.0)
    switch.from_peer("p", frame(HOST, A), 0.0)
    assert switch.from_local(frame(A, HOST), 9.9) == ("p",)
    assert switch.from_local(frame(A, HOST), 10.0) == ("p", "q")
    assert switch.lookup(A, 10.0) is None


def test_each_frame_refreshes_its_source_age() -> None:
    switch = Switch(["p"], ageing_s=10.0)
    switch.from_peer("p", frame(HOST, A), 0.0)
    switch.from_peer("p", frame(HOST, A), 8.0)
    assert switch.lookup(A, 17.0) == "p"


def test_full_table_forgets_the_least_recently_seen() -> None:
    switch = Switch(["p"], capacity=2)
    switch.from_peer("p", frame(HOST, A), 0.0)
    switch.from_peer("p", frame(HOST, B), 1.0)
    switch.from_peer("p", frame(HOST, A), 2.0)  # A is now the most recent
    switch.from_peer("p", frame(HOST, C), 3.0)
    assert switch.lookup(B, 3.0) is None
    assert switch.lookup(A, 3.0) == "p"
    assert switch.lookup(C, 3.0) == "p"
    assert len(switch) == 2


def test_full_table_drops_aged_out_entries_first() -> None:
    switch = Switch(["p"], capacity=3, ageing_s=5.0)
    switch.from_peer("p", frame(HOST, A), 0.0)
    switch.from_peer("p", frame(HOST, B), 1.0)
    switch.from_peer("p", frame(HOST, C), 5.5)
    switch.from_peer("p", frame(HOST, HOST), 6.5)  # A and B aged out: both go
    assert len(switch) == 2


def test_removed_peer_gets_no_floods_and_its_addresses_are_forgotten() -> None:
    switch = Switch(["p", "q"])
    switch.from_peer("q", frame(HOST, A), 0.0)
    switch.remove_port("q")
    assert switch.lookup(A, 0.0) is None
    assert switch.from_local(frame(A, HOST), 0.0) == ("p",)


def test_forget_port_keeps_the_port_but_forgets_its_addresses() -> None:
    switch = Switch(["p", "q"])
    switch.from_peer("q", frame(HOST, A), 0.0)
    switch.forget_port("q")
    assert switch.lookup(A, 0.0) is None
    assert switch.ports == ("p", "q")


def test_frames_from_an_unknown_port_are_delivered_but_teach_nothing() -> None:
    switch = Switch(["p"])
    assert switch.from_peer("stranger", frame(HOST, A), 0.0)
    assert switch.lookup(A, 0.0) is None


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x00" * 13,
        frame(HOST, MULTICAST),
        frame(HOST, BROADCAST),
        frame(HOST, bytes(6)),
    ],
    ids=["empty", "short", "multicast-source", "broadcast-source", "zero-source"],
)
def test_invalid_frames_are_dropped_both_ways(bad: bytes) -> None:
    switch = Switch(["p"])
    assert switch.from_local(bad, 0.0) == ()
    assert not switch.from_peer("p", bad, 0.0)
    assert switch.dropped == 2
    assert len(switch) == 0


def test_switch_with_no_peers_sends_nowhere() -> None:
    assert Switch[str]().from_local(frame(BROADCAST, HOST), 0.0) == ()


def test_switch_accepts_memoryviews() -> None:
    switch = Switch(["p"])
    data = bytearray(10 + 60)
    data[10:] = frame(BROADCAST, HOST).ljust(60, b"\x00")
    assert switch.from_local(memoryview(data)[10:], 0.0) == ("p",)
    assert switch.lookup(HOST, 0.0) is LOCAL


@pytest.mark.parametrize("kwargs", [{"capacity": 0}, {"ageing_s": 0.0}])
def test_switch_refuses_nonsense_limits(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Switch(["p"], **kwargs)  # type: ignore[arg-type]


# --- packing ---------------------------------------------------------------------------------


def drain(packer: FramePacker) -> list[bytes]:
    out = []
    while (message := packer.take()) is not None:
        out.append(message)
    return out


def test_small_frames_share_one_message() -> None:
    packer = FramePacker()
    for i in range(10):
        packer.add(bytes([i]) * 100)
    (message,) = drain(packer)
    assert len(message) == 10 * 104
    assert [bytes(f) for f in FrameAssembler().decode_untrusted(message)] == [
        bytes([i]) * 100 for i in range(10)
    ]


def test_chunk_header_is_a_big_endian_length() -> None:
    packer = FramePacker()
    packer.add(b"abc")
    assert packer.take() == b"\x00\x00\x00\x03abc"


def test_frames_that_do_not_fit_start_a_new_message() -> None:
    packer = FramePacker()
    packer.add(b"x" * 40000)
    packer.add(b"y" * 40000)
    messages = drain(packer)
    assert [len(m) for m in messages] == [40004, 40004]


def test_largest_unsplit_frame_fills_one_message() -> None:
    packer = FramePacker()
    packer.add(b"z" * (MAX_MESSAGE_BYTES - 4))
    (message,) = drain(packer)
    assert len(message) == MAX_MESSAGE_BYTES


def test_oversized_frame_is_split_and_reassembled() -> None:
    big = bytes(range(256)) * 400  # 102400 bytes
    packer = FramePacker()
    packer.add(b"head")
    packer.add(big)
    packer.add(b"tail")
    messages = drain(packer)
    assert all(len(m) <= MAX_MESSAGE_BYTES for m in messages)
    assembler = FrameAssembler()
    frames = [bytes(f) for m in messages for f in assembler.decode_untrusted(m)]
    assert frames == [b"head", big, b"tail"]
    assert assembler.pending_bytes == 0


def test_take_returns_full_messages_before_the_one_being_filled() -> None:
    packer = FramePacker(limit=2048)
    packer.add(b"a" * 1500)
    packer.add(b"b" * 1500)
    assert packer.take() == struct.pack(">I", 1500) + b"a" * 1500
    assert packer.queued_bytes == 1504
    assert packer.take() == struct.pack(">I", 1500) + b"b" * 1500
    assert packer.take() is None
    assert packer.queued_bytes == 0


def test_clear_drops_everything() -> None:
    packer = FramePacker()
    packer.add(b"a" * 70000)
    packer.clear()
    assert packer.take() is None
    assert packer.queued_bytes == 0


def test_empty_frame_cannot_be_packed() -> None:
    with pytest.raises(ValueError):
        FramePacker().add(b"")


@pytest.mark.parametrize(
    "message",
    [
        b"\x00\x00\x00",
        b"\x00\x00\x00\x00",
        b"\x00\x00\x00\x05abc",
        b"\x00\x00\x00\x01a\x00",
        b"\x80\x00\x00\x00",
    ],
    ids=["short-header", "empty-chunk", "overlong-chunk", "trailing-byte", "empty-more-chunk"],
)
def test_malformed_messages_raise_decode_error(message: bytes) -> None:
    with pytest.raises(DecodeError):
        FrameAssembler().decode_untrusted(message)


def test_frame_over_the_limit_is_refused() -> None:
    with pytest.raises(DecodeError):
        FrameAssembler(max_frame=10).decode_untrusted(struct.pack(">I", 11) + b"x" * 11)


def test_split_frame_over_the_limit_is_refused_and_forgotten() -> None:
    assembler = FrameAssembler(max_frame=10)
    assembler.decode_untrusted(struct.pack(">I", 0x8000_0006) + b"x" * 6)
    assert assembler.pending_bytes == 6
    with pytest.raises(DecodeError):
        assembler.decode_untrusted(struct.pack(">I", 0x8000_0006) + b"x" * 6)
    assert assembler.pending_bytes == 0


def test_empty_message_holds_no_frames() -> None:
    assert FrameAssembler().decode_untrusted(b"") == []
