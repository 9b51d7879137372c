"""Transport frames: layout, seal/open, key lifetimes and the KeyRing (docs/crypto-spec.md
§3.5-3.8)."""

from __future__ import annotations

import os
import struct

import nacl.bindings
import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from meshcore.errors import (
    AuthenticationError,
    DecodeError,
    FrameTooLarge,
    KeyExpired,
    ReplayError,
    UnknownReceiverIndex,
)
from meshcore.proto import framing
from meshcore.proto.constants import (
    MAX_FRAME_BYTES,
    OLD_KEY_RECEIVE_S,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_S,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_S,
)
from meshcore.proto.framing import (
    FRAME_TYPE,
    MAX_PLAINTEXT_BYTES,
    FrameHeader,
    KeyRing,
    ReceiveKey,
    SendKey,
    decode_frame_header_untrusted,
    peek_receiver_index,
)

K_AB = bytes(range(32))
K_BA = bytes(range(32, 64))
IDX_A = 0x11111111
IDX_B = 0x22222222


def pair(key: bytes = K_AB, index: int = IDX_B, now: float = 0.0) -> tuple[SendKey, ReceiveKey]:
    return SendKey(key, index, now), ReceiveKey(key, index, now)


def test_seal_then_open_returns_plaintext() -> None:
    send, receive = pair()
    assert receive.open(send.seal(b"hello", 1.0), 1.0) == b"hello"


def test_frame_layout_is_header_then_ciphertext_and_tag() -> None:
    send, _ = pair()
    send.seal(b"", 0.0)
    frame = send.seal(b"x" * 10, 0.0)
    assert len(frame) == 16 + 10 + 16
    assert frame[0] == FRAME_TYPE == 4
    assert frame[1:4] == b"\x00\x00\x00"
    assert frame[4:8] == IDX_B.to_bytes(4, "little")
    assert frame[8:16] == (1).to_bytes(8, "little")


def test_nonce_is_zero_prefix_and_le64_counter_with_header_as_associated_data() -> None:
    send, _ = pair()
    for _ in range(5):
        send.seal(b"", 0.0)
    frame = send.seal(b"payload", 0.0)
    nonce = b"\x00" * 4 + struct.pack("<Q", 5)
    assert ChaCha20Poly1305(K_AB).decrypt(nonce, frame[16:], frame[:16]) == b"payload"


def test_cryptography_and_pynacl_frames_are_identical_and_interoperate() -> None:
    send, receive = pair()
    payload = os.urandom(1400)
    frame = send.seal(payload, 0.0)
    header, nonce = frame[:16], b"\x00" * 4 + frame[8:16]
    by_nacl = header + nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        payload, header, nonce, K_AB
    )
    assert by_nacl == frame
    plain = nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(frame[16:], header, nonce, K_AB)
    assert plain == payload
    assert receive.open(by_nacl, 0.0) == payload


def test_counter_counts_sealed_frames() -> None:
    send, _ = pair()
    assert send.counter == 0
    send.seal(b"a", 0.0)
    send.seal(b"b", 0.0)
    assert send.counter == 2


def test_open_accepts_memoryview_and_bytearray() -> None:
    send, receive = pair()
    assert receive.open(memoryview(send.seal(b"mv", 0.0)), 0.0) == b"mv"
    assert receive.open(bytearray(send.seal(b"ba", 0.0)), 0.0) == b"ba"
    big = os.urandom(60_000)
    assert receive.open(memoryview(send.seal(big, 0.0)), 0.0) == big


def test_duplicate_frame_raises_replay_error() -> None:
    send, receive = pair()
    frame = send.seal(b"once", 0.0)
    receive.open(frame, 0.0)
    with pytest.raises(ReplayError):
        receive.open(frame, 0.0)


def test_reordered_frames_are_each_accepted_once() -> None:
    send, receive = pair()
    frames = [send.seal(bytes([i]), 0.0) for i in range(10)]
    for frame in reversed(frames):
        receive.open(frame, 0.0)
    with pytest.raises(ReplayError):
        receive.open(frames[3], 0.0)


def test_tampered_frame_is_rejected_and_genuine_frame_still_accepted() -> None:
    send, receive = pair()
    frame = send.seal(b"genuine", 0.0)
    bad = bytearray(frame)
    bad[20] ^= 0x01
    with pytest.raises(AuthenticationError):
        receive.open(bytes(bad), 0.0)
    assert receive.failures == 1
    assert receive.highest_counter == -1
    assert receive.open(frame, 0.0) == b"genuine"


def test_forged_high_counter_does_not_shift_window() -> None:
    # docs/crypto-spec.md row 8: a forged frame with counter 2^40 must not block genuine frames.
    send, receive = pair()
    forged = FrameHeader(receiver_index=IDX_B, counter=1 << 40).encode() + os.urandom(48)
    with pytest.raises(AuthenticationError):
        receive.open(forged, 0.0)
    assert receive.highest_counter == -1
    for i in range(3):
        assert receive.open(send.seal(bytes([i]), 0.0), 0.0) == bytes([i])


def test_reflected_frame_fails_at_its_sender() -> None:
    # docs/crypto-spec.md row 3: A's frame fed back to A. Directional keys make it fail even when
    # the
    # two receiver indices collide.
    a_send, a_receive = SendKey(K_AB, IDX_B, 0.0), ReceiveKey(K_BA, IDX_A, 0.0)
    with pytest.raises(UnknownReceiverIndex):
        a_receive.open(a_send.seal(b"to B", 0.0), 0.0)
    a_receive_colliding = ReceiveKey(K_BA, IDX_B, 0.0)
    with pytest.raises(AuthenticationError):
        a_receive_colliding.open(a_send.seal(b"to B", 0.0), 0.0)


def test_frame_for_another_receiver_index_is_refused_before_decrypting() -> None:
    send, _ = pair(index=IDX_A)
    receive = ReceiveKey(K_AB, IDX_B, 0.0)
    with pytest.raises(UnknownReceiverIndex) as info:
        receive.open(send.seal(b"", 0.0), 0.0)
    assert info.value.receiver_index == IDX_A
    assert receive.failures == 0


@pytest.mark.parametrize("size", [0, 1, 15, 16, 31])
def test_short_frame_raises_decode_error(size: int) -> None:
    _, receive = pair()
    with pytest.raises(DecodeError):
        receive.open(b"\x04" + bytes(max(size - 1, 0)), 0.0)


def test_oversized_frame_raises_decode_error() -> None:
    _, receive = pair()
    frame = FrameHeader(receiver_index=IDX_B, counter=0).encode() + bytes(MAX_FRAME_BYTES)
    with pytest.raises(DecodeError):
        receive.open(frame, 0.0)


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_nonzero_type_flags_or_reserved_raise_decode_error(offset: int) -> None:
    send, receive = pair()
    frame = bytearray(send.seal(b"x", 0.0))
    frame[offset] ^= 0x80
    with pytest.raises(DecodeError):
        receive.open(bytes(frame), 0.0)


def test_peek_receiver_index_reads_the_routing_index() -> None:
    send, _ = pair(index=0xDEADBEEF)
    assert peek_receiver_index(send.seal(b"", 0.0)) == 0xDEADBEEF


def test_peek_receiver_index_rejects_garbage() -> None:
    with pytest.raises(DecodeError):
        peek_receiver_index(b"\x01" + bytes(40))
    with pytest.raises(DecodeError):
        peek_receiver_index(b"\x04")


def test_header_round_trips_through_decoder() -> None:
    header = FrameHeader(receiver_index=9, counter=(1 << 63) + 5)
    assert decode_frame_header_untrusted(header.encode() + bytes(16)) == header


def test_seal_refuses_plaintext_larger_than_one_frame() -> None:
    send, _ = pair()
    send.seal(bytes(MAX_PLAINTEXT_BYTES), 0.0)
    with pytest.raises(FrameTooLarge):
        send.seal(bytes(MAX_PLAINTEXT_BYTES + 1), 0.0)


def test_seal_refuses_key_at_reject_after_time() -> None:
    send, _ = pair(now=100.0)
    send.seal(b"", 100.0 + REJECT_AFTER_S - 0.001)
    assert send.expired(100.0 + REJECT_AFTER_S)
    with pytest.raises(KeyExpired):
        send.seal(b"", 100.0 + REJECT_AFTER_S)


def test_seal_refuses_key_at_reject_after_messages() -> None:
    send, _ = pair()
    send._counter = REJECT_AFTER_MESSAGES - 1  # reaching it by sealing would take centuries
    frame = send.seal(b"last", 0.0)
    assert decode_frame_header_untrusted(frame).counter == REJECT_AFTER_MESSAGES - 1
    with pytest.raises(KeyExpired):
        send.seal(b"one too many", 0.0)
    assert send.counter == REJECT_AFTER_MESSAGES


def test_needs_rekey_after_rekey_time() -> None:
    send, _ = pair(now=10.0)
    assert not send.needs_rekey(10.0 + REKEY_AFTER_S - 0.001)
    assert send.needs_rekey(10.0 + REKEY_AFTER_S)


def test_needs_rekey_after_rekey_messages() -> None:
    send, _ = pair()
    send._counter = REKEY_AFTER_MESSAGES
    assert send.needs_rekey(0.0)
    assert not send.expired(0.0)


def test_open_refuses_key_at_reject_after_time() -> None:
    send, receive = pair(now=0.0)
    frame = send.seal(b"late", 1.0)
    with pytest.raises(KeyExpired):
        receive.open(frame, REJECT_AFTER_S)
    assert receive.open(frame, REJECT_AFTER_S - 0.001) == b"late"


def test_forgery_limit_retires_receive_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(framing, "AEAD_FORGERY_LIMIT", 3)
    send, receive = pair()
    genuine = send.seal(b"ok", 0.0)
    forged = genuine[:16] + bytes(len(genuine) - 16)
    for _ in range(3):
        with pytest.raises(AuthenticationError):
            receive.open(forged, 0.0)
    assert receive.forgery_limit_reached
    assert receive.expired(0.0)
    with pytest.raises(KeyExpired):
        receive.open(genuine, 0.0)


def test_reprs_never_show_key_bytes() -> None:
    send, receive = pair()
    for text in (repr(send), repr(receive), repr(KeyRing())):
        assert K_AB.hex() not in text
        assert repr(K_AB) not in text


def test_wrong_key_length_is_a_caller_error() -> None:
    with pytest.raises(ValueError):
        SendKey(bytes(16), 0, 0.0)
    with pytest.raises(ValueError):
        ReceiveKey(bytes(32), 1 << 32, 0.0)


# --- KeyRing ----------------------------------------------------------------------------


def ring_pair(epoch: int, now: float) -> tuple[KeyRing, KeyRing]:
    """Fresh A and B rings with one epoch of keys installed."""
    a, b = KeyRing(), KeyRing()
    install_epoch(a, b, epoch, now)
    return a, b


def install_epoch(a: KeyRing, b: KeyRing, epoch: int, now: float) -> None:
    k_ab, k_ba = bytes([epoch]) * 32, bytes([epoch + 100]) * 32
    idx_a, idx_b = 1000 + epoch, 2000 + epoch
    a.install(SendKey(k_ab, idx_b, now), ReceiveKey(k_ba, idx_a, now), now)
    b.install(SendKey(k_ba, idx_a, now), ReceiveKey(k_ab, idx_b, now), now)


def test_keyring_round_trip_in_both_directions() -> None:
    a, b = ring_pair(1, 0.0)
    assert b.open(a.seal(b"a->b", 0.0), 0.0) == b"a->b"
    assert a.open(b.seal(b"b->a", 0.0), 0.0) == b"b->a"


def test_empty_keyring_refuses_to_seal() -> None:
    ring = KeyRing()
    assert ring.expired(0.0)
    assert ring.needs_rekey(0.0)
    with pytest.raises(KeyExpired):
        ring.seal(b"", 0.0)


def test_keyring_seals_with_newest_key_after_install() -> None:
    a, b = ring_pair(1, 0.0)
    install_epoch(a, b, 2, 10.0)
    frame = a.seal(b"new", 10.0)
    assert peek_receiver_index(frame) == 2002
    assert b.open(frame, 10.0) == b"new"


def test_previous_receive_key_accepts_in_flight_frames_until_old_key_deadline() -> None:
    a, b = ring_pair(1, 0.0)
    in_flight = [a.seal(bytes([i]), 0.0) for i in range(2)]
    install_epoch(a, b, 2, 10.0)
    assert b.open(in_flight[0], 10.0 + OLD_KEY_RECEIVE_S - 0.001) == b"\x00"
    assert set(b.receiver_indices(10.0)) == {2001, 2002}
    with pytest.raises(UnknownReceiverIndex):
        b.open(in_flight[1], 10.0 + OLD_KEY_RECEIVE_S)
    assert b.receiver_indices(10.0 + OLD_KEY_RECEIVE_S) == (2002,)


def test_keyring_refuses_frames_for_unknown_indices() -> None:
    _, b = ring_pair(1, 0.0)
    frame = SendKey(bytes(32), 424242, 0.0).seal(b"", 0.0)
    with pytest.raises(UnknownReceiverIndex):
        b.open(frame, 0.0)


def test_keyring_needs_rekey_and_expires_with_its_send_key() -> None:
    a, _ = ring_pair(1, 0.0)
    assert not a.needs_rekey(REKEY_AFTER_S - 1)
    assert a.needs_rekey(REKEY_AFTER_S)
    assert not a.expired(REJECT_AFTER_S - 1)
    assert a.expired(REJECT_AFTER_S)
    with pytest.raises(KeyExpired):
        a.seal(b"", REJECT_AFTER_S)


def test_keyring_needs_rekey_once_forgery_budget_is_spent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(framing, "AEAD_FORGERY_LIMIT", 2)
    a, b = ring_pair(1, 0.0)
    frame = a.seal(b"x", 0.0)
    forged = frame[:16] + bytes(len(frame) - 16)
    for _ in range(2):
        with pytest.raises(AuthenticationError):
            b.open(forged, 0.0)
    assert b.needs_rekey(0.0)
    assert b.expired(0.0)
