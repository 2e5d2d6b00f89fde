"""The cost section's batches: one replica on a fresh scratch Postgres database, in one of
four configurations (no Redis, Redis, a /metrics scraper every 1 s or 0.1 s), 100
clients each posting a run and reading its SSE stream to the end."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from bench.redis.scraper import Scraper, Scrapes
from bench.support.databases import scratch_postgres
from bench.support.load import (
    CLIENTS,
    SERVER_ENV,
    Batch,
    Outcome,
    clients,
    drive,
    post_workflow,
    sse_run,
)
from bench.support.redis_probe import RedisProbe, redis_env, unique_prefix
from bench.support.server import Server, serve
from bench.support.stats import percentile
from bench.support.workflows import NOOP, chain_raw

#: scrapes one after another on an idle server (the CPU of one scrape)
IDLE_SCRAPES = 100


@dataclass(frozen=True)
class CostConfig:
    key: str
    label: str
    redis: bool
    scrape: float | None  # seconds between scrapes; None: no scraper


@dataclass
class CostBatch(Batch):
    redis_cpu: float | None = None
    redis_commands: int | None = None
    scrapes: Scrapes | None = None
    idle_scrape: tuple[float, float, float] | None = None  # server CPU, p50, p99 (s)


COST_CONFIGS = (
    CostConfig("none", "no Redis", False, None),
    CostConfig("redis", "Redis", True, None),
    CostConfig("scrape-1", "no Redis, /metrics every 1 s", False, 1.0),
    CostConfig("scrape-0.1", "no Redis, /metrics every 0.1 s", False, 0.1),
)


async def idle_scrapes(server: Server, count: int = IDLE_SCRAPES) -> tuple[float, float, float]:
    """``count`` scrapes one after another once the runs are over: the server's CPU per
    scrape and the latency's p50 and p99, without load."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as client:
        await client.get("/metrics")
        await asyncio.sleep(0.2)
        latencies = []
        cpu = server.cpu()
        for _ in range(count):
            started = time.perf_counter()
            (await client.get("/metrics")).raise_for_status()
            latencies.append(time.perf_counter() - started)
        cpu = server.cpu() - cpu
    return cpu / count, percentile(latencies, 50), percentile(latencies, 99)


async def cost_batch(
    config: CostConfig, runs: int, warmup: int, probe: RedisProbe | None, problems: list[str]
) -> CostBatch:
    prefix = unique_prefix() if config.redis else None
    scraper: Scraper | None = None
    async with (
        scratch_postgres() as url,
        serve(
            url, {**SERVER_ENV, **redis_env(prefix)}, name="replica", problems=problems
        ) as server,
        clients(server.base_url, CLIENTS) as pool,
    ):
        workflow_id = await post_workflow(server.base_url, chain_raw(10, NOOP, "noop-chain"))

        async def one(client: httpx.AsyncClient) -> Outcome:
            return await sse_run(client, workflow_id)

        await drive(warmup, pool, one)
        try:
            if config.scrape is not None:
                scraper = Scraper(server.base_url, config.scrape)
                await scraper.start()
                scraper.go()
            redis_before = await probe.counters() if probe is not None and prefix else None
            server_cpu = server.cpu()
            outcomes, wall, client_cpu = await drive(runs, pool, one)
            server_cpu = server.cpu() - server_cpu
            batch = CostBatch(runs, wall, outcomes, client_cpu, server_cpu)
            if redis_before is not None and probe is not None:
                cpu, commands = await probe.counters()
                batch.redis_cpu = cpu - redis_before[0]
                batch.redis_commands = commands - redis_before[1] - 2  # the probe's INFOs
            if scraper is not None:
                batch.scrapes = await scraper.stop()
                batch.idle_scrape = await idle_scrapes(server)
        finally:
            if scraper is not None:
                await scraper.kill()
    if probe is not None and prefix is not None:
        await probe.forget(prefix)
    return batch
