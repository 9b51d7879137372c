"""SESSION_RESUME (docs/crypto-spec.md §3.10; rows 9, 11 and 13)."""

from __future__ import annotations

import hmac
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshcore.errors import (
    AuthenticationError,
    DecodeError,
    ProtocolError,
    ReplayError,
    UnknownReceiverIndex,
)
from meshcore.proto.constants import RESUME_MAX_AGE_S
from meshcore.proto.framing import KeyRing, ReceiveKey, SendKey
from meshcore.proto.resume import (
    LABEL_RESUME_MAC,
    RESUME_ACK_BYTES,
    RESUME_BYTES,
    RESUME_MAX_PENDING,
    Resume,
    ResumeAck,
    ResumeClient,
    ResumeClientState,
    ResumeConfirmed,
    ResumedKeys,
    ResumeServer,
    decode_resume_ack_untrusted,
    decode_resume_untrusted,
    resume_id_of,
)
from meshcore.proto.symmetric import hkdf_expand
from meshcore.testing._framing_strategies import NonceLedger, bit_flips

RS = bytes(range(32))
OWNER = "session-1"
LOW_ORDER_POINT = bytes(32)  # the identity point: X25519 with it gives all zeros


def server_with(secret: bytes = RS, now: float = 0.0) -> ResumeServer[str]:
    server: ResumeServer[str] = ResumeServer()
    server.add(OWNER, secret, now)
    return server


def resume_once(
    server: ResumeServer[str], secret: bytes = RS, now: float = 1.0, index: int = 77
) -> tuple[ResumedKeys, ResumeConfirmed[str]]:
    """Run one full resume and return the client's keys and the server's confirmation."""
    client = ResumeClient(secret, index, now)
    client_keys = client.receive_ack(server.receive(client.start(), now))
    confirmed = server.confirm(client_keys.send_key.seal(b"confirm", now), now)
    return client_keys, confirmed


# --- messages -------------------------------------------------------------------------------


def test_message_sizes_are_88_and_76_bytes() -> None:
    server = server_with()
    resume = ResumeClient(RS, 1, 0.0).start()
    ack = server.receive(resume, 0.0)
    assert (len(resume), len(ack)) == (RESUME_BYTES, RESUME_ACK_BYTES) == (88, 76)
    assert resume[:4] == bytes([5, 1, 0, 0])
    assert ack[:4] == bytes([6, 1, 0, 0])


def test_resume_encoding_round_trips() -> None:
    message = Resume(0xFFFFFFFF, bytes(16), b"n" * 16, b"e" * 32, b"m" * 16)
    assert decode_resume_untrusted(message.encode()) == message


def test_resume_ack_encoding_round_trips() -> None:
    message = ResumeAck(1, 2, b"n" * 16, b"e" * 32, b"t" * 16)
    assert decode_resume_ack_untrusted(message.encode()) == message


@pytest.mark.parametrize("offset", [0, 1, 2, 3])
def test_resume_with_bad_type_version_or_reserved_raises_decode_error(offset: int) -> None:
    data = bytearray(ResumeClient(RS, 1, 0.0).start())
    data[offset] ^= 0x40
    with pytest.raises(DecodeError):
        decode_resume_untrusted(bytes(data))


@given(st.binary(max_size=200))
def test_decoders_raise_only_decode_error(data: bytes) -> None:
    for decode in (decode_resume_untrusted, decode_resume_ack_untrusted):
        try:
            decode(data)
        except DecodeError:
            pass


def test_resume_id_is_derived_from_the_secret() -> None:
    assert resume_id_of(RS) != resume_id_of(bytes(32))
    assert ResumeClient(RS, 1, 0.0).start()[8:24] == resume_id_of(RS)


# --- the happy path -------------------------------------------------------------------------


def test_resumed_keys_work_in_both_directions() -> None:
    server = server_with()
    client_keys, confirmed = resume_once(server)
    assert confirmed.owner == OWNER
    assert confirmed.plaintext == b"confirm"
    server_keys = confirmed.keys
    frame = server_keys.send_key.seal(b"from server", 1.0)
    assert client_keys.receive_key.open(frame, 1.0) == b"from server"
    assert server_keys.receive_key.open(client_keys.send_key.seal(b"more", 1.0), 1.0) == b"more"
    assert client_keys.next_resume_secret == server_keys.next_resume_secret
    assert (client_keys.local_index, client_keys.remote_index) == (
        server_keys.remote_index,
        server_keys.local_index,
    )


def test_client_start_returns_identical_bytes_for_retransmission() -> None:
    client = ResumeClient(RS, 1, 0.0)
    assert client.start() == client.start()
    assert client.state is ResumeClientState.AWAITING_ACK


def test_resumed_keys_install_into_a_keyring() -> None:
    server = server_with()
    client_keys, confirmed = resume_once(server)
    a, b = KeyRing(), KeyRing()
    a.install(client_keys.send_key, client_keys.receive_key, 1.0)
    b.install(confirmed.keys.send_key, confirmed.keys.receive_key, 1.0)
    assert b.open(a.seal(b"x", 1.0), 1.0) == b"x"
    assert a.open(b.seal(b"y", 1.0), 1.0) == b"y"


# --- row 11: replay, tampering, path hijack -------------------------------------------------


def test_retransmitted_resume_gets_the_identical_ack() -> None:
    server = server_with()
    resume = ResumeClient(RS, 1, 0.0).start()
    first = server.receive(resume, 0.0)
    assert server.receive(resume, 0.5) == first


def test_ack_is_never_larger_than_resume() -> None:
    server = server_with()
    resume = ResumeClient(RS, 1, 0.0).start()
    assert len(server.receive(resume, 0.0)) <= len(resume)


@given(st.data())
def test_any_bit_flip_in_resume_is_rejected(data: st.DataObject) -> None:
    server = server_with()
    resume = ResumeClient(RS, 1, 0.0).start()
    tampered = data.draw(bit_flips(resume))
    with pytest.raises((DecodeError, AuthenticationError)):
        server.receive(tampered, 0.0)
    assert not server.is_pending(0) and len(server) == 1
    assert len(server.receive(resume, 0.0)) == RESUME_ACK_BYTES


@given(st.data())
def test_any_bit_flip_in_ack_is_rejected_and_genuine_ack_still_accepted(
    data: st.DataObject,
) -> None:
    server = server_with()
    client = ResumeClient(RS, 1, 0.0)
    ack = server.receive(client.start(), 0.0)
    with pytest.raises((DecodeError, AuthenticationError)):
        client.receive_ack(data.draw(bit_flips(ack)))
    assert client.state is ResumeClientState.AWAITING_ACK
    keys = client.receive_ack(ack)
    assert keys.remote_index == decode_resume_ack_untrusted(ack).sender_index


def test_replayer_cannot_confirm_the_resume() -> None:
    server = server_with()
    client = ResumeClient(RS, 1, 0.0)
    resume = client.start()
    ack = server.receive(resume, 0.0)
    assert server.receive(resume, 0.1) == ack  # the replay only gets the cached ACK
    pending_index = decode_resume_ack_untrusted(ack).sender_index
    # Without rs and e_c the replayer can only guess the new key.
    forged = SendKey(os.urandom(32), pending_index, 0.0).seal(b"hijack", 0.1)
    with pytest.raises(AuthenticationError):
        server.confirm(forged, 0.1)
    assert server.is_pending(pending_index)
    keys = client.receive_ack(ack)
    assert server.confirm(keys.send_key.seal(b"", 0.2), 0.2).owner == OWNER


def test_after_confirmation_the_old_resume_is_rejected() -> None:
    server = server_with()
    client = ResumeClient(RS, 1, 0.0)
    resume = client.start()
    ack = server.receive(resume, 0.0)
    server.confirm(client.receive_ack(ack).send_key.seal(b"", 0.0), 0.0)
    with pytest.raises(AuthenticationError):
        server.receive(resume, 0.1)


def test_confirming_frame_cannot_be_replayed_into_the_session() -> None:
    server = server_with()
    client = ResumeClient(RS, 1, 0.0)
    keys = client.receive_ack(server.receive(client.start(), 0.0))
    frame = keys.send_key.seal(b"confirm", 0.0)
    confirmed = server.confirm(frame, 0.0)
    with pytest.raises(ReplayError):
        confirmed.keys.receive_key.open(frame, 0.0)
    with pytest.raises(UnknownReceiverIndex):
        server.confirm(frame, 0.0)


def test_next_secret_resumes_again_with_different_keys() -> None:
    server = server_with()
    first, _ = resume_once(server, RS, 1.0)
    second, confirmed = resume_once(server, first.next_resume_secret, 2.0)
    assert confirmed.owner == OWNER
    assert second.next_resume_secret != first.next_resume_secret
    with pytest.raises(AuthenticationError):
        server.receive(ResumeClient(RS, 1, 3.0).start(), 3.0)


def test_unknown_resume_id_is_rejected() -> None:
    server = server_with()
    with pytest.raises(AuthenticationError):
        server.receive(ResumeClient(bytes(32), 1, 0.0).start(), 0.0)


def test_resume_secret_expires_after_max_age() -> None:
    server = server_with(now=10.0)
    late = ResumeClient(RS, 1, 0.0).start()
    with pytest.raises(AuthenticationError):
        server.receive(late, 10.0 + RESUME_MAX_AGE_S)
    assert len(server) == 0


def test_resume_just_before_max_age_is_answered() -> None:
    server = server_with(now=10.0)
    ack = server.receive(ResumeClient(RS, 1, 0.0).start(), 10.0 + RESUME_MAX_AGE_S - 0.001)
    assert len(ack) == RESUME_ACK_BYTES


def test_expire_drops_old_secrets() -> None:
    server = server_with(now=0.0)
    server.expire(RESUME_MAX_AGE_S - 1)
    assert len(server) == 1
    server.expire(RESUME_MAX_AGE_S)
    assert len(server) == 0


def test_confirm_with_unknown_index_raises() -> None:
    server = server_with()
    with pytest.raises(UnknownReceiverIndex):
        server.confirm(SendKey(bytes(32), 5, 0.0).seal(b"", 0.0), 0.0)


def test_two_attempts_are_both_answered_and_confirming_one_cancels_the_other() -> None:
    server = server_with()
    first, second = ResumeClient(RS, 1, 0.0), ResumeClient(RS, 2, 0.0)
    ack1 = server.receive(first.start(), 0.0)
    ack2 = server.receive(second.start(), 0.0)
    keys1, keys2 = first.receive_ack(ack1), second.receive_ack(ack2)
    server.confirm(keys2.send_key.seal(b"", 0.0), 0.0)
    with pytest.raises(UnknownReceiverIndex):
        server.confirm(keys1.send_key.seal(b"", 0.0), 0.0)


def test_pending_attempts_per_secret_are_bounded() -> None:
    server = server_with()
    acks = [
        server.receive(ResumeClient(RS, i, 0.0).start(), 0.0) for i in range(RESUME_MAX_PENDING + 2)
    ]
    live = [server.is_pending(decode_resume_ack_untrusted(ack).sender_index) for ack in acks]
    assert live == [False, False] + [True] * RESUME_MAX_PENDING


def test_low_order_ephemeral_with_valid_mac_is_rejected() -> None:
    server = server_with()
    unsigned = Resume(1, resume_id_of(RS), bytes(16), LOW_ORDER_POINT, bytes(16)).encode()[:72]
    mac_key = hkdf_expand(RS, LABEL_RESUME_MAC, 32)
    resume = unsigned + hmac.digest(mac_key, unsigned, "sha256")[:16]
    with pytest.raises(AuthenticationError):
        server.receive(resume, 0.0)


def test_ack_for_another_client_index_is_rejected() -> None:
    server = server_with()
    client = ResumeClient(RS, 1, 0.0)
    other = ResumeClient(RS, 2, 0.0)
    client.start()
    with pytest.raises(AuthenticationError):
        client.receive_ack(server.receive(other.start(), 0.0))


def test_keys_are_handed_out_only_once() -> None:
    server = server_with()
    client = ResumeClient(RS, 1, 0.0)
    ack = server.receive(client.start(), 0.0)
    client.receive_ack(ack)
    with pytest.raises(ReplayError):
        client.receive_ack(ack)


def test_ack_before_start_is_unexpected() -> None:
    server = server_with()
    ack = server.receive(ResumeClient(RS, 1, 0.0).start(), 0.0)
    with pytest.raises(ProtocolError):
        ResumeClient(RS, 1, 0.0).receive_ack(ack)


def test_add_replaces_the_owners_previous_secret() -> None:
    server = server_with()
    server.add(OWNER, bytes(32), 0.0)
    assert len(server) == 1
    with pytest.raises(AuthenticationError):
        server.receive(ResumeClient(RS, 1, 0.0).start(), 0.0)


def test_remove_forgets_the_secret() -> None:
    server = server_with()
    server.remove(OWNER)
    with pytest.raises(AuthenticationError):
        server.receive(ResumeClient(RS, 1, 0.0).start(), 0.0)


def test_resumed_keys_are_created_at_ack_time() -> None:
    server = server_with()
    client = ResumeClient(RS, 1, 5.0)
    keys = client.receive_ack(server.receive(client.start(), 6.0), 7.0)
    assert keys.send_key.created_at == keys.created_at == 7.0


def test_reprs_never_show_secrets() -> None:
    server = server_with()
    client_keys, confirmed = resume_once(server)
    for text in (repr(server), repr(client_keys), repr(confirmed), repr(ResumeClient(RS, 1, 0))):
        assert RS.hex() not in text
        assert client_keys.next_resume_secret.hex() not in text
        assert repr(client_keys.next_resume_secret) not in text


# --- row 13: amplification from unvalidated sources -----------------------------------------


@given(st.binary(max_size=200))
def test_server_never_answers_more_bytes_than_it_received(data: bytes) -> None:
    server = server_with()
    try:
        out = server.receive(data, 0.0)
    except ProtocolError:
        out = b""
    assert len(out) <= len(data)
    try:
        server.confirm(data, 0.0)
    except ProtocolError:
        pass
    assert len(server) == 1


@given(st.binary(min_size=RESUME_BYTES, max_size=RESUME_BYTES))
def test_well_formed_random_resume_is_rejected_without_an_answer(body: bytes) -> None:
    server = server_with()
    data = bytes([5, 1, 0, 0]) + body[4:]
    with pytest.raises(AuthenticationError):
        server.receive(data, 0.0)


@given(st.binary(max_size=200))
def test_client_accepts_no_junk_ack(data: bytes) -> None:
    server = server_with()
    client = ResumeClient(RS, 1, 0.0)
    ack = server.receive(client.start(), 0.0)
    if data != ack:
        with pytest.raises(ProtocolError):
            client.receive_ack(data)


# --- row 9: no (key, nonce) pair repeats; a restart forces a full handshake -----------------


def test_no_key_nonce_pair_repeats_across_seal_resume_seal_resume_seal() -> None:
    with NonceLedger() as ledger:
        k_ab, k_ba = os.urandom(32), os.urandom(32)
        a = (SendKey(k_ab, 2, 0.0), ReceiveKey(k_ba, 1, 0.0))
        b = (SendKey(k_ba, 1, 0.0), ReceiveKey(k_ab, 2, 0.0))
        server, secret = server_with(RS), RS
        for round_ in range(4):
            now = float(round_)
            for i in range(20):
                b[1].open(a[0].seal(bytes([i]), now), now)
                a[1].open(b[0].seal(bytes([i]), now), now)
            client = ResumeClient(secret, 10 + round_, now)
            keys = client.receive_ack(server.receive(client.start(), now))
            confirmed = server.confirm(keys.send_key.seal(b"", now), now)
            a = (keys.send_key, keys.receive_key)
            b = (confirmed.keys.send_key, confirmed.keys.receive_key)
            secret = keys.next_resume_secret
    assert ledger.count >= 4 * 40
    assert ledger.repeats == []


def test_restarted_server_forgets_resumption_and_forces_full_handshake() -> None:
    server = server_with()
    client = ResumeClient(RS, 1, 0.0)
    resume = client.start()
    server.receive(resume, 0.0)
    restarted: ResumeServer[str] = ResumeServer()  # secrets are never persisted
    with pytest.raises(AuthenticationError):
        restarted.receive(resume, 1.0)


def test_resumes_never_extend_the_deadline_of_the_full_handshake() -> None:
    # The ratchet keeps the first secret's deadline: a full (post-quantum) handshake is
    # needed RESUME_MAX_AGE_S after the last one, however often the session resumed.
    server = server_with(now=0.0)
    keys, _ = resume_once(server, RS, now=RESUME_MAX_AGE_S - 10)
    with pytest.raises(AuthenticationError):
        resume_once(server, keys.next_resume_secret, now=RESUME_MAX_AGE_S)
