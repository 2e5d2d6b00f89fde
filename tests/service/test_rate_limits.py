"""Rate limits: the token buckets (``app.runtime.ratelimit``) and the API's check of a
request against them (``app.api.ratelimit``).

- The local buckets on a fake clock: burst, refill, ``retry_after``, ``reset``, and
  bounded memory (idle buckets forgotten, at most ``max_buckets``).
- The same behaviour from a bucket in Redis, which two replicas (two links) share; with
  Redis stopped or hung each replica limits on its own buckets, and goes back to the
  shared ones when Redis answers again. Redis time is real: waits poll with a deadline,
  nothing asserts on a duration.
- ``check_rate``: the key's bucket then the namespace's, the ``RateLimit`` headers, and
  the 429 (problem+json, ``Retry-After``) it renders as.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from app.api.errors import install as install_errors
from app.api.errors import rate_limited
from app.api.ratelimit import RateLimitExceeded, check_rate, limits
from app.config import Settings
from app.redis_link import RedisLink
from app.runtime.ratelimit import LocalBuckets, RateLimiter, Verdict
from tests.redis_support import RedisServer, bounded, require_redis, unique_prefix
from tests.service.support import PROBLEM

#: a rate slow enough that nothing refills while a test runs (Redis time is real)
FROZEN = 1 / 3600


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self) -> None:
        self.current = 5_000.0

    def __call__(self) -> float:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += seconds


async def until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` (sync or async) until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.02)


# ------------------------------------------------------------ local buckets, fake clock


def test_a_full_bucket_lets_a_burst_through_then_says_when_to_retry() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    verdicts = [buckets.take("k", rate=2, burst=3) for _ in range(4)]
    assert [(v.allowed, v.remaining) for v in verdicts] == [
        (True, 2),
        (True, 1),
        (True, 0),
        (False, 0),
    ]
    assert all(v.limit == 3 for v in verdicts)
    assert [v.retry_after_seconds for v in verdicts] == [0, 0, 0, 0.5]  # one token: 1/rate
    assert verdicts[0].reset_seconds == 0.5  # one token short of full
    assert verdicts[-1].reset_seconds == 1.5  # empty: three tokens at 2/s
    # a refused take takes nothing: half a second later one token is there
    clock.advance(0.25)
    refused = buckets.take("k", rate=2, burst=3)
    assert (refused.allowed, refused.retry_after_seconds) == (False, 0.25)
    clock.advance(0.25)
    assert buckets.take("k", rate=2, burst=3).allowed
    assert not buckets.take("k", rate=2, burst=3).allowed


def test_a_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    for _ in range(3):
        buckets.take("k", rate=10, burst=3)
    clock.advance(0.2)  # two tokens
    assert [buckets.take("k", rate=10, burst=3).allowed for _ in range(3)] == [True, True, False]
    clock.advance(3600)  # never more than the burst
    assert [buckets.take("k", rate=10, burst=3).allowed for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]


def test_a_take_may_cost_more_than_one_token() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    assert buckets.take("k", rate=4, burst=10, cost=7).remaining == 3
    refused = buckets.take("k", rate=4, burst=10, cost=5)
    assert (refused.allowed, refused.remaining, refused.retry_after_seconds) == (False, 3, 0.5)
    clock.advance(0.5)
    assert buckets.take("k", rate=4, burst=10, cost=5) == Verdict(True, 10, 0, 2.5, 0.0)


def test_buckets_are_separate() -> None:
    buckets = LocalBuckets(clock=FakeClock())
    assert buckets.take("a", rate=1, burst=1).allowed
    assert not buckets.take("a", rate=1, burst=1).allowed
    assert buckets.take("b", rate=1, burst=1).allowed


def test_idle_buckets_are_forgotten_and_memory_is_bounded() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(max_buckets=100, clock=clock)
    for i in range(1_000):  # many callers at once: the least recently used go
        buckets.take(f"caller-{i}", rate=1, burst=5)
        assert len(buckets) <= 100
    assert len(buckets) == 100
    # a forgotten bucket is a full one
    assert buckets.take("caller-0", rate=1, burst=5).remaining == 4
    # once they are full again (idle), the next take forgets them
    clock.advance(1.0)
    buckets.take("another", rate=1, burst=5)
    assert len(buckets) == 1


def test_a_bucket_that_is_full_again_is_not_kept() -> None:
    clock = FakeClock()
    buckets = LocalBuckets(clock=clock)
    buckets.take("k", rate=1, burst=1)
    assert len(buckets) == 1
    clock.advance(1.0)
    buckets.take("other", rate=1, burst=1)
    assert len(buckets) == 1  # "k" is gone, "other" is kept


@pytest.mark.parametrize(
    ("rate", "burst", "cost"),
    [(0, 1, 1), (-1, 1, 1), (math.inf, 1, 1), (math.nan, 1, 1), (1, 0, 1), (1, 2, 3), (1, 2, 0)],
)
async def test_a_bucket_that_cannot_be_is_refused(rate: float, burst: int, cost: int) -> None:
    with pytest.raises(ValueError, match=r"bucket|take"):
        LocalBuckets().take("k", rate, burst, cost)
    with pytest.raises(ValueError, match=r"bucket|take"):
        await RateLimiter(None).take("k", rate, burst, cost)


async def test_without_redis_the_limiter_uses_the_local_buckets() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, clock=clock)
    assert not limiter.shared
    assert [(await limiter.take("k", 1, 2)).allowed for _ in range(3)] == [True, True, False]
    clock.advance(1.0)
    assert (await limiter.take("k", 1, 2)).allowed
    assert len(limiter.local) == 1


# -------------------------------------------------------------- buckets in Redis


@pytest.fixture
async def shared_links() -> AsyncIterator[list[RedisLink]]:
    """Two replicas' links to the machine's Redis, under a prefix of the test's own."""
    url, prefix = require_redis(), unique_prefix()
    links = [RedisLink(url, prefix=prefix, timeout=2.0) for _ in range(2)]
    try:
        yield links
        assert all(link.up for link in links), "the shared Redis failed during the test"
    finally:
        for link in links:
            await link.close()


async def test_replicas_share_one_bucket_in_redis(shared_links: list[RedisLink]) -> None:
    one, two = (RateLimiter(link) for link in shared_links)
    assert one.shared
    assert two.shared
    taken = [await (one if i % 2 else two).take("key:k1", FROZEN, 5) for i in range(6)]
    assert [(v.allowed, v.remaining) for v in taken] == [
        (True, 4),
        (True, 3),
        (True, 2),
        (True, 1),
        (True, 0),
        (False, 0),
    ]
    assert not (await one.take("key:k1", FROZEN, 5)).allowed
    assert 3600 * 0.99 < taken[-1].retry_after_seconds <= 3600  # one token at 1/h
    assert 5 * 3600 * 0.99 < taken[-1].reset_seconds <= 5 * 3600
    # nothing of it was counted in process
    assert len(one.local) == len(two.local) == 0
    assert (await two.take("key:k2", FROZEN, 5)).remaining == 4  # another bucket


async def test_a_redis_bucket_refills_on_the_redis_clock(shared_links: list[RedisLink]) -> None:
    one, two = (RateLimiter(link) for link in shared_links)
    rate = 2.0
    assert (await one.take("ns:a", rate, 2)).allowed
    assert (await two.take("ns:a", rate, 2)).allowed
    refused = await one.take("ns:a", rate, 2)
    assert not refused.allowed
    assert 0 < refused.retry_after_seconds <= 1 / rate
    await until(lambda: _allowed(two, "ns:a", rate, 2), "a token came back")


async def _allowed(limiter: RateLimiter, bucket: str, rate: float, burst: int) -> bool:
    return (await limiter.take(bucket, rate, burst)).allowed


async def test_a_redis_bucket_expires_once_full_again(shared_links: list[RedisLink]) -> None:
    limiter = RateLimiter(shared_links[0])
    client = shared_links[0].client
    name = limiter.redis_key("key:gone")
    assert name.startswith(shared_links[0].prefix + ":ratelimit:")
    await limiter.take("key:gone", FROZEN, 3)
    assert 0 < await client.pttl(name) <= math.ceil(3600 * 1000) + 1
    await limiter.take("key:soon", 50.0, 1)
    soon = limiter.redis_key("key:soon")
    await until(lambda: _absent(client, soon), "the full bucket's key expired")


async def _absent(client: Any, name: str) -> bool:
    return not await client.exists(name)


@pytest.mark.parametrize("outage", ["stopped", "hung"])
async def test_with_redis_down_each_replica_limits_on_its_own(
    redis_server: RedisServer, private_links: list[RedisLink], outage: str
) -> None:
    one, two = (RateLimiter(link) for link in private_links)
    for _ in range(2):
        await one.take("key:k", FROZEN, 3)  # two of three shared tokens
    if outage == "stopped":
        redis_server.stop()
    else:
        redis_server.pause()
    try:
        # each replica: a full bucket of its own, and limits with it
        for limiter in (one, two):
            verdicts = [await bounded(limiter.take("key:k", FROZEN, 3)) for _ in range(4)]
            assert [v.allowed for v in verdicts] == [True, True, True, False]
            assert verdicts[-1].retry_after_seconds > 3000
        assert not any(link.up for link in private_links)
        assert not one.shared
        assert len(one.local) == len(two.local) == 1
    finally:
        if outage == "stopped":
            redis_server.start()  # same port, empty: the bucket starts full
        else:
            redis_server.resume()  # as it was: one token left
    await until(lambda: all(link.up for link in private_links), "both links came back")
    # the shared buckets count again (a fresh one: what a hung Redis kept of "key:k"
    # depends on the calls that timed out, which it may still run when it wakes up)
    shared = [await (one, two)[i % 2].take("key:after", FROZEN, 3) for i in range(4)]
    assert [v.allowed for v in shared] == [True, True, True, False]
    assert len(one.local) == len(two.local) == 1  # the local buckets were not used


# ------------------------------------------------------------------ the API's check


def settings(**values: Any) -> Settings:
    return Settings(**values)


def test_which_limits_are_on() -> None:
    assert limits(settings()) == []
    assert limits(settings(rate_limit_per_second=5)) == [("key", 5, 10)]
    assert limits(settings(rate_limit_per_second=0.2, rate_limit_burst=3)) == [("key", 0.2, 3)]
    assert limits(settings(namespace_rate_limit_per_second=0.25)) == [("namespace", 0.25, 1)]
    assert limits(settings(rate_limit_per_second=1, namespace_rate_limit_per_second=50)) == [
        ("key", 1, 2),
        ("namespace", 50, 100),
    ]


async def test_with_no_limit_nothing_is_counted() -> None:
    limiter = RateLimiter(None, clock=FakeClock())
    assert await check_rate(limiter, settings(), "k1", "team-a") == {}
    assert len(limiter.local) == 0


async def test_a_request_gets_the_ratelimit_headers_of_every_limit() -> None:
    limiter = RateLimiter(None, clock=FakeClock())
    on = settings(rate_limit_per_second=2, rate_limit_burst=4, namespace_rate_limit_per_second=10)
    headers = await check_rate(limiter, on, "k1", "team-a")
    assert headers == {
        "RateLimit-Policy": '"key";q=4;w=2, "namespace";q=20;w=2',
        "RateLimit": '"key";r=3;t=1, "namespace";r=19;t=1',
    }
    headers = await check_rate(limiter, on, "k1", "team-a")
    assert headers["RateLimit"] == '"key";r=2;t=1, "namespace";r=18;t=1'


async def test_a_key_over_its_limit_is_refused_and_spares_its_namespace() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, clock=clock)
    on = settings(rate_limit_per_second=1, rate_limit_burst=2, namespace_rate_limit_per_second=5)
    for _ in range(2):
        await check_rate(limiter, on, "k1", "team-a")
    for _ in range(3):  # refused requests take no token of the namespace
        with pytest.raises(RateLimitExceeded) as refused:
            await check_rate(limiter, on, "k1", "team-a")
    exc = refused.value
    assert exc.policy == "key"
    assert "API key k1" in exc.detail
    assert "1 requests/s" in exc.detail
    assert exc.headers == {
        "RateLimit-Policy": '"key";q=2;w=2, "namespace";q=10;w=2',
        "RateLimit": '"key";r=0;t=2',
        "Retry-After": "1",
    }
    other = await check_rate(limiter, on, "k2", "team-a")
    assert other["RateLimit"] == '"key";r=1;t=1, "namespace";r=7;t=1'
    clock.advance(1.0)
    await check_rate(limiter, on, "k1", "team-a")


async def test_a_namespace_over_its_limit_refuses_every_key_of_it() -> None:
    limiter = RateLimiter(None, clock=FakeClock())
    on = settings(rate_limit_per_second=100, namespace_rate_limit_per_second=1)
    await check_rate(limiter, on, "k1", "team-a")
    await check_rate(limiter, on, "k2", "team-a")
    with pytest.raises(RateLimitExceeded) as refused:
        await check_rate(limiter, on, "k3", "team-a")
    assert refused.value.policy == "namespace"
    assert "namespace 'team-a'" in refused.value.detail
    assert refused.value.headers["RateLimit"] == '"key";r=199;t=1, "namespace";r=0;t=2'
    assert refused.value.headers["Retry-After"] == "1"
    await check_rate(limiter, on, "k3", "team-b")  # another namespace


async def test_the_refusal_is_a_429_problem_with_retry_after() -> None:
    limiter = RateLimiter(None, clock=FakeClock())
    on = settings(rate_limit_per_second=0.5, rate_limit_burst=1)
    app = FastAPI()
    install_errors(app)

    @app.get("/limited")
    async def limited() -> dict[str, str]:
        await check_rate(limiter, on, "k1", "team-a")
        return {"ok": "yes"}

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/limited")).status_code == 200
        response = await client.get("/limited")
    assert response.status_code == 429
    assert response.headers["content-type"] == PROBLEM
    assert response.headers["Retry-After"] == "2"
    assert response.headers["RateLimit"] == '"key";r=0;t=2'
    assert response.headers["RateLimit-Policy"] == '"key";q=1;w=2'
    body = response.json()
    assert body["type"] == "https://flowcore.dev/problems/rate-limited"
    assert (body["status"], body["title"], body["instance"]) == (
        429,
        "Too many requests",
        "/limited",
    )
    assert "API key k1" in body["detail"]
    assert body["violated-policies"] == ["key"]
    # what a middleware answers with, outside the handlers: the same response
    direct = rate_limited(RateLimitExceeded("key", "over", {"Retry-After": "2"}), "/x")
    assert (direct.status_code, direct.media_type) == (429, PROBLEM)
    assert direct.headers["Retry-After"] == "2"
