"""Rate limits: a token bucket, and token buckets per source address (IPv4 address or
IPv6 /64) in a table of bounded size."""

from __future__ import annotations

import ipaddress
from collections import OrderedDict

from meshcore.proto.endpoint import Endpoint

__all__ = ["AddressBuckets", "TokenBucket", "address_key"]


class TokenBucket:
    """A token bucket: `rate` tokens per second, at most `burst` saved up; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; False means the caller is over its rate."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def address_key(addr: Endpoint) -> str:
    """What connection rate limits are keyed on: the IPv4 address, or the IPv6 /64
    (one host usually owns a whole /64, as WireGuard's ratelimiter assumes)."""
    if addr.family == 6:
        return str(ipaddress.IPv6Network((addr.host, 64), strict=False))
    return addr.host


class AddressBuckets:
    """One `TokenBucket` per `address_key`, for at most `max_tracked` keys (the least
    recently seen is forgotten first, and starts full again if it comes back)."""

    __slots__ = ("_buckets", "burst", "max_tracked", "rate")

    def __init__(self, rate: float, burst: int, max_tracked: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_tracked = max_tracked
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    def __len__(self) -> int:
        """Addresses tracked now."""
        return len(self._buckets)

    def take(self, key: str, now: float) -> bool:
        """Spend one token of `key`'s bucket; False means that address is over its rate."""
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_tracked:
                buckets.popitem(last=False)
            bucket = buckets[key] = TokenBucket(self.rate, self.burst, now)
        else:
            buckets.move_to_end(key)
        return bucket.take(now)
