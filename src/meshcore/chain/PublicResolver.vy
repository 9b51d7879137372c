# pragma version ==0.4.3
# pragma evm-version cancun
"""
@title A minimal ENS-compatible public resolver
@notice Holds the Ethereum address record (EIP-137 `addr`) of names in one ENS registry; only
        a name's owner in that registry may set it. Announces its interfaces (EIP-165).
"""


interface EnsRegistry:
    def owner(node: bytes32) -> address: view


event AddrChanged:
    node: indexed(bytes32)
    a: address


ens: public(immutable(address))
_addresses: HashMap[bytes32, address]

INTERFACE_ERC165: constant(bytes4) = 0x01ffc9a7
INTERFACE_ADDR: constant(bytes4) = 0x3b3b57de


@deploy
def __init__(ens_registry: address):
    ens = ens_registry


@external
def setAddr(node: bytes32, a: address):
    assert staticcall EnsRegistry(ens).owner(node) == msg.sender, "resolver: caller does not own this name"
    self._addresses[node] = a
    log AddrChanged(node=node, a=a)


@view
@external
def addr(node: bytes32) -> address:
    return self._addresses[node]


@view
@external
def supportsInterface(interface_id: bytes4) -> bool:
    return interface_id == INTERFACE_ERC165 or interface_id == INTERFACE_ADDR
