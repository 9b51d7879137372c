"""A relay embedded in a program: `serve_relay` in a nursery with limits of its own, and two
peers meeting through it, while the program watches the relay's tables.

    python examples/embedded_relay.py

The peers stay on the relay (`direct="never"`) so that the relayed circuit shows in the
relay's counters; with the default `direct="auto"` they would move onto a direct connection
and the relay would release the circuit.
"""

from __future__ import annotations

from functools import partial

import trio

import meshcore

LIMITS = meshcore.RelayLimits(max_peers=16, pairings_per_s=5.0)


async def shout(session: meshcore.Session) -> None:
    """Bob's service: answer every message in capitals until the peer closes."""
    async for message in session:
        await session.send(message.upper())


async def main() -> None:
    alice, bob = meshcore.Identity.generate(), meshcore.Identity.generate()
    config = meshcore.RelayConfig(host="127.0.0.1", port=0, limits=LIMITS, shutdown_grace_s=1.0)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            # each start returns once the service is up: the relay listening (on a free
            # port, relay.url says which), then Bob registered at it
            relay: meshcore.RelayServer = await nursery.start(meshcore.serve_relay, config)
            await nursery.start(
                partial(meshcore.serve, relay.url, bob, [alice.peer_id], shout, direct="never")
            )
            async with meshcore.connect(relay.url, alice, bob.peer_id, direct="never") as s:
                stats = relay.stats()
                print("peers registered:", stats.peers)
                print("circuits open:", stats.circuits)
                for text in ("hello", "from", "alice"):
                    await s.send(text.encode())
                    print(f"{text} -> {(await s.receive()).decode()}")
                (circuit,) = relay.circuit_stats()
                print("relay carried both ways:", circuit.frames_ab > 0 and circuit.frames_ba > 0)
            nursery.cancel_scope.cancel()  # the relay shuts down gracefully: peers get Close
    print("relay stopped")


if __name__ == "__main__":
    trio.run(main)
