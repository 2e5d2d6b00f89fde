"""Node-result caching for the service: a Redis tier shared by every replica and the
two-tier ``ServiceCache`` every run is handed.

``ServiceCache`` keeps an in-process LRU (the engine's ``InMemoryCache``) in front of an
optional ``RedisCache``. Both tiers are namespaced by workflow id: the engine's ``Cache``
port carries no workflow id, so the dispatcher asks ``for_workflow(workflow_id)`` for a
cheap per-run view. A lookup tries the memory tier, then Redis (a Redis hit fills the
memory tier for the time the entry has left in Redis), and counts the outcome in
``CACHE_HITS`` / ``CACHE_MISSES``.

Redis is an accelerator, never required: values are stored as JSON (a value JSON cannot
encode stays in the memory tier only; JSON turns tuples into lists, as the run's
checkpoint does), and while the link is down a Redis lookup is a miss and a store a
no-op. Nothing here raises on a Redis failure.
"""

from __future__ import annotations

import json
import math
from typing import Any
from urllib.parse import quote

from redis.asyncio import Redis

from app.engine import Cache, CacheHit, Clock, InMemoryCache
from app.observability.metrics import CACHE_HITS, CACHE_MISSES
from app.redis_link import RedisLink

__all__ = ["RedisCache", "ServiceCache", "WorkflowCache"]

# compact and strict: no ``default=``, so a value JSON cannot encode is refused, not
# silently turned into its repr (which would come back as a different value)
_ENCODER = json.JSONEncoder(separators=(",", ":"))


class RedisCache:
    """The ``Cache`` port in Redis for one namespace (a workflow id): ``SET key json PX
    ttl_ms`` under ``link.key("cache", namespace_part(namespace), key)``."""

    def __init__(self, link: RedisLink, namespace: str) -> None:
        self.link = link
        self.namespace = namespace
        self._namespace_part = namespace_part(namespace)

    def redis_key(self, key: str) -> str:
        return self.link.key("cache", self._namespace_part, key)

    async def get(self, key: str) -> CacheHit | None:
        found = await self.lookup(key)
        return None if found is None else found[0]

    async def lookup(self, key: str) -> tuple[CacheHit, float | None] | None:
        """The hit and the seconds it has left (None when Redis cannot say), or None."""
        name = self.redis_key(key)

        async def get_with_ttl(client: Redis) -> list[Any]:
            pipe = client.pipeline(transaction=False)
            pipe.get(name)
            pipe.pttl(name)
            result: list[Any] = await pipe.execute()
            return result

        absent: list[Any] = [None, None]
        raw, pttl = await self.link.call(get_with_ttl, absent)
        if raw is None:
            return None
        try:
            value = json.loads(raw)
        except ValueError:
            return None  # not written by us (or truncated): treat as absent
        # PTTL is -1 (no expiry) or -2 (expired since the GET) in the odd cases
        left = pttl / 1000.0 if isinstance(pttl, int) and pttl > 0 else None
        return CacheHit(value), left

    async def set(self, key: str, value: Any, ttl: float) -> None:
        try:
            encoded = _ENCODER.encode(value)
        except (TypeError, ValueError, RecursionError):
            return  # not JSON (an object, a cycle, too deep): not shared between replicas
        name = self.redis_key(key)
        ttl_ms = max(1, math.ceil(ttl * 1000))
        await self.link.call(lambda client: client.set(name, encoded, px=ttl_ms), None)


def namespace_part(namespace: str) -> str:
    """``namespace`` without ":" (percent-escaped), so that a key names one namespace:
    workflow "a:b" with key "c:x" and workflow "a" with key "b:c:x" must not meet."""
    return quote(namespace, safe="")


def _node_type(key: str) -> str:
    # every engine cache key starts with "{node_type}:" (see app.engine.cache.cache_key)
    return key.split(":", 1)[0]


class WorkflowCache:
    """One workflow's view of a :class:`ServiceCache`; implements the ``Cache`` port."""

    __slots__ = ("_front", "_front_prefix", "_remote")

    def __init__(self, front: InMemoryCache | None, link: RedisLink | None, workflow_id: str):
        self._front = front
        self._front_prefix = namespace_part(workflow_id) + ":"
        self._remote = RedisCache(link, workflow_id) if link is not None else None

    async def get(self, key: str) -> CacheHit | None:
        node_type = _node_type(key)
        if self._front is not None:
            hit = await self._front.get(self._front_prefix + key)
            if hit is not None:
                CACHE_HITS.labels(node_type, "memory").inc()
                return hit
        if self._remote is not None:
            found = await self._remote.lookup(key)
            if found is not None:
                hit, left = found
                # only as long as Redis keeps it, so both tiers expire together
                if self._front is not None and left is not None:
                    await self._front.set(self._front_prefix + key, hit.value, left)
                CACHE_HITS.labels(node_type, "redis").inc()
                return hit
        CACHE_MISSES.labels(node_type).inc()
        return None

    async def set(self, key: str, value: Any, ttl: float) -> None:
        if self._front is not None:
            await self._front.set(self._front_prefix + key, value, ttl)
        if self._remote is not None:
            await self._remote.set(key, value, ttl)


class ServiceCache:
    """What the service hands every run: an in-process LRU of ``cache_size`` entries
    (none when 0) in front of Redis (when ``link`` is given), namespaced per workflow.

    The memory tier is one LRU for all workflows, so ``cache_size`` bounds the process
    whatever the number of workflows."""

    def __init__(
        self, link: RedisLink | None, cache_size: int, *, clock: Clock | None = None
    ) -> None:
        self.link = link
        self.front: InMemoryCache | None = (
            InMemoryCache(cache_size, clock) if cache_size > 0 else None
        )

    def for_workflow(self, workflow_id: str) -> Cache:
        """The cache for one run of ``workflow_id`` (cheap: build one per run)."""
        return WorkflowCache(self.front, self.link, workflow_id)
