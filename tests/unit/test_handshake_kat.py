"""Known-answer tests: pinned labels and one full handshake transcript (tests/data/).

The handshake runs with fixed static keys, deterministic X25519 ephemerals and randomness,
and ML-KEM values replayed from a recording (pqcrypto takes no seed). Any change to the
message layouts, the order of MixHash/MixKey, a label or the key schedule changes the bytes
and fails here: a compatibility break must be deliberate.

Regenerate (only for an intended, versioned protocol change):
    .venv/bin/python tests/unit/test_handshake_kat.py --regenerate
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from meshcore.proto.handshake import HandshakeResult, Initiator, Responder
from meshcore.proto.identity import Identity
from meshcore.proto.primitives import DEFAULT_PRIMITIVES, KeyPair, Primitives
from meshcore.testing._handshake_strategies import PROTOCOL_LABELS

DATA = Path(__file__).resolve().parent.parent / "data" / "handshake_kat.json"

LABELS = PROTOCOL_LABELS


class Drbg:
    """A deterministic byte stream (SHAKE-256 of a seed), standing in for os.urandom."""

    def __init__(self, seed: bytes) -> None:
        self._seed, self._pos = seed, 0

    def __call__(self, n: int) -> bytes:
        out = hashlib.shake_256(self._seed).digest(self._pos + n)[self._pos :]
        self._pos += n
        return out


class ReplayPrimitives(Primitives):
    """X25519 ephemerals from a DRBG; ML-KEM keygen/encaps replayed from a recording.

    Decapsulation is deterministic and runs for real, so the recording is checked too.
    `record=True` runs the real ML-KEM and fills the recording instead.
    """

    def __init__(self, seed: bytes, recording: dict[str, list[Any]], *, record: bool = False):
        self._drbg = Drbg(seed)
        self._rec, self._record = recording, record
        self._next = {"kem_keypair": 0, "kem_encaps": 0}

    def x25519_keypair(self) -> KeyPair:
        secret = self._drbg(32)
        return KeyPair(public=self.x25519_public(secret), secret=secret)

    def _take(self, kind: str) -> Any:
        i = self._next[kind]
        self._next[kind] += 1
        return self._rec[kind][i]

    def kem_keypair(self) -> KeyPair:
        if self._record:
            pair = super().kem_keypair()
            self._rec["kem_keypair"].append([pair.public.hex(), pair.secret.hex()])
            return pair
        public, secret = self._take("kem_keypair")
        return KeyPair(public=bytes.fromhex(public), secret=bytes.fromhex(secret))

    def kem_encaps(self, public: bytes) -> tuple[bytes, bytes]:
        if self._record:
            ct, ss = super().kem_encaps(public)
            self._rec["kem_encaps"].append([public.hex(), ct.hex(), ss.hex()])
            return ct, ss
        expected_public, ct, ss = self._take("kem_encaps")
        # The protocol must encapsulate to the same key, in the same order, as recorded.
        assert public.hex() == expected_public, "encapsulation to a different key than recorded"
        return bytes.fromhex(ct), bytes.fromhex(ss)


def _static(name: bytes, recording: dict[str, Any], record: bool) -> Identity:
    if record:
        kem = DEFAULT_PRIMITIVES.kem_keypair()
        recording.setdefault("static", {})[name.decode()] = kem.secret.hex()
    kem_secret = bytes.fromhex(recording["static"][name.decode()])
    return Identity.from_secrets(hashlib.sha256(b"kat static x25519 " + name).digest(), kem_secret)


def run_transcript(recording: dict[str, Any], *, record: bool = False) -> dict[str, Any]:
    """One full handshake with everything fixed; returns what the KAT pins."""
    alice = _static(b"alice", recording, record)
    bob = _static(b"bob", recording, record)
    i_rec = recording.setdefault("initiator", {"kem_keypair": [], "kem_encaps": []})
    r_rec = recording.setdefault("responder", {"kem_keypair": [], "kem_encaps": []})
    init = Initiator(
        alice,
        bob.public,
        network_id=b"kat-net",
        primitives=ReplayPrimitives(b"kat initiator", i_rec, record=record),
        random=Drbg(b"kat initiator random"),
    )
    resp = Responder(
        bob,
        {alice.peer_id: alice.public}.get,
        network_id=b"kat-net",
        primitives=ReplayPrimitives(b"kat responder", r_rec, record=record),
        random=Drbg(b"kat responder random"),
    )
    msg1 = init.start(1000.0)
    msg2 = resp.respond(msg1, 1000.25)
    msg3, mine = init.receive_response(msg2, 1000.5, b"kat payload")
    theirs = resp.confirm(msg3, 1000.75)
    assert mine.send_key == theirs.receive_key and mine.receive_key == theirs.send_key
    return {
        "alice_peer_id": str(alice.peer_id),
        "bob_peer_id": str(bob.peer_id),
        "msg1": msg1.hex(),
        "msg2": msg2.hex(),
        "msg3": msg3.hex(),
        "initiator": _pinned(mine),
        "responder": _pinned(theirs),
    }


def _pinned(result: HandshakeResult) -> dict[str, Any]:
    return {
        "local_index": result.local_index,
        "remote_index": result.remote_index,
        "send_key": result.send_key.hex(),
        "receive_key": result.receive_key.hex(),
        "resume_secret": result.resume_secret.hex(),
        "transcript_hash": result.transcript_hash.hex(),
        "exporter": result.exporter(b"kat", b"context", 32).hex(),
        "sas": result.sas(),
        "payload": result.payload.hex(),
    }


@pytest.fixture(scope="module")
def kat() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DATA.read_text())
    return data


def test_labels_are_pinned(kat: dict[str, Any]) -> None:
    assert {k: v.decode() for k, v in LABELS.items()} == kat["labels"]


def test_full_handshake_transcript_matches_the_recording(kat: dict[str, Any]) -> None:
    recording = {k: kat[k] for k in ("static", "initiator", "responder")}
    assert run_transcript(recording) == kat["expected"]


@pytest.mark.parametrize("name", ["msg1", "msg2", "msg3"])
def test_each_message_matches_byte_for_byte(kat: dict[str, Any], name: str) -> None:
    # The same check as above, reported per message, so a failure says where bytes changed.
    recording = {k: kat[k] for k in ("static", "initiator", "responder")}
    assert run_transcript(recording)[name] == kat["expected"][name]


def _regenerate() -> None:
    recording: dict[str, Any] = {}
    expected = run_transcript(recording, record=True)
    data = {
        "about": "meshcore/1 handshake known-answer test; see tests/unit/test_handshake_kat.py",
        "labels": {k: v.decode() for k, v in LABELS.items()},
        "expected": expected,
        **recording,
    }
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {DATA}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--regenerate"]:
        raise SystemExit(__doc__)
    _regenerate()
