"""Rendezvous hashing: every peer computes the same relays from the same list, and a change
of one relay moves only the peers whose top k it enters or leaves."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto.identity import PeerId
from meshcore.proto.relaylist import RelayEntry
from meshcore.proto.rendezvous import rendezvous_relays

peer_ids = st.binary(min_size=32, max_size=32).map(PeerId)
relays = st.lists(
    st.builds(
        lambda n, has_id, d: RelayEntry(f"ws://r{n}.example:7443/", PeerId(d) if has_id else None),
        st.integers(0, 10_000),
        st.booleans(),
        st.binary(min_size=32, max_size=32),
    ),
    min_size=1,
    max_size=24,
    unique_by=(lambda e: e.url, lambda e: e.key),
)


@given(peer_ids, relays, st.integers(1, 4), st.randoms(use_true_random=False))
def test_the_same_list_in_any_order_gives_the_same_relays(
    peer: PeerId, entries: list[RelayEntry], k: int, rnd: object
) -> None:
    shuffled = list(entries)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    ours = rendezvous_relays(peer, entries, k)
    assert ours == rendezvous_relays(peer, shuffled, k)
    assert len(ours) == min(k, len(entries))
    assert len(set(ours)) == len(ours)


@given(st.lists(peer_ids, min_size=1, max_size=30), relays, st.integers(1, 3), st.data())
def test_removing_one_relay_moves_only_the_peers_that_had_it(
    peers: list[PeerId], entries: list[RelayEntry], k: int, data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(entries))
    rest = [e for e in entries if e is not gone]
    for peer in peers:
        before = rendezvous_relays(peer, entries, k)
        after = rendezvous_relays(peer, rest, k) if rest else ()
        if gone not in before:
            assert after == before
        else:
            kept = tuple(e for e in before if e is not gone)
            assert after[: len(kept)] == kept


@given(st.lists(peer_ids, min_size=1, max_size=30), relays, st.integers(1, 3), st.data())
def test_adding_one_relay_moves_only_the_peers_that_now_hash_to_it(
    peers: list[PeerId], entries: list[RelayEntry], k: int, data: st.DataObject
) -> None:
    new = RelayEntry(
        "ws://new.example:7443/", PeerId(data.draw(st.binary(min_size=32, max_size=32)))
    )
    if any(e.key == new.key for e in entries):
        return
    for peer in peers:
        before = rendezvous_relays(peer, entries, k)
        after = rendezvous_relays(peer, [*entries, new], k)
        if new not in after:
            assert after == before


def test_peers_spread_evenly_over_the_relays() -> None:
    entries = [RelayEntry(f"ws://r{i}.example:7443/", PeerId(bytes([i]) * 32)) for i in range(5)]
    counts: Counter[str] = Counter()
    for n in range(2000):
        for entry in rendezvous_relays(PeerId(n.to_bytes(32, "big")), entries, 2):
            counts[entry.url] += 1
    # 4000 registrations over 5 relays: 800 each on average; binomial spread is ~25
    assert all(650 < c < 950 for c in counts.values()), counts


def test_removing_one_of_five_moves_about_a_fifth_of_the_registrations() -> None:
    entries = [RelayEntry(f"ws://r{i}.example:7443/", PeerId(bytes([i]) * 32)) for i in range(5)]
    peers = [PeerId(n.to_bytes(32, "big")) for n in range(2000)]
    moved = sum(
        rendezvous_relays(p, entries, 1) != rendezvous_relays(p, entries[1:], 1) for p in peers
    )
    assert 300 < moved < 500  # 1/5 of 2000 is 400
