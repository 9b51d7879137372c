"""A peer's control connection to a relay: registration with the KEM challenge, pairing
requests and invitations, relayed circuits as Transports (opened, re-opened, released), and
the direct-connection listener that shares the connection's local port.

The relay is a matchmaker, not a middleman: when the connection drops (the relay restarted,
the network broke) the client reconnects with jittered exponential backoff and registers
again from the same port, while sessions on direct paths carry on untouched.

Everything the relay says about a peer is checked end to end: a key bundle is accepted only
if it hashes to the peer id we pinned, so a relay that substitutes keys gets a
`HandshakeError`, not a session.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from meshcore._direct import DirectListener, SessionRoutes, local_candidates
from meshcore._nursery import open_hidden_nursery
from meshcore._transport import Transport, open_reuseport_listener, open_websocket_transport
from meshcore.errors import (
    ConfigError,
    DecodeError,
    MeshError,
    ProtocolError,
    RelayError,
    TransportClosed,
)
from meshcore.proto import wire
from meshcore.proto.constants import (
    DIRECT_ROUTE_TIMEOUT_S,
    MAX_CANDIDATES,
    RELAY_RECONNECT_JITTER,
    RELAY_RECONNECT_MAX_S,
    RELAY_RECONNECT_MIN_S,
)
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.identity import Identity, PeerId, PublicBundle
from meshcore.proto.relayauth import answer_challenge

__all__ = ["CircuitTransport", "Invitation", "Pairing", "RelayClient", "open_relay_client"]

log = logging.getLogger("meshcore.client")

_CIRCUIT_QUEUE = 512
_INVITE_QUEUE = 64
_TYPE_FRAME = 4  # first byte of a sealed transport frame (a handshake message is 1..3)


class CircuitTransport(Transport):
    """One relayed circuit to a paired peer, as a message-oriented Transport.

    Frames travel inside `Relayed` control messages; the relay sees only opaque bytes. A
    circuit belongs to one relay connection: it closes when that connection is lost.
    """

    def __init__(self, client: RelayClient, circuit_id: int, peer_id: PeerId) -> None:
        self._client = client
        self.circuit_id = circuit_id
        self.peer_id = peer_id
        self._send_q, self._recv_q = trio.open_memory_channel[bytes](_CIRCUIT_QUEUE)
        self._close_reason: str | None = None
        self._unread: bytes | None = None
        self.dropped = 0

    @property
    def local_address(self) -> Endpoint | None:
        return self._client.transport.local_address

    @property
    def remote_address(self) -> Endpoint | None:
        return self._client.transport.remote_address

    @property
    def close_reason(self) -> str | None:
        return self._close_reason

    async def send(self, data: bytes) -> None:
        if self._close_reason is not None:
            raise TransportClosed(self._close_reason)
        await self._client._send_raw(wire.encode_relayed(self.circuit_id, data))

    async def receive(self) -> bytes:
        if self._unread is not None:
            data, self._unread = self._unread, None
            return data
        try:
            return await self._recv_q.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise TransportClosed(self._close_reason or "circuit closed") from None

    async def aclose(self, reason: str = "closed") -> None:
        if self._close_reason is not None:
            return
        self._closed(reason)
        with trio.move_on_after(1.0) as scope:
            scope.shield = True
            try:
                await self._client._send(
                    wire.CircuitClose(
                        self.circuit_id, wire.ErrorCode.NONE, wire.clip_reason(reason)
                    )
                )
            except (TransportClosed, RelayError):
                pass

    def _deliver(self, payload: bytes) -> None:
        try:
            self._send_q.send_nowait(payload)
        except trio.WouldBlock:
            # A full queue behaves like a lossy link: the session retransmits.
            self.dropped += 1
        except trio.ClosedResourceError:
            pass

    def _closed(self, reason: str) -> None:
        if self._close_reason is None:
            self._close_reason = reason
            self._send_q.close()
            if self._client._circuits.get(self.circuit_id) is self:
                del self._client._circuits[self.circuit_id]


@attrs.frozen
class Pairing:
    """What the relay told us about a peer we were paired with, checked end to end."""

    circuit: CircuitTransport
    peer: PublicBundle
    peer_observed: Endpoint
    peer_candidates: tuple[Endpoint, ...]
    role: wire.Role

    @property
    def peer_id(self) -> PeerId:
        return self.peer.peer_id


@attrs.frozen
class Invitation:
    """A peer asked the relay to be paired with us; accept or reject it."""

    request_id: int
    initiator: PeerId
    bundle_x25519: bytes
    bundle_kem: bytes
    observed: Endpoint
    candidates: tuple[Endpoint, ...]
    connection: int = attrs.field(default=0, repr=False)
    """Which relay connection of ours it came on (`RelayClient.registrations`)."""
    accepted: Pairing | None = attrs.field(default=None, repr=False)
    """Set when the client already accepted it (a peer we have a session with paired again
    and opened a new session instead): `accept` returns this."""


class RelayClient:
    """An authenticated control connection to a relay (create it with `open_relay_client`).

    It stays registered across relay restarts: a lost connection is dialled again with
    jittered exponential backoff. Meanwhile requests fail with `RelayError` (or
    `TransportClosed`) and the circuits of the lost connection are closed.
    """

    def __init__(
        self,
        identity: Identity,
        url: str,
        *,
        candidates: Sequence[Endpoint] = (),
        local_port: int | None = None,
        timeout: float = 10.0,
        reconnect_min_s: float = RELAY_RECONNECT_MIN_S,
        reconnect_max_s: float = RELAY_RECONNECT_MAX_S,
    ) -> None:
        self.identity = identity
        self.url = url
        self.observed: Endpoint | None = None
        """Our address as the relay sees it (Registered.observed)."""
        self.candidates: tuple[Endpoint, ...] = ()
        """The direct-connection candidates we announced (Hello; ENDPOINTS in sessions)."""
        self.direct: DirectListener | None = None
        """The listener on our shared port, when opened with `direct=True`."""
        self.routes = SessionRoutes()
        """Live sessions that take direct connections and re-opened circuits."""
        self.close_reason: str | None = None
        """Why the client ended for good (None while it lives, connected or reconnecting)."""
        self.lost_reason: str | None = None
        """Why the current relay connection was lost (None while connected)."""
        self.registrations = 0
        """Successful registrations: 1 after the first connection, +1 per reconnect."""
        self._transport: Transport | None = None
        self._extra_candidates = tuple(candidates)
        self._local_port = local_port
        self._timeout = timeout
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._circuits: dict[int, CircuitTransport] = {}
        self._paired: set[bytes] = set()
        self._pending: dict[int, trio.MemorySendChannel[wire.ControlMessage]] = {}
        self._invite_send, self._invite_recv = trio.open_memory_channel[Invitation](_INVITE_QUEUE)
        self._send_lock = trio.Lock()
        self._closed = trio.Event()
        self._open_lock = trio.Lock()
        self._open_waiter: tuple[bytes, trio.MemorySendChannel[CircuitTransport | str]] | None = (
            None
        )
        self._nursery: trio.Nursery | None = None

    @property
    def transport(self) -> Transport:
        """The current (or the last) control connection to the relay."""
        if self._transport is None:
            raise TransportClosed(f"not connected to the relay at {self.url} yet")
        return self._transport

    @property
    def connected(self) -> bool:
        """True while registered on a live relay connection."""
        return self._transport is not None and self.lost_reason is None and not self.close_reason

    @property
    def local_port(self) -> int | None:
        """The shared local port (relay connection, direct listener, direct dials)."""
        if self._local_port is not None:
            return self._local_port
        address = self._transport.local_address if self._transport is not None else None
        return address.port if address is not None else None

    # ----------------------------------------------------------------- pairing
    async def connect(self, peer_id: PeerId, *, timeout: float = 10.0) -> Pairing:
        """Ask the relay to pair us with `peer_id`; returns once the peer accepted.

        Raises `RelayError` if the peer is offline, unknown or refused us, or on timeout,
        `TransportClosed` while the relay connection is down, and `HandshakeError` if the
        relay served a key bundle that is not `peer_id`'s.
        """
        request_id = self._new_request_id()
        reply = await self._request(request_id, wire.Connect(request_id, peer_id.digest), timeout)
        if isinstance(reply, wire.Reject):
            raise RelayError(
                f"pairing with {peer_id} refused: {reply.reason or reply.code.name}",
                code=int(reply.code),
            )
        assert isinstance(reply, wire.Paired)
        return self._pairing(reply, pinned=peer_id)

    async def next_invitation(self) -> Invitation:
        """Wait for the next peer that asks to be paired with us (across reconnects).

        Raises `RelayError` once the client has ended for good.
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
        if invitation.connection != self.registrations:
            raise RelayError(
                f"pairing with {invitation.initiator} failed: its invitation came on a relay "
                "connection that has since been lost; the peer must ask again"
            )
        rid = invitation.request_id
        reply = await self._request(rid, wire.Accept(rid), timeout)
        if not isinstance(reply, wire.Paired):
            raise RelayError(f"pairing with {invitation.initiator} failed: relay withdrew it")
        return self._pairing(reply, pinned=invitation.initiator)

    async def reject(self, invitation: Invitation, reason: str) -> None:
        """Refuse `invitation`; the relay tells the other peer."""
        if invitation.accepted is not None:
            await invitation.accepted.circuit.aclose(reason)
            return
        if invitation.connection != self.registrations:
            return  # the relay that sent it is gone, and the pairing with it
        await self._send(
            wire.Reject(invitation.request_id, wire.ErrorCode.NOT_ALLOWED, wire.clip_reason(reason))
        )

    # ----------------------------------------------------------------- circuits
    async def open_circuit(self, peer_id: PeerId, *, timeout: float = 10.0) -> CircuitTransport:
        """Open a new circuit to `peer_id`, with whom we are paired (after a release, or when
        the relay closed the old one). One request at a time: the relay's answers carry no
        request id.

        Raises `RelayError` if the relay refuses (peer offline, not paired, rate limit) or
        does not answer within `timeout`, `TransportClosed` if the relay connection is gone.
        """
        async with self._open_lock:
            send, recv = trio.open_memory_channel[CircuitTransport | str](1)
            self._open_waiter = (peer_id.digest, send)
            try:
                await self._send(wire.CircuitOpen(0, peer_id.digest))
                with trio.fail_after(timeout):
                    reply = await recv.receive()
            except trio.TooSlowError:
                raise RelayError(
                    f"the relay did not open a circuit to {peer_id} within {timeout:g} s"
                ) from None
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise RelayError(f"relay connection lost: {self._why_down()}") from None
            finally:
                self._open_waiter = None
        if isinstance(reply, str):
            raise RelayError(f"the relay refused a circuit to {peer_id}: {reply}")
        return reply

    async def reopen_circuit(self, peer_id: PeerId, *, timeout: float = 10.0) -> CircuitTransport:
        """A new circuit to `peer_id` for a live session: `open_circuit` while we are paired
        on this relay connection, else pair again (the relay restarted or we reconnected:
        pairings belong to connections). The peer's client accepts such a pairing by itself
        and routes the circuit by its first frame, like a re-opened one.

        Raises as `open_circuit` and `connect`.
        """
        if peer_id.digest in self._paired:
            try:
                return await self.open_circuit(peer_id, timeout=timeout)
            except RelayError:
                if not self.connected:
                    raise
                self._paired.discard(peer_id.digest)  # the relay forgot the pairing: pair again
        pairing = await self.connect(peer_id, timeout=timeout)
        return pairing.circuit

    def _circuit_opened(self, message: wire.CircuitOpen) -> None:
        peer_id = PeerId(message.peer_id)
        circuit = CircuitTransport(self, message.circuit_id, peer_id)
        self._circuits[message.circuit_id] = circuit
        waiter = self._open_waiter
        if waiter is not None and waiter[0] == message.peer_id:
            self._open_waiter = None
            waiter[1].send_nowait(circuit)
        elif self._nursery is not None:
            # the peer re-opened it: its first frame says which of our sessions it is for
            self._nursery.start_soon(self._route_circuit, circuit)

    async def _route_circuit(self, circuit: CircuitTransport) -> None:
        handed_over = False
        try:
            first = await self._first_frame(circuit)
            route = self.routes.find(first) if first is not None else None
            if route is not None and first is not None:
                handed_over = route.incoming_circuit(circuit, first)
        finally:
            if not handed_over:
                with trio.CancelScope(shield=True):
                    await circuit.aclose("no session for this circuit")

    async def _repaired(self, invitation: Invitation) -> None:
        """A peer we have a session with asks to be paired (after a reconnect, its session
        needs a circuit): accept, and route the circuit by its first frame. A handshake
        instead means a new session: the invitation goes to whoever serves them."""
        handed_over = False
        circuit: CircuitTransport | None = None
        try:
            try:
                pairing = await self.accept(invitation, timeout=self._timeout)
            except MeshError as exc:
                log.info("pairing again with %s failed: %s", invitation.initiator, exc)
                return
            circuit = pairing.circuit
            first = await self._first_frame(circuit)
            if first is None:
                return
            if first[:1] == bytes([_TYPE_FRAME]):
                route = self.routes.find(first)
                if route is not None:
                    handed_over = route.incoming_circuit(circuit, first)
                return
            circuit._unread = first
            try:
                self._invite_send.send_nowait(attrs.evolve(invitation, accepted=pairing))
                handed_over = True
            except (trio.WouldBlock, trio.ClosedResourceError):
                pass
        finally:
            if circuit is not None and not handed_over:
                with trio.CancelScope(shield=True):
                    await circuit.aclose("no session for this circuit")

    @staticmethod
    async def _first_frame(circuit: CircuitTransport) -> bytes | None:
        with trio.move_on_after(DIRECT_ROUTE_TIMEOUT_S):
            try:
                return await circuit.receive()
            except TransportClosed:
                return None
        return None

    # ----------------------------------------------------------------- internals
    def _pairing(self, paired: wire.Paired, *, pinned: PeerId) -> Pairing:
        bundle = PublicBundle.checked(paired.x25519_public, paired.kem_public, pinned)
        circuit = CircuitTransport(self, paired.circuit_id, pinned)
        self._circuits[paired.circuit_id] = circuit
        self._paired.add(pinned.digest)
        return Pairing(circuit, bundle, paired.observed, paired.candidates, paired.role)

    def _new_request_id(self) -> int:
        while True:
            rid = secrets.randbits(32)
            if rid not in self._pending:
                return rid

    def _why_down(self) -> str:
        return self.close_reason or self.lost_reason or "closed"

    async def _request(
        self, request_id: int, message: wire.ControlMessage, timeout: float
    ) -> wire.ControlMessage:
        send, recv = trio.open_memory_channel[wire.ControlMessage](1)
        self._pending[request_id] = send
        try:
            await self._send(message)
            with trio.fail_after(timeout):
                try:
                    return await recv.receive()
                except trio.EndOfChannel:
                    raise RelayError(f"relay connection lost: {self._why_down()}") from None
        except trio.TooSlowError:
            raise RelayError(f"no answer from the relay within {timeout:g} s") from None
        finally:
            if self._pending.get(request_id) is send:
                del self._pending[request_id]

    async def _send(self, message: wire.ControlMessage) -> None:
        await self._send_raw(wire.encode_control(message))

    async def _send_quietly(self, message: wire.ControlMessage) -> None:
        """Send `message` if the connection is up (a refusal nobody waits for)."""
        try:
            await self._send(message)
        except (TransportClosed, RelayError):
            pass

    async def _send_raw(self, data: bytes) -> None:
        if self.close_reason is not None:
            raise TransportClosed(self.close_reason)
        if self.lost_reason is not None or self._transport is None:
            raise TransportClosed(
                f"relay connection lost: {self.lost_reason or 'not connected'}; reconnecting"
            )
        transport = self._transport
        async with self._send_lock:
            await transport.send(data)

    # ----------------------------------------------------------------- the connection
    async def _keep_connected(self, *, task_status: trio.TaskStatus[None]) -> None:
        """Connect and register, then read; when the connection is lost, reconnect with
        jittered exponential backoff until the client closes. The first attempt's errors
        propagate (through `nursery.start`)."""
        delay = self._reconnect_min_s
        while True:
            lost_reason: str | None = None
            try:
                async with open_websocket_transport(
                    self.url, local_port=self._local_port
                ) as transport:
                    await self._register(transport)
                    if self.registrations == 1:
                        task_status.started()
                    else:
                        log.info("reconnected to relay %s (observed %s)", self.url, self.observed)
                    delay = self._reconnect_min_s
                    lost_reason, permanent = await self._read(transport)
                    if permanent:
                        self._shutdown(lost_reason)
                        return
            except (MeshError, OSError) as exc:
                if self.registrations == 0:
                    raise
                why = str(exc) or type(exc).__name__
                if lost_reason is None:  # a reconnect attempt failed
                    wait = self._jittered(delay)
                    log.warning("could not reconnect to relay: %s; next try in %.1f s", why, wait)
                    delay = min(delay * 2, self._reconnect_max_s)
                    await trio.sleep(wait)
                    continue
            assert lost_reason is not None
            wait = self._jittered(delay)
            log.warning("relay connection lost: %s; reconnecting in %.1f s", lost_reason, wait)
            delay = min(delay * 2, self._reconnect_max_s)
            await trio.sleep(wait)

    def _jittered(self, delay: float) -> float:
        return delay * (1 + RELAY_RECONNECT_JITTER * (2 * random.random() - 1))

    async def _register(self, transport: Transport) -> None:
        announced = list(dict.fromkeys(self._extra_candidates))
        if self.direct is not None and self._local_port is not None:
            for candidate in local_candidates(transport.local_address, self._local_port):
                if candidate not in announced:
                    announced.append(candidate)
        announced = announced[:MAX_CANDIDATES]
        try:
            observed = await _register(transport, self.identity, announced, self._timeout)
        except trio.TooSlowError:
            raise RelayError(
                f"relay at {self.url} did not complete registration in {self._timeout:g} s"
            ) from None
        self._transport = transport
        self.observed = observed
        self.candidates = tuple(announced)
        self.lost_reason = None
        self.registrations += 1
        log.info("registered at %s as %s (observed %s)", self.url, self.identity.peer_id, observed)

    async def _read(self, transport: Transport) -> tuple[str, bool]:
        """Dispatch the relay's messages until the connection ends: (why, for good?)."""
        reason = "relay closed the connection"
        permanent = False
        try:
            while True:
                data = await transport.receive()
                try:
                    message = wire.decode_control_untrusted(data)
                except DecodeError as exc:
                    reason = f"relay sent a malformed message: {exc}"
                    await transport.aclose(reason)
                    break
                await self._dispatch(message)
        except TransportClosed as exc:
            reason = exc.reason
        except RelayError as exc:
            reason = str(exc)
            # another registration with our id took over: reconnecting would evict it in turn
            permanent = exc.code == wire.ErrorCode.REPLACED
        finally:
            self._connection_lost(reason)
        return reason, permanent

    async def _dispatch(self, message: wire.ControlMessage) -> None:
        if isinstance(message, wire.Relayed):
            circuit = self._circuits.get(message.circuit_id)
            if circuit is not None:
                circuit._deliver(message.payload)
        elif isinstance(message, wire.Paired | wire.Reject):
            pending = self._pending.get(message.request_id)
            if pending is not None:
                pending.send_nowait(message)
        elif isinstance(message, wire.Invite):
            self._invited(message)
        elif isinstance(message, wire.CircuitOpen):
            self._circuit_opened(message)
        elif isinstance(message, wire.CircuitClose):
            why = message.reason or message.code.name
            waiter = self._open_waiter
            if message.circuit_id == 0 and waiter is not None:
                self._open_waiter = None
                waiter[1].send_nowait(why)  # the answer to our CircuitOpen: refused
                return
            circuit = self._circuits.get(message.circuit_id)
            if circuit is not None:
                circuit._closed(f"relay closed the circuit: {why}")
        elif isinstance(message, wire.Ping):
            await self._send(wire.Pong(message.nonce))
        elif isinstance(message, wire.Error | wire.Close):
            raise RelayError(
                f"relay closed the connection: {message.reason or message.code.name}",
                code=int(message.code),
            )

    def _invited(self, message: wire.Invite) -> None:
        invitation = Invitation(
            message.request_id,
            PeerId(message.initiator),
            message.x25519_public,
            message.kem_public,
            message.observed,
            message.candidates,
            connection=self.registrations,
        )
        if self.routes.serves_peer(invitation.initiator) and self._nursery is not None:
            self._nursery.start_soon(self._repaired, invitation)
            return
        try:
            self._invite_send.send_nowait(invitation)
        except trio.WouldBlock:
            if self._nursery is not None:
                refusal = wire.Reject(
                    message.request_id, wire.ErrorCode.CAPACITY, "too many invitations"
                )
                self._nursery.start_soon(self._send_quietly, refusal)
        except trio.ClosedResourceError:
            pass

    def _connection_lost(self, reason: str) -> None:
        """The current connection ended: everything tied to it ends with it."""
        if self.lost_reason is None:
            self.lost_reason = reason
        why = f"relay connection lost: {reason}"
        for circuit in list(self._circuits.values()):
            circuit._closed(why)
        for pending in self._pending.values():
            pending.close()
        self._pending.clear()
        if self._open_waiter is not None:
            self._open_waiter[1].close()
            self._open_waiter = None
        self._paired.clear()
        while True:  # invitations from that connection cannot be accepted any more
            try:
                stale = self._invite_recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if stale.accepted is not None:
                stale.accepted.circuit._closed(why)

    def _shutdown(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
            log.info("relay connection to %s closed: %s", self.url, reason)
        self._connection_lost(reason)
        self._invite_send.close()
        self._closed.set()


async def _register(
    transport: Transport, identity: Identity, candidates: Sequence[Endpoint], timeout: float
) -> Endpoint:
    bundle = identity.public
    await transport.send(
        wire.encode_control(wire.Hello(bundle.x25519_public, bundle.kem_public, tuple(candidates)))
    )
    with trio.fail_after(timeout):
        challenge = wire.decode_control_untrusted(await transport.receive())
        if isinstance(challenge, wire.Error | wire.Close):
            raise RelayError(f"relay refused us: {challenge.reason}", code=int(challenge.code))
        if not isinstance(challenge, wire.Challenge):
            raise ProtocolError(f"relay sent {type(challenge).__name__} instead of a challenge")
        await transport.send(wire.encode_control(answer_challenge(identity, challenge)))
        registered = wire.decode_control_untrusted(await transport.receive())
        if isinstance(registered, wire.Error | wire.Close):
            raise RelayError(
                f"relay refused our registration: {registered.reason}", code=int(registered.code)
            )
        if not isinstance(registered, wire.Registered):
            raise ProtocolError(f"relay sent {type(registered).__name__} instead of registered")
        if registered.peer_id != identity.peer_id.digest:
            raise ProtocolError("relay registered us under another peer id")
        return registered.observed


@asynccontextmanager
async def open_relay_client(
    url: str,
    identity: Identity,
    *,
    candidates: Sequence[Endpoint] = (),
    local_port: int | None = None,
    direct: bool = False,
    timeout: float = 10.0,
    reconnect_min_s: float = RELAY_RECONNECT_MIN_S,
    reconnect_max_s: float = RELAY_RECONNECT_MAX_S,
) -> AsyncIterator[RelayClient]:
    """Connect to the relay at `url`, prove our identity and register.

    With `direct`, a listener for direct connections is opened first, on `local_port` (0 or
    None: a free port), and the relay connection leaves from that same port (SO_REUSEADDR and
    SO_REUSEPORT), so that a NAT maps both alike (DESIGN.md §1 step 5); we announce that port
    on the address the relay connection leaves from, after `candidates`.

    A relay connection lost later (the relay restarted, the network broke) is re-established
    in the background: "relay connection lost: <reason>; reconnecting in N s", waits from
    `reconnect_min_s` doubling to `reconnect_max_s` (±50 %), then "reconnected to relay".
    The client ends for good only when this block is left, or when another registration
    with our peer id replaced ours (`next_invitation` then raises `RelayError`).

    Raises `RelayError` if the relay refuses us, `TransportClosed` if it cannot be reached,
    `ProtocolError` if it breaks the protocol, and `ConfigError` if the port cannot be bound
    — for the first connection; later ones are retried. The connections, the listener and
    their tasks live inside this `async with`.
    """
    listener: trio.SocketListener | None = None
    if direct:
        try:
            listener = await open_reuseport_listener("0.0.0.0", local_port or 0)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen for direct connections on port {local_port or 0}: "
                f"{exc.strerror or exc}; choose another port or pass direct='never'"
            ) from None
        local_port = listener.socket.getsockname()[1]
    client = RelayClient(
        identity,
        url,
        candidates=candidates,
        local_port=local_port,
        timeout=timeout,
        reconnect_min_s=reconnect_min_s,
        reconnect_max_s=reconnect_max_s,
    )
    try:
        async with open_hidden_nursery() as nursery:
            client._nursery = nursery
            if listener is not None:
                client.direct = DirectListener(listener, client.routes)
            await nursery.start(client._keep_connected)
            if client.direct is not None:
                await nursery.start(client.direct.serve)
            try:
                yield client
            finally:
                client._shutdown("closed")
                nursery.cancel_scope.cancel()
    finally:
        if listener is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(listener)
