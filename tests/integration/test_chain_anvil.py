"""The registry on a real JSON-RPC node (anvil on loopback): three relays register from three
accounts, the reader lists them, one deregisters and the next read no longer has it; reading
by name; the calls a read makes; a stopped node is connection refused, naming its URL."""

from __future__ import annotations

from typing import Any

import pytest
import trio

pytest.importorskip("eth_tester", reason="the chain tests need the test extra")

from web3 import Web3

from meshcore.chain import read_registry, read_registry_async
from meshcore.chain.transact import (
    Writer,
    deploy_registry,
    deregister_relay,
    point_name,
    register_relay,
)
from meshcore.errors import RegistryError
from meshcore.proto.identity import Identity
from meshcore.testing.chain import AnvilNode, fund, new_account_keys, running_anvil


def funded_writers(node: AnvilNode, n: int) -> list[Writer]:
    keys = new_account_keys(n)
    fund(Web3(node.provider()), keys)
    return [Writer(node.url, key, chain_id=node.chain_id) for key in keys]


def test_three_relays_register_and_one_that_deregisters_is_gone_on_the_next_read(
    anvil: Any,
) -> None:
    owner, *relays = funded_writers(anvil, 4)
    registry = deploy_registry(owner)
    identities = [Identity.generate() for _ in relays]
    for k, (writer, identity) in enumerate(zip(relays, identities, strict=True)):
        register_relay(
            writer,
            registry,
            url=f"ws://127.0.0.{k + 1}:7443/",
            relay_id=identity.peer_id.digest,
            region="lab" if k else "",
        )
    listing = read_registry(anvil.url, registry, chain_id=anvil.chain_id)
    assert sorted(listing.entries, key=lambda e: e["url"]) == [
        {"url": "ws://127.0.0.1:7443/", "id": identities[0].peer_id.to_text()},
        {"url": "ws://127.0.0.2:7443/", "id": identities[1].peer_id.to_text(), "region": "lab"},
        {"url": "ws://127.0.0.3:7443/", "id": identities[2].peer_id.to_text(), "region": "lab"},
    ]
    assert listing.rpc_url == anvil.url
    # eth_chainId, eth_blockNumber, count(), one page of entries(): four calls, no more.
    assert listing.rpc_calls == 4

    deregister_relay(relays[1], registry)
    again = read_registry(anvil.url, registry, chain_id=anvil.chain_id)
    assert again.block_number > listing.block_number
    assert identities[1].peer_id.to_text() not in {e["id"] for e in again.entries}
    assert len(again.entries) == 2


def test_the_registry_is_read_by_name_on_a_real_node(anvil: Any) -> None:
    (owner,) = funded_writers(anvil, 1)
    registry = deploy_registry(owner)
    register_relay(owner, registry, url="wss://r.example/", relay_id=b"\x07" * 32)
    setup = point_name(owner, "chronara.eth", registry)
    assert setup.deployed == ("EnsRegistry", "PublicResolver")  # anvil has no ENS of its own
    listing = read_registry(
        anvil.url, "chronara.eth", chain_id=anvil.chain_id, ens_registry=setup.ens_registry
    )
    assert (listing.contract, listing.name) == (registry, "chronara.eth")
    assert [e["url"] for e in listing.entries] == ["wss://r.example/"]
    assert listing.rpc_calls == 6  # and the two of resolution: resolver(node), addr(node)


async def test_the_async_reader_reads_a_real_node(anvil: Any) -> None:
    (owner,) = funded_writers(anvil, 1)
    registry = deploy_registry(owner)
    register_relay(owner, registry, url="wss://r.example/", relay_id=b"\x08" * 32)
    with trio.fail_after(30):
        listing = await read_registry_async(anvil.url, registry, chain_id=anvil.chain_id)
    assert [e["url"] for e in listing.entries] == ["wss://r.example/"]


def test_the_wrong_chain_id_is_refused_by_a_real_node(anvil: Any) -> None:
    with pytest.raises(RegistryError, match="expected chain id 1, but the node is on chain 31337"):
        read_registry(anvil.url, "0x" + "11" * 20, chain_id=1)


def test_a_stopped_node_is_connection_refused_naming_its_url(anvil_binary: Any) -> None:
    with running_anvil(anvil_binary, accounts=1) as node:
        url = node.url
        read_registry(url, deploy_registry(funded_writers(node, 1)[0]), chain_id=node.chain_id)
    with pytest.raises(RegistryError) as info:
        read_registry(url, "0x" + "11" * 20, chain_id=31337)
    assert str(info.value) == (
        f"registry via {url}: cannot connect (connection refused) while reading the chain id"
    )
