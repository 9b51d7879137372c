# pragma version ==0.4.3
# pragma evm-version cancun
"""
@title A minimal ENS-compatible registry
@notice The subset of the ENS registry (EIP-137) that forward resolution and the setting up of
        a name need: owners, subnode owners and resolvers of namehash nodes. The deployer owns
        the root node. Operators (setApprovalForAll) are not implemented.
"""


struct Record:
    owner: address
    resolver: address
    ttl: uint64


event NewOwner:
    node: indexed(bytes32)
    label: indexed(bytes32)
    owner: address

event Transfer:
    node: indexed(bytes32)
    owner: address

event NewResolver:
    node: indexed(bytes32)
    resolver: address

event NewTTL:
    node: indexed(bytes32)
    ttl: uint64


_records: HashMap[bytes32, Record]


@deploy
def __init__():
    self._records[empty(bytes32)].owner = msg.sender


@internal
@view
def _authorised(node: bytes32):
    assert self._records[node].owner == msg.sender, "ens: caller does not own this node"


@external
def setOwner(node: bytes32, owner: address):
    self._authorised(node)
    self._records[node].owner = owner
    log Transfer(node=node, owner=owner)


@external
def setSubnodeOwner(node: bytes32, label: bytes32, owner: address) -> bytes32:
    self._authorised(node)
    subnode: bytes32 = keccak256(concat(node, label))
    self._records[subnode].owner = owner
    log NewOwner(node=node, label=label, owner=owner)
    return subnode


@external
def setResolver(node: bytes32, resolver: address):
    self._authorised(node)
    self._records[node].resolver = resolver
    log NewResolver(node=node, resolver=resolver)


@external
def setTTL(node: bytes32, ttl: uint64):
    self._authorised(node)
    self._records[node].ttl = ttl
    log NewTTL(node=node, ttl=ttl)


@view
@external
def owner(node: bytes32) -> address:
    return self._records[node].owner


@view
@external
def resolver(node: bytes32) -> address:
    return self._records[node].resolver


@view
@external
def ttl(node: bytes32) -> uint64:
    return self._records[node].ttl


@view
@external
def recordExists(node: bytes32) -> bool:
    return self._records[node].owner != empty(address)
