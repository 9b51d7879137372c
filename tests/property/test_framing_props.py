"""Properties of transport frames: tampering, interop, amplification and key lifetime (T1)."""

from __future__ import annotations

import nacl.bindings
from hypothesis import given, settings
from hypothesis import strategies as st

from meshcore.errors import (
    AuthenticationError,
    DecodeError,
    KeyExpired,
    ProtocolError,
    UnknownReceiverIndex,
)
from meshcore.proto.constants import OLD_KEY_RECEIVE_S, REJECT_AFTER_S
from meshcore.proto.framing import (
    FrameHeader,
    KeyRing,
    ReceiveKey,
    SendKey,
    decode_frame_header_untrusted,
    peek_receiver_index,
)
from meshcore.testing._framing_strategies import (
    bit_flips,
    frame_keys,
    key_event_schedules,
    payloads,
    receiver_indices,
)


@given(frame_keys(), receiver_indices(), payloads(), st.integers(0, 50))
def test_every_payload_round_trips(key: bytes, index: int, payload: bytes, skip: int) -> None:
    send, receive = SendKey(key, index, 0.0), ReceiveKey(key, index, 0.0)
    for _ in range(skip):
        send.seal(b"", 0.0)
    assert receive.open(send.seal(payload, 0.0), 0.0) == payload


@given(frame_keys(), payloads(max_size=300), st.data())
def test_any_bit_flip_is_rejected_and_genuine_frame_still_accepted(
    key: bytes, payload: bytes, data: st.DataObject
) -> None:
    # docs/crypto-spec.md row 2: every header and ciphertext bit is authenticated; a failure changes
    # nothing, so the untampered frame is accepted afterwards.
    send, receive = SendKey(key, 5, 0.0), ReceiveKey(key, 5, 0.0)
    frame = send.seal(payload, 0.0)
    tampered = data.draw(bit_flips(frame))
    try:
        receive.open(tampered, 0.0)
    except (DecodeError, UnknownReceiverIndex, AuthenticationError):
        pass
    else:
        raise AssertionError("a tampered frame was accepted")
    assert receive.highest_counter == -1
    assert receive.open(frame, 0.0) == payload


@given(frame_keys(), payloads(max_size=300), st.data())
def test_truncated_or_extended_frame_is_rejected(
    key: bytes, payload: bytes, data: st.DataObject
) -> None:
    send, receive = SendKey(key, 5, 0.0), ReceiveKey(key, 5, 0.0)
    frame = send.seal(payload, 0.0)
    if data.draw(st.booleans()):
        changed = frame[: data.draw(st.integers(0, len(frame) - 1))]
    else:
        changed = frame + data.draw(st.binary(min_size=1, max_size=32))
    try:
        receive.open(changed, 0.0)
    except (DecodeError, AuthenticationError):
        pass
    else:
        raise AssertionError("a truncated or extended frame was accepted")
    assert receive.open(frame, 0.0) == payload


@given(frame_keys(), receiver_indices(), payloads(), st.integers(0, (1 << 64) - (1 << 14)))
def test_pynacl_and_cryptography_produce_and_accept_identical_frames(
    key: bytes, index: int, payload: bytes, counter: int
) -> None:
    send = SendKey(key, index, 0.0)
    send._counter = counter  # jump to an arbitrary counter without sealing that many frames
    frame = send.seal(payload, 0.0)
    header = FrameHeader(receiver_index=index, counter=counter).encode()
    nonce = bytes(4) + counter.to_bytes(8, "little")
    by_nacl = header + nacl.bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
        payload, header, nonce, key
    )
    assert by_nacl == frame
    assert (
        nacl.bindings.crypto_aead_chacha20poly1305_ietf_decrypt(frame[16:], header, nonce, key)
        == payload
    )
    assert ReceiveKey(key, index, 0.0).open(by_nacl, 0.0) == payload


def header_then_junk() -> st.SearchStrategy[bytes]:
    """Unvalidated input that passes the header checks, so it reaches the AEAD."""
    return st.builds(
        lambda counter, junk: FrameHeader(receiver_index=7, counter=counter).encode() + junk,
        st.integers(0, (1 << 64) - 1),
        st.binary(max_size=200),
    )


@given(st.one_of(st.binary(max_size=300), header_then_junk()))
def test_unvalidated_input_never_amplifies_nor_changes_receive_state(data: bytes) -> None:
    # docs/crypto-spec.md row 13 and 16: the receive path answers nothing, raises only protocol
    # errors,
    # returns at most what came in, and leaves the window untouched.
    receive = ReceiveKey(bytes(32), 7, 0.0)
    ring = KeyRing()
    ring.install(SendKey(bytes(32), 8, 0.0), ReceiveKey(bytes(range(32)), 7, 0.0), 0.0)
    for open_ in (receive.open, ring.open):
        try:
            out = open_(data, 0.0)
        except ProtocolError:
            continue
        assert len(out) <= len(data)
    assert receive.highest_counter == -1
    for parse in (peek_receiver_index, decode_frame_header_untrusted):
        try:
            parse(data)
        except DecodeError:
            pass


_FLOAT_SLACK_S = 1e-9
"""Keys expire at `created_at + 180 <= now`; `now - created_at` may round a hair below 180."""


@settings(max_examples=500)
@given(key_event_schedules())
def test_no_frame_is_sealed_or_accepted_with_a_key_older_than_reject_after(
    schedule: list[tuple[str, float, int]],
) -> None:
    # docs/crypto-spec.md T1, with explicit `now`: seal refuses exactly when the key is 180 s old,
    # and
    # nothing older is ever accepted. Frames in flight carry the creation time of their key.
    a, b = KeyRing(), KeyRing()
    now, epoch, created = 0.0, 0, {}
    in_flight: list[tuple[bytes, float]] = []

    def install() -> None:
        nonlocal epoch
        epoch += 1
        key = epoch.to_bytes(32, "little")
        a.install(SendKey(key, epoch, now), ReceiveKey(bytes(32), 1 << 20, now), now)
        b.install(SendKey(bytes(32), 1 << 20, now), ReceiveKey(key, epoch, now), now)
        created[epoch] = now

    install()
    for event, gap, pick in schedule:
        now += gap
        if event == "install":
            install()
        elif event == "seal":
            age = now - created[epoch]
            try:
                frame = a.seal(b"data", now)
            except KeyExpired:
                assert age >= REJECT_AFTER_S - _FLOAT_SLACK_S
            else:
                assert age < REJECT_AFTER_S
                in_flight.append((frame, created[epoch]))
        elif event == "open" and in_flight:
            frame, key_created = in_flight.pop(pick % len(in_flight))
            try:
                b.open(frame, now)
            except KeyExpired:
                assert now - key_created >= REJECT_AFTER_S - _FLOAT_SLACK_S
            except UnknownReceiverIndex:
                assert peek_receiver_index(frame) != epoch  # only old epochs are dropped
            else:
                assert now - key_created < REJECT_AFTER_S
                is_current = peek_receiver_index(frame) == epoch
                assert is_current or now - created[epoch] < OLD_KEY_RECEIVE_S
