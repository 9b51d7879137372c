"""Public hypothesis strategies for every meshcore wire type, for fuzzing meshcore and the
programs built on it.

Valid values: one strategy per message (`hellos()`, `relayeds()`, `data_frames()`,
`handshake_inits()`, ...), `control_messages()`, `inner_messages()` and
`handshake_messages()` for any of a family. Near-valid inputs: `mutated_encodings(values,
encoder)` and `mutated_handshake_encodings(...)` flip bits, truncate, extend and corrupt
length fields of real encodings. A decoder of meshcore must turn every such input into a
value or a `meshcore.DecodeError`, and nothing else.

Once meshcore is installed, `st.from_type(meshcore.proto.wire.Hello)` (and every other
message class) works too: meshcore registers these strategies through hypothesis's entry
point.
"""

from __future__ import annotations

from hypothesis import strategies as st

from meshcore.proto import framing, inner, resume, wire
from meshcore.proto import handshake as _handshake
from meshcore.proto.constants import MAC_BYTES
from meshcore.testing._framing_strategies import (
    NonceLedger,
    ReferenceReplayWindow,
    bit_flips,
    counter_sequences,
    frame_keys,
    key_event_schedules,
    payloads,
    receiver_indices,
)
from meshcore.testing._handshake_strategies import (
    LOW_ORDER_X25519_POINTS,
    PROTOCOL_LABELS,
    handshake_confirms,
    handshake_inits,
    handshake_messages,
    handshake_responses,
    low_order_x25519_points,
    mac1_offset,
    mutated_handshake_encodings,
    non_canonical_mlkem_public_keys,
    with_mac1,
)
from meshcore.testing._wire_strategies import (
    accepts,
    acks,
    auths,
    candidate_tuples,
    challenges,
    circuit_closes,
    circuit_credits,
    circuit_opens,
    circuit_windows,
    close_messages,
    connects,
    control_messages,
    data_frames,
    endpoints,
    endpoints_frames,
    error_codes,
    error_messages,
    fixed_bytes,
    hellos,
    inner_closes,
    inner_eofs,
    inner_messages,
    invites,
    keepalives,
    mutated_encodings,
    observe_addresses,
    observed_addresses,
    paireds,
    path_challenges,
    path_responses,
    pings,
    pongs,
    reasons,
    registereds,
    rejects,
    rekey_fragments,
    relay_challenges,
    relay_identities,
    relay_proofs,
    relayeds,
)

__all__ = [
    "LOW_ORDER_X25519_POINTS",
    "PROTOCOL_LABELS",
    "NonceLedger",
    "ReferenceReplayWindow",
    "accepts",
    "acks",
    "auths",
    "bit_flips",
    "candidate_tuples",
    "challenges",
    "circuit_closes",
    "circuit_credits",
    "circuit_opens",
    "circuit_windows",
    "close_messages",
    "connects",
    "control_messages",
    "counter_sequences",
    "data_frames",
    "endpoints",
    "endpoints_frames",
    "error_codes",
    "error_messages",
    "fixed_bytes",
    "frame_headers",
    "frame_keys",
    "handshake_confirms",
    "handshake_inits",
    "handshake_messages",
    "handshake_responses",
    "hellos",
    "inner_closes",
    "inner_eofs",
    "inner_messages",
    "invites",
    "keepalives",
    "key_event_schedules",
    "low_order_x25519_points",
    "mac1_offset",
    "mutated_encodings",
    "mutated_handshake_encodings",
    "non_canonical_mlkem_public_keys",
    "observe_addresses",
    "observed_addresses",
    "paireds",
    "path_challenges",
    "path_responses",
    "payloads",
    "pings",
    "pongs",
    "reasons",
    "receiver_indices",
    "register_type_strategies",
    "registereds",
    "rejects",
    "rekey_fragments",
    "relay_challenges",
    "relay_identities",
    "relay_proofs",
    "relayeds",
    "resume_acks",
    "resumes",
    "with_mac1",
]


_U32 = st.integers(0, 2**32 - 1)


def resumes() -> st.SearchStrategy[resume.Resume]:
    """Valid RESUME messages (any indices, ids, nonces, ephemerals and MACs)."""
    return st.builds(
        resume.Resume,
        sender_index=_U32,
        resume_id=fixed_bytes(resume.RESUME_ID_BYTES),
        client_nonce=fixed_bytes(resume.NONCE_BYTES),
        ephemeral=fixed_bytes(32),
        mac=fixed_bytes(MAC_BYTES),
    )


def resume_acks() -> st.SearchStrategy[resume.ResumeAck]:
    """Valid RESUME_ACK messages."""
    return st.builds(
        resume.ResumeAck,
        sender_index=_U32,
        receiver_index=_U32,
        server_nonce=fixed_bytes(resume.NONCE_BYTES),
        ephemeral=fixed_bytes(32),
        confirmation=fixed_bytes(16),
    )


def frame_headers() -> st.SearchStrategy[framing.FrameHeader]:
    """Valid 16-byte transport frame headers (the AEAD's associated data)."""
    return st.builds(framing.FrameHeader, receiver_index=_U32, counter=st.integers(0, 2**64 - 1))


def register_type_strategies() -> None:
    """Make `st.from_type(cls)` produce valid values for every meshcore message class."""
    pairs: list[tuple[type, st.SearchStrategy[object]]] = [
        (wire.Hello, hellos()),
        (wire.Challenge, challenges()),
        (wire.Auth, auths()),
        (wire.Registered, registereds()),
        (wire.Connect, connects()),
        (wire.Invite, invites()),
        (wire.Accept, accepts()),
        (wire.Reject, rejects()),
        (wire.Paired, paireds()),
        (wire.CircuitOpen, circuit_opens()),
        (wire.CircuitClose, circuit_closes()),
        (wire.Relayed, relayeds()),
        (wire.Ping, pings()),
        (wire.Pong, pongs()),
        (wire.Error, error_messages()),
        (wire.Close, close_messages()),
        (wire.RelayIdentity, relay_identities()),
        (wire.RelayChallenge, relay_challenges()),
        (wire.RelayProof, relay_proofs()),
        (wire.ObserveAddress, observe_addresses()),
        (wire.ObservedAddress, observed_addresses()),
        (wire.CircuitCredit, circuit_credits()),
        (wire.CircuitWindow, circuit_windows()),
        (inner.Data, data_frames()),
        (inner.Keepalive, keepalives()),
        (inner.Ack, acks()),
        (inner.PathChallenge, path_challenges()),
        (inner.PathResponse, path_responses()),
        (inner.Endpoints, endpoints_frames()),
        (inner.RekeyFragment, rekey_fragments()),
        (inner.Close, inner_closes()),
        (inner.Eof, inner_eofs()),
        (_handshake.HandshakeInit, handshake_inits()),
        (_handshake.HandshakeResponse, handshake_responses()),
        (_handshake.HandshakeConfirm, handshake_confirms()),
        (resume.Resume, resumes()),
        (resume.ResumeAck, resume_acks()),
        (framing.FrameHeader, frame_headers()),
    ]
    for cls, strategy in pairs:
        st.register_type_strategy(cls, strategy)
