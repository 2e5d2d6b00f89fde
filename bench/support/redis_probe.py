"""The Redis the benchmarks share: the settings that put a server on it under a key
prefix of its own, and the benchmark's own connection to it (is it there, its CPU and
command counters, deleting a batch's keys afterwards)."""

from __future__ import annotations

import os
import uuid

import redis.asyncio as aioredis

from bench.support.machine import log

#: the Redis the replicas share (each batch gets its own key prefix on it)
REDIS_URL = os.environ.get("FLOWCORE_BENCH_REDIS", "redis://127.0.0.1:6379/0")


def redis_env(prefix: str | None) -> dict[str, str]:
    """The settings that put a replica on Redis under ``prefix`` (none: no Redis)."""
    if prefix is None:
        return {}
    return {"FLOWCORE_REDIS_URL": REDIS_URL, "FLOWCORE_REDIS_PREFIX": prefix}


def unique_prefix() -> str:
    return f"flowcore-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class RedisProbe:
    """The bench's own connection to the shared Redis: its CPU and command counters
    (for the whole Redis server: other users of it count too) and clean-up of a prefix."""

    def __init__(self, url: str = REDIS_URL) -> None:
        self.client = aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)

    async def available(self) -> str | None:
        try:
            await self.client.ping()
        except (aioredis.RedisError, OSError) as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    async def version(self) -> str:
        return str((await self.client.info("server")).get("redis_version", "?"))

    async def counters(self) -> tuple[float, int]:
        """(CPU seconds, commands processed) of the Redis server so far."""
        cpu = await self.client.info("cpu")
        stats = await self.client.info("stats")
        used = float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])
        return used, int(stats["total_commands_processed"])

    async def forget(self, prefix: str) -> int:
        """Delete the keys under ``prefix`` (a batch's cache entries, breakers...)."""
        keys = [key async for key in self.client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await self.client.delete(*keys)
        return len(keys)

    async def close(self) -> None:
        await self.client.aclose()


async def redis_unavailable() -> str | None:
    """None if the shared Redis answers, else why not (logged)."""
    probe = RedisProbe()
    try:
        problem = await probe.available()
    finally:
        await probe.close()
    if problem is not None:
        log(f"Redis at {REDIS_URL} does not answer ({problem})")
    return problem


async def forget(prefix: str) -> None:
    """Delete the keys under ``prefix`` on a connection of its own."""
    probe = RedisProbe()
    try:
        await probe.forget(prefix)
    finally:
        await probe.close()
