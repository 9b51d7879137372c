"""A runnable example of the library API: an embedded relay, an echo service that accepts
one allowed peer, and a client that talks to it end to end.

    python examples/echo.py

In real use the relay runs elsewhere (`meshcore-relay --listen 0.0.0.0:7443`) and each side
keeps its identity in a key file (`meshcore.Identity.load(path)`).
"""

from __future__ import annotations

import trio

import meshcore


async def echo(session: meshcore.Session) -> None:
    """The service: send every message back until the peer closes."""
    async for message in session:
        await session.send(message)


async def main() -> None:
    server_identity = meshcore.Identity.generate()
    client_identity = meshcore.Identity.generate()
    async with trio.open_nursery() as nursery:
        relay = await nursery.start(
            meshcore.serve_relay, meshcore.RelayConfig(host="127.0.0.1", port=0)
        )
        await nursery.start(
            meshcore.serve, relay.url, server_identity, [client_identity.peer_id], echo
        )
        async with meshcore.connect(relay.url, client_identity, server_identity.peer_id) as s:
            for text in ("hello", "post-quantum", "world"):
                await s.send(text.encode())
                print("echoed:", (await s.receive()).decode())
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
