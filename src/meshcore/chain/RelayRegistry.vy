# pragma version ==0.4.3
# pragma evm-version cancun
"""
@title meshcore relay registry
@notice A public list of meshcore relays. Each Ethereum account registers at most one entry
        (its relay's URL, meshcore relay id and an optional region), updates or deregisters
        it; the owner can remove any entry. Every change is logged. docs/registry-chain.md
        describes the bounds, the reasons for refusal and how clients read the list.
"""

MAX_ENTRIES: public(constant(uint256)) = 256
MAX_URL_BYTES: public(constant(uint256)) = 256
MAX_REGION_BYTES: public(constant(uint256)) = 32
# Arguments are accepted up to this length so that an over-long field is refused with a
# reason; the ABI decoder refuses anything longer still, without one.
MAX_INPUT_BYTES: constant(uint256) = 1024


struct Entry:
    account: address
    relay_id: bytes32
    url: String[MAX_URL_BYTES]
    region: String[MAX_REGION_BYTES]


event Registered:
    account: indexed(address)
    relay_id: indexed(bytes32)
    url: String[MAX_URL_BYTES]
    region: String[MAX_REGION_BYTES]

event Updated:
    account: indexed(address)
    relay_id: indexed(bytes32)
    url: String[MAX_URL_BYTES]
    region: String[MAX_REGION_BYTES]
    previous_relay_id: bytes32

event Deregistered:
    account: indexed(address)
    relay_id: indexed(bytes32)

event Removed:
    account: indexed(address)
    relay_id: indexed(bytes32)
    by: address

event OwnershipTransferred:
    previous_owner: indexed(address)
    new_owner: indexed(address)


owner: public(address)
_entries: DynArray[Entry, MAX_ENTRIES]
# 1 + the entry's index in _entries; 0 means "none".
_slot_of_account: HashMap[address, uint256]
_slot_of_id: HashMap[bytes32, uint256]


@deploy
def __init__():
    self.owner = msg.sender
    log OwnershipTransferred(previous_owner=empty(address), new_owner=msg.sender)


@internal
@pure
def _url(url: String[MAX_INPUT_BYTES]) -> String[MAX_URL_BYTES]:
    assert len(url) != 0, "registry: empty url"
    assert len(url) <= MAX_URL_BYTES, "registry: url longer than 256 bytes"
    return abi_decode(abi_encode(url), String[MAX_URL_BYTES])


@internal
@pure
def _region(region: String[MAX_INPUT_BYTES]) -> String[MAX_REGION_BYTES]:
    assert len(region) <= MAX_REGION_BYTES, "registry: region longer than 32 bytes"
    return abi_decode(abi_encode(region), String[MAX_REGION_BYTES])


@internal
def _delete(slot: uint256):
    index: uint256 = slot - 1
    gone: Entry = self._entries[index]
    last: uint256 = len(self._entries) - 1
    if index != last:
        moved: Entry = self._entries[last]
        self._entries[index] = moved
        self._slot_of_account[moved.account] = slot
        self._slot_of_id[moved.relay_id] = slot
    self._entries.pop()
    self._slot_of_account[gone.account] = 0
    self._slot_of_id[gone.relay_id] = 0


@external
def register(url: String[MAX_INPUT_BYTES], relay_id: bytes32, region: String[MAX_INPUT_BYTES]):
    """
    @notice Add the caller's relay. One entry per account; the relay id must be unused.
    """
    stored_url: String[MAX_URL_BYTES] = self._url(url)
    stored_region: String[MAX_REGION_BYTES] = self._region(region)
    assert relay_id != empty(bytes32), "registry: zero relay id"
    assert self._slot_of_account[msg.sender] == 0, "registry: this account already has an entry"
    assert self._slot_of_id[relay_id] == 0, "registry: relay id already registered"
    assert len(self._entries) < MAX_ENTRIES, "registry: full (256 entries)"
    self._entries.append(
        Entry(account=msg.sender, relay_id=relay_id, url=stored_url, region=stored_region)
    )
    slot: uint256 = len(self._entries)
    self._slot_of_account[msg.sender] = slot
    self._slot_of_id[relay_id] = slot
    log Registered(account=msg.sender, relay_id=relay_id, url=stored_url, region=stored_region)


@external
def update(url: String[MAX_INPUT_BYTES], relay_id: bytes32, region: String[MAX_INPUT_BYTES]):
    """
    @notice Replace the caller's entry (a new relay id must be unused).
    """
    stored_url: String[MAX_URL_BYTES] = self._url(url)
    stored_region: String[MAX_REGION_BYTES] = self._region(region)
    assert relay_id != empty(bytes32), "registry: zero relay id"
    slot: uint256 = self._slot_of_account[msg.sender]
    assert slot != 0, "registry: no entry for this account"
    previous: bytes32 = self._entries[slot - 1].relay_id
    if relay_id != previous:
        assert self._slot_of_id[relay_id] == 0, "registry: relay id already registered"
        self._slot_of_id[previous] = 0
        self._slot_of_id[relay_id] = slot
    self._entries[slot - 1] = Entry(
        account=msg.sender, relay_id=relay_id, url=stored_url, region=stored_region
    )
    log Updated(
        account=msg.sender,
        relay_id=relay_id,
        url=stored_url,
        region=stored_region,
        previous_relay_id=previous,
    )


@external
def deregister():
    """
    @notice Remove the caller's entry.
    """
    slot: uint256 = self._slot_of_account[msg.sender]
    assert slot != 0, "registry: no entry for this account"
    relay_id: bytes32 = self._entries[slot - 1].relay_id
    self._delete(slot)
    log Deregistered(account=msg.sender, relay_id=relay_id)


@external
def remove(relay_id: bytes32):
    """
    @notice The owner removes any entry by its relay id.
    """
    assert msg.sender == self.owner, "registry: only the owner can remove entries"
    slot: uint256 = self._slot_of_id[relay_id]
    assert slot != 0, "registry: unknown relay id"
    account: address = self._entries[slot - 1].account
    self._delete(slot)
    log Removed(account=account, relay_id=relay_id, by=msg.sender)


@external
def transfer_ownership(new_owner: address):
    """
    @notice Hand the owner's right of removal to another account.
    """
    assert msg.sender == self.owner, "registry: only the owner can transfer ownership"
    assert new_owner != empty(address), "registry: zero owner"
    log OwnershipTransferred(previous_owner=self.owner, new_owner=new_owner)
    self.owner = new_owner


@view
@external
def count() -> uint256:
    """
    @notice The number of entries.
    """
    return len(self._entries)


@view
@external
def entries(offset: uint256, limit: uint256) -> DynArray[Entry, MAX_ENTRIES]:
    """
    @notice Up to `limit` entries from index `offset` (fewer at the end; none past it).
    """
    result: DynArray[Entry, MAX_ENTRIES] = []
    n: uint256 = len(self._entries)
    if offset >= n:
        return result
    end: uint256 = offset + min(limit, n - offset)
    for i: uint256 in range(offset, end, bound=MAX_ENTRIES):
        result.append(self._entries[i])
    return result


@view
@external
def has_entry(account: address) -> bool:
    """
    @notice Whether `account` has an entry.
    """
    return self._slot_of_account[account] != 0


@view
@external
def entry_of(account: address) -> Entry:
    """
    @notice The entry of `account`.
    """
    slot: uint256 = self._slot_of_account[account]
    assert slot != 0, "registry: no entry for this account"
    return self._entries[slot - 1]
