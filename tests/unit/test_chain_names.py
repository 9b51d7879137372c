"""Names: the minimal ENS registry and resolver on the embedded EVM, namehash, parsing a
registry given by address or name, pointing a name at a registry, and resolving it."""

from __future__ import annotations

import pytest

pytest.importorskip("eth_tester", reason="the chain tests need the test extra (eth-tester)")

from meshcore.chain import ENS_MAINNET_REGISTRY, read_registry
from meshcore.chain._rpc import revert_reason
from meshcore.chain.artifacts import load_artifact
from meshcore.chain.names import ContractRef, namehash, parse_address, parse_contract_ref
from meshcore.chain.transact import Writer, deploy_registry, point_name, register_relay
from meshcore.errors import ConfigError, RegistryError
from meshcore.testing.chain import EmbeddedChain, embedded_chain

ZERO_ADDRESS = "0x" + "00" * 20


@pytest.fixture(scope="module")
def chain() -> EmbeddedChain:
    return embedded_chain(accounts=4)


def test_namehash_follows_eip137() -> None:
    assert namehash("") == bytes(32)
    assert namehash("eth").hex() == (
        "93cdeb708b7545dc668eb9280176169d1c33cfd8ed6f04690a0bcc88a93fc4ae"
    )
    assert namehash("foo.eth").hex() == (
        "de9b09fd7c5f901e23a3f19fecc54828e9c848539801e86591bd9801b019f84f"
    )


def test_the_default_ens_registry_is_web3s_mainnet_address() -> None:
    from ens.constants import ENS_MAINNET_ADDR

    assert ENS_MAINNET_REGISTRY == ENS_MAINNET_ADDR


CHECKSUMMED = "0x5FbDB2315678afecb367f032d93F642f64180aa3"


@pytest.mark.parametrize(
    "text", [CHECKSUMMED, CHECKSUMMED.lower(), "0x" + CHECKSUMMED[2:].upper(), f"  {CHECKSUMMED} "]
)
def test_a_registry_address_is_accepted_in_any_single_case(text: str) -> None:
    assert parse_contract_ref(text) == ContractRef(address=CHECKSUMMED)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (CHECKSUMMED.replace("F", "f", 1), "fails its EIP-55 checksum"),
        ("0x5FbDB2315678afecb367f032d93F642f64180aa", "is not an address"),
        ("0x" + "g" * 40, "is not an address"),
        ("0x" + "00" * 20, "zero address"),
        ("", "is empty"),
        ("chron ara.eth", "neither a 0x address nor a valid ENS name"),
    ],
)
def test_a_malformed_registry_is_a_config_error_naming_it(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_contract_ref(text)


def test_a_registry_name_is_normalised() -> None:
    assert parse_contract_ref("Chronara.ETH") == ContractRef(name="chronara.eth")


def test_parse_address_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"^--ens 'nope' is not an address"):
        parse_address("nope", what="--ens")


class Ens:
    """An ENS registry (root owned by account 0) and a resolver on it."""

    def __init__(self, chain: EmbeddedChain) -> None:
        self.chain = chain
        self.accounts = [k.address for k in chain.keys]
        self.registry = self._deploy("EnsRegistry")
        self.resolver = self._deploy("PublicResolver", self.registry.address)

    def _deploy(self, name: str, *args: object) -> object:
        artifact = load_artifact(name)
        w3 = self.chain.w3
        factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        tx = factory.constructor(*args).transact({"from": self.accounts[0]})
        address = w3.eth.wait_for_transaction_receipt(tx)["contractAddress"]
        return w3.eth.contract(address=address, abi=artifact.abi)

    def refusal(self, fn: object, sender: int) -> str | None:
        with pytest.raises(Exception) as info:
            fn.transact({"from": self.accounts[sender]})  # type: ignore[attr-defined]
        return revert_reason(info.value)


@pytest.fixture
def ens(chain: EmbeddedChain) -> Ens:
    return Ens(chain)


def test_the_ens_registry_gives_subnames_only_to_their_parents_owner(ens: Ens) -> None:
    from ens.utils import label_to_hash

    reg = ens.registry.functions  # type: ignore[attr-defined]
    assert reg.owner(bytes(32)).call() == ens.accounts[0]
    assert reg.recordExists(namehash("eth")).call() is False
    reg.setSubnodeOwner(bytes(32), label_to_hash("eth"), ens.accounts[1]).transact(
        {"from": ens.accounts[0]}
    )
    assert reg.owner(namehash("eth")).call() == ens.accounts[1]
    assert reg.recordExists(namehash("eth")).call() is True
    refused = reg.setSubnodeOwner(namehash("eth"), label_to_hash("x"), ens.accounts[0])
    assert ens.refusal(refused, 0) == "ens: caller does not own this node"
    assert ens.refusal(reg.setResolver(namehash("eth"), ens.accounts[0]), 0) == (
        "ens: caller does not own this node"
    )
    reg.setResolver(namehash("eth"), ens.accounts[2]).transact({"from": ens.accounts[1]})
    assert reg.resolver(namehash("eth")).call() == ens.accounts[2]
    reg.setTTL(namehash("eth"), 300).transact({"from": ens.accounts[1]})
    assert reg.ttl(namehash("eth")).call() == 300
    reg.setOwner(namehash("eth"), ens.accounts[3]).transact({"from": ens.accounts[1]})
    assert reg.owner(namehash("eth")).call() == ens.accounts[3]


def test_the_resolver_lets_only_the_names_owner_set_its_address(ens: Ens) -> None:
    res = ens.resolver.functions  # type: ignore[attr-defined]
    root = bytes(32)
    assert ens.refusal(res.setAddr(root, ens.accounts[2]), 1) == (
        "resolver: caller does not own this name"
    )
    res.setAddr(root, ens.accounts[2]).transact({"from": ens.accounts[0]})
    assert res.addr(root).call() == ens.accounts[2]
    assert res.ens().call() == ens.registry.address  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("interface", "supported"),
    [("01ffc9a7", True), ("3b3b57de", True), ("ffffffff", False), ("9061b923", False)],
)
def test_the_resolver_announces_erc165_and_addr(ens: Ens, interface: str, supported: bool) -> None:
    res = ens.resolver.functions  # type: ignore[attr-defined]
    assert res.supportsInterface(bytes.fromhex(interface)).call() is supported


def test_point_name_on_a_chain_without_ens_deploys_it_and_the_name_resolves(
    chain: EmbeddedChain,
) -> None:
    owner = Writer(chain.provider, chain.keys[0])
    registry = deploy_registry(owner)
    register_relay(
        Writer(chain.provider, chain.keys[1]), registry, url="wss://a/", relay_id=b"\x01" * 32
    )
    setup = point_name(owner, "chronara.eth", registry)
    assert setup.deployed == ("EnsRegistry", "PublicResolver")
    assert setup.target == registry
    listing = read_registry(
        chain.provider, "chronara.eth", chain_id=chain.chain_id, ens_registry=setup.ens_registry
    )
    assert listing.contract == registry
    assert listing.name == "chronara.eth"
    assert listing.source == f"chain:chronara.eth@{chain.chain_id}"
    assert [e["url"] for e in listing.entries] == ["wss://a/"]


def test_point_name_reuses_the_ens_registry_and_resolver_and_repoints(
    chain: EmbeddedChain,
) -> None:
    owner = Writer(chain.provider, chain.keys[0])
    first, second = deploy_registry(owner), deploy_registry(owner)
    setup = point_name(owner, "chronara.eth", first)
    again = point_name(owner, "Chronara.eth".lower(), second, ens_registry=setup.ens_registry)
    assert again.deployed == ()
    assert (again.ens_registry, again.resolver) == (setup.ens_registry, setup.resolver)
    sub = point_name(owner, "eu.relays.chronara.eth", first, ens_registry=setup.ens_registry)
    assert sub.deployed == ("PublicResolver",)  # subnames are created; each has a resolver
    for name, target in (("chronara.eth", second), ("eu.relays.chronara.eth", first)):
        listing = read_registry(
            chain.provider, name, chain_id=chain.chain_id, ens_registry=setup.ens_registry
        )
        assert listing.contract == target


def test_point_name_refuses_a_name_owned_by_another_account(chain: EmbeddedChain) -> None:
    owner = Writer(chain.provider, chain.keys[0])
    registry = deploy_registry(owner)
    setup = point_name(owner, "chronara.eth", registry)
    stranger = Writer(chain.provider, chain.keys[2])
    with pytest.raises(
        RegistryError, match=r"cannot set up chronara\.eth: chronara\.eth is owned by"
    ):
        point_name(stranger, "chronara.eth", registry, ens_registry=setup.ens_registry)


def test_point_name_refuses_an_explicit_ens_registry_that_is_not_there(
    chain: EmbeddedChain,
) -> None:
    owner = Writer(chain.provider, chain.keys[0])
    with pytest.raises(RegistryError, match=r"no ENS registry at 0x1111"):
        point_name(owner, "chronara.eth", chain.keys[3].address, ens_registry="0x" + "11" * 20)


def test_a_name_without_a_resolver_does_not_resolve(chain: EmbeddedChain) -> None:
    owner = Writer(chain.provider, chain.keys[0])
    setup = point_name(owner, "chronara.eth", deploy_registry(owner))
    with pytest.raises(RegistryError) as info:
        read_registry(
            chain.provider, "nowhere.eth", chain_id=chain.chain_id, ens_registry=setup.ens_registry
        )
    assert "the name nowhere.eth does not resolve: the ENS registry at" in str(info.value)
    assert "has no resolver for it" in str(info.value)


def test_a_name_whose_resolver_has_no_address_does_not_resolve(chain: EmbeddedChain) -> None:
    owner = Writer(chain.provider, chain.keys[0])
    setup = point_name(owner, "chronara.eth", deploy_registry(owner))
    resolver = owner.contract(setup.resolver, "PublicResolver")
    owner.send(resolver.functions.setAddr(namehash("chronara.eth"), ZERO_ADDRESS), what="unset")
    with pytest.raises(RegistryError, match=r"chronara.eth does not resolve: its resolver 0x"):
        read_registry(
            chain.provider, "chronara.eth", chain_id=chain.chain_id, ens_registry=setup.ens_registry
        )


def test_a_name_on_a_chain_without_an_ens_registry_says_so(chain: EmbeddedChain) -> None:
    with pytest.raises(RegistryError) as info:
        read_registry(chain.provider, "chronara.eth", chain_id=chain.chain_id)
    message = str(info.value)
    assert f"no ENS registry at {ENS_MAINNET_REGISTRY} on this chain" in message
    assert "--ens" in message
