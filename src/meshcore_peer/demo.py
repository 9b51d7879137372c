"""`meshcore-peer demo`: an embedded relay and two peers on loopback, the real protocol end
to end, each step printed. No arguments, no root, no network beyond 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import time

import trio

from meshcore._api import serve
from meshcore._client import open_relay_client
from meshcore._relay import RelayConfig, serve_relay
from meshcore._session import Session, handshake_as_initiator, open_session
from meshcore.proto.identity import Identity

__all__ = ["run_demo"]


def _step(text: str) -> None:
    print(f"  {text}", flush=True)


async def run_demo(messages: int = 2000) -> int:
    """Run the demo; returns the exit status (0 when every check passed)."""
    print("meshcore demo: an embedded relay and two peers (alice, bob) on loopback", flush=True)
    alice, bob = Identity.generate(), Identity.generate()
    _step(f"alice is {alice.peer_id}")
    _step(f"bob   is {bob.peer_id}")
    received_digest = hashlib.sha256()
    bob_done = trio.Event()
    counts = {"messages": 0, "bytes": 0}

    async def bob_handler(session: Session) -> None:
        while True:
            try:
                data = await session.receive()
            except trio.EndOfChannel:
                break
            if data == b"ping":
                await session.send(b"pong")
                continue
            received_digest.update(data)
            counts["messages"] += 1
            counts["bytes"] += len(data)
        bob_done.set()

    async with trio.open_nursery() as nursery:
        relay = await nursery.start(serve_relay, RelayConfig(host="127.0.0.1", port=0))
        _step(f"relay listening on {relay.url}")
        await nursery.start(serve, relay.url, bob, [alice.peer_id], bob_handler)
        _step("bob registered with the relay (KEM challenge answered); allows alice only")

        t0 = time.perf_counter()
        async with open_relay_client(relay.url, alice) as client:
            _step(
                f"alice registered in {(time.perf_counter() - t0) * 1e3:.1f} ms "
                f"(relay sees her at {client.observed})"
            )
            t1 = time.perf_counter()
            pairing = await client.connect(bob.peer_id)
            _step(
                f"paired with bob in {(time.perf_counter() - t1) * 1e3:.1f} ms: circuit "
                f"{pairing.circuit.circuit_id:#x}, bob's keys match his pinned id"
            )
            t2 = time.perf_counter()
            result = await handshake_as_initiator(pairing.circuit, alice, pairing.peer)
            _step(
                f"hybrid X25519 + ML-KEM-768 handshake in {(time.perf_counter() - t2) * 1e3:.1f}"
                f" ms (3 messages through the relay); SAS {result.sas()}"
            )
            async with open_session(pairing.circuit, result) as session:
                _step("path: relay (end-to-end encrypted; the relay forwards opaque frames)")
                t3 = time.perf_counter()
                await session.send(b"ping")
                reply = await session.receive()
                _step(f"ping -> {reply.decode()} in {(time.perf_counter() - t3) * 1e3:.2f} ms")
                sent_digest = hashlib.sha256()
                total = 0
                t4 = time.perf_counter()
                for i in range(messages):
                    payload = os.urandom(1 + (i * 7919) % 16384)
                    sent_digest.update(payload)
                    total += len(payload)
                    await session.send(payload)
                await session.wait_acknowledged()
                elapsed = time.perf_counter() - t4
                _step(
                    f"sent {messages} messages ({total / 1e6:.1f} MB) in {elapsed:.2f} s: "
                    f"{total / elapsed / 1e6:.1f} MB/s, {messages / elapsed:,.0f} msg/s, "
                    "all acknowledged"
                )
                _step(f"session counters: {session.core.stats}")
                await session.aclose("demo finished")
            await pairing.circuit.aclose("demo finished")
        with trio.fail_after(10):
            await bob_done.wait()
        ok = counts["messages"] == messages and received_digest.digest() == sent_digest.digest()
        _step(
            f"bob received {counts['messages']} messages, {counts['bytes'] / 1e6:.1f} MB, "
            f"SHA-256 {'matches' if ok else 'DIFFERS'}"
        )
        circuits = relay.circuit_stats()
        _step(f"relay: {relay.stats().peers} peer(s) registered, {len(circuits)} open circuit(s)")
        nursery.cancel_scope.cancel()
    print("demo " + ("passed" if ok else "FAILED"), flush=True)
    return 0 if ok else 1
