"""Rate limits: token buckets, and buckets per source address in a bounded table."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from meshcore.proto import ratelimit
from meshcore.proto.endpoint import Endpoint
from meshcore.proto.ratelimit import AddressBuckets, TokenBucket, address_key


def test_a_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(0.4)
    assert bucket.take(0.5)


def test_a_bucket_never_saves_more_than_its_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=2, now=0.0)
    assert [bucket.take(100.0) for _ in range(3)] == [True, True, False]


def test_time_going_backwards_adds_no_tokens() -> None:
    bucket = TokenBucket(rate=1.0, burst=1, now=10.0)
    assert bucket.take(10.0) and not bucket.take(5.0) and not bucket.take(10.5)


@given(st.lists(st.floats(0.0, 5.0), max_size=50))
def test_a_bucket_grants_at_most_burst_plus_rate_times_elapsed(gaps: list[float]) -> None:
    bucket, now, granted = TokenBucket(rate=2.0, burst=3, now=0.0), 0.0, 0
    for gap in gaps:
        now += gap
        granted += bucket.take(now)
    assert granted <= 3 + 2.0 * now + 1e-9


def test_ipv4_keys_on_the_address_and_ipv6_on_the_slash_64() -> None:
    assert address_key(Endpoint("192.0.2.1", 1)) == address_key(Endpoint("192.0.2.1", 2))
    assert address_key(Endpoint("192.0.2.1", 1)) != address_key(Endpoint("192.0.2.2", 1))
    assert address_key(Endpoint("2001:db8:1:2::1", 9)) == "2001:db8:1:2::/64"


def test_address_buckets_are_separate_per_address() -> None:
    buckets = AddressBuckets(rate=1.0, burst=1, max_tracked=10)
    assert buckets.take("a", 0.0) and not buckets.take("a", 0.0)
    assert buckets.take("b", 0.0)
    assert len(buckets) == 2


def test_the_least_recently_seen_address_is_forgotten_first() -> None:
    buckets = AddressBuckets(rate=1.0, burst=1, max_tracked=2)
    buckets.take("a", 0.0), buckets.take("b", 0.0)
    assert not buckets.take("a", 0.0)  # "a" is now the most recently seen
    buckets.take("c", 0.0)  # forgets "b"
    assert len(buckets) == 2
    assert not buckets.take("a", 0.0)
    assert buckets.take("b", 0.0)  # a fresh, full bucket


def test_public_api_is_pinned() -> None:
    assert sorted(ratelimit.__all__) == ["AddressBuckets", "TokenBucket", "address_key"]
