"""Prometheus metrics of a relay and two peers, scraped like Prometheus does.

    pip install 'meshcore[metrics]'
    python examples/metrics_scrape.py

A relay and two peers each serve `/metrics` (`serve_metrics` with a `RelayCollector` or a
`PeerCollector`). Alice connects to Bob, sends a few messages while the session may still be
on the relay, waits until it moved onto a direct connection and the relay released the
circuit, then sends more. All three endpoints are scraped over HTTP (urllib, in a worker
thread) and parsed with prometheus-client's parser; the program prints what it sent and what
the metrics say, one JSON object, which `tests/integration/test_examples.py` checks.
"""

from __future__ import annotations

import json
import urllib.request
from functools import partial

import trio
from prometheus_client.parser import text_string_to_metric_families

import meshcore

MESSAGE = b"m" * 1000
BEFORE, AFTER = 20, 200  # messages sent at the start, and once the session is direct


def get(url: str) -> str:
    """One scrape with a real HTTP client (blocking: run it in a thread)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text: str = response.read().decode()
        return text


async def scrape(server: meshcore.MetricsServer) -> dict[str, float]:
    """Every sample as "name{label=value,...}" -> value."""
    text = await trio.to_thread.run_sync(get, server.url)
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def echo(session: meshcore.Session) -> None:
    """Bob's service: read everything until the peer closes."""
    async for _ in session:
        pass


async def main() -> None:
    alice, bob = meshcore.Identity.generate(), meshcore.Identity.generate()
    alice_sessions, bob_sessions = meshcore.SessionRegistry(), meshcore.SessionRegistry()

    async def bob_service(session: meshcore.Session) -> None:
        with bob_sessions.registered(session):
            await echo(session)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            config = meshcore.RelayConfig(host="127.0.0.1", port=0, shutdown_grace_s=1.0)
            relay: meshcore.RelayServer = await nursery.start(meshcore.serve_relay, config)
            start = partial(nursery.start, meshcore.serve_metrics, "0")  # port 0: a free one
            relay_metrics = await start([meshcore.RelayCollector(relay)])
            alice_metrics = await start([meshcore.PeerCollector(alice_sessions)])
            bob_metrics = await start([meshcore.PeerCollector(bob_sessions)])
            await nursery.start(
                partial(meshcore.serve, relay.url, bob, [alice.peer_id], bob_service)
            )
            async with meshcore.connect(relay.url, alice, bob.peer_id) as session:
                with alice_sessions.registered(session):
                    for _ in range(BEFORE):
                        await session.send(MESSAGE)
                    while session.path != "direct" or relay.stats().circuits:
                        await trio.sleep(0.01)  # the upgrade, then the circuit's release
                    for _ in range(AFTER):
                        await session.send(MESSAGE)
                    await session.wait_acknowledged()
                    scraped = {
                        "relay": await scrape(relay_metrics),
                        "alice": await scrape(alice_metrics),
                        "bob": await scrape(bob_metrics),
                    }
            nursery.cancel_scope.cancel()
    print(json.dumps({"sent": {"messages": BEFORE + AFTER, "after_upgrade": AFTER,
                               "message_bytes": len(MESSAGE)}, **scraped}))  # fmt: skip


if __name__ == "__main__":
    trio.run(main)
