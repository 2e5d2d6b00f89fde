"""Token buckets: how many requests a caller may make, shared by every replica.

``RateLimiter.take(bucket, rate, burst)`` takes a token from the bucket named ``bucket``
— ``burst`` tokens when full, refilled at ``rate`` tokens a second — and says whether
the request may go on (a :class:`Verdict`, with what the ``RateLimit`` headers and
``Retry-After`` need).

- **With Redis** every replica takes from the same bucket: one hash per bucket
  (``tokens``, ``ts``) under ``link.key("ratelimit", <bucket>)``, moved by one Lua
  script, so a take is atomic across replicas and runs on the Redis server's clock
  (``TIME`` in the script): replicas with skewed clocks agree. A bucket's key expires
  when the bucket would be full again (a full bucket and no bucket are the same), so
  idle callers cost Redis nothing.
- **Without Redis, or while it is down** (the link says so, or the call fails), each
  replica takes from buckets of its own (:class:`LocalBuckets`): the limit then holds
  per replica, so N replicas let a caller through up to N times the rate. When Redis
  answers again the shared buckets count again; what the replica counted meanwhile is
  not carried over.
- **Bounded memory**: the local buckets forget a bucket once it is full again (idle),
  and keep at most ``max_local_buckets`` (the least recently used go first: a caller
  whose bucket was forgotten starts again with a full one).

Errors tree::

    ValueError   ``take`` with a rate <= 0, a burst < 1, or a cost outside 1..burst
                 (a caller's bug; Redis failures never raise: they fall back)
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

from app.redis_link import RedisLink

__all__ = ["DEFAULT_MAX_LOCAL_BUCKETS", "LocalBuckets", "RateLimiter", "Verdict"]

#: how many buckets a replica keeps in process (a few hundred bytes each)
DEFAULT_MAX_LOCAL_BUCKETS: Final = 10_000

# KEYS[1]: the bucket's hash. ARGV: rate (tokens/s), burst, cost.
# Returns {allowed (1|0), tokens left, retry_after, reset} (numbers as strings: a Lua
# number returned to Redis is truncated to an integer).
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local h = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(h[1])
local ts = tonumber(h[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
if now > ts then
  tokens = math.min(burst, tokens + (now - ts) * rate)
  ts = now
end
if tokens > burst then tokens = burst end
local allowed = 0
local retry = 0
if tokens + 1e-9 >= cost then
  tokens = math.max(0, tokens - cost)
  allowed = 1
else
  retry = (cost - tokens) / rate
end
local reset = (burst - tokens) / rate
if reset > 0 then
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
             'ts', string.format('%.6f', ts))
  redis.call('PEXPIRE', KEYS[1], string.format('%d', math.ceil(reset * 1000) + 1))
else
  redis.call('DEL', KEYS[1])
end
return {allowed, string.format('%.6f', tokens), string.format('%.6f', retry),
        string.format('%.6f', reset)}
"""

#: what ``link.call`` returns instead of an answer while Redis is unavailable
_UNAVAILABLE: Any = object()
#: a hair under a whole token (float error in the refill) counts as that token
_EPSILON: Final = 1e-9


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a take from a bucket decided.

    ``limit``: the bucket's size (its burst); ``remaining``: whole tokens left after
    this take; ``reset_seconds``: until the bucket is full again; ``retry_after_seconds``:
    until the refused request could be let through (0 when allowed)."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: float
    retry_after_seconds: float


def _verdict(allowed: bool, burst: int, tokens: float, retry: float, reset: float) -> Verdict:
    return Verdict(allowed, burst, int(tokens + _EPSILON), max(0.0, reset), max(0.0, retry))


def _check(rate: float, burst: int, cost: int) -> None:
    if not rate > 0 or math.isinf(rate):
        raise ValueError(f"a bucket's rate must be a positive number, got {rate!r}")
    if burst < 1:
        raise ValueError(f"a bucket holds at least one token, got a burst of {burst!r}")
    if not 1 <= cost <= burst:
        raise ValueError(f"a take costs 1 to burst ({burst}) tokens, got {cost!r}")


class _Bucket:
    __slots__ = ("full_at", "stamp", "tokens")

    def __init__(self, tokens: float, stamp: float, full_at: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.full_at = full_at


class LocalBuckets:
    """Token buckets in this process, on ``clock`` (monotonic seconds; a fake one in
    tests). At most ``max_buckets`` are kept: a bucket that is full again is forgotten,
    and past the bound the least recently used one is."""

    def __init__(
        self,
        max_buckets: int = DEFAULT_MAX_LOCAL_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_buckets < 1:
            raise ValueError("max_buckets must be at least 1")
        self.max_buckets = max_buckets
        self.clock = clock
        # least recently used first
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, bucket: str, rate: float, burst: int, cost: int = 1) -> Verdict:
        _check(rate, burst, cost)
        now = self.clock()
        state = self._buckets.pop(bucket, None)
        if state is None:
            tokens = float(burst)
        else:
            elapsed = max(0.0, now - state.stamp)  # a clock set back refills nothing
            tokens = min(float(burst), state.tokens + elapsed * rate)
        allowed = tokens + _EPSILON >= cost
        retry = 0.0
        if allowed:
            tokens = max(0.0, tokens - cost)
        else:
            retry = (cost - tokens) / rate
        reset = (burst - tokens) / rate
        if reset > 0:
            self._buckets[bucket] = _Bucket(tokens, now, now + reset)
        self._forget(now)
        return _verdict(allowed, burst, tokens, retry, reset)

    def _forget(self, now: float) -> None:
        buckets = self._buckets
        # idle ones first: a full bucket is the same as none (amortised O(1): each
        # bucket is dropped once for each time it was stored)
        while buckets:
            first = next(iter(buckets.values()))
            if first.full_at > now:
                break
            buckets.popitem(last=False)
        while len(buckets) > self.max_buckets:
            buckets.popitem(last=False)


class RateLimiter:
    """Token buckets shared through Redis when ``link`` is given (and up), else in this
    process (:class:`LocalBuckets`). Holds no task: nothing to close.

    Built once per replica by the composition root: ``RateLimiter(link)``, where
    ``link`` is the replica's ``RedisLink`` or None."""

    def __init__(
        self,
        link: RedisLink | None,
        *,
        max_local_buckets: int = DEFAULT_MAX_LOCAL_BUCKETS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.local = LocalBuckets(max_local_buckets, clock)
        # EVALSHA, loading the script again on NOSCRIPT (a restarted or flushed Redis)
        self._script = link.client.register_script(_TAKE) if link is not None else None

    def redis_key(self, bucket: str) -> str:
        assert self.link is not None
        return self.link.key("ratelimit", quote(bucket, safe=""))

    @property
    def shared(self) -> bool:
        """Whether takes go to the buckets every replica shares (Redis is up)."""
        return self.link is not None and self.link.up

    async def take(self, bucket: str, rate: float, burst: int, cost: int = 1) -> Verdict:
        """Take ``cost`` tokens from ``bucket`` (``burst`` when full, ``rate`` a
        second): allowed, or refused with when to retry. A refused take takes nothing."""
        _check(rate, burst, cost)
        link, script = self.link, self._script
        if link is None or script is None or not link.up:
            return self.local.take(bucket, rate, burst, cost)
        name = self.redis_key(bucket)
        args: list[str | int] = [repr(float(rate)), burst, cost]
        reply = await link.call(
            lambda client: script(keys=[name], args=args, client=client), _UNAVAILABLE
        )
        if reply is _UNAVAILABLE:
            return self.local.take(bucket, rate, burst, cost)
        allowed, tokens, retry, reset = reply
        return _verdict(int(allowed) == 1, burst, float(tokens), float(retry), float(reset))
