"""The matchmaker under random connects, relay challenges, hellos, auths, pairings, frames,
closes, garbage and time: tables stay within their caps, no circuit outlives a member's
connection, nothing is sent to a closed connection, a circuit's frames reach only its other
member, every connection is told the relay's keys once, the relay proves them, and the
counters the metrics export agree with what the machine did and never go down."""

from __future__ import annotations

import random
from collections.abc import Sequence

from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from meshcore.proto import wire
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity
from meshcore.proto.limits import RelayLimits
from meshcore.proto.matchmaker import (
    CloseConnection,
    ConnState,
    Forward,
    LogEvent,
    Matchmaker,
    Output,
    Send,
)
from meshcore.proto.relayauth import answer_challenge, challenge_relay

IDENTITIES = [Identity.generate() for _ in range(4)]
RELAY = Identity.generate()
ADDRESSES = [Endpoint("192.0.2.1", 1000), Endpoint("192.0.2.2", 1000), Endpoint("2001:db8::1", 9)]
LIMITS = RelayLimits(
    max_peers=3,
    max_pending_connections=3,
    max_circuits=4,
    max_circuits_per_peer=2,
    max_invites_per_peer=2,
    max_tracked_addresses=2,
    connections_per_s_per_ip=1.0,
    connections_burst_per_ip=3,
    pairings_burst=3,
    hello_deadline_s=5.0,
    invite_timeout_s=10.0,
    ping_interval_s=20.0,
    idle_timeout_s=60.0,
)

conn_picks = st.integers(min_value=0, max_value=1_000)
ident_picks = st.integers(min_value=0, max_value=len(IDENTITIES) - 1)


class MatchmakerMachine(RuleBasedStateMachine):
    """Drives one Matchmaker and checks every batch of outputs against an independent model."""

    @initialize()
    def start(self) -> None:
        # Seeded: the model picks circuits in id order, so ids must repeat from run to run
        # for hypothesis to replay (and shrink) a run.
        self.mm = Matchmaker(LIMITS, identity=RELAY, random=random.Random(0).randbytes)
        self.now = 0.0
        self.next_conn = 0
        self.live: set[int] = set()
        self.identity_of: dict[int, Identity] = {}
        self.challenges: dict[int, wire.Challenge] = {}
        self.told_keys: set[int] = set()  # connections told the relay's keys
        self.proved: set[int] = set()  # connections whose RelayChallenge the relay answered
        self.invites: dict[int, list[int]] = {}  # conn -> invite request ids it was sent
        self.circuits: dict[int, frozenset[int]] = {}  # the model: circuit id -> member conns
        self.seen_circuits: list[int] = [1]
        self.addr_of: dict[int, Endpoint] = {}
        self.forwarded = [0, 0]  # the model's payload bytes and frames forwarded
        self.registrations = 0
        self.gone = 0  # connections that ended (closed by the relay or gone by themselves)
        self.last_counts = self.mm.counters()
        # Every run starts from two registered peers with a circuit between them, and a third
        # registered peer, so that short runs exercise circuits too.
        for who, addr in enumerate(ADDRESSES):
            self.register(addr, who)
        self.pair(0, 1, 0, True)
        assert len(self.circuits) == 1

    # --- helpers ------------------------------------------------------------------------------

    def pick(self, index: int) -> int:
        ordered = sorted(self.live)
        return ordered[index % len(ordered)]

    def feed(self, sender: int | None, outputs: Sequence[Output]) -> None:
        """Check one batch of outputs and update the model from it."""
        closed_now: set[int] = set()
        paired: dict[int, set[int]] = {}
        for out in outputs:
            if isinstance(out, LogEvent):
                continue
            target = out.conn_id
            assert target not in closed_now, f"{out} after the connection was closed"
            assert target in self.live or target == sender, f"{out} to a closed connection"
            if isinstance(out, CloseConnection):
                self.gone += 1
                closed_now.add(target)
                self.live.discard(target)
                self.circuits = {c: m for c, m in self.circuits.items() if target not in m}
            elif isinstance(out, Forward):
                members = self.circuits.get(out.circuit_id)
                assert members is not None, "forwarded on a circuit that is not open"
                assert sender in members and target in members and target != sender
                relayed = wire.decode_control_untrusted(out.data)
                assert isinstance(relayed, wire.Relayed) and relayed.circuit_id == out.circuit_id
                self.forwarded[0] += len(relayed.payload)
                self.forwarded[1] += 1
                event("a frame was forwarded")
            else:
                assert isinstance(out, Send)
                self.observe(target, out.message, paired)
        for cid, members in paired.items():
            event("a circuit opened")
            assert len(members) == 2, "a circuit announced to only one side"
            self.circuits[cid] = frozenset(members)
            self.seen_circuits.append(cid)

    def observe(self, target: int, msg: wire.ControlMessage, paired: dict[int, set[int]]) -> None:
        if isinstance(msg, wire.RelayIdentity):
            assert target not in self.told_keys, "the relay's keys were sent twice"
            assert (msg.x25519_public, msg.kem_public) == (
                RELAY.public.x25519_public,
                RELAY.public.kem_public,
            )
            self.told_keys.add(target)
        elif isinstance(msg, wire.Challenge):
            self.challenges[target] = msg
        elif isinstance(msg, wire.Registered):
            self.registrations += 1
            assert msg.observed == self.addr_of[target]
        elif isinstance(msg, wire.Invite):
            self.invites.setdefault(target, []).append(msg.request_id)
        elif isinstance(msg, wire.Paired | wire.CircuitOpen) and msg.circuit_id:
            assert msg.circuit_id not in self.circuits, "a circuit id was reused"
            paired.setdefault(msg.circuit_id, set()).add(target)
        elif isinstance(msg, wire.CircuitClose):
            members = self.circuits.get(msg.circuit_id)
            if members is not None and target in members:
                del self.circuits[msg.circuit_id]

    # --- rules --------------------------------------------------------------------------------

    @rule(addr=st.sampled_from(ADDRESSES))
    def connect(self, addr: Endpoint) -> None:
        self.next_conn += 1
        conn = self.next_conn
        self.live.add(conn)
        self.addr_of[conn] = addr
        self.feed(conn, self.mm.connection_opened(conn, addr, self.now))

    @rule(addr=st.sampled_from(ADDRESSES), who=ident_picks)
    def register(self, addr: Endpoint, who: int) -> None:
        """Open, HELLO and an honest AUTH in one step, so that runs reach pairing."""
        self.connect(addr)
        conn = self.next_conn
        if conn in self.live:
            self.hello(sorted(self.live).index(conn), who, 1)
        if conn in self.live and conn in self.challenges:
            self.auth(sorted(self.live).index(conn), True, 0)

    @precondition(lambda self: len(self.registered()) >= 2)
    @rule(a=conn_picks, b=conn_picks, request_id=st.integers(0, 3), accept=st.booleans())
    def pair(self, a: int, b: int, request_id: int, accept: bool) -> None:
        """Connect from one registered peer to another, and let the target answer."""
        peers = self.registered()
        initiator, target = peers[a % len(peers)], peers[b % len(peers)]
        before = len(self.invites.get(target, []))
        msg = wire.Connect(request_id, self.identity_of[target].peer_id.digest)
        self.feed(initiator, self.mm.handle_message(initiator, msg, self.now))
        invites = self.invites.get(target, [])
        event("pair: invited" if len(invites) > before else "pair: refused")
        if len(invites) > before:
            self.answer_invite(sorted(self.live).index(target), accept, len(invites) - 1)

    def registered(self) -> list[int]:
        return sorted(c for c in self.live if self.mm.peer_of(c) is not None)

    @precondition(lambda self: self.live)
    @rule(index=conn_picks, who=ident_picks, candidates=st.integers(0, 2))
    def hello(self, index: int, who: int, candidates: int) -> None:
        conn = self.pick(index)
        self.identity_of[conn] = IDENTITIES[who]
        bundle = IDENTITIES[who].public
        cands = tuple(Endpoint("10.0.0.1", 7000 + i) for i in range(candidates))
        msg = wire.Hello(bundle.x25519_public, bundle.kem_public, cands)
        self.feed(conn, self.mm.handle_message(conn, msg, self.now))

    @precondition(lambda self: self.live)
    @rule(index=conn_picks)
    def relay_challenge(self, index: int) -> None:
        """A peer that knows the relay id challenges the relay: proved once, before Hello."""
        conn = self.pick(index)
        first_thing = self.mm.state_of(conn) is ConnState.AWAITING_HELLO
        first_thing = first_thing and conn not in self.proved
        challenge, pending = challenge_relay(RELAY.public)
        outputs = self.mm.handle_message(conn, challenge, self.now)
        proofs = [
            o.message
            for o in outputs
            if isinstance(o, Send) and isinstance(o.message, wire.RelayProof)
        ]
        if first_thing:
            assert len(proofs) == 1 and pending.verify(proofs[0]), "no valid proof"
            self.proved.add(conn)
            event("the relay proved its id")
        else:
            assert proofs == [], "a proof out of turn"
            assert any(isinstance(o, CloseConnection) for o in outputs)
        self.feed(conn, outputs)

    @precondition(lambda self: self.live)
    @rule(index=conn_picks, honest=st.booleans(), impostor=ident_picks)
    def auth(self, index: int, honest: bool, impostor: int) -> None:
        conn = self.pick(index)
        challenge = self.challenges.get(conn)
        if challenge is None:
            answer = wire.Auth(bytes(32))
        else:
            identity = self.identity_of[conn] if honest else IDENTITIES[impostor]
            answer = answer_challenge(identity, challenge)
        self.feed(conn, self.mm.handle_message(conn, answer, self.now))

    @precondition(lambda self: self.live)
    @rule(index=conn_picks, who=ident_picks, request_id=st.integers(0, 3))
    def pair_request(self, index: int, who: int, request_id: int) -> None:
        conn = self.pick(index)
        msg = wire.Connect(request_id, IDENTITIES[who].peer_id.digest)
        self.feed(conn, self.mm.handle_message(conn, msg, self.now))

    @precondition(lambda self: self.live)
    @rule(index=conn_picks, accept=st.booleans(), which=st.integers(0, 5))
    def answer_invite(self, index: int, accept: bool, which: int) -> None:
        conn = self.pick(index)
        ids = self.invites.get(conn) or [12345]
        request_id = ids[which % len(ids)]
        msg: wire.ControlMessage
        if accept:
            msg = wire.Accept(request_id)
        else:
            msg = wire.Reject(request_id, wire.ErrorCode.NOT_ALLOWED, "no")
        self.feed(conn, self.mm.handle_message(conn, msg, self.now))

    @precondition(lambda self: self.live)
    @rule(index=conn_picks, which=st.integers(0, 50), payload=st.binary(max_size=64))
    def relay_frame(self, index: int, which: int, payload: bytes) -> None:
        conn = self.pick(index)
        cid = self.seen_circuits[which % len(self.seen_circuits)]
        self.feed(conn, self.mm.handle_message(conn, wire.Relayed(cid, payload), self.now))

    @precondition(lambda self: self.circuits)
    @rule(which=st.integers(0, 50), side=st.booleans(), payload=st.binary(max_size=64))
    def member_frame(self, which: int, side: bool, payload: bytes) -> None:
        cid = sorted(self.circuits)[which % len(self.circuits)]
        conn = sorted(self.circuits[cid])[side]
        outputs = self.mm.handle_message(conn, wire.Relayed(cid, payload), self.now)
        assert [type(o) for o in outputs] == [Forward]
        self.feed(conn, outputs)

    @precondition(lambda self: self.live)
    @rule(index=conn_picks, which=st.integers(0, 50))
    def close_circuit(self, index: int, which: int) -> None:
        conn = self.pick(index)
        cid = self.seen_circuits[which % len(self.seen_circuits)]
        msg = wire.CircuitClose(cid, wire.ErrorCode.NONE, "done")
        self.feed(conn, self.mm.handle_message(conn, msg, self.now))

    @precondition(lambda self: self.live)
    @rule(index=conn_picks, who=ident_picks)
    def reopen_circuit(self, index: int, who: int) -> None:
        conn = self.pick(index)
        msg = wire.CircuitOpen(0, IDENTITIES[who].peer_id.digest)
        self.feed(conn, self.mm.handle_message(conn, msg, self.now))

    @precondition(lambda self: self.live)
    @rule(index=conn_picks)
    def disconnect(self, index: int) -> None:
        conn = self.pick(index)
        self.gone += 1
        self.live.discard(conn)
        self.circuits = {c: m for c, m in self.circuits.items() if conn not in m}
        self.feed(None, self.mm.connection_closed(conn, "gone", self.now))

    @precondition(lambda self: self.live)
    @rule(index=conn_picks, nonce=st.integers(0, 2**64 - 1))
    def observe_address(self, index: int, nonce: int) -> None:
        """Netcheck's question, in whatever state the connection is."""
        conn = self.pick(index)
        outputs = self.mm.handle_message(conn, wire.ObserveAddress(nonce), self.now)
        assert outputs == [Send(conn, wire.ObservedAddress(nonce, self.addr_of[conn]))]
        self.feed(conn, outputs)

    @precondition(lambda self: self.live)
    @rule(index=conn_picks, data=st.binary(max_size=40))
    def garbage(self, index: int, data: bytes) -> None:
        conn = self.pick(index)
        self.feed(conn, self.mm.receive_data(conn, data, self.now))

    @precondition(lambda self: self.circuits)
    @rule(which=st.integers(0, 50))
    def overflow(self, which: int) -> None:
        cid = sorted(self.circuits)[which % len(self.circuits)]
        self.feed(None, self.mm.circuit_overflow(cid, self.now))

    @rule(seconds=st.sampled_from([0.1, 1.0, 4.0, 6.0, 11.0, 25.0, 61.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.feed(None, self.mm.handle_timer(self.now))

    # --- invariants ---------------------------------------------------------------------------

    @invariant()
    def counters_agree_with_the_model_and_never_go_down(self) -> None:
        counts = self.mm.counters()
        assert [counts.forwarded_bytes, counts.forwarded_frames] == self.forwarded
        assert counts.registrations == self.registrations
        assert counts.closes.total() == self.gone
        last = self.last_counts
        for name in ("registrations", "pairings", "reopens", "address_echoes",
                     "forwarded_bytes", "forwarded_frames", "unknown_circuit_frames"):  # fmt: skip
            assert getattr(counts, name) >= getattr(last, name), name
        for table in ("refusals", "closes", "circuit_closes"):
            now, before = getattr(counts, table), getattr(last, table)
            assert all(now[key] >= n for key, n in before.items()), table
        self.last_counts = counts

    @invariant()
    def model_agrees_on_live_connections(self) -> None:
        assert set(self.mm.conn_ids()) == self.live
        assert self.live <= self.told_keys, "a connection was not told the relay's keys"

    @invariant()
    def circuits_agree_and_reference_only_live_registered_connections(self) -> None:
        stats = self.mm.circuit_stats()
        assert {s.circuit_id for s in stats} == set(self.circuits)
        for s in stats:
            members = self.mm.circuit_members(s.circuit_id)
            assert members is not None and frozenset(members) == self.circuits[s.circuit_id]
            for conn in members:
                assert self.mm.state_of(conn) is ConnState.REGISTERED

    @invariant()
    def tables_stay_within_their_caps(self) -> None:
        stats = self.mm.stats()
        assert stats.peers <= LIMITS.max_peers
        assert stats.pending <= LIMITS.max_pending_connections
        assert stats.circuits <= LIMITS.max_circuits
        assert stats.invites <= stats.peers * LIMITS.max_invites_per_peer
        assert stats.tracked_addresses <= LIMITS.max_tracked_addresses
        assert stats.departed <= LIMITS.max_peers
        assert stats.timers <= 2 * (stats.connections + stats.invites) + 64 + 1
        per_conn: dict[int, int] = {}
        for members in self.circuits.values():
            for conn in members:
                per_conn[conn] = per_conn.get(conn, 0) + 1
        assert all(n <= LIMITS.max_circuits_per_peer for n in per_conn.values())

    @invariant()
    def one_connection_per_registered_peer_id(self) -> None:
        peers = [self.mm.peer_of(c) for c in self.live]
        registered = [p for p in peers if p is not None]
        assert len(registered) == len(set(registered)) == self.mm.stats().peers

    @invariant()
    def registered_peers_proved_their_keys(self) -> None:
        for conn in self.live:
            peer = self.mm.peer_of(conn)
            if peer is not None:
                assert peer == self.identity_of[conn].peer_id.digest


TestMatchmaker = MatchmakerMachine.TestCase
