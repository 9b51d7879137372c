"""The on-chain registry as the relay network's source on a real JSON-RPC node (anvil on
loopback): three relays register from three accounts, a peer finds them by the registry's
name, one relay deregisters and the peer leaves it on the next refresh; `meshcore-peer relays`
shows the source, block and age, and, with the node stopped, the cached list."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

pytest.importorskip("eth_tester", reason="the chain tests need the test extra")

from web3 import Web3

from meshcore import ChainSource, Identity, open_registry, open_relay_network
from meshcore._relay import RelayConfig, RelayServer, serve_relay
from meshcore.chain.transact import (
    NameSetup,
    Writer,
    deploy_registry,
    deregister_relay,
    point_name,
    register_relay,
)
from meshcore.testing.chain import AnvilNode, fund, new_account_keys, running_anvil
from meshcore_peer.cli import main


@asynccontextmanager
async def relays(n: int) -> AsyncIterator[list[tuple[RelayServer, Identity]]]:
    async with trio.open_nursery() as nursery:
        out = []
        for _ in range(n):
            identity = Identity.generate()
            config = RelayConfig(port=0, identity=identity, shutdown_grace_s=0.2)
            out.append((await nursery.start(serve_relay, config), identity))
        yield out
        nursery.cancel_scope.cancel()


def url_of(server: RelayServer) -> str:
    return f"ws://127.0.0.1:{server.port}/"


class Deployment:
    """A registry named chronara.eth on the node, and one funded account per relay."""

    def __init__(self, node: AnvilNode, relays: int) -> None:
        owner_key, *keys = new_account_keys(relays + 1)
        fund(Web3(node.provider()), [owner_key, *keys])
        owner = Writer(node.url, owner_key, chain_id=node.chain_id)
        self.node = node
        self.address = deploy_registry(owner)
        self.name: NameSetup = point_name(owner, "chronara.eth", self.address)
        self.writers = [Writer(node.url, key, chain_id=node.chain_id) for key in keys]

    def register(self, k: int, url: str, identity: Identity) -> None:
        register_relay(self.writers[k], self.address, url=url, relay_id=identity.peer_id.digest)

    def deregister(self, k: int) -> None:
        deregister_relay(self.writers[k], self.address)

    def source(self, **kwargs: Any) -> ChainSource:
        return ChainSource(
            self.node.url,
            "chronara.eth",
            chain_id=self.node.chain_id,
            ens_registry=self.name.ens_registry,
            **kwargs,
        )


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll `condition` (callers bound the wait with trio.fail_after)."""
    while not condition():
        await trio.sleep(0.02)


async def test_a_peer_finds_three_registered_relays_by_name_and_leaves_one_that_deregisters(
    anvil: Any,
) -> None:
    chain = Deployment(anvil, 3)
    with trio.fail_after(60):
        async with relays(3) as rs:
            for k, (server, identity) in enumerate(rs):
                await trio.to_thread.run_sync(chain.register, k, url_of(server), identity)
            me = Identity.generate()
            source = chain.source(refresh_s=1)
            async with (
                open_registry(source) as registry,
                open_relay_network(registry, me, rendezvous_k=3, direct=False) as net,
            ):
                assert {e.url for e in net.entries} == {url_of(s) for s, _ in rs}
                read = source.last_read
                assert read is not None and registry.listing.block_number == read.block_number
                # by name: chain id, block number, the two calls of resolution, count, one page
                assert read.rpc_calls == 6
                await wait_until(lambda: all(s.stats().peers == 1 for s, _ in rs))
                gone = rs[1][0]
                await trio.to_thread.run_sync(chain.deregister, 1)
                await wait_until(lambda: gone.stats().peers == 0)
                assert {e.url for e in net.entries} == {url_of(rs[0][0]), url_of(rs[2][0])}
                assert all(s.stats().peers == 1 for s, _ in (rs[0], rs[2]))


def relays_argv(chain: Deployment, state: Path, tmp_path: Path) -> list[str]:
    """`meshcore-peer relays --json` with only the chain settings (no running peer)."""
    return [
        "relays",
        "--json",
        "--control",
        str(tmp_path / "no-peer.sock"),
        "--state-dir",
        str(state),
        "--identity",
        str(tmp_path / "none.key"),
        "--registry-rpc",
        chain.node.url,
        "--registry",
        "chronara.eth",
        "--chain-id",
        str(chain.node.chain_id),
        "--ens",
        chain.name.ens_registry,
    ]


def test_meshcore_peer_relays_shows_the_chain_its_block_and_then_the_cache(
    anvil_binary: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    with running_anvil(anvil_binary, accounts=2) as node:
        chain = Deployment(node, 1)
        chain.register(0, "ws://127.0.0.1:7443/", Identity.generate())
        block = Web3(node.provider()).eth.block_number
        argv = relays_argv(chain, state, tmp_path)
        assert main(argv) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["source"] == f"chain chronara.eth at {node.url}, chain {node.chain_id}"
        assert report["block_number"] == block
        assert report["from_cache"] is False and report["age_s"] < 30
        assert [r["url"] for r in report["relays"]] == ["ws://127.0.0.1:7443/"]
        assert main([a for a in argv if a != "--json"]) == 0
        table = capsys.readouterr().out
        assert re.search(
            re.escape(f"relays from {report['source']}, block {block}, read ") + r"\d+ s ago\n",
            table,
        )
    # the node is gone: the same command answers from the state directory's cache
    assert main(argv) == 0
    cached = json.loads(capsys.readouterr().out)
    assert cached["from_cache"] is True and cached["block_number"] == block
    assert [r["url"] for r in cached["relays"]] == ["ws://127.0.0.1:7443/"]
    assert main([a for a in argv if a != "--json"]) == 0
    assert "(from cache: the source was unreachable)" in capsys.readouterr().out


def test_without_a_node_or_a_cache_meshcore_peer_names_the_url_and_exits_2(
    anvil_binary: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with running_anvil(anvil_binary, accounts=2) as node:
        chain = Deployment(node, 1)
    argv = relays_argv(chain, tmp_path / "empty", tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("meshcore-peer: error: cannot load the relay list from chain chronara")
    assert f"registry via {node.url}: cannot connect (connection refused)" in err
    assert "Traceback" not in err
