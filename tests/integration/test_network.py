"""The relay network over loopback with several in-process relays: registration at the
rendezvous relays, pairing at the target's, visitor connections that close when idle, one
error naming every relay tried, invitations from every connection in one stream, and
following a registry as it changes."""

from __future__ import annotations

import logging

import pytest
import trio
from relayharness import Relay, relays, wait_until

from meshcore import Identity
from meshcore._network import open_relay_network
from meshcore._registry import FileSource, open_registry
from meshcore.errors import ConfigError, RelayError, TransportClosed
from meshcore.proto.relaylist import RelayEntry
from meshcore.proto.rendezvous import rendezvous_relays


def peer_with_homes(entries: list[RelayEntry], homes: set[str], k: int = 2) -> Identity:
    """A fresh identity whose rendezvous relays are exactly `homes` (by URL)."""
    while True:
        identity = Identity.generate()
        if {e.url for e in rendezvous_relays(identity.peer_id, entries, k)} == homes:
            return identity


async def test_a_peer_registers_at_its_k_rendezvous_relays_only() -> None:
    with trio.fail_after(20):
        async with relays(3) as rs:
            entries = [r.entry for r in rs]
            me = peer_with_homes(entries, {rs[0].url, rs[1].url})
            async with open_relay_network(entries, me, direct=False) as net:
                assert {e.url for e in net.home_relays} == {rs[0].url, rs[1].url}
                await wait_until(lambda: rs[0].peers() == 1 and rs[1].peers() == 1)
                assert rs[2].peers() == 0
                states = {s.url: (s.role, s.state) for s in net.connections()}
                assert states == {
                    rs[0].url: ("home", "connected"),
                    rs[1].url: ("home", "connected"),
                }


async def test_peers_with_different_rendezvous_relays_meet_at_the_targets() -> None:
    with trio.fail_after(20):
        async with relays(3) as rs:
            entries = [r.entry for r in rs]
            alice = peer_with_homes(entries, {rs[0].url, rs[1].url})
            bob = peer_with_homes(entries, {rs[1].url, rs[2].url})
            async with (
                open_relay_network(entries, bob, direct=False) as bob_net,
                open_relay_network(entries, alice, direct=False) as alice_net,
                trio.open_nursery() as nursery,
            ):

                async def answer() -> None:
                    invitation = await bob_net.next_invitation()
                    assert invitation.initiator == alice.peer_id
                    pairing = await bob_net.accept(invitation)
                    assert await pairing.circuit.receive() == b"hello"
                    await pairing.circuit.send(b"hi")

                nursery.start_soon(answer)
                pairing = await alice_net.connect(bob.peer_id)
                await pairing.circuit.send(b"hello")
                assert await pairing.circuit.receive() == b"hi"
                # met at one of bob's rendezvous relays
                assert alice_net.relay_of(pairing.circuit) in {rs[1].url, rs[2].url}


async def test_a_visitor_connection_closes_once_idle() -> None:
    with trio.fail_after(20):
        async with relays(3) as rs:
            entries = [r.entry for r in rs]
            alice = peer_with_homes(entries, {rs[0].url, rs[1].url})
            while True:  # bob's first choice is the relay alice is not registered at
                bob = peer_with_homes(entries, {rs[2].url, rs[1].url})
                if rendezvous_relays(bob.peer_id, entries, 2)[0].url == rs[2].url:
                    break
            async with (
                open_relay_network(entries, bob, direct=False) as bob_net,
                open_relay_network(entries, alice, direct=False, visitor_idle_s=0.5) as net,
                trio.open_nursery() as nursery,
            ):

                async def answer() -> None:
                    invitation = await bob_net.next_invitation()
                    pairing = await bob_net.accept(invitation)
                    with pytest.raises(TransportClosed, match="closed by the peer"):
                        await pairing.circuit.receive()

                nursery.start_soon(answer)
                pairing = await net.connect(bob.peer_id)
                assert net.relay_of(pairing.circuit) == rs[2].url
                roles = {s.url: s.role for s in net.connections()}
                assert roles == {rs[0].url: "home", rs[1].url: "home", rs[2].url: "visitor"}
                await trio.sleep(1.0)  # idle time does not start while the circuit is open
                assert rs[2].url in {s.url for s in net.connections()}
                await pairing.circuit.aclose("done")
                await wait_until(lambda: rs[2].url not in {s.url for s in net.connections()})
                await wait_until(lambda: rs[2].peers() == 1)  # only bob is registered there now


async def test_no_rendezvous_relay_answering_names_every_relay_tried() -> None:
    with trio.fail_after(20):
        async with relays(3) as rs:
            entries = [r.entry for r in rs]
            me = Identity.generate()
            nobody = Identity.generate().peer_id
            async with open_relay_network(entries, me, direct=False) as net:
                with pytest.raises(RelayError) as info:
                    await net.connect(nobody, timeout=5.0)
                message = str(info.value)
                for entry in rendezvous_relays(nobody, entries, 2):
                    assert entry.url in message
                assert "2 tried" in message


async def test_a_relay_that_is_down_is_named_and_the_next_one_answers() -> None:
    with trio.fail_after(20):
        async with relays(3) as rs:
            entries = [r.entry for r in rs]
            bob = peer_with_homes(entries, {rs[1].url, rs[2].url})
            first = rendezvous_relays(bob.peer_id, entries, 2)[0]
            alice = peer_with_homes(entries, {rs[0].url, first.url})
            async with (
                open_relay_network(entries, bob, direct=False) as bob_net,
                open_relay_network(entries, alice, direct=False) as alice_net,
                trio.open_nursery() as nursery,
            ):
                down = next(r for r in rs if r.url == first.url)
                await down.stop()
                await wait_until(
                    lambda: all(
                        s.state != "connected" for s in alice_net.connections() if s.url == down.url
                    )
                )

                async def answer() -> None:
                    invitation = await bob_net.next_invitation()
                    await bob_net.accept(invitation)

                nursery.start_soon(answer)
                started = trio.current_time()
                pairing = await alice_net.connect(bob.peer_id, timeout=5.0)
                assert trio.current_time() - started < 1.0  # a lost connection fails at once
                assert alice_net.relay_of(pairing.circuit) != down.url
                await pairing.circuit.aclose("done")


async def test_a_list_with_no_usable_entry_is_a_config_error_naming_each() -> None:
    me = Identity.generate()
    with pytest.raises(ConfigError, match=r"relays\[0\].*http") as info:
        async with open_relay_network(["http://x:1", "ws://y:2#nope"], me, direct=False):
            pass
    assert "relays[1]" in str(info.value)


async def test_with_every_relay_down_the_network_starts_retrying_and_says_so() -> None:
    with trio.fail_after(20):
        async with relays(3) as rs:
            entries = [r.entry for r in rs]
            for relay in rs:
                await relay.stop()
            me, nobody = Identity.generate(), Identity.generate().peer_id
            async with open_relay_network(entries, me, direct=False) as net:
                states = net.connections()
                assert {s.state for s in states} == {"retrying"}
                assert all("refused" in (s.last_error or "") for s in states)
                with pytest.raises(RelayError) as info:
                    await net.connect(nobody, timeout=5.0)
                for entry in rendezvous_relays(nobody, entries, 2):
                    assert entry.url in str(info.value)
                for relay in rs:  # the relays come back: registered again
                    await relay.start()
                await wait_until(lambda: {s.state for s in net.connections()} == {"connected"})


async def test_following_a_file_registry_moves_registrations(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "meshcore.network")
    from pathlib import Path

    path = Path(str(tmp_path)) / "relays.toml"
    with trio.fail_after(30):
        async with relays(3) as rs:
            entries = [r.entry for r in rs]
            me = peer_with_homes(entries, {rs[0].url, rs[1].url})

            def write(chosen: list[Relay]) -> None:
                lines = []
                for r in chosen:
                    lines += ["[[relays]]", f'url = "{r.url}"', f'id = "{r.identity.peer_id}"']
                tmp = path.with_suffix(".tmp")
                tmp.write_text("\n".join(lines) + "\n")
                tmp.replace(path)

            write(rs)
            async with (
                open_registry(FileSource(path, poll_s=0.1)) as registry,
                open_relay_network(registry, me, direct=False) as net,
            ):
                await wait_until(lambda: rs[0].peers() == 1 and rs[1].peers() == 1)
                write([rs[1], rs[2]])  # rs[0] removed: rs[2] becomes a rendezvous relay
                await wait_until(
                    lambda: rs[0].peers() == 0 and rs[1].peers() == 1 and rs[2].peers() == 1
                )
                assert {e.url for e in net.home_relays} == {rs[1].url, rs[2].url}
                assert "removed from the relay list" in caplog.text
