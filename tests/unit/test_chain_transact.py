"""Changing the registry through locally signed transactions on the embedded EVM: register,
update, nothing sent when current, deregister, owner removal, and refusals as one-line errors."""

from __future__ import annotations

import hashlib

import pytest

pytest.importorskip("eth_tester", reason="the chain tests need the test extra (eth-tester)")

from meshcore.chain import MAX_REGION_BYTES, MAX_URL_BYTES, read_registry
from meshcore.chain.transact import (
    Writer,
    check_entry_fields,
    deploy_registry,
    deregister_relay,
    register_relay,
    remove_relay,
)
from meshcore.errors import ConfigError, RegistryError
from meshcore.testing.chain import EmbeddedChain, embedded_chain, new_account_keys


def relay_id(n: int) -> bytes:
    return hashlib.sha256(b"relay %d" % n).digest()


@pytest.fixture(scope="module")
def chain() -> EmbeddedChain:
    return embedded_chain(accounts=4)


@pytest.fixture
def registry(chain: EmbeddedChain) -> str:
    return deploy_registry(Writer(chain.provider, chain.keys[0]))


def urls(chain: EmbeddedChain, registry: str) -> list[str]:
    listing = read_registry(chain.provider, registry, chain_id=chain.chain_id)
    return [e["url"] for e in listing.entries]


def test_register_then_update_then_nothing_to_send(chain: EmbeddedChain, registry: str) -> None:
    relay = Writer(chain.provider, chain.keys[1])
    assert register_relay(relay, registry, url="wss://a/", relay_id=relay_id(1)) == "registered"
    block = chain.w3.eth.block_number
    assert register_relay(relay, registry, url="wss://a/", relay_id=relay_id(1)) == "unchanged"
    assert chain.w3.eth.block_number == block  # no transaction was sent
    outcome = register_relay(relay, registry, url="wss://b/", relay_id=relay_id(1), region="eu")
    assert outcome == "updated"
    assert urls(chain, registry) == ["wss://b/"]


def test_deregister_removes_the_entry_and_a_second_one_is_refused(
    chain: EmbeddedChain, registry: str
) -> None:
    relay = Writer(chain.provider, chain.keys[1])
    register_relay(relay, registry, url="wss://a/", relay_id=relay_id(1))
    deregister_relay(relay, registry)
    assert urls(chain, registry) == []
    with pytest.raises(RegistryError) as info:
        deregister_relay(relay, registry)
    assert str(info.value) == (
        "registry via EthereumTesterProvider: the contract refused deregister: "
        "registry: no entry for this account"
    )


def test_only_the_owner_removes_an_entry(chain: EmbeddedChain, registry: str) -> None:
    register_relay(
        Writer(chain.provider, chain.keys[1]), registry, url="wss://a/", relay_id=relay_id(1)
    )
    with pytest.raises(RegistryError, match="registry: only the owner can remove entries"):
        remove_relay(Writer(chain.provider, chain.keys[2]), registry, relay_id(1))
    remove_relay(Writer(chain.provider, chain.keys[0]), registry, relay_id(1))
    assert urls(chain, registry) == []


def test_a_relay_id_in_use_is_refused_with_the_contracts_reason(
    chain: EmbeddedChain, registry: str
) -> None:
    register_relay(
        Writer(chain.provider, chain.keys[1]), registry, url="wss://a/", relay_id=relay_id(1)
    )
    with pytest.raises(
        RegistryError, match="refused register: registry: relay id already registered"
    ):
        register_relay(
            Writer(chain.provider, chain.keys[2]), registry, url="wss://b/", relay_id=relay_id(1)
        )


def test_an_account_without_funds_is_refused_by_the_node(
    chain: EmbeddedChain, registry: str
) -> None:
    (poor,) = new_account_keys(1)
    with pytest.raises(RegistryError, match="registry via EthereumTesterProvider: "):
        register_relay(Writer(chain.provider, poor), registry, url="wss://a/", relay_id=relay_id(3))


def test_a_writer_on_the_wrong_chain_is_refused(chain: EmbeddedChain) -> None:
    with pytest.raises(RegistryError, match="wrong chain: expected chain id 5"):
        Writer(chain.provider, chain.keys[0], chain_id=5)


def test_writing_to_an_address_without_a_contract_says_so(chain: EmbeddedChain) -> None:
    nowhere = chain.keys[3].address
    with pytest.raises(RegistryError, match=f"no contract at {nowhere}"):
        register_relay(
            Writer(chain.provider, chain.keys[1]), nowhere, url="wss://a/", relay_id=relay_id(1)
        )


@pytest.mark.parametrize(
    ("url", "relay", "region", "message"),
    [
        ("", relay_id(1), "", "the relay URL is empty"),
        ("wss://" + "é" * MAX_URL_BYTES, relay_id(1), "", "longer than the registry's 256 bytes"),
        ("wss://a/", relay_id(1), "r" * (MAX_REGION_BYTES + 1), "region is longer"),
        ("wss://a/", bytes(32), "", "must be 32 bytes and not zero"),
        ("wss://a/", b"\x01" * 31, "", "must be 32 bytes and not zero"),
    ],
)
def test_fields_the_contract_would_refuse_are_refused_before_sending(
    url: str, relay: bytes, region: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check_entry_fields(url, relay, region)
