"""A Session and a Migrator over transports this program chose: plain TCP connections with
length-prefixed frames (`meshcore.FramedTransport`), no relay at all.

    python examples/own_transport.py

The dialling side runs the handshake over its TCP connection, opens a session on it, and gives
the session a Migrator whose `Rendezvous` is this program's own: when the connection breaks,
the Migrator asks it for a new one (`reopen_circuit`), which it dials. The listening side hands
the new connection to its session by the connection's first frame (`SessionRoutes`). The
session goes on over the new connection: nothing lost, duplicated or reordered.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import trio

import meshcore

RELAY_ONLY = meshcore.PathSettings(mode="never")  # one kind of path here: no direct races
WORDS = ("post", "quantum", "sessions", "outlive", "their", "connections")


class Rendezvous:
    """What a Migrator needs from where the peers met (`meshcore.Rendezvous`): here, the
    listening side's TCP address. `server` is None on the listening side, which never
    re-opens (the dialling side does)."""

    def __init__(self, identity: meshcore.Identity, server: tuple[str, int] | None) -> None:
        self.identity = identity
        self.server = server
        self.routes = meshcore.SessionRoutes()
        self.candidates: Sequence[meshcore.Endpoint] = ()  # no direct paths to offer
        self.observed: meshcore.Endpoint | None = None
        self.local_port: int | None = None
        self.direct: object | None = None

    def relay_of(self, circuit: meshcore.Transport) -> str | None:
        return None  # one way to reach the peer: every new connection replaces the old one

    async def reopen_circuit(
        self, peer_id: meshcore.PeerId, *, timeout: float, avoid: Collection[str] = ()
    ) -> meshcore.Transport:
        if self.server is None:
            raise meshcore.TransportClosed("the peer dials again; this side waits for it")
        host, port = self.server
        with trio.move_on_after(timeout):
            try:
                return meshcore.FramedTransport(await trio.open_tcp_stream(host, port))
            except OSError as exc:
                raise meshcore.TransportClosed(f"cannot reach {host}:{port}: {exc}") from None
        raise meshcore.TransportClosed(f"{host}:{port} did not answer within {timeout:g} s")


async def listen(
    listener: trio.SocketListener,
    me: meshcore.Identity,
    peer: meshcore.Identity,
) -> None:
    """The listening side: one session, served until the peer closes it (upper-case echo)."""
    first = meshcore.FramedTransport(await listener.accept())
    responder = meshcore.Responder(me, {peer.peer_id: peer.public}.get)
    result = await meshcore.handshake_as_responder(first, responder)
    rendezvous = Rendezvous(me, server=None)
    async with (
        first,
        meshcore.open_session(first, result, responder=responder) as session,
        meshcore.open_migrator(session, rendezvous, settings=RELAY_ONLY),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(take_new_connections, listener, rendezvous.routes)
        async for message in session:
            await session.send(message.upper())
        nursery.cancel_scope.cancel()


async def take_new_connections(
    listener: trio.SocketListener, routes: meshcore.SessionRoutes
) -> None:
    """Hand each later connection to the session its first frame names (the Migrator then
    owns it), or close it. One at a time, as befits an example."""
    while True:
        transport = meshcore.FramedTransport(await listener.accept())
        first: bytes | None = None
        with trio.move_on_after(5):
            try:
                first = await transport.receive()
            except meshcore.TransportClosed:
                pass
        route = routes.find(first) if first is not None else None
        if route is None or first is None or not route.incoming_circuit(transport, first):
            await transport.aclose("no session for this connection")


async def dial(port: int, me: meshcore.Identity, peer: meshcore.PublicBundle) -> None:
    """The dialling side: send the words, cut the TCP connection halfway, go on."""
    first = meshcore.FramedTransport(await trio.open_tcp_stream("127.0.0.1", port))
    result = await meshcore.handshake_as_initiator(first, me, peer)
    rendezvous = Rendezvous(me, server=("127.0.0.1", port))
    async with (
        first,
        meshcore.open_session(first, result, identity=me) as session,
        meshcore.open_migrator(session, rendezvous, settings=RELAY_ONLY),
    ):
        for i, word in enumerate(WORDS):
            if i == len(WORDS) // 2:
                first.abort("cut by the example")  # a TCP reset: both sides lose the link
                print("connection cut")
            await session.send(word.encode())
            print("echoed:", (await session.receive()).decode())
        await session.wait_acknowledged()


async def main() -> None:
    # The lower peer id re-opens a lost circuit (docs/direct.md): let the dialler have it.
    dialler, listener_id = sorted(
        (meshcore.Identity.generate(), meshcore.Identity.generate()),
        key=lambda identity: identity.peer_id.digest,
    )
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listener.socket.getsockname()[1]
    with trio.fail_after(30):
        async with listener, trio.open_nursery() as nursery:
            nursery.start_soon(listen, listener, listener_id, dialler)
            await dial(port, dialler, listener_id.public)


if __name__ == "__main__":
    trio.run(main)
