"""Finding a contract by address or by an ENS name (EIP-137 forward resolution).

A name is normalised (ENSIP-15) and hashed (namehash) with web3.py's `ens` module, then
resolved in two calls: the ENS registry's `resolver(node)`, then that resolver's
`addr(node)`. Wildcard (ENSIP-10) and off-chain (CCIP-read) names are not followed.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

import attrs

from meshcore.errors import ConfigError

if TYPE_CHECKING:
    from meshcore.chain._rpc import Rpc

__all__ = [
    "ENS_MAINNET_REGISTRY",
    "ContractRef",
    "namehash",
    "parse_address",
    "parse_contract_ref",
    "resolve",
]

ENS_MAINNET_REGISTRY: Final = "0x00000000000C2E074eC69A0dFb2997BA6C7d2e1e"
"""The canonical ENS registry, at the same address on Ethereum mainnet and its testnets."""

_HEX_ADDRESS: Final = re.compile(r"0[xX][0-9a-fA-F]{40}")
_ZERO_ADDRESS: Final = "0x" + "00" * 20

# Just enough ABI for forward resolution.
ENS_REGISTRY_ABI: Final = [
    {
        "type": "function",
        "name": "resolver",
        "stateMutability": "view",
        "inputs": [{"name": "node", "type": "bytes32"}],
        "outputs": [{"name": "", "type": "address"}],
    }
]
RESOLVER_ABI: Final = [
    {
        "type": "function",
        "name": "addr",
        "stateMutability": "view",
        "inputs": [{"name": "node", "type": "bytes32"}],
        "outputs": [{"name": "", "type": "address"}],
    }
]


@attrs.frozen
class ContractRef:
    """A contract given by its checksummed `address`, or by an ENS `name` (normalised)."""

    address: str | None = None
    name: str | None = None

    def __str__(self) -> str:
        return self.name or self.address or "?"


def parse_address(text: str, *, what: str) -> str:
    """`text` as a checksummed address; all-lower or all-upper hex is accepted as typed.

    Raises:
        ConfigError: not 0x and 40 hex digits, a mixed-case address whose EIP-55
            checksum fails (a typo), or the zero address.
    """
    from eth_utils.address import is_checksum_address, to_checksum_address

    value = text.strip()
    if not _HEX_ADDRESS.fullmatch(value):
        raise ConfigError(f"{what} {text!r} is not an address (0x and 40 hex digits)")
    digits = value[2:]
    if digits != digits.lower() and digits != digits.upper() and not is_checksum_address(value):
        raise ConfigError(
            f"{what} {text!r} fails its EIP-55 checksum (mixed case): a character is wrong; "
            "copy the address again"
        )
    if value.lower() == _ZERO_ADDRESS:
        raise ConfigError(f"{what} is the zero address")
    return str(to_checksum_address(value))


def parse_contract_ref(text: str, *, what: str = "registry") -> ContractRef:
    """An address (``0x…``) or an ENS name (``chronara.eth``).

    Raises:
        ConfigError: a malformed address, or a name that is not a valid ENS name.
    """
    from ens.exceptions import ENSException
    from ens.utils import normalize_name

    value = text.strip()
    if value[:2].lower() == "0x" and len(value) > 2 and "." not in value:
        return ContractRef(address=parse_address(value, what=what))
    if not value:
        raise ConfigError(f"{what} is empty: give the contract's 0x address or its ENS name")
    try:
        name = normalize_name(value)
    except (ENSException, ValueError) as exc:
        raise ConfigError(
            f"{what} {text!r} is neither a 0x address nor a valid ENS name ({exc}); "
            "give e.g. 0x5FbDB2315678afecb367f032d93F642f64180aa3 or chronara.eth"
        ) from None
    if not name or ("." not in name and len(name) < 3):
        raise ConfigError(f"{what} {text!r} is too short to be an ENS name")
    return ContractRef(name=name)


def namehash(name: str) -> bytes:
    """The EIP-137 namehash of a normalised name (web3.py's `ens` implementation).

    The root (the empty name) hashes to 32 zero bytes.
    """
    from ens.utils import normal_name_to_hash

    if not name:
        return bytes(32)

    return bytes(normal_name_to_hash(name))


def resolve(rpc: Rpc, name: str, ens_registry: str, block: int | str = "latest") -> str:
    """The address that `name` points to, read at `block`.

    Raises:
        RegistryError: no ENS registry at `ens_registry`, no resolver for the name, no
            address in its resolver, or a malformed answer; the message says which.
    """
    node = namehash(name)
    registry = rpc.contract(ens_registry, ENS_REGISTRY_ABI)
    resolver = str(
        rpc.call(
            registry.functions.resolver(node),
            block=block,
            what=f"asking the ENS registry at {ens_registry} for the resolver of {name}",
            absent=f"no ENS registry at {ens_registry} on this chain, so the name {name} cannot "
            "be resolved; give the ENS registry's address (--ens) or the registry's 0x address",
        )
    )
    if int(resolver, 16) == 0:
        raise rpc.error(
            f"the name {name} does not resolve: the ENS registry at {ens_registry} has no "
            "resolver for it (is it set up? `meshcore-relay registry deploy --name`)"
        )
    contract = rpc.contract(resolver, RESOLVER_ABI)
    target = str(
        rpc.call(
            contract.functions.addr(node),
            block=block,
            what=f"asking the resolver {resolver} of {name} for its address",
            absent=f"the resolver {resolver} of {name} has no code on this chain",
        )
    )
    if int(target, 16) == 0:
        raise rpc.error(
            f"the name {name} does not resolve: its resolver {resolver} has no address for it"
        )
    return target
