"""The ``Cache`` port's contract, run against every implementation the service uses:
the in-process ``ServiceCache`` (memory tier only, on a fake clock), ``RedisCache``
alone, and ``ServiceCache`` with both tiers — then the two-tier cache across replicas
and with a Redis that stops or hangs.

Redis tests use the machine's Redis (a key prefix of their own per test) or a private
``redis-server`` they can kill and freeze. Expiry with real time is awaited by polling
with a deadline, never asserted by sleeping.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import REGISTRY

from app.cache import RedisCache, ServiceCache
from app.engine.cache import Cache, CacheHit
from app.redis_link import RedisLink
from tests.redis_support import RedisServer, bounded, require_redis, unique_prefix

#: a guard against hangs while polling for something that must happen; never a timing
#: assertion
HANG_GUARD = 10.0
#: a short real TTL: long enough that a value is still there right after it is set
SHORT_TTL = 0.5
LONG_TTL = 3600.0


class FakeClock:
    """Virtual time for the memory tier."""

    def __init__(self) -> None:
        self.current = 1_000_000.0

    def now(self) -> float:
        return self.current

    async def sleep(self, seconds: float) -> None:
        self.current += seconds
        await asyncio.sleep(0)


@dataclass
class Backend:
    """One implementation under test: ``make(namespace)`` is a cache on this replica,
    ``make_other(namespace)`` one on another replica sharing its Redis (None without)."""

    name: str
    make: Callable[[str], Cache]
    make_other: Callable[[str], Cache] | None
    tick: Callable[[], Awaitable[None]]
    links: list[RedisLink] = field(default_factory=list)

    @property
    def has_memory_tier(self) -> bool:
        return self.name != "redis"


def node_key(node_type: str | None = None) -> str:
    """A key shaped like the engine's, with a node type of its own (for metric labels)."""
    return f"{node_type or 't' + uuid.uuid4().hex[:12]}:{uuid.uuid4().hex}"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def hits(key: str, tier: str) -> float:
    return metric("flowcore_cache_hits_total", node_type=key.split(":", 1)[0], tier=tier)


def misses(key: str) -> float:
    return metric("flowcore_cache_misses_total", node_type=key.split(":", 1)[0])


async def real_tick() -> None:
    await asyncio.sleep(0.02)


async def until_missing(backend: Backend, cache: Cache, key: str) -> None:
    give_up = time.monotonic() + HANG_GUARD
    while await cache.get(key) is not None:
        assert time.monotonic() < give_up, f"{key} never expired"
        await backend.tick()


async def until(condition: Callable[[], bool], what: str) -> None:
    give_up = time.monotonic() + HANG_GUARD
    while not condition():
        assert time.monotonic() < give_up, f"{what} did not happen"
        await asyncio.sleep(0.02)


@pytest.fixture(params=["memory", "redis", "memory+redis"])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "memory":
        clock = FakeClock()
        service = ServiceCache(None, 100, clock=clock)

        async def fake_tick() -> None:
            clock.current += 0.05

        yield Backend("memory", service.for_workflow, None, fake_tick)
        return
    url = require_redis()
    prefix = unique_prefix()
    # two replicas: a link each, one key prefix (one deployment)
    links = [RedisLink(url, prefix=prefix, timeout=2.0) for _ in range(2)]
    try:
        if request.param == "redis":
            yield Backend(
                "redis",
                lambda ns: RedisCache(links[0], ns),
                lambda ns: RedisCache(links[1], ns),
                real_tick,
                links,
            )
        else:
            here, there = ServiceCache(links[0], 100), ServiceCache(links[1], 100)
            yield Backend("memory+redis", here.for_workflow, there.for_workflow, real_tick, links)
        assert all(link.up for link in links), "the shared Redis failed during the test"
    finally:
        for link in links:
            await link.close()


# ------------------------------------------------------------------ the port contract


async def test_a_miss_then_a_hit(backend: Backend) -> None:
    cache, key = backend.make("wf"), node_key()
    assert await cache.get(key) is None
    await cache.set(key, {"answer": 42}, LONG_TTL)
    assert await cache.get(key) == CacheHit({"answer": 42})


async def test_none_is_a_cached_value_not_a_miss(backend: Backend) -> None:
    cache, key = backend.make("wf"), node_key()
    await cache.set(key, None, LONG_TTL)
    assert await cache.get(key) == CacheHit(None)


@pytest.mark.parametrize(
    "value",
    [0, 1.5, "", "ünïcode ✓", [], {}, [1, "two", None, True], {"a": {"b": [1, {"c": None}]}}],
)
async def test_json_values_come_back_equal(backend: Backend, value: Any) -> None:
    cache, key = backend.make("wf"), node_key()
    await cache.set(key, value, LONG_TTL)
    if backend.make_other is not None:
        cache = backend.make_other("wf")  # through Redis, not this replica's memory
    hit = await cache.get(key)
    assert hit is not None
    assert hit.value == value
    assert type(hit.value) is type(value)


async def test_a_later_set_replaces_the_value(backend: Backend) -> None:
    cache, key = backend.make("wf"), node_key()
    await cache.set(key, "old", LONG_TTL)
    await cache.set(key, "new", LONG_TTL)
    assert await cache.get(key) == CacheHit("new")


async def test_an_entry_expires_after_its_ttl(backend: Backend) -> None:
    cache, key, kept = backend.make("wf"), node_key(), node_key()
    await cache.set(key, "soon gone", SHORT_TTL)
    await cache.set(kept, "kept", LONG_TTL)
    assert await cache.get(key) == CacheHit("soon gone")
    await until_missing(backend, cache, key)
    assert await cache.get(kept) == CacheHit("kept")


async def test_namespaces_are_isolated(backend: Backend) -> None:
    key = node_key()
    mine, theirs = backend.make("wf-a"), backend.make("wf-b")
    await mine.set(key, "a's result", LONG_TTL)
    assert await theirs.get(key) is None
    await theirs.set(key, "b's result", LONG_TTL)
    assert await mine.get(key) == CacheHit("a's result")
    assert await theirs.get(key) == CacheHit("b's result")


async def test_namespaces_that_share_a_prefix_do_not_collide(backend: Backend) -> None:
    # "a:b" + "c:x" and "a" + "b:c:x" join to the same text with ":" separators
    await backend.make("a:b").set("c:x", "first", LONG_TTL)
    assert await backend.make("a").get("b:c:x") is None
    assert await backend.make("a:b").get("c:x") == CacheHit("first")


async def test_a_value_json_cannot_encode_is_kept_in_memory_only(backend: Backend) -> None:
    unencodable = {"when": object()}
    cache, key = backend.make("wf"), node_key()
    await cache.set(key, unencodable, LONG_TTL)  # never raises
    hit = await cache.get(key)
    if backend.has_memory_tier:
        assert hit == CacheHit(unencodable)
    else:
        assert hit is None
    if backend.make_other is not None:
        assert await backend.make_other("wf").get(key) is None


# ------------------------------------------------------------ in-process specifics


async def test_the_memory_tier_expires_exactly_at_the_ttl() -> None:
    clock = FakeClock()
    cache, key = ServiceCache(None, 10, clock=clock).for_workflow("wf"), node_key()
    await cache.set(key, "v", 10.0)
    clock.current += 9.999
    assert await cache.get(key) == CacheHit("v")
    clock.current += 0.001
    assert await cache.get(key) is None


async def test_the_memory_tier_holds_at_most_cache_size_entries_across_workflows() -> None:
    service = ServiceCache(None, 2)
    first, second, third = node_key(), node_key(), node_key()
    await service.for_workflow("wf-a").set(first, 1, LONG_TTL)
    await service.for_workflow("wf-b").set(second, 2, LONG_TTL)
    await service.for_workflow("wf-c").set(third, 3, LONG_TTL)
    assert await service.for_workflow("wf-a").get(first) is None  # least recently used
    assert await service.for_workflow("wf-c").get(third) == CacheHit(3)


async def test_cache_size_zero_without_redis_caches_nothing() -> None:
    cache, key = ServiceCache(None, 0).for_workflow("wf"), node_key()
    await cache.set(key, "v", LONG_TTL)
    assert await cache.get(key) is None


async def test_lookups_are_counted_by_node_type_and_tier() -> None:
    cache, key = ServiceCache(None, 10).for_workflow("wf"), node_key()
    assert await cache.get(key) is None
    await cache.set(key, "v", LONG_TTL)
    await cache.get(key)
    await cache.get(key)
    assert misses(key) == 1
    assert hits(key, "memory") == 2
    assert hits(key, "redis") == 0


# ------------------------------------------------------------------ Redis specifics


@pytest.fixture
async def shared_links() -> AsyncIterator[list[RedisLink]]:
    """Two replicas' links to the machine's Redis, with a key prefix of their own."""
    url, prefix = require_redis(), unique_prefix()
    links = [RedisLink(url, prefix=prefix, timeout=2.0) for _ in range(2)]
    try:
        yield links
    finally:
        for link in links:
            await link.close()


async def test_a_result_cached_on_one_replica_is_a_hit_on_another(
    shared_links: list[RedisLink],
) -> None:
    replica_a, replica_b = (ServiceCache(link, 100) for link in shared_links)
    key = node_key()
    await replica_a.for_workflow("wf").set(key, {"rows": [1, 2]}, LONG_TTL)
    assert await replica_b.for_workflow("wf").get(key) == CacheHit({"rows": [1, 2]})
    assert hits(key, "redis") == 1
    # that hit filled replica B's memory tier: the next lookup does not need Redis
    await shared_links[0].client.delete(RedisCache(shared_links[0], "wf").redis_key(key))
    assert await replica_b.for_workflow("wf").get(key) == CacheHit({"rows": [1, 2]})
    assert hits(key, "memory") == 1
    assert misses(key) == 0


async def test_a_redis_hit_stays_in_memory_only_as_long_as_redis_keeps_it(
    shared_links: list[RedisLink],
) -> None:
    replica_a, replica_b = (ServiceCache(link, 100) for link in shared_links)
    key = node_key()
    await replica_a.for_workflow("wf").set(key, "v", SHORT_TTL)
    assert await replica_b.for_workflow("wf").get(key) == CacheHit("v")
    assert await replica_b.for_workflow("wf").get(key) == CacheHit("v")
    assert hits(key, "memory") == 1  # B's memory tier has it now ...
    give_up = time.monotonic() + HANG_GUARD
    while await replica_b.for_workflow("wf").get(key) is not None:  # ... and drops it
        assert time.monotonic() < give_up, "the memory tier kept an entry Redis expired"
        await asyncio.sleep(0.02)


async def test_the_ttl_reaches_redis_in_milliseconds(shared_links: list[RedisLink]) -> None:
    cache, key = RedisCache(shared_links[0], "wf"), node_key()
    await cache.set(key, "v", 3600.0)
    pttl = await shared_links[0].client.pttl(cache.redis_key(key))
    assert 3_590_000 < pttl <= 3_600_000


async def test_an_entry_redis_cannot_decode_is_a_miss(shared_links: list[RedisLink]) -> None:
    cache, key = ServiceCache(shared_links[0], 100).for_workflow("wf"), node_key()
    raw = RedisCache(shared_links[0], "wf").redis_key(key)
    await shared_links[0].client.set(raw, b"\xff not json", px=60_000)
    assert await cache.get(key) is None
    assert misses(key) == 1
    assert shared_links[0].up  # a bad entry is not an outage


# --------------------------------------------------------- a Redis that fails


@pytest.mark.slow
@pytest.mark.parametrize("outage", ["stopped", "paused"])
async def test_a_failing_redis_degrades_to_memory_then_recovers(
    redis_server: RedisServer, private_links: list[RedisLink], outage: str
) -> None:
    link_a, link_b = private_links
    replica_a = ServiceCache(link_a, 100).for_workflow("wf")
    replica_b = ServiceCache(link_b, 100).for_workflow("wf")
    before, during, after = node_key(), node_key(), node_key()
    await replica_a.set(before, "set before", LONG_TTL)

    if outage == "stopped":
        redis_server.stop()
    else:
        redis_server.pause()
    try:
        # A still has its own results; B misses; nobody raises or waits on Redis
        assert await bounded(replica_a.get(before)) == CacheHit("set before")
        assert await bounded(replica_b.get(before)) is None
        # a refused connection marks the link down at once, a hang after two timeouts
        assert await bounded(replica_b.get(before)) is None
        assert not link_b.up
        await bounded(replica_b.set(during, "set during", LONG_TTL))
        assert await bounded(replica_b.get(during)) == CacheHit("set during")
        assert await bounded(replica_a.get(during)) is None
    finally:
        if outage == "stopped":
            redis_server.start()  # same port, empty
        else:
            redis_server.resume()

    await until(lambda: link_a.up and link_b.up, "the links' recovery")
    if outage == "paused":
        # nothing was lost: Redis is read again
        assert await replica_b.get(before) == CacheHit("set before")
    await replica_a.set(after, "set after", LONG_TTL)
    assert await replica_b.get(after) == CacheHit("set after")
    assert hits(after, "redis") == 1


@pytest.mark.slow
async def test_after_a_restart_a_warm_pool_does_not_take_the_link_down_again(
    redis_server: RedisServer, private_links: list[RedisLink]
) -> None:
    link = private_links[0]
    cache = ServiceCache(link, 0).for_workflow("wf")  # Redis only: every get asks it
    # a busy replica: many connections open in the pool at once
    await asyncio.gather(
        *(link.call(lambda c: c.blpop(["nothing"], 0.05), None) for _ in range(20))
    )
    assert link.up
    redis_server.stop()
    assert await bounded(cache.get(node_key())) is None
    redis_server.start()
    await until(lambda: link.up, "the link's recovery")
    keys = [node_key() for _ in range(20)]
    await asyncio.gather(*(cache.set(key, n, LONG_TTL) for n, key in enumerate(keys)))
    assert link.up
    found = await asyncio.gather(*(cache.get(key) for key in keys))
    assert found == [CacheHit(n) for n in range(len(keys))]


async def test_one_late_answer_is_not_an_outage_but_timeouts_in_a_row_are(
    redis_server: RedisServer, private_links: list[RedisLink]
) -> None:
    """An overloaded replica may see one call time out although Redis is fine: that alone
    does not switch it to the fallbacks; consecutive timeouts (a hung Redis) do."""
    link = private_links[0]

    async def late(_client: object) -> str:
        await asyncio.sleep(link.timeout * 2)
        return "never"

    assert await link.call(late, "fallback") == "fallback"
    assert is_up(link)
    assert await link.call(lambda client: client.ping(), False) is True  # resets the count
    assert await link.call(late, "fallback") == "fallback"
    assert is_up(link)
    assert await link.call(late, "fallback") == "fallback"
    assert not is_up(link)
    await until(lambda: link.up, "the link's recovery")


def is_up(link: RedisLink) -> bool:
    return link.up  # read anew each time (mypy would narrow the attribute)
