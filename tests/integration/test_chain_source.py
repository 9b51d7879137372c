"""The on-chain registry as a source of the relay list, on the embedded EVM: refreshes that add
and remove relays, bad entries named and skipped, the cache when the node is down, and the
errors (wrong chain, no contract, a name that does not resolve, web3 missing)."""

from __future__ import annotations

import hashlib
import logging
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

pytest.importorskip("eth_tester", reason="the chain tests need the test extra (eth-tester)")

import requests
from eth_abi.abi import encode
from web3 import EthereumTesterProvider, Web3

from meshcore import ChainSource, RelayListCache, open_registry
from meshcore.chain.transact import Writer, deploy_registry, deregister_relay, point_name
from meshcore.chain.transact import register_relay as chain_register
from meshcore.errors import ConfigError
from meshcore.proto.identity import PeerId
from meshcore.testing.chain import EmbeddedChain, embedded_chain


def relay_id(n: int) -> bytes:
    return hashlib.sha256(b"relay %d" % n).digest()


@pytest.fixture(scope="module")
def chain() -> EmbeddedChain:
    return embedded_chain(accounts=8)


@pytest.fixture
def registry(chain: EmbeddedChain) -> str:
    return deploy_registry(Writer(chain.provider, chain.keys[0]))


def register(chain: EmbeddedChain, registry: str, n: int, url: str | None = None) -> None:
    chain_register(
        Writer(chain.provider, chain.keys[n]),
        registry,
        url=url or f"ws://relay{n}.example:7443/",
        relay_id=relay_id(n),
        region="eu",
    )


def deregister(chain: EmbeddedChain, registry: str, n: int) -> None:
    deregister_relay(Writer(chain.provider, chain.keys[n]), registry)


class Switchable(EthereumTesterProvider):
    """The embedded EVM behind a switch: while `down`, every request fails to connect."""

    def __init__(self, chain: EmbeddedChain) -> None:
        tester = chain.provider.ethereum_tester  # type: ignore[attr-defined]
        super().__init__(tester)
        self.down = False

    def make_request(self, method: Any, params: Any) -> Any:
        if self.down:
            raise requests.ConnectionError("[Errno 111] Connection refused")
        return super().make_request(method, params)


def urls(registry: Any) -> list[str]:
    return [e.url for e in registry.entries]


async def test_a_refresh_picks_up_a_new_relay_and_drops_one_that_left(
    chain: EmbeddedChain, registry: str
) -> None:
    register(chain, registry, 1)
    register(chain, registry, 2)
    source = ChainSource(chain.provider, registry, chain_id=chain.chain_id)
    assert source.refresh_s == 600.0  # the default: ten minutes
    async with open_registry(source) as reg:
        assert urls(reg) == ["ws://relay1.example:7443/", "ws://relay2.example:7443/"]
        assert reg.entries[0].relay_id == PeerId(relay_id(1))
        assert reg.entries[0].region == "eu"
        first_block = reg.listing.block_number
        assert first_block is not None and first_block == chain.w3.eth.block_number
        assert reg.listing.source == (
            f"chain {registry} at EthereumTesterProvider, chain {chain.chain_id}"
        )
        register(chain, registry, 3)
        assert await reg.refresh() is True
        assert urls(reg)[-1] == "ws://relay3.example:7443/"
        deregister(chain, registry, 1)
        assert await reg.refresh() is True
        assert "ws://relay1.example:7443/" not in urls(reg)
        assert len(reg.entries) == 2 and reg.version == 2
        assert reg.listing.block_number is not None and reg.listing.block_number > first_block
        assert await reg.refresh() is False  # nothing changed on chain


async def test_the_background_refresh_runs_every_refresh_s(
    chain: EmbeddedChain, registry: str
) -> None:
    register(chain, registry, 1)
    source = ChainSource(chain.provider, registry, chain_id=chain.chain_id, refresh_s=1)
    async with open_registry(source) as reg:
        version = reg.version
        register(chain, registry, 2)
        with trio.fail_after(20):
            await reg.changed(version)
        assert urls(reg) == ["ws://relay1.example:7443/", "ws://relay2.example:7443/"]


def register_raw(chain: EmbeddedChain, registry: str, n: int, url: bytes) -> None:
    """Register bytes that are not UTF-8, as a client skipping the checks could."""
    selector = Web3.keccak(text="register(string,bytes32,string)")[:4]
    data = selector + encode(["bytes", "bytes32", "bytes"], [url, relay_id(n), b""])
    tx = chain.w3.eth.send_transaction(
        {"from": chain.keys[n].address, "to": registry, "data": data, "gas": 500_000}
    )
    assert chain.w3.eth.wait_for_transaction_receipt(tx)["status"] == 1


async def test_bad_entries_are_named_by_their_index_on_chain_and_skipped(
    chain: EmbeddedChain, registry: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "meshcore.registry")
    register_raw(chain, registry, 1, b"ws://\xff.example/")  # entry 0: not UTF-8
    register(chain, registry, 2, "http://web.example/")  # entry 1: not a relay URL
    register(chain, registry, 3)  # entry 2: good
    register(chain, registry, 4, "ws://relay3.example:7443/")  # entry 3: same URL as 2
    register(chain, registry, 5)  # entry 4: good
    async with open_registry(ChainSource(chain.provider, registry, chain_id=chain.chain_id)) as reg:
        assert urls(reg) == ["ws://relay3.example:7443/", "ws://relay5.example:7443/"]
        block = reg.listing.block_number
        problems = reg.listing.relays.problems
    assert len(problems) == 3
    assert problems[0].startswith(f"on-chain entry 0 (account {chain.keys[1].address}): url")
    assert f"at block {block}; skipped" in problems[0]
    assert problems[1].startswith(f"on-chain entry 1 at block {block}: url")
    assert problems[2] == (
        f"on-chain entry 3 at block {block} (ws://relay3.example:7443/): duplicate url of "
        f"on-chain entry 2 at block {block}; skipped"
    )
    logged = [r.getMessage() for r in caplog.records]
    assert all(any(p in line for line in logged) for p in problems)


async def test_a_registry_with_no_usable_entry_is_refused_naming_each_problem(
    chain: EmbeddedChain, registry: str
) -> None:
    register(chain, registry, 1, "http://web.example/")
    with pytest.raises(ConfigError) as info:
        async with open_registry(ChainSource(chain.provider, registry, chain_id=chain.chain_id)):
            pass  # pragma: no cover
    assert "no usable entry" in str(info.value) and "on-chain entry 0" in str(info.value)


async def test_with_the_node_down_a_start_uses_the_cache_and_a_refresh_keeps_the_list(
    chain: EmbeddedChain, registry: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    register(chain, registry, 1)
    node = Switchable(chain)
    cache = RelayListCache(tmp_path / "relays.json")
    source = ChainSource(node, registry, chain_id=chain.chain_id)
    async with open_registry(source, cache=cache) as reg:
        block = reg.listing.block_number
        node.down = True
        register(chain, registry, 2)
        assert await reg.refresh() is False
        assert urls(reg) == ["ws://relay1.example:7443/"]
        assert reg.last_error is not None
        assert "registry via Switchable: cannot connect (connection refused)" in reg.last_error
        node.down = False
        assert await reg.refresh() is True and reg.last_error is None
        deregister(chain, registry, 2)
        assert await reg.refresh() is True
    node.down = True
    caplog.set_level(logging.WARNING, "meshcore.registry")
    async with open_registry(source, cache=cache) as reg:
        assert reg.listing.from_cache
        assert urls(reg) == ["ws://relay1.example:7443/"]
        assert reg.listing.block_number is not None and reg.listing.block_number > block
        assert reg.listing.source == source.description
    assert "using the cached list of 1 relays" in caplog.text
    assert "cannot connect (connection refused)" in caplog.text


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_unreachable_node_without_a_cache_names_the_url_and_what_failed(
    tmp_path: Path,
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    source = ChainSource(url, "chronara.eth", chain_id=31337, timeout_s=2)
    with pytest.raises(ConfigError) as info:
        async with open_registry(source, cache=RelayListCache(tmp_path / "c.json")):
            pass  # pragma: no cover
    text = str(info.value)
    assert f"cannot load the relay list from chain chronara.eth at {url}, chain 31337" in text
    assert f"registry via {url}: cannot connect (connection refused)" in text
    assert "no cached list in" in text


async def test_a_node_on_another_chain_is_refused(chain: EmbeddedChain, registry: str) -> None:
    with pytest.raises(ConfigError, match="wrong chain: expected chain id 1, but the node is on"):
        async with open_registry(ChainSource(chain.provider, registry, chain_id=1)):
            pass  # pragma: no cover


async def test_an_address_without_a_contract_is_refused(chain: EmbeddedChain) -> None:
    empty = chain.keys[7].address
    with pytest.raises(ConfigError, match=f"no contract at {empty}"):
        async with open_registry(ChainSource(chain.provider, empty, chain_id=chain.chain_id)):
            pass  # pragma: no cover


async def test_a_name_is_resolved_and_one_that_does_not_resolve_is_named(
    chain: EmbeddedChain, registry: str
) -> None:
    register(chain, registry, 1)
    setup = point_name(Writer(chain.provider, chain.keys[0]), "chronara.eth", registry)
    named = ChainSource(
        chain.provider, "chronara.eth", chain_id=chain.chain_id, ens_registry=setup.ens_registry
    )
    assert named.description.startswith("chain chronara.eth at ")
    async with open_registry(named) as reg:
        assert urls(reg) == ["ws://relay1.example:7443/"]
    assert named.last_read is not None and named.last_read.contract == registry
    nowhere = ChainSource(
        chain.provider, "nowhere.eth", chain_id=chain.chain_id, ens_registry=setup.ens_registry
    )
    with pytest.raises(ConfigError, match=r"the name nowhere\.eth does not resolve"):
        async with open_registry(nowhere):
            pass  # pragma: no cover


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("ws://127.0.0.1:8545", "chronara.eth"), {"chain_id": 1}, "must start with http://"),
        (("http://127.0.0.1:8545", "0x1234"), {"chain_id": 1}, "is not an address"),
        (("http://127.0.0.1:8545", "chronara.eth"), {"chain_id": 0}, "positive integer"),
        (("http://127.0.0.1:8545", "chronara.eth"), {"chain_id": True}, "positive integer"),
        (
            ("http://127.0.0.1:8545", "chronara.eth"),
            {"chain_id": 1, "refresh_s": 0.5},
            "at least 1 s",
        ),
        (
            ("http://127.0.0.1:8545", "chronara.eth"),
            {"chain_id": 1, "ens_registry": "0xabc"},
            "ENS registry '0xabc' is not an address",
        ),
    ],
)
def test_bad_settings_are_refused_before_any_request(
    args: tuple[str, str], kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ChainSource(*args, **kwargs)


def test_without_web3_a_chain_source_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "web3", None)
    with pytest.raises(ConfigError, match=r"pip install 'meshcore\[chain\]'"):
        ChainSource("http://127.0.0.1:8545", "chronara.eth", chain_id=1)
