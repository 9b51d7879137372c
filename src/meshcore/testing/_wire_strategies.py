"""Hypothesis strategies for meshcore's wire formats: endpoints, relay control messages, frame
plaintexts, and near-valid byte strings for fuzzing decoders.

Every strategy yields only valid values (they construct and encode without error), so a
round-trip property can be stated over any of them; `mutated_encodings` then breaks them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

from hypothesis import strategies as st

from meshcore.proto import inner, wire
from meshcore.proto.constants import (
    MAX_CANDIDATES,
    MAX_FRAME_BYTES,
    MAX_REASON_BYTES,
    MAX_REKEY_FRAGMENTS,
    MLKEM768_CT_BYTES,
    MLKEM768_PK_BYTES,
    PATH_CHALLENGE_BYTES,
    PEER_ID_BYTES,
    REKEY_FRAGMENT_BYTES,
    RELAY_AUTH_MAC_BYTES,
    RELAY_NONCE_BYTES,
    X25519_KEY_BYTES,
)
from meshcore.proto.endpoint import Endpoint

__all__ = [
    "accepts",
    "acks",
    "auths",
    "candidate_tuples",
    "challenges",
    "circuit_closes",
    "circuit_credits",
    "circuit_opens",
    "circuit_windows",
    "close_messages",
    "connects",
    "control_messages",
    "data_frames",
    "endpoints",
    "endpoints_frames",
    "error_codes",
    "error_messages",
    "fixed_bytes",
    "hellos",
    "inner_closes",
    "inner_eofs",
    "inner_messages",
    "invites",
    "keepalives",
    "mutated_encodings",
    "observe_addresses",
    "observed_addresses",
    "paireds",
    "path_challenges",
    "path_responses",
    "pings",
    "pongs",
    "reasons",
    "registereds",
    "rejects",
    "rekey_fragments",
    "relay_challenges",
    "relay_identities",
    "relay_proofs",
    "relayeds",
]

T = TypeVar("T")

_U32 = st.integers(0, 2**32 - 1)
_U64 = st.integers(0, 2**64 - 1)


# --- building blocks -----------------------------------------------------------------------


def fixed_bytes(size: int) -> st.SearchStrategy[bytes]:
    """Byte strings of exactly `size` bytes (keys, ids, nonces, MACs)."""
    return st.binary(min_size=size, max_size=size)


def endpoints(family: Literal[4, 6] | None = None) -> st.SearchStrategy[Endpoint]:
    """Endpoints of the given family (default: both). IPv4-mapped IPv6 addresses come out
    as IPv4 endpoints, as the Endpoint class canonicalises them."""
    ports = st.integers(1, 0xFFFF)
    ips = st.ip_addresses() if family is None else st.ip_addresses(v=family)
    return st.builds(Endpoint, ips.map(str), ports)


def candidate_tuples(max_size: int = MAX_CANDIDATES) -> st.SearchStrategy[tuple[Endpoint, ...]]:
    """Tuples of up to `max_size` (at most MAX_CANDIDATES) endpoints, duplicates allowed."""
    return st.lists(endpoints(), max_size=min(max_size, MAX_CANDIDATES)).map(tuple)


def error_codes() -> st.SearchStrategy[wire.ErrorCode]:
    """Any defined ErrorCode."""
    return st.sampled_from(wire.ErrorCode)


def reasons() -> st.SearchStrategy[str]:
    """Valid reasons: printable text of at most MAX_REASON_BYTES of UTF-8 (often at the limit)."""
    return st.one_of(
        st.text(max_size=40),
        st.text(min_size=MAX_REASON_BYTES // 4, max_size=MAX_REASON_BYTES + 20),
    ).map(wire.clip_reason)


# --- relay control messages ----------------------------------------------------------------

_X25519 = fixed_bytes(X25519_KEY_BYTES)
_KEM_PK = fixed_bytes(MLKEM768_PK_BYTES)
_PEER_ID = fixed_bytes(PEER_ID_BYTES)


def hellos() -> st.SearchStrategy[wire.Hello]:
    """Hello messages."""
    return st.builds(wire.Hello, _X25519, _KEM_PK, candidate_tuples())


def challenges() -> st.SearchStrategy[wire.Challenge]:
    """Challenge messages."""
    return st.builds(
        wire.Challenge,
        fixed_bytes(RELAY_NONCE_BYTES),
        _X25519,
        fixed_bytes(MLKEM768_CT_BYTES),
    )


def auths() -> st.SearchStrategy[wire.Auth]:
    """Auth messages."""
    return st.builds(wire.Auth, fixed_bytes(RELAY_AUTH_MAC_BYTES))


def registereds() -> st.SearchStrategy[wire.Registered]:
    """Registered messages."""
    return st.builds(wire.Registered, _PEER_ID, endpoints())


def connects() -> st.SearchStrategy[wire.Connect]:
    """Connect messages."""
    return st.builds(wire.Connect, _U32, _PEER_ID)


def invites() -> st.SearchStrategy[wire.Invite]:
    """Invite messages."""
    return st.builds(wire.Invite, _U32, _PEER_ID, _X25519, _KEM_PK, endpoints(), candidate_tuples())


def accepts() -> st.SearchStrategy[wire.Accept]:
    """Accept messages."""
    return st.builds(wire.Accept, _U32)


def rejects() -> st.SearchStrategy[wire.Reject]:
    """Reject messages."""
    return st.builds(wire.Reject, _U32, error_codes(), reasons())


def paireds() -> st.SearchStrategy[wire.Paired]:
    """Paired messages."""
    return st.builds(
        wire.Paired,
        _U32,
        _U64,
        st.sampled_from(wire.Role),
        _PEER_ID,
        _X25519,
        _KEM_PK,
        endpoints(),
        candidate_tuples(),
    )


def circuit_opens() -> st.SearchStrategy[wire.CircuitOpen]:
    """CircuitOpen messages (circuit id 0 included: "please assign")."""
    return st.builds(wire.CircuitOpen, st.one_of(st.just(0), _U64), _PEER_ID)


def circuit_closes() -> st.SearchStrategy[wire.CircuitClose]:
    """CircuitClose messages."""
    return st.builds(wire.CircuitClose, _U64, error_codes(), reasons())


def relayeds(max_payload: int = 2048) -> st.SearchStrategy[wire.Relayed]:
    """Relayed messages with payloads up to `max_payload` bytes (at most MAX_FRAME_BYTES;
    the small default keeps examples cheap -- test the limit itself with explicit sizes)."""
    return st.builds(wire.Relayed, _U64, st.binary(max_size=min(max_payload, MAX_FRAME_BYTES)))


def pings() -> st.SearchStrategy[wire.Ping]:
    """Ping messages."""
    return st.builds(wire.Ping, _U64)


def pongs() -> st.SearchStrategy[wire.Pong]:
    """Pong messages."""
    return st.builds(wire.Pong, _U64)


def observe_addresses() -> st.SearchStrategy[wire.ObserveAddress]:
    """ObserveAddress messages (netcheck's question)."""
    return st.builds(wire.ObserveAddress, _U64)


def observed_addresses() -> st.SearchStrategy[wire.ObservedAddress]:
    """ObservedAddress messages (the relay's answer)."""
    return st.builds(wire.ObservedAddress, _U64, endpoints())


def circuit_udps() -> st.SearchStrategy[wire.CircuitUdp]:
    """CircuitUdp messages (a circuit side's token for the relay's UDP port)."""
    return st.builds(
        wire.CircuitUdp, _U64, st.binary(min_size=16, max_size=16), st.integers(0, 0xFFFF)
    )


def circuit_credits() -> st.SearchStrategy[wire.CircuitCredit]:
    """CircuitCredit messages (the relay's grants)."""
    return st.builds(wire.CircuitCredit, _U64, _U32)


def circuit_windows() -> st.SearchStrategy[wire.CircuitWindow]:
    """CircuitWindow messages (a credited circuit's window cap)."""
    return st.builds(wire.CircuitWindow, _U64, _U32)


def error_messages() -> st.SearchStrategy[wire.Error]:
    """Error messages (wire.Error)."""
    return st.builds(wire.Error, error_codes(), reasons())


def close_messages() -> st.SearchStrategy[wire.Close]:
    """Close messages (wire.Close)."""
    return st.builds(wire.Close, error_codes(), reasons())


def relay_identities() -> st.SearchStrategy[wire.RelayIdentity]:
    """RelayIdentity messages."""
    return st.builds(wire.RelayIdentity, _X25519, _KEM_PK)


def relay_challenges() -> st.SearchStrategy[wire.RelayChallenge]:
    """RelayChallenge messages."""
    return st.builds(
        wire.RelayChallenge,
        fixed_bytes(RELAY_NONCE_BYTES),
        _X25519,
        fixed_bytes(MLKEM768_CT_BYTES),
    )


def relay_proofs() -> st.SearchStrategy[wire.RelayProof]:
    """RelayProof messages."""
    return st.builds(wire.RelayProof, fixed_bytes(RELAY_AUTH_MAC_BYTES))


def control_messages() -> st.SearchStrategy[wire.ControlMessage]:
    """Any relay control message."""
    return st.one_of(
        hellos(),
        challenges(),
        auths(),
        registereds(),
        connects(),
        invites(),
        accepts(),
        rejects(),
        paireds(),
        circuit_opens(),
        circuit_closes(),
        relayeds(),
        pings(),
        pongs(),
        error_messages(),
        close_messages(),
        relay_identities(),
        relay_challenges(),
        relay_proofs(),
        observe_addresses(),
        observed_addresses(),
        circuit_credits(),
        circuit_windows(),
    )


# --- frame plaintexts (inner messages) -----------------------------------------------------


def data_frames(max_payload: int = 2048) -> st.SearchStrategy[inner.Data]:
    """inner.Data with payloads up to `max_payload` bytes (small by default, as relayeds)."""
    return st.builds(inner.Data, _U64, _U64, st.binary(max_size=max_payload))


def keepalives() -> st.SearchStrategy[inner.Keepalive]:
    """inner.Keepalive."""
    return st.just(inner.Keepalive())


def acks() -> st.SearchStrategy[inner.Ack]:
    """inner.Ack."""
    return st.builds(inner.Ack, _U64)


def path_challenges() -> st.SearchStrategy[inner.PathChallenge]:
    """inner.PathChallenge."""
    return st.builds(inner.PathChallenge, fixed_bytes(PATH_CHALLENGE_BYTES))


def path_responses() -> st.SearchStrategy[inner.PathResponse]:
    """inner.PathResponse."""
    return st.builds(inner.PathResponse, fixed_bytes(PATH_CHALLENGE_BYTES))


def endpoints_frames() -> st.SearchStrategy[inner.Endpoints]:
    """inner.Endpoints."""
    return st.builds(inner.Endpoints, candidate_tuples())


@st.composite
def rekey_fragments(draw: st.DrawFn) -> inner.RekeyFragment:
    """inner.RekeyFragment with index < count <= MAX_REKEY_FRAGMENTS."""
    count = draw(st.integers(1, MAX_REKEY_FRAGMENTS))
    return inner.RekeyFragment(
        draw(_U32),
        draw(st.integers(0, count - 1)),
        count,
        draw(st.binary(max_size=REKEY_FRAGMENT_BYTES)),
    )


def inner_closes() -> st.SearchStrategy[inner.Close]:
    """inner.Close."""
    return st.builds(inner.Close, st.integers(0, 0xFFFF), reasons())


def inner_eofs() -> st.SearchStrategy[inner.Eof]:
    """inner.Eof."""
    return st.builds(inner.Eof, _U64, _U64)


def inner_messages() -> st.SearchStrategy[inner.InnerMessage]:
    """Any frame plaintext message."""
    return st.one_of(
        data_frames(),
        keepalives(),
        acks(),
        path_challenges(),
        path_responses(),
        endpoints_frames(),
        rekey_fragments(),
        inner_closes(),
        inner_eofs(),
    )


# --- fuzzing ---------------------------------------------------------------------------------

_INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 0x10000, 0xFFFFFFFF)


def _position(draw: st.DrawFn, size: int) -> int:
    """A byte position, spread over the header, the tail and everything between (hypothesis
    alone favours small integers, which would mostly hit the version byte)."""
    last = max(size - 1, 0)
    where = draw(st.sampled_from(("head", "tail", "anywhere")))
    if where == "head":
        return draw(st.integers(0, min(last, 16)))
    if where == "tail":
        return last - draw(st.integers(0, min(last, 64)))
    return draw(st.integers(0, last))


@st.composite
def _mutate(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    kind = draw(
        st.sampled_from(("flip", "truncate", "extend", "length", "insert", "delete", "byte"))
    )
    pos = _position(draw, len(buf))
    if kind == "flip" and buf:
        buf[pos] ^= 1 << draw(st.integers(0, 7))
    elif kind == "truncate":
        del buf[pos:]
    elif kind == "extend":
        buf += draw(st.binary(min_size=1, max_size=64))
    elif kind == "length":
        # Overwrite 1, 2 or 4 bytes with a boundary value: hits length prefixes and counts
        # wherever they are, without knowing the layout.
        width = draw(st.sampled_from((1, 2, 4)))
        value = draw(st.sampled_from((*_INTERESTING, len(buf), len(buf) - pos)))
        raw = (value % (1 << (8 * width))).to_bytes(width, "big")
        buf[pos : pos + width] = raw
    elif kind == "insert":
        buf[pos:pos] = draw(st.binary(min_size=1, max_size=16))
    elif kind == "delete" and buf:
        del buf[pos : pos + draw(st.integers(1, 16))]
    elif buf:
        buf[pos] = draw(st.integers(0, 255))
    return bytes(buf)


@st.composite
def mutated_encodings(
    draw: st.DrawFn, values: st.SearchStrategy[T], encoder: Callable[[T], bytes]
) -> bytes:
    """Near-valid byte strings: the encoding of a drawn value with one to three mutations (bit
    flips, truncation, extension, length-field corruption, byte insertion or deletion).

    The result may still be a valid encoding (e.g. a flipped payload bit): fuzz tests should
    assert that decoders either return a message or raise DecodeError, nothing else.
    """
    data = encoder(draw(values))
    for _ in range(draw(st.integers(1, 3))):
        data = draw(_mutate(data))
    return data
