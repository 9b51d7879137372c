"""A peer's control connection to a relay (trio): drives the sans-IO `RelayClientCore`
(`meshcore.proto.relayclient`, docs/relay-client.md) over WebSocket, and hands out relayed
circuits as Transports. One task dials and reads, one runs the machine's timers; requests
wait on memory channels. Every protocol decision is the machine's.

The relay is a matchmaker, not a middleman: a lost connection is dialled again with jittered
exponential backoff, from the same port, while sessions on direct paths carry on untouched.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager

import trio

from meshcore._circuit import CircuitTransport, Invitation, Pairing
from meshcore._clientlink import ClientLink, send_quietly
from meshcore._direct import DirectListener, SessionRoutes, local_candidates
from meshcore._nursery import open_hidden_nursery
from meshcore._sharedport import open_shared_port_listener
from meshcore._transport import Transport
from meshcore._wsdial import dial_websocket
from meshcore.errors import ConfigError, MeshError, RelayError, RelayNotVerified, TransportClosed
from meshcore.proto import relayclient_outputs as ev
from meshcore.proto import wire
from meshcore.proto.constants import (
    RELAY_CLIENT_SUBPROTOCOLS,
    RELAY_CREDITED_SUBPROTOCOLS,
    RELAY_DEAD_AFTER_S,
    RELAY_HEARTBEAT_S,
    RELAY_RECONNECT_MAX_S,
    RELAY_RECONNECT_MIN_S,
)
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity, PeerId
from meshcore.proto.relayclient import NO_SESSION, RelayClientCore, RelayClientState

_OFFER, _CREDIT = RELAY_CLIENT_SUBPROTOCOLS, RELAY_CREDITED_SUBPROTOCOLS  # wire-control.md

__all__ = ["CircuitTransport", "Invitation", "Pairing", "RelayClient", "open_relay_client"]

log = logging.getLogger("meshcore.client")

_INVITE_QUEUE = 64
_UNVERIFIED: set[str] = set()
"""Relay URLs already logged as unverified in this process (logged once each)."""


_Result = Pairing | CircuitTransport | Exception


class RelayClient:
    """An authenticated control connection to a relay (create it with `open_relay_client`,
    or construct it and run it: `await nursery.start(client.run)`).

    It stays registered across relay restarts: a lost connection is dialled again with
    jittered exponential backoff. Meanwhile requests fail with `RelayError` (or
    `TransportClosed`) and the circuits of the lost connection are closed. A connection on
    which nothing arrives for `dead_after_s` (pinged after `heartbeat_s`) counts as lost.

    With `relay_id`, the relay proves that id on every connection before it learns anything
    of ours; without, it is not checked (logged once per URL).
    `listener` is the direct-connection listener on the shared `local_port`, if any: a
    socket listener this client serves, or a `DirectListener` several clients share (its
    owner serves it); `routes`, a table of sessions several clients share. Cancelling a
    request (`connect`, `accept`, `open_circuit`) withdraws it from the protocol machine; an
    answer that arrives later is undone (its circuit closed).
    """

    def __init__(
        self,
        identity: Identity,
        url: str,
        *,
        relay_id: PeerId | None = None,
        candidates: Sequence[Endpoint] = (),
        local_port: int | None = None,
        listener: trio.SocketListener | DirectListener | None = None,
        routes: SessionRoutes | None = None,
        timeout: float = 10.0,
        reconnect_min_s: float = RELAY_RECONNECT_MIN_S,
        reconnect_max_s: float = RELAY_RECONNECT_MAX_S,
        heartbeat_s: float = RELAY_HEARTBEAT_S,
        dead_after_s: float = RELAY_DEAD_AFTER_S,
    ) -> None:
        self.identity = identity
        self.url = url
        own = listener if isinstance(listener, trio.SocketListener) else None
        shared = listener if isinstance(listener, DirectListener) else None
        if routes is None:
            routes = shared.routes if shared is not None else SessionRoutes()
        self.routes = routes
        """Live sessions that take direct connections and re-opened circuits."""
        self.direct = DirectListener(own, self.routes) if own is not None else shared
        """The listener on our shared port, when opened with `direct=True`."""
        self._serves_direct = own is not None
        self._local_port = local_port
        self._timeout = timeout
        self._core = RelayClientCore(
            identity,
            url,
            relay_id=relay_id,
            candidates=candidates,
            timeout=timeout,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            heartbeat_s=heartbeat_s,
            dead_after_s=dead_after_s,
        )
        self._refusal: str | None = None
        """The last reason a relay was refused for its identity (logged when it changes)."""
        self._link: ClientLink | None = None
        self._circuits: dict[int, CircuitTransport] = {}
        self._waiters: dict[int, trio.MemorySendChannel[_Result]] = {}
        self._tickets = itertools.count(1)
        self._invite_send, self._invite_recv = trio.open_memory_channel[Invitation](_INVITE_QUEUE)
        self._dial = trio.Event()
        self._dial.set()
        self._up = trio.Event()
        self._fatal: Exception | None = None
        self._timer_scope = trio.CancelScope()

    # ----------------------------------------------------------------- state
    @property
    def observed(self) -> Endpoint | None:
        """Our address as the relay sees it (Registered.observed). What a session announces
        as ours; setting it overrides that until the next registration."""
        return self._core.observed

    @observed.setter
    def observed(self, value: Endpoint | None) -> None:
        self._core.observed = value

    @property
    def candidates(self) -> tuple[Endpoint, ...]:
        """The direct-connection candidates we announced (Hello; ENDPOINTS in sessions);
        setting it overrides them until the next registration, like `observed`."""
        return self._core.candidates

    @candidates.setter
    def candidates(self, value: tuple[Endpoint, ...]) -> None:
        self._core.candidates = tuple(value)

    @property
    def close_reason(self) -> str | None:
        """Why the client ended for good (None while it lives, connected or reconnecting)."""
        return self._core.close_reason

    @property
    def lost_reason(self) -> str | None:
        """Why the current relay connection was lost (None while connected)."""
        return self._core.lost_reason

    @property
    def registrations(self) -> int:
        """Successful registrations: 1 after the first connection, +1 per reconnect."""
        return self._core.registrations

    @property
    def transport(self) -> Transport:
        """The current (or the last) control connection to the relay."""
        if self._link is None:
            raise TransportClosed(f"not connected to the relay at {self.url} yet")
        return self._link.transport

    @property
    def connected(self) -> bool:
        """True while registered on a live relay connection."""
        return self._core.state is RelayClientState.REGISTERED

    @property
    def state(self) -> RelayClientState:
        """Where the relay connection is (connecting, verifying, registered, lost, ...)."""
        return self._core.state

    @property
    def relay_id(self) -> PeerId | None:
        """The relay id the relay must prove on every connection (None: not checked)."""
        return self._core.relay_id

    @property
    def verified(self) -> bool:
        """The relay proved `relay_id` on the current (or the last) connection."""
        return self._core.verified

    @property
    def presented_relay_id(self) -> PeerId | None:
        """The relay id the relay presented on the last connection (checked only when it
        had to prove `relay_id`), None before it said."""
        keys = self._core.relay_keys
        return None if keys is None else keys.peer_id

    @property
    def rtt_s(self) -> float | None:
        """The latest round trip to the relay (registration, then heartbeat pings)."""
        return self._core.rtt_s

    @property
    def circuits(self) -> int:
        """Circuits open on this relay connection now."""
        return len(self._circuits)

    def relay_of(self, circuit: Transport) -> str | None:
        """This relay's URL if `circuit` is one of this client's circuits, else None."""
        ours = isinstance(circuit, CircuitTransport) and self._circuits.get(circuit.circuit_id)
        return self.url if ours is circuit else None

    @property
    def local_port(self) -> int | None:
        """The shared local port (relay connection, direct listener, direct dials)."""
        if self._local_port is not None:
            return self._local_port
        address = self._link.transport.local_address if self._link is not None else None
        return address.port if address is not None else None

    # ----------------------------------------------------------------- pairing
    async def connect(self, peer_id: PeerId, *, timeout: float = 10.0) -> Pairing:
        """Ask the relay to pair us with `peer_id`; returns once the peer accepted.

        Raises `RelayError` if the peer is offline, unknown or refused us, or on timeout,
        `TransportClosed` while the relay connection is down, and `HandshakeError` if the
        relay served a key bundle that is not `peer_id`'s. Cancelling it abandons the
        request (a late pairing is closed).
        """
        result = await self._request(lambda t, now: self._core.connect(t, peer_id, timeout, now))
        assert isinstance(result, Pairing)
        return result

    async def next_invitation(self) -> Invitation:
        """Wait for the next peer that asks to be paired with us (across reconnects).

        Raises `RelayError` once the client has ended for good. Cancelling it loses nothing.
        """
        try:
            return await self._invite_recv.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise RelayError(f"relay connection closed: {self.close_reason}") from None

    async def accept(self, invitation: Invitation, *, timeout: float = 10.0) -> Pairing:
        """Accept `invitation`; returns the pairing once the relay opened the circuit.

        Raises `RelayError` if the relay withdrew it or the connection it came on was lost.
        """
        if invitation.accepted is not None:
            return invitation.accepted
        invited = _invited(invitation)
        result = await self._request(lambda t, now: self._core.accept(t, invited, timeout, now))
        assert isinstance(result, Pairing)
        return result

    async def reject(self, invitation: Invitation, reason: str) -> None:
        """Refuse `invitation`; the relay tells the other peer. Never raises for a relay
        connection that is gone (the invitation went with it)."""
        if invitation.accepted is not None:
            await invitation.accepted.circuit.aclose(reason)
            return
        try:
            await self._run(self._core.reject(_invited(invitation), reason))
        except TransportClosed:
            pass

    # ----------------------------------------------------------------- circuits
    async def open_circuit(self, peer_id: PeerId, *, timeout: float = 10.0) -> CircuitTransport:
        """Open a new circuit to `peer_id`, with whom we are paired (after a release, or when
        the relay closed the old one). The relay's answers carry no request id, so opens go
        to the relay one at a time.

        Raises `RelayError` if the relay refuses (peer offline, not paired, rate limit) or
        does not answer within `timeout`, `TransportClosed` if the relay connection is gone.
        """
        result = await self._request(
            lambda t, now: self._core.open_circuit(t, peer_id, timeout, now)
        )
        assert isinstance(result, CircuitTransport)
        return result

    async def reopen_circuit(
        self, peer_id: PeerId, *, timeout: float = 10.0, avoid: Collection[str] = ()
    ) -> CircuitTransport:
        """A new circuit to `peer_id` for a live session: `open_circuit` while we are paired
        on this relay connection, else (or if the relay forgot the pairing) pair again: the
        relay restarted or we reconnected, and pairings belong to connections. The peer's
        client accepts such a pairing by itself and routes the circuit by its first frame.

        Raises as `open_circuit` and `connect`, and `RelayError` at once if `avoid` names
        this relay's URL (a session wants a circuit on another relay: there is none here).
        """
        if self.url in avoid:
            raise RelayError(f"no relay to use but {self.url}, which the session avoids")
        result = await self._request(
            lambda t, now: self._core.reopen_circuit(t, peer_id, timeout, now)
        )
        return result.circuit if isinstance(result, Pairing) else result

    async def send_relayed(self, circuit_id: int, payload: bytes) -> None:
        """Send `payload` on the circuit (`CircuitTransport.send`), waiting for credit if need
        be. Raises `TransportClosed` if the circuit or the connection is gone."""
        overdraw = False  # the relay stopped granting: send as without credits
        while (data := self._core.send_relayed(circuit_id, payload, overdraw)) is None:
            if (circuit := self._circuits.get(circuit_id)) is None:
                raise TransportClosed("circuit closed")
            overdraw = not await circuit.wait_for_credit()
        link = self._link
        assert link is not None  # an open circuit implies a registered connection
        await link.send(data)

    async def send_relayed_many(self, circuit_id: int, payloads: Sequence[bytes]) -> None:
        """Send `payloads` on the circuit in order (`CircuitTransport.send_many`): as many as
        the credit covers are written together, then the next waits for credit as in
        `send_relayed`. Raises `TransportClosed` if the circuit or the connection is gone;
        cancelled, the payloads before the one waiting for credit have been sent."""
        core = self._core
        ready: list[bytes] = []
        for payload in payloads:
            data = core.send_relayed(circuit_id, payload)
            if data is None:  # out of credit: send what is ready, then wait as one send
                if ready:
                    await self._send_now(ready)
                    ready = []
                await self.send_relayed(circuit_id, payload)
            else:
                ready.append(data)
        if ready:
            await self._send_now(ready)

    async def _send_now(self, messages: list[bytes]) -> None:
        link = self._link
        assert link is not None  # an open circuit implies a registered connection
        await link.send_many(messages)

    def max_window(self, circuit_id: int) -> int:
        """The largest window a session may use on the circuit (`CircuitTransport.max_window`)."""
        return self._core.max_window(circuit_id)

    def udp_route(self, circuit_id: int) -> tuple[bytes, int] | None:
        """(token, relay UDP port) of the circuit, if the relay forwards its datagrams."""
        return self._core.udp_route(circuit_id)

    async def release_circuit(self, circuit_id: int, reason: str) -> None:
        """Release circuit `circuit_id` (`CircuitTransport.aclose`): the relay and the peer
        are told. Never raises for a connection that is gone (the circuit went with it)."""
        try:
            await self._run(self._core.close_circuit(circuit_id, reason))
        except TransportClosed:
            pass

    # ----------------------------------------------------------------- running
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and register, then stay registered until cancelled.

        `await nursery.start(client.run)` returns once registered and raises what made the
        first attempt fail: `RelayError` (the relay refused us or was too slow),
        `TransportClosed` (unreachable), `ProtocolError`, `HandshakeError`. Later losses are
        retried in the background; the direct listener serves alongside. On cancellation the
        client ends for good: its circuits close and `next_invitation` raises `RelayError`.
        """
        try:
            async with open_hidden_nursery() as nursery:
                nursery.start_soon(self._run_timers, nursery)
                nursery.start_soon(self._keep_connected)
                await self._up.wait()
                if self.direct is not None and self._serves_direct:
                    await nursery.start(self.direct.serve)
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._execute(self._core.close("closed"))

    async def _keep_connected(self) -> None:
        """Dial when the machine says so (at once, then after each backoff wait) and read the
        connection until it ends. Raises the first attempt's failure; returns once closed."""
        while True:
            await self._dial.wait()
            self._dial = trio.Event()
            if self._core.state is RelayClientState.CLOSED:
                return
            opened = False
            dial = dial_websocket(self.url, local_port=self._local_port, subprotocols=_OFFER)
            try:
                async with dial as transport:
                    opened = True
                    await self._serve_connection(transport, transport.subprotocol in _CREDIT)
            except (MeshError, OSError) as exc:
                if not opened:  # the dial failed
                    self._execute(self._core.connection_failed(exc, trio.current_time()))
                else:
                    why = str(exc) or type(exc).__name__
                    self._execute(self._core.connection_lost(why, trio.current_time()))
            if self._fatal is not None:
                raise self._fatal

    async def _serve_connection(self, transport: Transport, credited: bool) -> None:
        link = self._link = ClientLink(transport)
        reason = "relay closed the connection"
        try:
            with link.scope:
                port = self._local_port if self.direct is not None else None
                local = [] if port is None else local_candidates(transport.local_address, port)
                now = trio.current_time()
                await self._run(self._core.connection_opened(local, now, credited=credited))
                while True:
                    for data in await transport.receive_batch():
                        await self._run(self._core.receive_data(data, trio.current_time()))
        except TransportClosed as exc:
            reason = exc.reason
        self._execute(self._core.connection_lost(reason, trio.current_time()))
        if link.close_reason is not None:
            await transport.aclose(link.close_reason)

    async def _run_timers(self, nursery: trio.Nursery) -> None:
        """Call the machine's `handle_timer` whenever its next deadline passes. What that
        sends goes out from its own task, so a stalled connection never holds up deadlines."""
        while True:
            deadline = self._core.get_timer()
            self._timer_scope = trio.CancelScope(
                deadline=math.inf if deadline is None else deadline
            )
            with self._timer_scope:
                await trio.sleep_forever()
            link = self._link
            sends = self._execute(self._core.handle_timer(trio.current_time()))
            if sends and link is not None:
                nursery.start_soon(send_quietly, link, sends)

    # ----------------------------------------------------------------- outputs
    async def _request(
        self, start: Callable[[int, float], list[ev.Output]]
    ) -> Pairing | CircuitTransport:
        """Start a request under a new ticket and wait for the machine's answer."""
        ticket = next(self._tickets)
        send, recv = trio.open_memory_channel[_Result](1)
        self._waiters[ticket] = send
        result: _Result | None = None
        try:
            await self._run(start(ticket, trio.current_time()))
            result = await recv.receive()
        finally:
            if self._waiters.pop(ticket, None) is not None:
                self._execute(self._core.cancel(ticket))  # nobody waits any more
            elif result is None:  # answered, but cancelled before we took the answer
                with trio.CancelScope(shield=True):
                    await _discard(recv.receive_nowait())
        if isinstance(result, Exception):
            raise result
        return result

    async def _run(self, outputs: list[ev.Output]) -> None:
        """Execute `outputs`, then send what they say on the connection they are for."""
        link = self._link
        for data in self._execute(outputs):
            assert link is not None
            await link.send(data)

    def _execute(self, outputs: list[ev.Output]) -> list[bytes]:
        """Do what `outputs` say, in order, except sending: return the bytes to send.

        Decisions taken here (a route for a circuit, room for an invitation) go back to the
        machine, whose answers join `outputs`.
        """
        sends: list[bytes] = []
        for out in outputs:
            if isinstance(out, ev.RelayedReceived):
                circuit = self._circuits.get(out.circuit_id)
                if circuit is not None:
                    circuit.deliver(out.payload)
            elif isinstance(out, ev.SendBytes):
                sends.append(out.data)
            else:
                self._handle(out, outputs)
        deadline = self._core.get_timer()
        if deadline is not None and deadline < self._timer_scope.deadline:
            self._timer_scope.deadline = deadline
        return sends

    def _handle(self, out: ev.Output, more: list[ev.Output]) -> None:
        match out:
            case ev.PairingCompleted():
                pairing = self._pairing(out)
                if not self._resolve(out.ticket, pairing):
                    more += self._core.close_circuit(out.circuit_id, "nobody waits for it")
            case ev.CircuitOpened():
                circuit = self._new_circuit(out.circuit_id, out.peer_id)
                if not self._resolve(out.ticket, circuit):
                    more += self._core.close_circuit(out.circuit_id, "nobody waits for it")
            case ev.PairingFailed() | ev.CircuitOpenFailed():
                if not self._resolve(out.ticket, out.error):  # one we accepted on our own
                    log.info("pairing again with %s failed: %s", out.peer_id, out.error)
            case ev.CreditGranted() if out.circuit_id in self._circuits:
                self._circuits[out.circuit_id].credit_granted()
            case ev.CircuitClosed():
                closed = self._circuits.pop(out.circuit_id, None)
                if closed is not None:
                    closed.mark_closed(out.reason)
            case ev.Invited():
                self._invited(out, more)
            case ev.CircuitReopened():
                circuit = self._new_circuit(out.circuit_id, out.peer_id)
                route = self.routes.find(out.first_frame)
                if route is None or not route.incoming_circuit(circuit, out.first_frame):
                    more += self._core.close_circuit(out.circuit_id, NO_SESSION)
            case ev.InvitationAccepted():
                pairing = self._pairing(out.pairing, out.first_frame)
                invitation = _invitation(out.invitation, accepted=pairing)
                try:
                    self._invite_send.send_nowait(invitation)
                except (trio.WouldBlock, trio.ClosedResourceError):
                    more += self._core.close_circuit(out.pairing.circuit_id, NO_SESSION)
            case ev.CloseConnection():
                if self._link is not None:
                    self._link.close(out.reason)
            case ev.Reconnect():
                self._dial.set()
            case ev.Registered():
                peer_id = self.identity.peer_id
                log.info("registered at %s as %s (observed %s)", self.url, peer_id, out.observed)
                self._refusal = None
                self._note_verification()
                if out.registrations > 1:
                    log.info("reconnected to relay %s (observed %s)", self.url, out.observed)
                self._up.set()
            case ev.RegistrationFailed(error=error, retry_in_s=None):
                self._fatal = error
            case ev.RegistrationFailed(error=RelayNotVerified() as error, retry_in_s=wait):
                # Each try meets the same relay: say so when what it does changes, not each time.
                level = logging.DEBUG if str(error) == self._refusal else logging.WARNING
                self._refusal = str(error)
                log.log(level, "could not reconnect to relay: %s; next try in %.1f s", error, wait)
            case ev.RegistrationFailed(error=error, retry_in_s=wait):
                why = str(error) or type(error).__name__
                log.warning("could not reconnect to relay: %s; next try in %.1f s", why, wait)
            case ev.ConnectionLost():  # a relay's announced shutdown is no fault: info only
                level = logging.INFO if out.graceful else logging.WARNING
                why, wait = out.reason, out.retry_in_s
                log.log(level, "relay connection lost: %s; reconnecting in %.1f s", why, wait)
                self._drop_invitations()
            case ev.Closed():
                log.info("relay connection to %s closed: %s", self.url, out.reason)
                self._drop_invitations()
                self._invite_send.close()
                self._dial.set()

    def _note_verification(self) -> None:
        if self.verified:
            log.debug("relay at %s proved its id %s", self.url, self.relay_id)
            return
        if self.url in _UNVERIFIED:
            return
        _UNVERIFIED.add(self.url)
        presented = self.presented_relay_id
        says = f"; it presents relay id {presented}" if presented is not None else ""
        log.warning(
            "relay at %s is not verified: no relay id was given for it%s; give its id with the "
            "URL so that a stranger at that address is refused",
            self.url,
            says,
        )

    def _invited(self, out: ev.Invited, more: list[ev.Output]) -> None:
        if self.routes.serves_peer(out.initiator):
            # A peer we have a session with asks to be paired (after a reconnect its session
            # needs a circuit): accept on our own; the circuit's first frame routes it.
            ticket, now = next(self._tickets), trio.current_time()
            more += self._core.accept(ticket, out, self._timeout, now, route=True)
            return
        try:
            self._invite_send.send_nowait(_invitation(out))
        except trio.WouldBlock:
            code = wire.ErrorCode.CAPACITY
            more += self._core.reject(out, "too many invitations", code=code)
        except trio.ClosedResourceError:
            pass

    def _drop_invitations(self) -> None:
        """Invitations from a lost connection cannot be accepted any more (their circuits,
        if accepted already, closed with the connection)."""
        while True:
            try:
                self._invite_recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return

    def _resolve(self, ticket: int, result: _Result) -> bool:
        waiter = self._waiters.pop(ticket, None)
        if waiter is None:
            return False
        waiter.send_nowait(result)
        return True

    def _new_circuit(
        self, circuit_id: int, peer_id: PeerId, first: bytes | None = None
    ) -> CircuitTransport:
        circuit = CircuitTransport(self, circuit_id, peer_id, first)
        self._circuits[circuit_id] = circuit
        return circuit

    def _pairing(self, out: ev.PairingCompleted, first: bytes | None = None) -> Pairing:
        circuit = self._new_circuit(out.circuit_id, out.peer.peer_id, first)
        return Pairing(circuit, out.peer, out.peer_observed, out.peer_candidates, out.role)


def _invited(i: Invitation) -> ev.Invited:
    """The machine's record of invitation `i`."""
    keys, where = (i.bundle_x25519, i.bundle_kem), (i.observed, i.candidates)
    return ev.Invited(i.request_id, i.initiator, *keys, *where, i.connection)


def _invitation(out: ev.Invited, accepted: Pairing | None = None) -> Invitation:
    keys, where = (out.x25519_public, out.kem_public), (out.observed, out.candidates)
    return Invitation(out.request_id, out.initiator, *keys, *where, out.connection, accepted)


async def _discard(result: _Result) -> None:
    """Close what a request produced after its caller stopped waiting."""
    if isinstance(result, Pairing):
        await result.circuit.aclose("nobody waits for it")
    elif isinstance(result, CircuitTransport):
        await result.aclose("nobody waits for it")


@asynccontextmanager
async def open_relay_client(
    url: str,
    identity: Identity,
    *,
    relay_id: PeerId | None = None,
    candidates: Sequence[Endpoint] = (),
    local_port: int | None = None,
    direct: bool = False,
    timeout: float = 10.0,
    reconnect_min_s: float = RELAY_RECONNECT_MIN_S,
    reconnect_max_s: float = RELAY_RECONNECT_MAX_S,
    heartbeat_s: float = RELAY_HEARTBEAT_S,
    dead_after_s: float = RELAY_DEAD_AFTER_S,
) -> AsyncIterator[RelayClient]:
    """Connect to the relay at `url`, prove our identity and register.

    With `relay_id` (the relay's list entry names it), the relay must first prove that it
    holds the keys of that id, on this and every later connection, before it is sent our
    keys or candidates; a relay that cannot is refused with `RelayNotVerified` naming `url`
    and the id. Without it the relay is not checked (a warning says so, once per URL).

    With `direct`, a listener for direct connections is opened first, on `local_port` (0 or
    None: a free port), and the relay connection leaves from that same port (SO_REUSEADDR and
    SO_REUSEPORT), so that a NAT maps both alike (docs/direct.md); we announce that port on
    the address the relay connection leaves from, after `candidates`.

    A relay connection lost later (the relay restarted, the network broke, or nothing arrived
    for `dead_after_s`: the relay is pinged after `heartbeat_s` without news) is
    re-established in the background: "relay connection lost: <reason>; reconnecting in
    N s", waits from `reconnect_min_s` doubling to `reconnect_max_s` (±50 %), then
    "reconnected to relay". The client ends for good only when this block is left, or when
    another registration with our peer id replaced ours (`next_invitation` then raises
    `RelayError`).

    Raises `RelayError` if the relay refuses us (`RelayNotVerified` if it cannot prove
    `relay_id`), `TransportClosed` if it cannot be reached, `ProtocolError` if it breaks the
    protocol, and `ConfigError` if the port cannot be bound — for the first connection;
    later ones are retried. The connections, the listener and
    their tasks live inside this `async with`. Cancelling the block (or leaving it) closes
    the relay connection and every circuit on it; requests in flight raise `RelayError`.
    """
    listener: trio.SocketListener | None = None
    if direct:
        try:
            listener = await open_shared_port_listener(local_port or 0)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for direct connections on port {local_port or 0}: "
                f"{exc.strerror or exc}; choose another port or pass direct='never'"
            ) from None
        local_port = listener.socket.getsockname()[1]
    client = RelayClient(
        identity,
        url,
        relay_id=relay_id,
        candidates=candidates,
        local_port=local_port,
        listener=listener,
        timeout=timeout,
        reconnect_min_s=reconnect_min_s,
        reconnect_max_s=reconnect_max_s,
        heartbeat_s=heartbeat_s,
        dead_after_s=dead_after_s,
    )
    try:
        async with open_hidden_nursery() as nursery:
            await nursery.start(client.run)
            yield client
    finally:
        if listener is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(listener)
