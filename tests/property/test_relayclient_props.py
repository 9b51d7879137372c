"""Three relay-client machines against the real `Matchmaker`, all in memory: random
registrations, pairings, invitations, circuits, frames, cut connections, garbage, time, and
connections hijacked by an impostor relay.

Two clients know the relay's id and verify it on every connection; the third does not. Messages
travel in per-connection FIFOs that the rules drain one message at a time, so that messages
cross (a close and a frame, two opens). Checked throughout: no request waits past its deadline
and each is answered once, no client stays registering past its timeout, frames reach the
other member of their circuit in order, a verifying client sends its Hello only after the
relay's proof and never to the impostor, and nothing raises; whenever nothing is in flight,
every client's circuit table is exactly the relay's view of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from random import Random

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from meshcore.errors import RelayNotVerified
from meshcore.proto import wire
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity
from meshcore.proto.matchmaker import (
    CloseConnection as RelayClose,
)
from meshcore.proto.matchmaker import (
    ConnState,
    Forward,
    LogEvent,
    Matchmaker,
    RelayLimits,
    Send,
)
from meshcore.proto.matchmaker import (
    Output as RelayOutput,
)
from meshcore.proto.packet import PacketType
from meshcore.proto.reconnect import announced_window
from meshcore.proto.relayclient import RelayClientCore, RelayClientState
from meshcore.proto.relayclient_outputs import (
    CircuitClosed,
    CircuitOpened,
    CircuitOpenFailed,
    CircuitReopened,
    CloseConnection,
    ConnectionLost,
    InvitationAccepted,
    Invited,
    Output,
    PairingCompleted,
    PairingFailed,
    Reconnect,
    RegistrationFailed,
    RelayedReceived,
    SendBytes,
)

PEERS = 3
IDENTITIES = [Identity.generate() for _ in range(PEERS)]
RELAY, IMPOSTOR = Identity.generate(), Identity.generate()
VERIFYING = (0, 1)
"""The clients that know the relay's id."""
ADDRESSES = [Endpoint(f"192.0.2.{i + 1}", 4000 + i) for i in range(PEERS)]
REGISTER_TIMEOUT_S = 4.0
LIMITS = RelayLimits(
    hello_deadline_s=5.0,
    invite_timeout_s=10.0,
    ping_interval_s=20.0,
    idle_timeout_s=60.0,
    pairings_burst=8,
    max_circuits_per_peer=8,
)
_LOST = None  # in a to-client queue: the relay closed the connection here

peer_picks = st.integers(min_value=0, max_value=PEERS - 1)
picks = st.integers(min_value=0, max_value=1_000)
timeouts = st.sampled_from([0.5, 2.0, 8.0])


class Peer:
    """One client machine and what the test knows about it."""

    def __init__(self, index: int, seed: int) -> None:
        self.index = index
        self.identity = IDENTITIES[index]
        self.verifies = index in VERIFYING
        self.core = RelayClientCore(
            self.identity,
            "ws://relay.test/",
            relay_id=RELAY.peer_id if self.verifies else None,
            timeout=REGISTER_TIMEOUT_S,
            reconnect_min_s=0.5,
            reconnect_max_s=8.0,
            route_timeout_s=5.0,
            random=Random(seed),
        )
        self.conn: int | None = None
        self.mm: Matchmaker | None = None
        """The relay the current connection reached (the impostor, when hijacked)."""
        self.hijack_next = False
        self.opened_at = 0.0
        self.to_relay: deque[bytes] = deque()
        self.to_client: deque[bytes | None] = deque()
        self.waiting: dict[int, float] = {}
        """Tickets without an answer yet, and the latest the answer may come."""
        self.usable: set[int] = set()
        """Circuits the driver would hold a transport for (the machine handed them out)."""
        self.invitations: list[Invited] = []
        self.routed: set[int] = set()
        """Tickets of invitations accepted on our own: only a failure answers them."""

    def quiet(self) -> bool:
        return not self.to_relay and not self.to_client


class RelayClientsAgainstMatchmaker(RuleBasedStateMachine):
    @initialize(seed=st.integers(min_value=0, max_value=2**32 - 1))
    def start(self, seed: int) -> None:
        self.mm = Matchmaker(LIMITS, identity=RELAY)
        self.impostor = Matchmaker(LIMITS, identity=IMPOSTOR)
        self.now = 0.0
        self.next_conn = 0
        self.next_ticket = 0
        self.peers = [Peer(i, seed + i) for i in range(PEERS)]
        self.by_conn: dict[int, Peer] = {}
        self.sent: dict[tuple[int, int], list[bytes]] = {}  # (circuit, sender) -> payloads
        self.received: dict[tuple[int, int], list[bytes]] = {}  # (circuit, receiver) -> payloads
        self.frames = 0
        for peer in self.peers:
            self.dial(peer)
        self.settle()
        assert all(p.core.state is RelayClientState.REGISTERED for p in self.peers)
        # Every run starts with three circuits, so that short runs use circuits: 0-1 and
        # 1-2, and 2-0 which 0 accepted on its own (routed by the first frame 2 sends).
        self.pair(0, 1, 8.0)
        self.pair(1, 2, 8.0)
        self.pair(2, 0, 8.0, on_our_own=True)
        assert len(self.mm.circuit_stats()) == 3

    # --- plumbing ---------------------------------------------------------------------------

    def dial(self, peer: Peer) -> None:
        self.next_conn += 1
        conn = self.next_conn
        peer.conn, peer.opened_at = conn, self.now
        peer.mm = self.impostor if peer.hijack_next else self.mm
        peer.hijack_next = False
        peer.to_relay.clear()
        peer.to_client.clear()
        self.by_conn[conn] = peer
        self.relay(peer.mm.connection_opened(conn, ADDRESSES[peer.index], self.now))
        self.client(peer, peer.core.connection_opened([], self.now))

    def drop_connection(self, peer: Peer) -> None:
        peer.conn = None
        peer.to_relay.clear()
        peer.to_client.clear()

    def relay(self, outputs: Sequence[RelayOutput]) -> None:
        """Queue the matchmaker's outputs for the clients they are for."""
        for out in outputs:
            if isinstance(out, LogEvent):
                continue
            peer = self.by_conn.get(out.conn_id)
            if peer is None or peer.conn != out.conn_id:
                continue  # for a connection the client already left
            if isinstance(out, Send):
                peer.to_client.append(wire.encode_control(out.message))
            elif isinstance(out, Forward):
                peer.to_client.append(out.data)
            else:
                assert isinstance(out, RelayClose)
                peer.to_client.append(_LOST)

    def client(self, peer: Peer, outputs: Sequence[Output]) -> None:
        """Execute one client's outputs as its driver would, checking each against the model."""
        for out in outputs:
            if isinstance(out, SendBytes):
                if isinstance(wire.decode_control_untrusted(out.data), wire.Hello):
                    assert not peer.verifies or peer.core.verified, "Hello before the proof"
                if peer.conn is not None:
                    peer.to_relay.append(out.data)
            elif isinstance(out, CloseConnection):
                assert out.reason, "a close without a reason"
                conn, mm = peer.conn, peer.mm
                self.drop_connection(peer)
                if conn is not None and mm is not None:
                    self.relay(mm.connection_closed(conn, out.reason, self.now))
            elif isinstance(out, Reconnect):
                event("reconnected")
                self.dial(peer)
            elif isinstance(out, ConnectionLost):
                spread = announced_window(out.reason) if out.graceful else None
                most = 0.75 + (spread or 0.0)  # the first backoff (0.5 s ± 50 %), plus the window
                assert out.retry_in_s <= most, "a reconnect waits past backoff and window"
                if spread is not None:
                    assert spread <= 0.01, "three peers announced as a herd"
                    event("a shutdown announced its reconnect window")
            elif isinstance(out, RegistrationFailed):
                assert out.retry_in_s is not None, "a later attempt was not retried"
                if isinstance(out.error, RelayNotVerified):
                    assert peer.verifies, "a client that knows no relay id refused the relay"
                    if peer.mm is self.mm:  # garbage, or messages that did not come in time
                        why = str(out.error)
                        assert "malformed" in why or "within" in why, "the real relay refused"
                    else:
                        event("an impostor relay was refused")
            elif isinstance(
                out, PairingCompleted | PairingFailed | CircuitOpened | CircuitOpenFailed
            ):
                self.answered(peer, out.ticket)
                if isinstance(out, PairingCompleted | CircuitOpened):
                    event(f"{type(out).__name__}")
                    peer.usable.add(out.circuit_id)
            elif isinstance(out, CircuitReopened):
                event("a circuit was routed by its first frame")
                peer.usable.add(out.circuit_id)
                self.arrived(peer, out.circuit_id, out.first_frame)
            elif isinstance(out, InvitationAccepted):
                event("a re-pairing started a new session")
                peer.usable.add(out.pairing.circuit_id)
                self.arrived(peer, out.pairing.circuit_id, out.first_frame)
            elif isinstance(out, RelayedReceived):
                self.arrived(peer, out.circuit_id, out.payload)
            elif isinstance(out, CircuitClosed):
                peer.usable.discard(out.circuit_id)
            elif isinstance(out, Invited):
                peer.invitations.append(out)

    def answered(self, peer: Peer, ticket: int) -> None:
        if ticket in peer.routed:
            peer.routed.discard(ticket)
            return
        assert ticket in peer.waiting, f"ticket {ticket} answered twice, or never asked"
        del peer.waiting[ticket]

    def arrived(self, peer: Peer, circuit_id: int, payload: bytes) -> None:
        other = peer.core.circuit_peers()[circuit_id]
        senders = [s for (cid, s) in self.sent if cid == circuit_id and s != peer.index]
        assert senders, "a frame arrived that nobody sent on this circuit"
        (sender,) = senders
        assert IDENTITIES[sender].peer_id == other, "a frame reached the wrong peer"
        got = self.received.setdefault((circuit_id, peer.index), [])
        got.append(payload)
        assert got == self.sent[(circuit_id, sender)][: len(got)], "frames lost or reordered"
        event("a frame arrived")

    def deliver_one(self, peer: Peer, to_client: bool) -> None:
        if to_client:
            data = peer.to_client.popleft()
            if data is _LOST:
                self.drop_connection(peer)
                self.client(peer, peer.core.connection_lost("relay closed it", self.now))
            else:
                self.client(peer, peer.core.receive_data(data, self.now))
        else:
            data = peer.to_relay.popleft()
            assert peer.conn is not None and peer.mm is not None
            if peer.mm is self.impostor:
                sent = wire.decode_control_untrusted(data)
                assert not isinstance(sent, wire.Hello) or not peer.verifies, "Hello to impostor"
            self.relay(peer.mm.receive_data(peer.conn, data, self.now))

    def settle(self) -> None:
        for _ in range(10_000):
            busy = [p for p in self.peers if not p.quiet()]
            if not busy:
                return
            for peer in busy:
                while peer.to_relay:
                    self.deliver_one(peer, to_client=False)
                if peer.to_client:
                    self.deliver_one(peer, to_client=True)
        raise AssertionError("messages kept flowing: a loop between the clients and the relay")

    def ticket(self, peer: Peer, deadline: float) -> int:
        self.next_ticket += 1
        peer.waiting[self.next_ticket] = deadline
        return self.next_ticket

    # --- rules ------------------------------------------------------------------------------

    @rule(i=peer_picks, to_client=st.booleans())
    def deliver(self, i: int, to_client: bool) -> None:
        peer = self.peers[i]
        if (to_client and peer.to_client) or (not to_client and peer.to_relay):
            self.deliver_one(peer, to_client)

    @rule()
    def deliver_everything(self) -> None:
        self.settle()

    @rule(i=peer_picks, j=peer_picks, timeout=timeouts)
    def connect(self, i: int, j: int, timeout: float) -> None:
        peer, target = self.peers[i], IDENTITIES[j].peer_id
        ticket = self.ticket(peer, self.now + timeout)
        self.client(peer, peer.core.connect(ticket, target, timeout, self.now))

    @rule(i=peer_picks, j=peer_picks, timeout=timeouts, on_our_own=st.booleans())
    def pair(self, i: int, j: int, timeout: float, on_our_own: bool = False) -> None:
        """The whole exchange, nothing crossing: i asks for j, j accepts."""
        initiator, target = self.peers[i], self.peers[j]
        self.connect(i, j, timeout)
        self.settle()
        offers = [
            n
            for n, inv in enumerate(target.invitations)
            if inv.initiator == initiator.identity.peer_id
        ]
        if offers:
            self.accept(j, offers[-1], timeout, on_our_own)
            self.settle()

    @rule(i=peer_picks, pick=picks, timeout=timeouts, on_our_own=st.booleans())
    def accept(self, i: int, pick: int, timeout: float, on_our_own: bool) -> None:
        peer = self.peers[i]
        if not peer.invitations:
            return
        invited = peer.invitations.pop(pick % len(peer.invitations))
        if on_our_own:  # nobody waits: success shows as a circuit routed by its first frame
            self.next_ticket += 1
            peer.routed.add(self.next_ticket)
            out = peer.core.accept(self.next_ticket, invited, timeout, self.now, route=True)
            self.client(peer, out)
            return
        ticket = self.ticket(peer, self.now + timeout)
        self.client(peer, peer.core.accept(ticket, invited, timeout, self.now))

    @rule(i=peer_picks, pick=picks)
    def reject(self, i: int, pick: int) -> None:
        peer = self.peers[i]
        if peer.invitations:
            invited = peer.invitations.pop(pick % len(peer.invitations))
            self.client(peer, peer.core.reject(invited, "no thanks"))

    @rule(i=peer_picks, j=peer_picks, timeout=timeouts, again=st.booleans(), paired=st.booleans())
    def open_circuit(self, i: int, j: int, timeout: float, again: bool, paired: bool) -> None:
        """Open (or re-open) a circuit, usually to a peer we are paired with."""
        peer = self.peers[i]
        partners = [p for p in IDENTITIES if peer.core.is_paired(p.peer_id)]
        target = partners[j % len(partners)] if paired and partners else IDENTITIES[j]
        if again:  # a fallback pairing gets its own timeout
            ticket = self.ticket(peer, self.now + 2 * timeout)
            self.client(peer, peer.core.reopen_circuit(ticket, target.peer_id, timeout, self.now))
        else:
            ticket = self.ticket(peer, self.now + timeout)
            self.client(peer, peer.core.open_circuit(ticket, target.peer_id, timeout, self.now))

    @rule(i=peer_picks, pick=picks)
    def cancel(self, i: int, pick: int) -> None:
        peer = self.peers[i]
        if peer.waiting:
            ticket = sorted(peer.waiting)[pick % len(peer.waiting)]
            del peer.waiting[ticket]
            self.client(peer, peer.core.cancel(ticket))

    @rule(i=peer_picks, pick=picks)
    def close_circuit(self, i: int, pick: int) -> None:
        peer = self.peers[i]
        if peer.usable:
            cid = sorted(peer.usable)[pick % len(peer.usable)]
            self.client(peer, peer.core.close_circuit(cid, "done with it"))

    @rule(
        i=peer_picks, pick=picks, count=st.integers(1, 3), sealed=st.booleans(), wait=st.booleans()
    )
    def send_frames(self, i: int, pick: int, count: int, sealed: bool, wait: bool) -> None:
        """Frames on one of our circuits: sealed transport frames, or a handshake (which
        starts a new session on a circuit the peer paired again for on its own); `wait`
        delivers everything in flight afterwards."""
        peer = self.peers[i]
        if not peer.usable:
            return
        cid = sorted(peer.usable)[pick % len(peer.usable)]
        for _ in range(count):
            self.frames += 1
            kind = PacketType.FRAME if sealed else PacketType.HANDSHAKE_INIT
            payload = bytes([kind]) + self.frames.to_bytes(4, "big")
            data = peer.core.send_relayed(cid, payload)
            self.sent.setdefault((cid, peer.index), []).append(payload)
            peer.to_relay.append(data)
        if wait:
            self.settle()

    @rule(i=peer_picks, garbage=st.none() | st.binary(max_size=64))
    def trouble(self, i: int, garbage: bytes | None) -> None:
        """The network breaks under one client (both ends notice), or a confused relay sends
        it garbage (handled, or the connection closes with a reason)."""
        peer = self.peers[i]
        conn = peer.conn
        if conn is None:
            return
        if garbage is not None:
            self.client(peer, peer.core.receive_data(b"\x01\xee" + garbage, self.now))
            return
        mm = peer.mm
        assert mm is not None
        self.drop_connection(peer)
        self.relay(mm.connection_closed(conn, "network broke", self.now))
        self.client(peer, peer.core.connection_lost("network broke", self.now))

    @rule(i=peer_picks)
    def hijack(self, i: int) -> None:
        """The next connection of a verifying client reaches an impostor relay (DNS or the
        network sends it elsewhere); the connection it has now is cut."""
        peer = self.peers[VERIFYING[i % len(VERIFYING)]]
        peer.hijack_next = True
        self.trouble(peer.index, None)

    @rule()
    def relay_restarts(self) -> None:
        """The relay shuts down gracefully (Close(SHUTDOWN) announcing its reconnect window,
        every circuit closed) and a new one with the same identity takes its place; every
        client comes back within the backoff plus that window."""
        old, self.mm = self.mm, Matchmaker(LIMITS, identity=RELAY)
        self.relay(old.shutdown(self.now))
        self.settle()
        for peer in self.peers:
            if peer.mm is old and peer.conn is not None:  # not yet told (mid-registration)
                self.drop_connection(peer)
                self.client(peer, peer.core.connection_lost("relay went away", self.now))
        event("the relay restarted")

    @rule(seconds=st.sampled_from([0.1, 0.5, 1.0, 3.0, 6.0, 25.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.relay(self.mm.handle_timer(self.now))
        self.relay(self.impostor.handle_timer(self.now))
        for peer in self.peers:
            self.client(peer, peer.core.handle_timer(self.now))

    # --- invariants -------------------------------------------------------------------------

    @invariant()
    def no_request_waits_past_its_deadline(self) -> None:
        for peer in self.peers:
            for ticket, deadline in peer.waiting.items():
                assert deadline > self.now, f"ticket {ticket} still waits past its deadline"

    @invariant()
    def no_client_registers_past_its_timeout(self) -> None:
        for peer in self.peers:
            state = peer.core.state
            assert state is not RelayClientState.CLOSED, "a client closed for good"
            assert state is not RelayClientState.CONNECTING, "a Reconnect was not dialled"
            registering = (
                RelayClientState.VERIFYING,
                RelayClientState.HELLO_SENT,
                RelayClientState.AUTHENTICATING,
            )
            if state in registering:
                assert self.now < peer.opened_at + REGISTER_TIMEOUT_S
            if state is RelayClientState.REGISTERED:
                assert peer.core.verified == peer.verifies
                assert peer.mm is self.mm, "registered at the impostor"
            if state is RelayClientState.LOST:
                assert peer.core.get_timer() is not None, "lost, and no reconnect scheduled"

    @invariant()
    def handed_out_circuits_are_open(self) -> None:
        for peer in self.peers:
            assert peer.usable <= set(peer.core.circuit_peers())

    @invariant()
    def circuit_tables_agree_when_nothing_is_in_flight(self) -> None:
        if not all(p.quiet() for p in self.peers):
            return
        relay_view: dict[int, dict[int, bytes]] = {p.index: {} for p in self.peers}
        for stats in self.mm.circuit_stats():
            members = self.mm.circuit_members(stats.circuit_id)
            assert members is not None
            a, b = (self.by_conn[c] for c in members)
            relay_view[a.index][stats.circuit_id] = b.identity.peer_id.digest
            relay_view[b.index][stats.circuit_id] = a.identity.peer_id.digest
        for peer in self.peers:
            ours = {cid: p.digest for cid, p in peer.core.circuit_peers().items()}
            assert ours == relay_view[peer.index], f"peer {peer.index}: {ours} != relay's"
            registered = (
                peer.conn is not None
                and peer.mm is self.mm
                and self.mm.state_of(peer.conn) is ConnState.REGISTERED
            )
            assert (peer.core.state is RelayClientState.REGISTERED) == registered
            if ours:
                event("circuit tables compared")


RelayClientsAgainstMatchmaker.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None
)
TestRelayClientsAgainstMatchmaker = RelayClientsAgainstMatchmaker.TestCase
