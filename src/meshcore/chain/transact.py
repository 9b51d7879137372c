"""Changing the on-chain registry: deploying it, naming it, registering and removing relays.

Every transaction is signed locally with an `AccountKey` (the node never holds the key) and
sent raw; gas is estimated first, so a transaction the contract would refuse is never sent
and its reason string becomes the error. Used by `meshcore-relay registry ...`, the tests
and the benchmark.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Literal, cast

import attrs

from meshcore.chain._rpc import DEFAULT_TIMEOUT_S, Rpc
from meshcore.chain.artifacts import load_artifact
from meshcore.chain.entries import MAX_REGION_BYTES, MAX_URL_BYTES
from meshcore.chain.keyfile import AccountKey
from meshcore.chain.names import ENS_MAINNET_REGISTRY, ContractRef, namehash, resolve
from meshcore.errors import ConfigError

if TYPE_CHECKING:
    from eth_typing import ChecksumAddress
    from web3.providers.base import BaseProvider

__all__ = [
    "DEFAULT_RECEIPT_TIMEOUT_S",
    "NameSetup",
    "Writer",
    "check_entry_fields",
    "deploy_registry",
    "deregister_relay",
    "point_name",
    "register_relay",
    "remove_relay",
]

DEFAULT_RECEIPT_TIMEOUT_S: Final = 120.0
"""How long to wait for a sent transaction to be mined."""
_ZERO: Final = "0x" + "00" * 20


class Writer:
    """Sends transactions from one account, on a chain checked once at the start.

    Raises (from the constructor):
        RegistryError: the node is unreachable, or not on `chain_id` (when given).
    """

    def __init__(
        self,
        rpc: str | BaseProvider,
        key: AccountKey,
        *,
        chain_id: int | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        receipt_timeout_s: float = DEFAULT_RECEIPT_TIMEOUT_S,
    ) -> None:
        self.rpc = Rpc(rpc, timeout_s=timeout_s)
        self.key = key
        self.receipt_timeout_s = receipt_timeout_s
        self.chain_id = (
            self.rpc.chain_id() if chain_id is None else self.rpc.check_chain_id(chain_id)
        )

    @property
    def address(self) -> str:
        """The sending account."""
        return self.key.address

    def contract(self, address: str, name: str) -> Any:
        """A handle on the deployed contract `name` (an artifact) at `address`."""
        return self.rpc.contract(address, load_artifact(name).abi)

    def view(self, fn: Any, *, what: str) -> Any:
        """Call a view function at the latest block."""
        return self.rpc.call(
            fn, block="latest", what=what, absent=f"no contract at {fn.address} on this chain"
        )

    def send(self, fn: Any, *, what: str) -> Any:
        """Sign and send a call of the contract function `fn`; returns the mined receipt."""
        return self._transact(fn, what)

    def deploy(self, name: str, *args: Any) -> str:
        """Deploy the contract `name` (an artifact); returns its address."""
        artifact = load_artifact(name)
        factory = self.rpc.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = self._transact(factory.constructor(*args), f"deploying {name}")
        return str(receipt["contractAddress"])

    def find(self, ref: ContractRef, *, ens_registry: str | None = None) -> str:
        """The address of a contract given by address or ENS name."""
        if ref.address is not None:
            return ref.address
        assert ref.name is not None
        return resolve(self.rpc, ref.name, ens_registry or ENS_MAINNET_REGISTRY)

    def _transact(self, fn: Any, what: str) -> Any:
        w3 = self.rpc.w3
        with self.rpc.guard(what):
            nonce = w3.eth.get_transaction_count(cast("ChecksumAddress", self.address), "pending")
            tx = fn.build_transaction(
                {"from": self.key.address, "nonce": nonce, "chainId": self.chain_id}
            )
            signed = w3.eth.account.sign_transaction(tx, self.key.secret)
            tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self.receipt_timeout_s, poll_latency=0.1
            )
        if receipt["status"] != 1:
            raise self.rpc.error(
                f"transaction 0x{bytes(tx_hash).hex()} ({what}) failed when mined "
                "(status 0; out of gas, or the state changed since it was estimated)"
            )
        return receipt


def deploy_registry(writer: Writer) -> str:
    """Deploy a new, empty relay registry owned by the writer's account; its address."""
    return writer.deploy("RelayRegistry")


@attrs.frozen
class NameSetup:
    """Where a name was pointed: the ENS registry and resolver, and what had to be deployed."""

    name: str
    target: str
    ens_registry: str
    resolver: str
    deployed: tuple[str, ...]
    """Contracts deployed for the purpose ("EnsRegistry", "PublicResolver")."""


def point_name(
    writer: Writer, name: str, target: str, *, ens_registry: str | None = None
) -> NameSetup:
    """Point the ENS name `name` (normalised) at `target`, deploying what is missing.

    Without `ens_registry`, the canonical ENS registry is used if this chain has one; if not
    (a local or private chain), a new ENS registry is deployed, owned by the writer. The
    writer must own the name or an ancestor of it (subnames are created down to it). A name
    without a resolver gets a new public resolver.

    Raises:
        RegistryError: no ENS registry at an explicit `ens_registry`, the writer owns neither
            the name nor any ancestor, or a transaction is refused.
    """
    rpc = writer.rpc
    deployed: list[str] = []
    if ens_registry is None:
        ens_address = ENS_MAINNET_REGISTRY
        if not rpc.has_code(ens_address):
            ens_address = writer.deploy("EnsRegistry")
            deployed.append("EnsRegistry")
    else:
        ens_address = ens_registry
        if not rpc.has_code(ens_address):
            raise rpc.error(f"no ENS registry at {ens_address} on this chain")
    ens = writer.contract(ens_address, "EnsRegistry")
    _own(writer, ens, name)
    node = namehash(name)
    resolver = str(
        writer.view(ens.functions.resolver(node), what=f"reading the resolver of {name}")
    )
    if int(resolver, 16) == 0:
        resolver = writer.deploy("PublicResolver", ens_address)
        deployed.append("PublicResolver")
        writer.send(
            ens.functions.setResolver(node, resolver), what=f"setting the resolver of {name}"
        )
    public = writer.contract(resolver, "PublicResolver")
    current = str(writer.view(public.functions.addr(node), what=f"reading the address of {name}"))
    if current != target:
        writer.send(public.functions.setAddr(node, target), what=f"pointing {name} at {target}")
    return NameSetup(
        name=name,
        target=target,
        ens_registry=ens_address,
        resolver=resolver,
        deployed=tuple(deployed),
    )


def _own(writer: Writer, ens: Any, name: str) -> None:
    """Make the writer the owner of `name`, creating subnames below its nearest owned ancestor."""
    labels = name.split(".") if name else []
    # ancestors[i] is the name without its first i labels; the root ("") comes last.
    ancestors = [".".join(labels[i:]) for i in range(len(labels) + 1)]
    depth, ancestor, owner = 0, "", _ZERO
    for depth, ancestor in enumerate(ancestors):  # noqa: B007 (used after the loop)
        owner = str(
            writer.view(
                ens.functions.owner(namehash(ancestor)),
                what=f"reading the owner of {ancestor or 'the root'}",
            )
        )
        if int(owner, 16) != 0:
            break
    else:  # not even the root has an owner
        raise writer.rpc.error(f"the ENS registry has no owner for {name} or any parent of it")
    if owner != writer.address:
        raise writer.rpc.error(
            f"account {writer.address} cannot set up {name}: "
            f"{ancestor or 'the root'} is owned by {owner}"
        )
    from ens.utils import label_to_hash

    for i in range(depth - 1, -1, -1):  # from just below the owned ancestor down to the name
        parent, child = ancestors[i + 1], ancestors[i]
        writer.send(
            ens.functions.setSubnodeOwner(
                namehash(parent), bytes(label_to_hash(labels[i])), writer.address
            ),
            what=f"creating {child}",
        )


def check_entry_fields(url: str, relay_id: bytes, region: str) -> None:
    """Refuse, before any transaction, what the contract would refuse about one entry.

    Raises:
        ConfigError: an empty or over-long URL, an over-long region, or a zero relay id.
    """
    if not url:
        raise ConfigError("the relay URL is empty; give --url ws://HOST:PORT/")
    if len(url.encode("utf-8")) > MAX_URL_BYTES:
        raise ConfigError(f"the relay URL is longer than the registry's {MAX_URL_BYTES} bytes")
    if len(region.encode("utf-8")) > MAX_REGION_BYTES:
        raise ConfigError(f"the region is longer than the registry's {MAX_REGION_BYTES} bytes")
    if len(relay_id) != 32 or relay_id == bytes(32):
        raise ConfigError("the relay id must be 32 bytes and not zero")


def register_relay(
    writer: Writer, registry: str, *, url: str, relay_id: bytes, region: str = ""
) -> Literal["registered", "updated", "unchanged"]:
    """Register the writer's relay, or update its entry; nothing is sent if it is current."""
    check_entry_fields(url, relay_id, region)
    contract = writer.contract(registry, "RelayRegistry")
    has = writer.view(
        contract.functions.has_entry(writer.address),
        what=f"reading the entry of {writer.address}",
    )
    if not has:
        writer.send(contract.functions.register(url, relay_id, region), what="register")
        return "registered"
    _, current_id, current_url, current_region = writer.view(
        contract.functions.entry_of(writer.address), what=f"reading the entry of {writer.address}"
    )
    if (bytes(current_id), current_url, current_region) == (relay_id, url, region):
        return "unchanged"
    writer.send(contract.functions.update(url, relay_id, region), what="update")
    return "updated"


def deregister_relay(writer: Writer, registry: str) -> None:
    """Remove the writer's own entry (the contract refuses if it has none)."""
    contract = writer.contract(registry, "RelayRegistry")
    writer.send(contract.functions.deregister(), what="deregister")


def remove_relay(writer: Writer, registry: str, relay_id: bytes) -> None:
    """Remove any entry by its relay id; only the registry's owner may."""
    contract = writer.contract(registry, "RelayRegistry")
    writer.send(contract.functions.remove(relay_id), what="remove")
