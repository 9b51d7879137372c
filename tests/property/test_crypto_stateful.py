"""Handshake + frames + rekey + resume against an adversarial relay (docs/crypto-spec.md rows 9 and
14).

Two peers, A (the original initiator) and B, talk through a relay that may drop, duplicate,
reorder, tamper with, inject and misroute frames, while time passes, keys are rekeyed by full
handshakes, sessions are resumed, and either side may crash and restart. Whatever happens:
every payload a peer accepts was sent by the other peer, is accepted at most once and
unmodified, and no (key, nonce) pair is ever used twice to seal a frame.
"""

from __future__ import annotations

import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from meshcore.errors import (
    AuthenticationError,
    DecodeError,
    KeyExpired,
    ProtocolError,
    UnknownReceiverIndex,
)
from meshcore.proto.framing import FrameHeader, KeyRing
from meshcore.proto.handshake import Initiator, Responder
from meshcore.proto.identity import Identity
from meshcore.proto.inner import RekeyFragment, decode_inner_untrusted, encode_inner
from meshcore.proto.rekey import RekeyInitiator, RekeyOutput, RekeyResponder, install_result
from meshcore.proto.resume import ResumeClient, ResumeServer
from meshcore.testing._framing_strategies import NonceLedger

ALICE, BOB = Identity.generate(), Identity.generate()
TRUSTED = {ALICE.peer_id: ALICE.public, BOB.peer_id: BOB.public}
SIDES = st.sampled_from(["A", "B"])
PICKS = st.integers(0, 1 << 16)
OWNER = "A<->B"


class AdversarialRelay(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.ledger = NonceLedger().__enter__()
        self.now = 0.0
        self.ring = {"A": KeyRing(), "B": KeyRing()}
        self.in_flight: list[tuple[str, bytes]] = []  # (side it is addressed to, frame)
        self.sent: dict[str, set[bytes]] = {"A": set(), "B": set()}
        self.accepted: dict[str, set[bytes]] = {"A": set(), "B": set()}
        self.serial = itertools.count()
        self.responder = Responder(BOB, TRUSTED.get)
        self.server: ResumeServer[str] = ResumeServer()
        self.resume_secret: bytes | None = None  # A's copy; never persisted
        self.full_handshake()

    def teardown(self) -> None:
        self.ledger.__exit__(None, None, None)

    # --- helpers -----------------------------------------------------------------------------

    def full_handshake(self) -> None:
        initiator = Initiator(ALICE, BOB.public)
        msg2 = self.responder.respond(initiator.start(self.now), self.now)
        msg3, a_result = initiator.receive_response(msg2, self.now)
        b_result = self.responder.confirm(msg3, self.now)
        install_result(self.ring["A"], a_result, self.now)
        install_result(self.ring["B"], b_result, self.now)
        self.resume_secret = a_result.resume_secret
        self.server.add(OWNER, b_result.resume_secret, self.now)

    def carry(self, sender: str, out: RekeyOutput) -> list[RekeyFragment]:
        receiver = "B" if sender == "A" else "A"
        fragments = []
        for fragment in out.fragments:
            frame = self.ring[sender].seal(encode_inner(fragment), self.now)
            message = decode_inner_untrusted(self.ring[receiver].open(frame, self.now))
            assert isinstance(message, RekeyFragment)
            fragments.append(message)
        return fragments

    def deliver_to(self, side: str, frame: bytes) -> None:
        try:
            payload = self.ring[side].open(frame, self.now)
        except (ProtocolError, KeyExpired):
            return
        peer = "B" if side == "A" else "A"
        assert payload in self.sent[peer], "accepted a payload the peer never sent"
        assert payload not in self.accepted[side], "accepted a payload twice"
        self.accepted[side].add(payload)

    def both_usable(self) -> bool:
        return not (self.ring["A"].expired(self.now) or self.ring["B"].expired(self.now))

    # --- peers -------------------------------------------------------------------------------

    @rule(side=SIDES, sizes=st.lists(st.integers(0, 64), min_size=1, max_size=4))
    def send(self, side: str, sizes: list[int]) -> None:
        for size in sizes:
            payload = f"{side}{next(self.serial)}:".encode() + bytes(size)
            try:
                frame = self.ring[side].seal(payload, self.now)
            except KeyExpired:
                assert self.ring[side].expired(self.now)
                return
            self.sent[side].add(payload)
            self.in_flight.append(("B" if side == "A" else "A", frame))

    @rule(seconds=st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0, 4.99, 5.0, 30.0, 100.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def rekey(self) -> None:
        if not self.both_usable():
            self.full_handshake()
            return
        machine = RekeyInitiator(ALICE, BOB.public)
        other = RekeyResponder(self.responder, ALICE.peer_id)
        msg1 = self.carry("A", machine.start(self.now))
        msg2 = self.carry("B", [other.receive(f, self.now) for f in msg1][-1])
        final = [machine.receive(f, self.now) for f in msg2][-1]
        assert final.result is not None
        confirmations = self.carry("A", final)
        install_result(self.ring["A"], final.result, self.now)
        self.resume_secret = final.result.resume_secret
        done = [other.receive(f, self.now) for f in confirmations][-1]
        assert done.result is not None
        install_result(self.ring["B"], done.result, self.now)
        self.server.add(OWNER, done.result.resume_secret, self.now)

    @rule(tamper=st.none() | st.integers(0, 88 * 8 - 1))
    def resume(self, tamper: int | None) -> None:
        if self.resume_secret is None:
            self.full_handshake()  # A restarted: nothing to resume with
            return
        client = ResumeClient(self.resume_secret, next(self.serial) & 0xFFFFFFFF, self.now)
        resume = client.start()
        if tamper is not None:
            bad = bytearray(resume)
            bad[tamper // 8] ^= 1 << (tamper % 8)
            try:
                self.server.receive(bytes(bad), self.now)
            except (DecodeError, AuthenticationError):
                pass
            else:
                raise AssertionError("a tampered RESUME was answered")
        try:
            ack = self.server.receive(resume, self.now)
        except AuthenticationError:
            # B restarted or the secret aged out: only a full handshake helps.
            self.full_handshake()
            return
        assert len(ack) <= len(resume)
        keys = client.receive_ack(ack)
        self.ring["A"].install(keys.send_key, keys.receive_key, self.now)
        self.resume_secret = keys.next_resume_secret
        confirmed = self.server.confirm(self.ring["A"].seal(b"", self.now), self.now)
        self.ring["B"].install(confirmed.keys.send_key, confirmed.keys.receive_key, self.now)

    @rule(side=SIDES)
    def crash_and_restart(self, side: str) -> None:
        # Nothing is persisted: keys, resumption secrets and (for B) the responder are gone.
        self.ring[side] = KeyRing()
        if side == "A":
            self.resume_secret = None
        else:
            self.server = ResumeServer()
            self.responder = Responder(BOB, TRUSTED.get)

    # --- the relay ---------------------------------------------------------------------------

    def take(self, pick: int) -> tuple[str, bytes]:
        return self.in_flight.pop(pick % len(self.in_flight))

    @precondition(lambda self: self.in_flight)
    @rule(pick=PICKS)
    def deliver(self, pick: int) -> None:
        self.deliver_to(*self.take(pick))

    @precondition(lambda self: self.in_flight)
    @rule(pick=PICKS)
    def replay(self, pick: int) -> None:
        # Deliver a copy now and keep the frame in flight, to be delivered again later.
        self.deliver_to(*self.in_flight[pick % len(self.in_flight)])

    @precondition(lambda self: self.in_flight)
    @rule(rotate=PICKS, reverse=st.booleans())
    def flush(self, rotate: int, reverse: bool) -> None:
        # Deliver everything in flight, reordered (rotated, perhaps reversed).
        frames, self.in_flight = self.in_flight, []
        k = rotate % len(frames)
        frames = frames[k:] + frames[:k]
        for side, frame in reversed(frames) if reverse else frames:
            self.deliver_to(side, frame)

    @precondition(lambda self: self.in_flight)
    @rule(pick=PICKS)
    def drop(self, pick: int) -> None:
        self.take(pick)

    @precondition(lambda self: self.in_flight)
    @rule(pick=PICKS)
    def duplicate(self, pick: int) -> None:
        self.in_flight.append(self.in_flight[pick % len(self.in_flight)])

    @precondition(lambda self: self.in_flight)
    @rule(pick=PICKS, bit=st.integers(0, 1 << 16))
    def tamper(self, pick: int, bit: int) -> None:
        i = pick % len(self.in_flight)
        side, frame = self.in_flight[i]
        if frame:
            changed = bytearray(frame)
            changed[(bit // 8) % len(frame)] ^= 1 << (bit % 8)
            self.in_flight[i] = (side, bytes(changed))

    @precondition(lambda self: self.in_flight)
    @rule(pick=PICKS)
    def swap_route(self, pick: int) -> None:
        # The relay hands a frame to the wrong peer: back to its own sender (reflection).
        side, frame = self.in_flight[pick % len(self.in_flight)]
        sender = "B" if side == "A" else "A"
        try:
            self.ring[sender].open(frame, self.now)
        except (UnknownReceiverIndex, AuthenticationError, DecodeError, KeyExpired):
            pass
        else:
            raise AssertionError("a reflected frame was accepted by its sender")

    @rule(side=SIDES, junk=st.binary(max_size=120), counter=st.integers(0, (1 << 64) - 1))
    def inject(self, side: str, junk: bytes, counter: int) -> None:
        # Random bytes, and junk behind a header naming a live key of the target.
        indices = self.ring[side].receiver_indices(self.now)
        self.in_flight.append((side, junk))
        if indices:
            header = FrameHeader(receiver_index=indices[0], counter=counter).encode()
            self.in_flight.append((side, header + junk.ljust(16, b"\x00")))

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def no_key_nonce_pair_repeats(self) -> None:
        assert self.ledger.repeats == []

    @invariant()
    def accepted_payloads_came_from_the_peer(self) -> None:
        assert self.accepted["A"] <= self.sent["B"]
        assert self.accepted["B"] <= self.sent["A"]


TestAdversarialRelay = AdversarialRelay.TestCase
TestAdversarialRelay.settings = settings(max_examples=150, stateful_step_count=50)
