"""The relay registry contract on the embedded EVM: every function, every refusal with its
reason, the events, the bounds (one entry per account, 256 in all) and the paginated view."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

pytest.importorskip("eth_tester", reason="the chain tests need the test extra (eth-tester)")

from meshcore.chain import MAX_ENTRIES, MAX_REGION_BYTES, MAX_URL_BYTES
from meshcore.chain._rpc import revert_reason
from meshcore.chain.artifacts import load_artifact
from meshcore.testing.chain import EmbeddedChain, embedded_chain

ZERO_ID = bytes(32)
ZERO_ADDRESS = "0x" + "00" * 20


def relay_id(n: int) -> bytes:
    return hashlib.sha256(b"relay %d" % n).digest()


@pytest.fixture(scope="module")
def chain() -> EmbeddedChain:
    return embedded_chain(accounts=8)


class Registry:
    """A freshly deployed registry (owned by account 0) and helpers to drive it."""

    def __init__(self, chain: EmbeddedChain) -> None:
        self.chain = chain
        self.accounts = [k.address for k in chain.keys]
        artifact = load_artifact("RelayRegistry")
        factory = chain.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = self.wait(factory.constructor().transact({"from": self.accounts[0]}))
        self.deploy_receipt = receipt
        self.contract = chain.w3.eth.contract(address=receipt["contractAddress"], abi=artifact.abi)
        self.fn = self.contract.functions

    def wait(self, tx_hash: Any) -> Any:
        receipt = self.chain.w3.eth.wait_for_transaction_receipt(tx_hash)
        assert receipt["status"] == 1
        return receipt

    def send(self, sender: int, name: str, *args: Any) -> Any:
        fn = getattr(self.fn, name)(*args)
        return self.wait(fn.transact({"from": self.accounts[sender]}))

    def refusal(self, sender: int, name: str, *args: Any) -> str:
        """The revert reason of a transaction the contract must refuse."""
        fn = getattr(self.fn, name)(*args)
        with pytest.raises(Exception) as info:
            fn.transact({"from": self.accounts[sender]})
        reason = revert_reason(info.value)
        assert reason is not None, f"not a revert: {info.value!r}"
        return reason

    def events(self, receipt: Any, event: str) -> list[dict[str, Any]]:
        return [
            dict(e["args"]) for e in getattr(self.contract.events, event)().process_receipt(receipt)
        ]

    def entries(self, offset: int = 0, limit: int = MAX_ENTRIES) -> list[tuple[Any, ...]]:
        return [tuple(e) for e in self.fn.entries(offset, limit).call()]


@pytest.fixture
def registry(chain: EmbeddedChain) -> Registry:
    return Registry(chain)


def test_a_new_registry_is_empty_and_owned_by_its_deployer(registry: Registry) -> None:
    assert registry.fn.owner().call() == registry.accounts[0]
    assert registry.fn.count().call() == 0
    assert registry.entries() == []
    assert registry.events(registry.deploy_receipt, "OwnershipTransferred") == [
        {"previous_owner": ZERO_ADDRESS, "new_owner": registry.accounts[0]}
    ]


def test_the_contract_bounds_are_the_ones_the_library_checks(registry: Registry) -> None:
    assert registry.fn.MAX_ENTRIES().call() == MAX_ENTRIES == 256
    assert registry.fn.MAX_URL_BYTES().call() == MAX_URL_BYTES
    assert registry.fn.MAX_REGION_BYTES().call() == MAX_REGION_BYTES


def test_register_adds_the_callers_entry_and_logs_it(registry: Registry) -> None:
    receipt = registry.send(1, "register", "wss://a.example/", relay_id(1), "eu")
    a1 = registry.accounts[1]
    assert registry.entries() == [(a1, relay_id(1), "wss://a.example/", "eu")]
    assert registry.fn.has_entry(a1).call() is True
    assert registry.fn.has_entry(registry.accounts[2]).call() is False
    assert tuple(registry.fn.entry_of(a1).call()) == (a1, relay_id(1), "wss://a.example/", "eu")
    assert registry.events(receipt, "Registered") == [
        {"account": a1, "relay_id": relay_id(1), "url": "wss://a.example/", "region": "eu"}
    ]


def test_update_replaces_the_entry_and_frees_the_old_relay_id(registry: Registry) -> None:
    registry.send(1, "register", "wss://a.example/", relay_id(1), "")
    receipt = registry.send(1, "update", "wss://b.example/", relay_id(2), "us")
    a1 = registry.accounts[1]
    assert registry.entries() == [(a1, relay_id(2), "wss://b.example/", "us")]
    assert registry.events(receipt, "Updated") == [
        {
            "account": a1,
            "relay_id": relay_id(2),
            "url": "wss://b.example/",
            "region": "us",
            "previous_relay_id": relay_id(1),
        }
    ]
    registry.send(2, "register", "wss://c.example/", relay_id(1), "")  # the old id is free
    assert registry.fn.count().call() == 2


def test_update_keeping_the_relay_id_is_allowed(registry: Registry) -> None:
    registry.send(1, "register", "wss://a.example/", relay_id(1), "")
    registry.send(1, "update", "wss://a2.example/", relay_id(1), "eu")
    assert registry.entries() == [(registry.accounts[1], relay_id(1), "wss://a2.example/", "eu")]


def test_deregister_removes_the_callers_entry_and_keeps_the_others(registry: Registry) -> None:
    for n in (1, 2, 3):
        registry.send(n, "register", f"wss://r{n}.example/", relay_id(n), "")
    receipt = registry.send(1, "deregister")
    assert registry.events(receipt, "Deregistered") == [
        {"account": registry.accounts[1], "relay_id": relay_id(1)}
    ]
    left = {(e[0], e[1]) for e in registry.entries()}
    assert left == {(registry.accounts[2], relay_id(2)), (registry.accounts[3], relay_id(3))}
    assert registry.fn.has_entry(registry.accounts[1]).call() is False
    # The entry moved into the freed slot is still found by its account and its id.
    registry.send(3, "update", "wss://r3b.example/", relay_id(3), "")
    assert tuple(registry.fn.entry_of(registry.accounts[3]).call())[2] == "wss://r3b.example/"
    registry.send(1, "register", "wss://r1.example/", relay_id(1), "")  # and may come back
    assert registry.fn.count().call() == 3


def test_the_owner_removes_any_entry_and_it_is_logged(registry: Registry) -> None:
    registry.send(1, "register", "wss://r1.example/", relay_id(1), "")
    registry.send(2, "register", "wss://r2.example/", relay_id(2), "")
    receipt = registry.send(0, "remove", relay_id(1))
    assert registry.events(receipt, "Removed") == [
        {"account": registry.accounts[1], "relay_id": relay_id(1), "by": registry.accounts[0]}
    ]
    assert [e[1] for e in registry.entries()] == [relay_id(2)]
    assert registry.fn.has_entry(registry.accounts[1]).call() is False


def test_ownership_passes_to_another_account(registry: Registry) -> None:
    registry.send(1, "register", "wss://r1.example/", relay_id(1), "")
    receipt = registry.send(0, "transfer_ownership", registry.accounts[4])
    assert registry.events(receipt, "OwnershipTransferred") == [
        {"previous_owner": registry.accounts[0], "new_owner": registry.accounts[4]}
    ]
    assert registry.refusal(0, "remove", relay_id(1)) == (
        "registry: only the owner can remove entries"
    )
    registry.send(4, "remove", relay_id(1))
    assert registry.fn.count().call() == 0


def test_fields_at_their_bounds_are_accepted(registry: Registry) -> None:
    url = "wss://" + "u" * (MAX_URL_BYTES - 6)
    region = "é" * (MAX_REGION_BYTES // 2)  # bounds are in bytes of UTF-8
    registry.send(1, "register", url, relay_id(1), region)
    assert registry.entries() == [(registry.accounts[1], relay_id(1), url, region)]


LONG_URL = "wss://" + "u" * (MAX_URL_BYTES - 5)
LONG_REGION = "r" * (MAX_REGION_BYTES + 1)

REFUSALS: list[tuple[str, Callable[[Registry], None], int, str, tuple[Any, ...], str]] = [
    ("empty url", lambda r: None, 1, "register", ("", relay_id(1), ""), "registry: empty url"),
    ("url over 256 bytes", lambda r: None, 1, "register", (LONG_URL, relay_id(1), ""),
     "registry: url longer than 256 bytes"),
    ("region over 32 bytes", lambda r: None, 1, "register", ("wss://a/", relay_id(1), LONG_REGION),
     "registry: region longer than 32 bytes"),
    ("zero relay id", lambda r: None, 1, "register", ("wss://a/", ZERO_ID, ""),
     "registry: zero relay id"),
    ("duplicate relay id", lambda r: r.send(2, "register", "wss://b/", relay_id(1), ""), 1,
     "register", ("wss://a/", relay_id(1), ""), "registry: relay id already registered"),
    ("second entry of an account", lambda r: r.send(1, "register", "wss://b/", relay_id(2), ""),
     1, "register", ("wss://a/", relay_id(1), ""), "registry: this account already has an entry"),
    ("update without an entry", lambda r: None, 1, "update", ("wss://a/", relay_id(1), ""),
     "registry: no entry for this account"),
    ("update to an empty url", lambda r: r.send(1, "register", "wss://b/", relay_id(1), ""), 1,
     "update", ("", relay_id(1), ""), "registry: empty url"),
    ("update to an over-long url", lambda r: r.send(1, "register", "wss://b/", relay_id(1), ""),
     1, "update", (LONG_URL, relay_id(1), ""), "registry: url longer than 256 bytes"),
    ("update to an over-long region",
     lambda r: r.send(1, "register", "wss://b/", relay_id(1), ""), 1, "update",
     ("wss://a/", relay_id(1), LONG_REGION), "registry: region longer than 32 bytes"),
    ("update to a zero id", lambda r: r.send(1, "register", "wss://b/", relay_id(1), ""), 1,
     "update", ("wss://a/", ZERO_ID, ""), "registry: zero relay id"),
    ("update to another relay's id",
     lambda r: (r.send(1, "register", "wss://b/", relay_id(1), ""),
                r.send(2, "register", "wss://c/", relay_id(2), "")),
     1, "update", ("wss://a/", relay_id(2), ""), "registry: relay id already registered"),
    ("deregister without an entry", lambda r: None, 1, "deregister", (),
     "registry: no entry for this account"),
    ("removal by a non-owner", lambda r: r.send(1, "register", "wss://b/", relay_id(1), ""), 1,
     "remove", (relay_id(1),), "registry: only the owner can remove entries"),
    ("removal of an unknown id", lambda r: None, 0, "remove", (relay_id(9),),
     "registry: unknown relay id"),
    ("ownership transfer by a non-owner", lambda r: None, 1, "transfer_ownership",
     ("0x" + "11" * 20,), "registry: only the owner can transfer ownership"),
    ("ownership transfer to zero", lambda r: None, 0, "transfer_ownership", (ZERO_ADDRESS,),
     "registry: zero owner"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("setup", "sender", "name", "args", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in REFUSALS],
)
def test_refused_input_reverts_with_its_reason(
    registry: Registry,
    setup: Callable[[Registry], None],
    sender: int,
    name: str,
    args: tuple[Any, ...],
    reason: str,
) -> None:
    setup(registry)
    before = registry.entries()
    assert registry.refusal(sender, name, *args) == reason
    assert registry.entries() == before


def test_entry_of_an_account_without_one_is_refused(registry: Registry) -> None:
    with pytest.raises(Exception) as info:
        registry.fn.entry_of(registry.accounts[1]).call()
    assert revert_reason(info.value) == "registry: no entry for this account"


def test_entries_returns_pages_and_nothing_past_the_end(registry: Registry) -> None:
    for n in range(1, 6):
        registry.send(n, "register", f"wss://r{n}.example/", relay_id(n), "")
    ids = [relay_id(n) for n in range(1, 6)]
    assert [e[1] for e in registry.entries(0, 2)] == ids[0:2]
    assert [e[1] for e in registry.entries(2, 2)] == ids[2:4]
    assert [e[1] for e in registry.entries(4, 2)] == ids[4:5]
    assert registry.entries(5, 2) == []
    assert registry.entries(2**256 - 1, 2**256 - 1) == []
    assert registry.entries(1, 0) == []
    assert [e[1] for e in registry.entries(3, 2**256 - 1)] == ids[3:]


@pytest.fixture(scope="module")
def full() -> Iterator[Registry]:
    """A registry holding the maximum, 256 entries (about 10 s of py-evm; shared)."""
    big = embedded_chain(accounts=MAX_ENTRIES + 2)
    full = Registry(big)
    for n in range(1, MAX_ENTRIES + 1):
        full.fn.register(f"ws://relay{n}.example:7443/", relay_id(n), "").transact(
            {"from": full.accounts[n], "gas": 400_000}
        )
    yield full


@pytest.mark.slow
def test_a_full_registry_refuses_entry_257(full: Registry) -> None:
    assert full.fn.count().call() == MAX_ENTRIES
    reason = full.refusal(MAX_ENTRIES + 1, "register", "wss://x/", relay_id(999), "")
    assert reason == "registry: full (256 entries)"


@pytest.mark.slow
def test_pages_of_a_full_registry_hold_every_entry_once_in_order(full: Registry) -> None:
    pages = [full.entries(offset, 100) for offset in range(0, MAX_ENTRIES, 100)]
    assert [len(p) for p in pages] == [100, 100, 56]
    assert [e[1] for page in pages for e in page] == [
        relay_id(n) for n in range(1, MAX_ENTRIES + 1)
    ]
    assert len(full.entries(0, 10_000)) == MAX_ENTRIES


@pytest.mark.slow
def test_the_reader_reads_a_full_registry_across_pages(full: Registry) -> None:
    from meshcore.chain import read_registry

    chain = full.chain
    address = full.contract.address
    by_default = read_registry(chain.provider, address, chain_id=chain.chain_id)
    in_pages_of_100 = read_registry(chain.provider, address, chain_id=chain.chain_id, page_size=100)
    assert len(by_default.entries) == MAX_ENTRIES
    assert in_pages_of_100.entries == by_default.entries
    assert [e["url"] for e in by_default.entries] == [
        f"ws://relay{n}.example:7443/" for n in range(1, MAX_ENTRIES + 1)
    ]
    assert in_pages_of_100.rpc_calls > by_default.rpc_calls  # one more page
