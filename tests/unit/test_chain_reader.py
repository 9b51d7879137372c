"""The registry reader on the embedded EVM: the listing's shape and provenance, one block for
every page, per-entry problems, malformed data handed over for validation, and every error
(wrong chain, no contract, not a registry, a hostile node, an unreachable node)."""

from __future__ import annotations

import hashlib
import socket
import threading
import urllib.parse
from collections.abc import Callable
from typing import Any

import pytest
import trio

pytest.importorskip("eth_tester", reason="the chain tests need the test extra (eth-tester)")

from eth_abi.abi import encode
from web3 import Web3
from web3.providers.base import BaseProvider

from meshcore.chain import (
    EntryProblem,
    describe_rpc_url,
    read_registry,
    read_registry_async,
)
from meshcore.chain import reader as reader_module
from meshcore.chain.transact import Writer, deploy_registry, register_relay
from meshcore.errors import ConfigError, RegistryError
from meshcore.proto.identity import Identity, PeerId
from meshcore.testing.chain import EmbeddedChain, embedded_chain


def relay_id(n: int) -> bytes:
    return hashlib.sha256(b"relay %d" % n).digest()


@pytest.fixture(scope="module")
def chain() -> EmbeddedChain:
    return embedded_chain(accounts=8)


@pytest.fixture
def registry(chain: EmbeddedChain) -> str:
    return deploy_registry(Writer(chain.provider, chain.keys[0]))


def register(chain: EmbeddedChain, registry: str, n: int, url: str, region: str = "") -> None:
    register_relay(
        Writer(chain.provider, chain.keys[n]),
        registry,
        url=url,
        relay_id=relay_id(n),
        region=region,
    )


def register_raw(
    chain: EmbeddedChain, registry: str, n: int, url: bytes, relay: bytes, region: bytes
) -> None:
    """Register with raw bytes for the strings, as a client that skips UTF-8 could."""
    selector = Web3.keccak(text="register(string,bytes32,string)")[:4]
    data = selector + encode(["bytes", "bytes32", "bytes"], [url, relay, region])
    tx = chain.w3.eth.send_transaction(
        {"from": chain.keys[n].address, "to": registry, "data": data, "gas": 500_000}
    )
    assert chain.w3.eth.wait_for_transaction_receipt(tx)["status"] == 1


def read(chain: EmbeddedChain, registry: str, **kwargs: Any) -> Any:
    return read_registry(chain.provider, registry, chain_id=chain.chain_id, **kwargs)


def test_entries_have_the_shape_of_a_static_relay_list_entry(
    chain: EmbeddedChain, registry: str
) -> None:
    identity = Identity.generate()
    register_relay(
        Writer(chain.provider, chain.keys[1]),
        registry,
        url="wss://a.example:7443/",
        relay_id=identity.peer_id.digest,
        region="eu-west",
    )
    register(chain, registry, 2, "ws://b.example:7443/")
    listing = read(chain, registry)
    assert listing.entries == (
        {"url": "wss://a.example:7443/", "id": identity.peer_id.to_text(), "region": "eu-west"},
        {"url": "ws://b.example:7443/", "id": PeerId(relay_id(2)).to_text()},  # no region set
    )
    assert listing.problems == ()


def test_the_listing_says_where_and_at_which_block_it_was_read(
    chain: EmbeddedChain, registry: str
) -> None:
    register(chain, registry, 1, "wss://a/")
    listing = read(chain, registry.lower())
    assert listing.block_number == chain.w3.eth.block_number
    assert listing.chain_id == chain.chain_id
    assert listing.contract == registry  # checksummed
    assert listing.name is None
    assert listing.rpc_url == "EthereumTesterProvider"
    assert listing.source == f"chain:{registry}@{chain.chain_id}"
    assert listing.rpc_calls > 0


class Tampering(BaseProvider):
    """A node double: answers through the embedded EVM, then lets `tamper` change the answer."""

    def __init__(
        self, inner: BaseProvider, tamper: Callable[[str, Any, dict[str, Any]], dict[str, Any]]
    ) -> None:
        super().__init__()
        self.inner = Web3(inner)
        self.tamper = tamper

    def make_request(self, method: Any, params: Any) -> Any:
        result = self.inner.manager.request_blocking(method, params)
        if isinstance(result, bytes):
            result = "0x" + result.hex()
        response = {"jsonrpc": "2.0", "id": 1, "result": result}
        return self.tamper(str(method), params, response)

    def is_connected(self, show_traceback: bool = False) -> bool:
        return True


ENTRIES = Web3.keccak(text="entries(uint256,uint256)")[:4].hex()
COUNT = Web3.keccak(text="count()")[:4].hex()


def calls_to(selector: str, method: str, params: Any) -> bool:
    if method != "eth_call":
        return False
    data = params[0].get("data") or params[0].get("input") or ""
    data = data.hex() if isinstance(data, bytes) else str(data).removeprefix("0x")
    return data.startswith(selector)


def test_every_page_is_read_at_the_same_block(chain: EmbeddedChain, registry: str) -> None:
    for n in (1, 2, 3):
        register(chain, registry, n, f"wss://r{n}/")
    changed = []

    def deregister_after_first_page(method: str, params: Any, response: dict[str, Any]) -> Any:
        if calls_to(ENTRIES, method, params) and not changed:
            changed.append(True)  # a relay leaves between two pages of one read
            Writer(chain.provider, chain.keys[1]).send(
                Writer(chain.provider, chain.keys[1])
                .contract(registry, "RelayRegistry")
                .functions.deregister(),
                what="deregister",
            )
        return response

    listing = read_registry(
        Tampering(chain.provider, deregister_after_first_page),
        registry,
        chain_id=chain.chain_id,
        page_size=1,
    )
    assert changed
    assert [e["url"] for e in listing.entries] == ["wss://r1/", "wss://r2/", "wss://r3/"]
    assert listing.block_number < chain.w3.eth.block_number
    assert [e["url"] for e in read(chain, registry).entries] == ["wss://r3/", "wss://r2/"]


def test_bytes_that_are_not_utf8_are_reported_per_entry(
    chain: EmbeddedChain, registry: str
) -> None:
    register(chain, registry, 1, "wss://good/")
    register_raw(chain, registry, 2, b"wss://\xff/", relay_id(2), b"")
    register_raw(chain, registry, 3, b"wss://fine/", relay_id(3), b"eu\xc3")
    register(chain, registry, 4, "wss://also-good/")
    listing = read(chain, registry)
    assert [e["url"] for e in listing.entries] == ["wss://good/", "wss://also-good/"]
    assert listing.problems == (
        EntryProblem(1, chain.keys[2].address, "url is not UTF-8 (byte 0xff at offset 6)"),
        EntryProblem(2, chain.keys[3].address, "region is not UTF-8 (byte 0xc3 at offset 2)"),
    )
    assert str(listing.problems[0]) == (
        f"on-chain entry 1 (account {chain.keys[2].address}): url is not UTF-8 (byte 0xff at "
        "offset 6)"
    )


def relay_list_problems(entries: tuple[dict[str, str], ...]) -> list[str]:
    """The relay list's rules (scheme ws/wss, a valid id, no duplicates), as a validator sees
    the mappings; the validator itself belongs to the relay list, this only shows they apply."""
    problems, seen_urls, seen_ids = [], set(), set()
    for k, entry in enumerate(entries):
        if urllib.parse.urlsplit(entry["url"]).scheme not in ("ws", "wss"):
            problems.append(f"{k}: scheme")
        try:
            PeerId.from_text(entry["id"])
        except ConfigError:
            problems.append(f"{k}: id")
        if entry["url"] in seen_urls or entry["id"] in seen_ids:
            problems.append(f"{k}: duplicate")
        seen_urls.add(entry["url"])
        seen_ids.add(entry["id"])
    return problems


def test_malformed_entries_are_handed_over_as_mappings_a_validator_rejects(
    chain: EmbeddedChain, registry: str
) -> None:
    register(chain, registry, 1, "wss://ok.example/")
    register(chain, registry, 2, "http://wrong-scheme.example/")
    register(chain, registry, 3, "wss://ok.example/")  # the same URL again
    register(chain, registry, 4, "not a url at all")
    register_raw(chain, registry, 5, b"wss://nul\x00.example/", relay_id(5), b"\x1b[31m")
    listing = read(chain, registry)
    assert listing.problems == ()
    assert len(listing.entries) == 5
    assert all(set(e) <= {"url", "id", "region"} for e in listing.entries)
    assert listing.entries[4] == {
        "url": "wss://nul\x00.example/",
        "id": PeerId(relay_id(5)).to_text(),
        "region": "\x1b[31m",
    }
    assert relay_list_problems(listing.entries) == ["1: scheme", "2: duplicate", "3: scheme"]
    # An on-chain id is any 32 bytes, so its text form always has a valid checksum: whether it
    # is the relay's real id is learned only on connecting (the relay's KEM challenge).
    assert PeerId.from_text(listing.entries[0]["id"]).digest == relay_id(1)


def test_wrong_chain_id_is_refused_naming_both(chain: EmbeddedChain, registry: str) -> None:
    with pytest.raises(RegistryError) as info:
        read_registry(chain.provider, registry, chain_id=1)
    assert str(info.value) == (
        "registry via EthereumTesterProvider: wrong chain: expected chain id 1, but the node "
        f"is on chain {chain.chain_id}"
    )
    assert info.value.rpc_url == "EthereumTesterProvider"


def test_an_address_without_a_contract_is_refused(chain: EmbeddedChain) -> None:
    account = chain.keys[7].address
    with pytest.raises(RegistryError, match=f"no contract at {account} on chain"):
        read(chain, account)


def test_a_contract_that_is_not_a_registry_is_refused(chain: EmbeddedChain) -> None:
    other = Writer(chain.provider, chain.keys[0]).deploy("EnsRegistry")
    with pytest.raises(
        RegistryError, match=f"the contract refused reading count.. of the registry at {other}"
    ):
        read(chain, other)


def answer(result: Any) -> Callable[[str, Any, dict[str, Any]], dict[str, Any]]:
    """A tamper that replaces one call's result."""

    def tamper(method: str, params: Any, response: dict[str, Any]) -> dict[str, Any]:
        selector, value = result
        if (selector == "eth_chainId" and method == "eth_chainId") or calls_to(
            selector, method, params
        ):
            return {**response, "result": value}
        return response

    return tamper


def row(account: str, relay: bytes, url: bytes, region: bytes) -> tuple[Any, ...]:
    return (account, relay, url, region)


def entries_answer(rows: list[tuple[Any, ...]]) -> str:
    types = ["(address,bytes32,bytes,bytes)[]"]
    return "0x" + encode(types, [rows]).hex()


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (("eth_chainId", "banana"), "malformed answer"),
        ((COUNT, "0x" + encode(["uint256"], [1000]).hex()), "reports 1000 entries"),
        ((COUNT, "0x1234"), "malformed answer while reading count()"),
        ((ENTRIES, entries_answer([])), "returned 0 entries where count() said 2"),
        ((ENTRIES, "0x" + "ff" * 64), "malformed answer while reading entries(0, 128)"),
    ],
    ids=["chain id", "count too high", "count undecodable", "short page", "page undecodable"],
)
def test_a_malformed_answer_is_refused_naming_what_was_read(
    chain: EmbeddedChain, registry: str, tamper: tuple[str, str], message: str
) -> None:
    register(chain, registry, 1, "wss://a/")
    register(chain, registry, 2, "wss://b/")
    with pytest.raises(RegistryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_registry(Tampering(chain.provider, answer(tamper)), registry, chain_id=chain.chain_id)


def test_a_zero_relay_id_from_a_hostile_node_is_an_entry_problem(
    chain: EmbeddedChain, registry: str
) -> None:
    register(chain, registry, 1, "wss://a/")
    account = chain.keys[1].address
    forged = entries_answer([row(account, bytes(32), b"wss://a/", b"")])
    listing = read_registry(
        Tampering(chain.provider, answer((ENTRIES, forged))), registry, chain_id=chain.chain_id
    )
    assert listing.entries == ()
    assert listing.problems == (EntryProblem(0, account, "relay id is zero"),)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_closed_port_is_connection_refused_naming_the_url() -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(RegistryError) as info:
        read_registry(url, "0x" + "11" * 20, chain_id=1)
    assert str(info.value) == (
        f"registry via {url}: cannot connect (connection refused) while reading the chain id"
    )
    assert info.value.rpc_url == url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("https://mainnet.infura.io/v3/0123456789abcdef", "https://mainnet.infura.io/v3/…"),
        ("https://user:secret@node.example/rpc?key=abc", "https://node.example/rpc/…"),
        ("http://[::1]:8545/", "http://[::1]:8545"),
    ],
)
def test_the_rpc_url_is_shown_without_credentials(url: str, shown: str) -> None:
    assert describe_rpc_url(url) == shown


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"page_size": 0}, "page_size must be between 1 and 256"),
        ({"page_size": 257}, "page_size must be between 1 and 256"),
    ],
)
def test_bad_arguments_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        read_registry("http://127.0.0.1:1", "0x" + "11" * 20, chain_id=1, **kwargs)


def test_an_rpc_url_that_is_not_http_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="must start with http:// or https://"):
        read_registry("ws://127.0.0.1:8545", "0x" + "11" * 20, chain_id=1)


def test_without_web3_the_reader_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(__import__("sys").modules, "web3", None)
    with pytest.raises(ConfigError, match=r"pip install 'meshcore\[chain\]'"):
        read_registry("http://127.0.0.1:8545", "chronara.eth", chain_id=1)
    with pytest.raises(ConfigError, match=r"pip install 'meshcore\[chain\]'"):
        trio.run(lambda: read_registry_async("http://127.0.0.1:8545", "chronara.eth", chain_id=1))


async def test_the_async_reader_gives_the_same_listing(chain: EmbeddedChain, registry: str) -> None:
    register(chain, registry, 1, "wss://a/", "eu")
    listing = await read_registry_async(chain.provider, registry, chain_id=chain.chain_id)
    assert listing == read(chain, registry)


class Stalling(BaseProvider):
    """A node double whose first request blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []
        self.entered = threading.Event()
        self.release = threading.Event()

    def make_request(self, method: Any, params: Any) -> Any:
        self.requests.append(str(method))
        self.entered.set()
        assert self.release.wait(timeout=30)
        return {"jsonrpc": "2.0", "id": 1, "result": "0x1"}

    def is_connected(self, show_traceback: bool = False) -> bool:
        return True


async def test_a_cancelled_async_read_returns_at_once_and_its_thread_sends_nothing_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = Stalling()
    finished = threading.Event()
    real_read = reader_module._read

    def read_then_signal(*args: Any, **kwargs: Any) -> Any:
        try:
            return real_read(*args, **kwargs)
        finally:
            finished.set()

    monkeypatch.setattr(reader_module, "_read", read_then_signal)
    with trio.fail_after(10):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: read_registry_async(node, "0x" + "11" * 20, chain_id=1))
                await trio.to_thread.run_sync(node.entered.wait, 10, abandon_on_cancel=True)
                scope.cancel()  # while the first request is in flight
        assert scope.cancelled_caught
        node.release.set()
        assert await trio.to_thread.run_sync(finished.wait, 10)
    assert node.requests == ["eth_chainId"]
