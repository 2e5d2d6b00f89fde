"""Redis and /metrics benchmarks of the HTTP service on Postgres: prints tables, asserts
nothing.

    python -m bench.redis                  # everything (about 4 minutes)
    python -m bench.redis --quick          # one round of smaller batches (about 1¼ min)
    python -m bench.redis --only cost      # or --only sse
    python -m bench.redis --only cost --cost-configs none,redis --rounds 6   # Redis vs none only
    python -m bench.redis --sse-clients 50,5,150   # the loads of the sse section
    python -m bench.redis --markdown       # GitHub tables (for docs/benchmarks-redis.md)

Run it as a module: ``python bench/redis.py`` would put bench/ first on sys.path and
shadow the ``redis`` package with this file.

Sections:

``cost``  One replica (``python -m app.cli serve`` in a subprocess, a fresh scratch
          Postgres database per batch) and 100 concurrent clients, each looping: POST
          /v1/runs of a 10-node ``noop`` chain, then read the run's SSE stream to its
          terminal event. Four configurations, interleaved round by round in a rotating
          order: no Redis; Redis (FLOWCORE_REDIS_URL, a unique FLOWCORE_REDIS_PREFIX);
          no Redis with a scraper (a separate process, like Prometheus) GETting /metrics
          every 1 s; every 0.1 s. Table 1 is Redis vs none, table 2 the scrapers vs none.
``sse``   Two replicas on one Postgres (and one Redis): A executes (dispatcher on), B
          serves the API only (FLOWCORE_DISPATCHER_ENABLED=false). 50 (then 5) concurrent
          clients POST runs of a chain of 10 ``delay`` nodes (0.02 s) and read their SSE
          streams on B, or for reference on A. Latency of a ``node.completed`` event = the
          client's clock when it reads the event - the event's ``timestamp`` (when A
          emitted it; one machine, one clock). With Redis, and without (B then only
          polls the database log, every 0.25 s).

Progress goes to stderr, tables to stdout. The servers' warnings and errors (from their
JSON logs) are listed under the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import redis.asyncio as aioredis

from bench import _service as service
from bench._service import (
    Server,
    drop_stale_databases,
    percentile,
    postgres_unavailable,
    postgres_version,
    scratch_postgres,
    wait_for_quiet,
)
from bench.common import Table, cpu_model, emit, loadavg, log, revision

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("cost", "sse")
Raw = dict[str, Any]

#: the Redis the replicas share (each batch gets its own key prefix on it)
REDIS_URL = os.environ.get("FLOWCORE_BENCH_REDIS", "redis://127.0.0.1:6379/0")
#: concurrent clients of the cost section (as in bench/http.py)
CLIENTS = 100
#: concurrent runs of the cross-replica section: a load that saturates this machine's 2
#: cores, a moderate one and a light one
SSE_LOADS = (50, 20, 5)
NOOP: Raw = {"type": "noop"}
DELAY_SECONDS = 0.02
DELAY_NODE: Raw = {"type": "delay", "config": {"seconds": DELAY_SECONDS}}
CHAIN = 10
TERMINAL = frozenset({"run.succeeded", "run.failed", "run.cancelled"})
#: every server's settings besides the database, Redis and dispatcher ones (bench/http.py's)
SERVER_ENV = {"FLOWCORE_MAX_CONCURRENT_RUNS": str(CLIENTS), "FLOWCORE_POLL_SECONDS": "0.1"}
#: scrapes one after another on an idle server (the CPU of one scrape)
IDLE_SCRAPES = 100
#: the targets
REDIS_COST_LIMIT = 1.10  # Redis adds at most 10% to the server's CPU per run
CROSS_P99_LIMIT = 0.050  # seconds


def chain(workflow_id: str, node: Raw, n: int = CHAIN) -> Raw:
    return {
        "id": workflow_id,
        "nodes": [{"id": f"n{i}", **node} for i in range(n)],
        "edges": [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(n - 1)],
    }


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def ms(seconds: float, digits: int = 1) -> str:
    return f"{seconds * 1e3:,.{digits}f}" if seconds == seconds else "-"


def spread(xs: Sequence[float], digits: int = 1) -> str:
    """``median (min-max)``, or the value alone when there is one."""
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:,.{digits}f}"
    return f"{med(xs):,.{digits}f} ({min(xs):,.{digits}f}-{max(xs):,.{digits}f})"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x" if b and a == a and b == b else "-"


def cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --------------------------------------------------------------------------- servers


def serve(
    name: str, database_url: str, env: dict[str, str], problems: list[str]
) -> contextlib.AbstractAsyncContextManager[Server]:
    """bench._service's server with this benchmark's settings; its logged warnings and
    errors go to ``problems``."""
    return service.serve(database_url, {**SERVER_ENV, **env}, name=name, problems=problems)


def redis_env(prefix: str | None) -> dict[str, str]:
    """The settings that put a replica on Redis under ``prefix`` (none: no Redis)."""
    if prefix is None:
        return {}
    return {"FLOWCORE_REDIS_URL": REDIS_URL, "FLOWCORE_REDIS_PREFIX": prefix}


def unique_prefix() -> str:
    return f"flowcore-bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def clients(base_url: str, n: int) -> AsyncIterator[list[httpx.AsyncClient]]:
    """``n`` clients of one keep-alive connection each (see bench/http.py: one client
    with a pool of 100 connections costs the load generator far more CPU)."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base_url, limits=limits, timeout=httpx.Timeout(60.0))
            )
            for _ in range(n)
        ]


async def post_workflow(base_url: str, raw: Raw) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=30.0) as client:
        response = await client.post("/v1/workflows", json=raw)
        response.raise_for_status()
        return str(response.json()["id"])


R = TypeVar("R")
C = TypeVar("C")


async def drive(
    total: int, pool: Sequence[C], one: Callable[[C], Awaitable[R]]
) -> tuple[list[R], float, float]:
    """``total`` calls of ``one(client)``, one worker per client, each starting its next
    call when its previous one finished. Returns (outcomes, wall seconds, CPU seconds
    of this process)."""
    left = total
    outcomes: list[R] = []

    async def worker(client: C) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            outcomes.append(await one(client))

    cpu, start = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(c) for c in pool[:total]))
    return outcomes, time.perf_counter() - start, time.process_time() - cpu


# ----------------------------------------------------------------------------- Redis


class RedisProbe:
    """The bench's own connection to the shared Redis: its CPU and command counters
    (for the whole Redis server: other users of it count too) and clean-up of a prefix."""

    def __init__(self, url: str) -> None:
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


# --------------------------------------------------------------------- /metrics scraper


def scrape_child(url: str, period: float) -> None:
    """The scraper process (``--scrape-child URL PERIOD``): prints "ready", scrapes
    ``url`` every ``period`` seconds from "go" to "stop" on stdin (on one keep-alive
    connection, like Prometheus), then prints its samples as JSON."""
    import http.client
    import threading
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection(host, port, timeout=10)

    connection = connect()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return
    stop = threading.Event()

    def wait_for_stop() -> None:
        sys.stdin.readline()
        stop.set()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    latencies: list[float] = []
    sizes: list[int] = []
    errors: list[str] = []
    due = time.monotonic()
    while not stop.is_set():
        started = time.perf_counter()
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            if response.status == 200:
                latencies.append(time.perf_counter() - started)
                sizes.append(len(body))
            else:
                errors.append(f"HTTP {response.status}")
        except (OSError, http.client.HTTPException) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            connection.close()
            connection = connect()
        due = max(due + period, time.monotonic())  # a slow scrape delays the next one
        stop.wait(max(0.0, due - time.monotonic()))
    connection.close()
    print(json.dumps({"latencies": latencies, "sizes": sizes, "errors": errors}), flush=True)


@dataclass
class Scrapes:
    latencies: list[float] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Scraper:
    """A ``--scrape-child`` subprocess: start it, ``go``, then ``stop`` for its samples."""

    def __init__(self, base_url: str, period: float) -> None:
        self.url = f"{base_url}/metrics"
        self.period = period
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "bench.redis", "--scrape-child", self.url, str(self.period)),
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"the scraper did not start: {line!r}")

    def go(self) -> None:
        assert self.process is not None
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")

    async def stop(self) -> Scrapes:
        assert self.process is not None
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(b"stop\n")
        await self.process.stdin.drain()
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        await self.process.wait()
        data = json.loads(line)
        return Scrapes(data["latencies"], data["sizes"], data["errors"])

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


# ------------------------------------------------------------------ section 1 and 2: cost


@dataclass(slots=True)
class Outcome:
    latency: float  # POST sent -> terminal event read
    ok: bool
    error: str | None = None


async def sse_run(client: httpx.AsyncClient, workflow_id: str) -> Outcome:
    """POST a run, then read its event stream to the end (as bench/http.py does)."""
    start = time.perf_counter()
    terminal: str | None = None
    finished = 0.0
    try:
        response = await client.post("/v1/runs", json={"workflow_id": workflow_id})
        response.raise_for_status()
        run_id = response.json()["run_id"]
        headers = {"Accept": "text/event-stream"}
        async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as stream:
            stream.raise_for_status()
            async for line in stream.aiter_lines():
                if line.startswith("event:"):
                    kind = line[6:].strip()
                    if kind in TERMINAL:
                        terminal, finished = kind, time.perf_counter()
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return Outcome(time.perf_counter() - start, False, f"{type(exc).__name__}: {exc}")
    if terminal is None:
        return Outcome(time.perf_counter() - start, False, "no terminal event")
    ok = terminal == "run.succeeded"
    return Outcome(finished - start, ok, None if ok else terminal)


@dataclass(frozen=True)
class CostConfig:
    key: str
    label: str
    redis: bool
    scrape: float | None  # seconds between scrapes; None: no scraper


@dataclass
class CostBatch:
    runs: int
    wall: float
    outcomes: list[Outcome]
    client_cpu: float
    server_cpu: float
    redis_cpu: float | None = None
    redis_commands: int | None = None
    scrapes: Scrapes | None = None
    idle_scrape: tuple[float, float, float] | None = None  # server CPU, p50, p99 (s)

    @property
    def rate(self) -> float:
        return self.runs / self.wall

    @property
    def latencies(self) -> list[float]:
        return [o.latency for o in self.outcomes]

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if not o.ok)

    @property
    def first_error(self) -> str | None:
        return next((o.error for o in self.outcomes if not o.ok), None)


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
        serve("replica", url, redis_env(prefix), problems) as server,
        clients(server.base_url, CLIENTS) as pool,
    ):
        workflow_id = await post_workflow(server.base_url, chain("noop-chain", NOOP))

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


async def section_cost(
    args: argparse.Namespace, probe: RedisProbe | None, results: Results
) -> list[Table]:
    configs = [
        c
        for c in COST_CONFIGS
        if (probe is not None or not c.redis) and (c.key in args.cost_configs or c.key == "none")
    ]
    batches: dict[str, list[CostBatch]] = {c.key: [] for c in configs}
    problems: list[str] = []
    for round_ in range(args.rounds):
        shift = round_ % len(configs)
        for config in configs[shift:] + configs[:shift]:
            log(f"cost: {config.label}, round {round_ + 1}/{args.rounds}")
            batch = await cost_batch(config, args.runs, args.warmup, probe, problems)
            batches[config.key].append(batch)
            log(
                f"  {batch.rate:.1f} runs/s, server CPU {batch.server_cpu / batch.runs * 1e3:.1f}"
                f" ms/run, failed {batch.failed}, load {loadavg()}"
            )

    def rates(key: str) -> list[float]:
        return [b.rate for b in batches[key]]

    def server_cpu(key: str) -> list[float]:
        return [b.server_cpu / b.runs for b in batches[key]]

    def failed(key: str) -> str:
        group = batches[key]
        return f"{sum(b.failed for b in group)}/{sum(b.runs for b in group)}"

    def p(key: str, q: float) -> float:
        return med([percentile(b.latencies, q) for b in batches[key]])

    # ---- table 1: Redis vs none
    table1 = Table(
        f"1. Redis on one replica: {CHAIN}-node noop chain, {CLIENTS} concurrent clients "
        "(POST + SSE to the end), Postgres",
        [
            "configuration",
            "runs/s",
            "p50 ms",
            "p99 ms",
            "server CPU ms/run",
            "Redis server CPU ms/run",
            "Redis commands/run",
            "client CPU ms/run",
            "failed",
        ],
        "lrrrrrrrl",
    )
    for key in ("none", "redis"):
        if key not in batches:
            continue
        group = batches[key]
        redis_cpu = [b.redis_cpu / b.runs for b in group if b.redis_cpu is not None]
        commands = [b.redis_commands / b.runs for b in group if b.redis_commands is not None]
        table1.rows.append(
            [
                next(c.label for c in configs if c.key == key),
                spread(rates(key)),
                ms(p(key, 50)),
                ms(p(key, 99)),
                spread([x * 1e3 for x in server_cpu(key)]),
                spread([x * 1e3 for x in redis_cpu], 2) if redis_cpu else "-",
                f"{med(commands):.1f}" if commands else "-",
                f"{med([b.client_cpu / b.runs for b in group]) * 1e3:.1f}",
                failed(key),
            ]
        )
    if "redis" in batches:
        none_cpu, redis_cpu_run = med(server_cpu("none")), med(server_cpu("redis"))
        redis_server = [b.redis_cpu / b.runs for b in batches["redis"] if b.redis_cpu is not None]
        table1.rows.append(
            [
                "Redis / no Redis",
                ratio(med(rates("redis")), med(rates("none"))),
                ratio(p("redis", 50), p("none", 50)),
                ratio(p("redis", 99), p("none", 99)),
                ratio(redis_cpu_run, none_cpu),
                "",
                "",
                "",
                "",
            ]
        )
        paired_cpu = [
            r.server_cpu / n.server_cpu
            for r, n in zip(batches["redis"], batches["none"], strict=False)
        ]
        paired_rate = [
            r.rate / n.rate for r, n in zip(batches["redis"], batches["none"], strict=False)
        ]
        table1.notes.append(
            "Redis / no Redis per round (server CPU per run; runs/s): "
            + ", ".join(f"{c:.3f}x; {r:.3f}x" for c, r in zip(paired_cpu, paired_rate, strict=True))
        )
        results.redis_cpu_ratio = redis_cpu_run / none_cpu
        results.redis_rate_ratio = med(rates("redis")) / med(rates("none"))
        if redis_server:
            results.redis_total_ratio = (redis_cpu_run + med(redis_server)) / none_cpu
    else:
        table1.notes.append(f"Redis at {REDIS_URL} is unreachable: its rows are missing.")
    table1.notes += [
        f"each batch: a fresh scratch Postgres database and server, {args.warmup} warm-up "
        f"runs, then {args.runs} runs from {CLIENTS} clients (one keep-alive connection "
        "each), each looping POST /v1/runs, GET /v1/runs/{id}/events read to the end; "
        f"{args.rounds} round(s), the configurations of tables 1 and 2 interleaved in a "
        "rotating order. Cells: median (min-max) over rounds; p50/p99: median over rounds.",
        f"server settings: {SERVER_ENV}, otherwise the defaults; Redis: FLOWCORE_REDIS_URL="
        f"{REDIS_URL} and a FLOWCORE_REDIS_PREFIX of its own per batch (cache, breakers, "
        "live events over pub/sub; dispatcher wake-ups stay on NOTIFY: "
        "FLOWCORE_REDIS_WAKEUPS unset).",
        "server CPU: the server process's user + system CPU over the measured runs (/proc). "
        "Redis server CPU and commands: INFO deltas of the whole Redis server over the "
        "same runs (anything else using that Redis counts too). Client CPU: the bench "
        "process's.",
    ]

    # ---- table 2: scrapers vs none
    table2 = Table(
        "2. /metrics scraping under the same load (no Redis)",
        [
            "scraper",
            "runs/s",
            "p50 ms",
            "p99 ms",
            "server CPU ms/run",
            "CPU vs none",
            "scrapes",
            "scrape p50 ms",
            "scrape p99 ms",
            "scrape max ms",
            "response KiB",
            "failed",
        ],
        "lrrrrrrrrrrl",
    )
    scrape_errors: list[str] = []
    for key, label in (("none", "none"), ("scrape-1", "every 1 s"), ("scrape-0.1", "every 0.1 s")):
        if key not in batches:
            continue
        group = batches[key]
        scrapes = [b.scrapes for b in group if b.scrapes is not None]
        cells = ["-"] * 5
        if scrapes:
            lat = [s.latencies for s in scrapes]
            sizes = [size for s in scrapes for size in s.sizes]
            cells = [
                str(sum(len(x) for x in lat)),
                ms(med([percentile(x, 50) for x in lat])),
                ms(med([percentile(x, 99) for x in lat])),
                ms(max((max(x) for x in lat if x), default=float("nan"))),
                f"{med(sizes) / 1024:.1f} (max {max(sizes) / 1024:.1f})" if sizes else "-",
            ]
            scrape_errors += [e for s in scrapes for e in s.errors]
        table2.rows.append(
            [
                label,
                spread(rates(key)),
                ms(p(key, 50)),
                ms(p(key, 99)),
                spread([x * 1e3 for x in server_cpu(key)]),
                ratio(med(server_cpu(key)), med(server_cpu("none"))),
                *cells,
                failed(key),
            ]
        )
        results.scrape_cpu_ratio[label] = med(server_cpu(key)) / med(server_cpu("none"))
    table2.notes += [
        "the scraper is a separate process (stdlib http.client, one keep-alive connection, "
        "like Prometheus) that GETs /metrics on a fixed schedule while the measured runs "
        "go on; scrape latency: request sent -> body read, in that process. Response: the "
        "body's size, median (max) over the scrapes.",
        "none: the same batches as table 1's no-Redis row.",
    ]
    idle = [b.idle_scrape for key in batches for b in batches[key] if b.idle_scrape is not None]
    if idle:
        table2.notes.append(
            f"on the idle server after each scraper batch, {len(idle) * IDLE_SCRAPES} scrapes one "
            f"after another: {med([i[0] for i in idle]) * 1e3:.2f} ms of server CPU per "
            f"scrape; latency p50 {ms(med([i[1] for i in idle]))} ms, p99 "
            f"{ms(med([i[2] for i in idle]))} ms (from the bench process)."
        )
    if scrape_errors:
        table2.notes.append(
            f"failed scrapes: {len(scrape_errors)}, the first: {scrape_errors[0][:200]}"
        )
    errors = [
        f"{key}: {b.first_error}" for key, group in batches.items() for b in group if b.failed
    ]
    notes = [f"failed runs: {e}" for e in errors[:5]]
    notes += server_problems(problems)
    table2.notes += notes
    return [table1, table2]


def server_problems(problems: list[str], limit: int = 8) -> list[str]:
    if not problems:
        return ["the servers logged no warning or error."]
    distinct: dict[str, int] = {}
    for problem in problems:
        distinct[problem] = distinct.get(problem, 0) + 1
    lines = [f"the servers logged {len(problems)} warning(s)/error(s):"]
    lines += [f"  {count}x {text}" for text, count in list(distinct.items())[:limit]]
    if len(distinct) > limit:
        lines.append(f"  ... and {len(distinct) - limit} more distinct ones")
    return lines


# --------------------------------------------------------------- section 3: cross-replica


@dataclass(slots=True)
class Watch:
    """One run watched over SSE."""

    ok: bool
    error: str | None = None
    lags: list[float] = field(default_factory=list)  # node.completed: read - emitted
    early: int = 0  # node.completed emitted before the stream was open (not counted)
    broken: bool = False  # sequence numbers not 1, 2, 3, ... to the terminal event
    terminal_lag: float | None = None
    open_latency: float | None = None  # GET sent -> ": stream open" read


@dataclass(slots=True)
class Trace:
    """What one client read of one run's stream."""

    seqs: list[int] = field(default_factory=list)
    #: node.completed and terminal events: seq -> (type, read at, emitted at), time.time()
    reads: dict[int, tuple[str, float, float]] = field(default_factory=dict)
    opened: float | None = None  # time.time() when ": stream open" was read
    open_latency: float | None = None  # GET sent -> ": stream open" read
    terminal: str | None = None


async def read_stream(client: httpx.AsyncClient, run_id: str) -> Trace:
    """Read ``run_id``'s SSE stream to its terminal event."""
    trace = Trace()
    headers = {"Accept": "text/event-stream"}
    kind = ""
    seq = 0
    get_sent = time.perf_counter()
    async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=headers) as stream:
        stream.raise_for_status()
        async for line in stream.aiter_lines():
            if line.startswith(":"):
                if trace.opened is None:  # ": stream open", sent once subscribed
                    trace.opened = time.time()
                    trace.open_latency = time.perf_counter() - get_sent
            elif line.startswith("id:"):
                seq = int(line[3:])
                trace.seqs.append(seq)
            elif line.startswith("event:"):
                kind = line[6:].strip()
            elif line.startswith("data:") and (kind == "node.completed" or kind in TERMINAL):
                now = time.time()
                trace.reads[seq] = (kind, now, float(json.loads(line[5:])["timestamp"]))
                if kind in TERMINAL:
                    trace.terminal = kind
    return trace


def _watch(trace: Trace) -> Watch:
    watch = Watch(ok=trace.terminal == "run.succeeded", open_latency=trace.open_latency)
    for kind, read, emitted in trace.reads.values():
        if kind in TERMINAL:
            watch.terminal_lag = read - emitted
        elif trace.opened is not None and emitted >= trace.opened:
            watch.lags.append(read - emitted)
        else:
            watch.early += 1
    watch.broken = trace.seqs != list(range(1, len(trace.seqs) + 1))
    if not watch.ok:
        watch.error = trace.terminal or "no terminal event"
    return watch


async def start(client: httpx.AsyncClient, workflow_id: str) -> str:
    response = await client.post("/v1/runs", json={"workflow_id": workflow_id})
    response.raise_for_status()
    return str(response.json()["run_id"])


async def watch_run(client: httpx.AsyncClient, workflow_id: str) -> Watch:
    """POST a run, read its SSE stream to the end; for every node.completed emitted
    after the stream opened (its subscription was live by then), the time from its
    emission on the executing replica to this process reading it."""
    try:
        return _watch(await read_stream(client, await start(client, workflow_id)))
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return Watch(ok=False, error=f"{type(exc).__name__}: {exc}")


@dataclass(slots=True)
class PairWatch:
    """One run watched at once by a client on A and one on B."""

    a: Watch
    b: Watch
    #: node.completed emitted once both streams were open: read on B - read on A
    hops: list[float] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.a.ok and self.b.ok


async def watch_pair(
    clients_: tuple[httpx.AsyncClient, httpx.AsyncClient], workflow_id: str
) -> PairWatch:
    """POST a run to A, then read its stream on A and on B at the same time: the hop of
    each node.completed is when B's client read it minus when A's did."""
    on_a, on_b = clients_
    try:
        run_id = await start(on_a, workflow_id)
        trace_a, trace_b = await asyncio.gather(
            read_stream(on_a, run_id), read_stream(on_b, run_id)
        )
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        failed = Watch(ok=False, error=f"{type(exc).__name__}: {exc}")
        return PairWatch(failed, failed)
    pair = PairWatch(_watch(trace_a), _watch(trace_b))
    if trace_a.opened is not None and trace_b.opened is not None:
        both = max(trace_a.opened, trace_b.opened)
        for seq, (kind, read_a, emitted) in trace_a.reads.items():
            on_b_read = trace_b.reads.get(seq)
            if kind == "node.completed" and emitted >= both and on_b_read is not None:
                pair.hops.append(on_b_read[1] - read_a)
    return pair


@dataclass
class SseBatch:
    runs: int
    wall: float
    watches: list[Watch]
    cpu_a: float
    cpu_b: float

    @property
    def lags(self) -> list[float]:
        return [lag for w in self.watches for lag in w.lags]

    @property
    def rate(self) -> float:
        return self.runs / self.wall


async def sse_batch(
    target: Server, workflow_id: str, runs: int, warmup: int, concurrency: int, a: Server, b: Server
) -> SseBatch:
    async with clients(target.base_url, concurrency) as pool:

        async def one(client: httpx.AsyncClient) -> Watch:
            return await watch_run(client, workflow_id)

        await drive(warmup, pool, one)
        cpu_a, cpu_b = a.cpu(), b.cpu()
        watches, wall, _cpu = await drive(runs, pool, one)
        return SseBatch(runs, wall, watches, a.cpu() - cpu_a, b.cpu() - cpu_b)


@dataclass
class PairBatch:
    runs: int
    wall: float
    pairs: list[PairWatch]

    @property
    def hops(self) -> list[float]:
        return [hop for p in self.pairs for hop in p.hops]

    @property
    def rate(self) -> float:
        return self.runs / self.wall


async def pair_batch(
    workflow_id: str, runs: int, warmup: int, concurrency: int, a: Server, b: Server
) -> PairBatch:
    async with clients(a.base_url, concurrency) as on_a, clients(b.base_url, concurrency) as on_b:
        pool = list(zip(on_a, on_b, strict=True))

        async def one(pair: tuple[httpx.AsyncClient, httpx.AsyncClient]) -> PairWatch:
            return await watch_pair(pair, workflow_id)

        await drive(warmup, pool, one)
        pairs, wall, _cpu = await drive(runs, pool, one)
        return PairBatch(runs, wall, pairs)


def sse_runs(args: argparse.Namespace, concurrency: int) -> int:
    """Runs per batch at ``concurrency``: ``--sse-runs`` at the highest load, in
    proportion below it (at least 40)."""
    top: int = max(args.sse_clients)
    return max(40, int(args.sse_runs) * concurrency // top)


async def section_sse(
    args: argparse.Namespace, probe: RedisProbe | None, results: Results
) -> list[Table]:
    modes = [True, False] if probe is not None else [False]
    loads: list[int] = args.sse_clients
    batches: dict[tuple[int, bool, str], list[SseBatch]] = {}
    pair_batches: dict[int, list[PairBatch]] = {}
    problems: list[str] = []
    for round_ in range(args.sse_rounds):
        for i, redis in enumerate(modes if round_ % 2 == 0 else modes[::-1]):
            prefix = unique_prefix() if redis else None
            env = redis_env(prefix)
            async with (
                scratch_postgres() as url,
                serve("A", url, env, problems) as a,
                serve("B", url, {**env, "FLOWCORE_DISPATCHER_ENABLED": "false"}, problems) as b,
            ):
                workflow_id = await post_workflow(a.base_url, chain("delay-chain", DELAY_NODE))
                targets = [("B", b), ("A", a)] if (round_ + i) % 2 == 0 else [("A", a), ("B", b)]
                for concurrency in loads:
                    for name, target in targets:
                        log(
                            f"sse: {concurrency} concurrent, clients on {name}, "
                            f"{'Redis' if redis else 'no Redis'}, round {round_ + 1}/"
                            f"{args.sse_rounds}"
                        )
                        batch = await sse_batch(
                            target,
                            workflow_id,
                            sse_runs(args, concurrency),
                            args.sse_warmup,
                            concurrency,
                            a,
                            b,
                        )
                        batches.setdefault((concurrency, redis, name), []).append(batch)
                        lags = batch.lags
                        log(
                            f"  {batch.rate:.1f} runs/s, node.completed p50 "
                            f"{ms(percentile(lags, 50))} p99 {ms(percentile(lags, 99))} ms, "
                            f"load {loadavg()}"
                        )
                    if redis:
                        log(
                            f"sse: {concurrency} concurrent, each run on A and B, round "
                            f"{round_ + 1}/{args.sse_rounds}"
                        )
                        paired = await pair_batch(
                            workflow_id,
                            sse_runs(args, concurrency),
                            args.sse_warmup,
                            concurrency,
                            a,
                            b,
                        )
                        pair_batches.setdefault(concurrency, []).append(paired)
                        hops = paired.hops
                        log(
                            f"  {paired.rate:.1f} runs/s, hop B - A p50 "
                            f"{ms(percentile(hops, 50))} p99 {ms(percentile(hops, 99))} ms"
                        )
            if probe is not None and prefix is not None:
                await probe.forget(prefix)

    table = Table(
        f"3. Live events across replicas: runs of {CHAIN} delay nodes ({DELAY_SECONDS} s), "
        "node.completed latency (client read - emission on A)",
        [
            "concurrent runs",
            "SSE clients on",
            "Redis",
            "runs/s",
            "events counted",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "run.succeeded p50 ms",
            "stream open p50 / p99 ms",
            "CPU ms/run A / B",
            "out of order or gaps",
            "failed",
        ],
        "rllrrrrrrrrrrl",
    )
    labels = {
        (True, "B"): "B (other replica)",
        (True, "A"): "A (executing replica)",
        (False, "B"): "B (other replica): log poll",
        (False, "A"): "A (executing replica)",
    }
    errors: list[str] = []
    for concurrency in loads:
        for redis, name in labels:
            group = batches.get((concurrency, redis, name))
            if not group:
                continue
            per = {q: med([percentile(b.lags, q) for b in group]) for q in (50, 95, 99)}
            counted = sum(len(b.lags) for b in group)
            early = sum(w.early for b in group for w in b.watches)
            terminal = [
                w.terminal_lag for b in group for w in b.watches if w.terminal_lag is not None
            ]
            opens = [w.open_latency for b in group for w in b.watches if w.open_latency is not None]
            runs = sum(b.runs for b in group)
            table.rows.append(
                [
                    str(concurrency),
                    labels[redis, name],
                    "yes" if redis else "no",
                    spread([b.rate for b in group]),
                    f"{counted:,} of {counted + early:,}",
                    ms(per[50]),
                    ms(per[95]),
                    ms(per[99]),
                    ms(max((max(b.lags) for b in group if b.lags), default=float("nan"))),
                    ms(percentile(terminal, 50)),
                    f"{ms(percentile(opens, 50))} / {ms(percentile(opens, 99))}",
                    f"{med([b.cpu_a / b.runs for b in group]) * 1e3:.1f} / "
                    f"{med([b.cpu_b / b.runs for b in group]) * 1e3:.1f}",
                    str(sum(1 for b in group for w in b.watches if w.broken)),
                    f"{sum(1 for b in group for w in b.watches if not w.ok)}/{runs}",
                ]
            )
            errors += [
                f"{labels[redis, name]}: {w.error}"
                for b in group
                for w in b.watches
                if w.error is not None
            ]
            if redis:
                results.sse_p99[concurrency, name] = per[99]
    table.notes += [
        "replica A: dispatcher on; B: FLOWCORE_DISPATCHER_ENABLED=false; one scratch "
        "Postgres database and (with Redis) one Redis prefix per pair of servers. Each "
        "client POSTs to the replica it reads from (runs execute on A either way), then "
        "reads the run's stream to its terminal event. Per pair and load: "
        f"{args.sse_warmup} warm-up runs, then {sse_runs(args, max(loads))} runs at "
        f"{max(loads)} concurrent (fewer at lower loads, at least 40), clients on B and "
        f"on A in alternating order; {args.sse_rounds} round(s), with and without Redis "
        "alternating. runs/s: median (min-max).",
        "latency: time.time() in this process when it reads the data line - the event's "
        "`timestamp` (time.time() on A when the engine emitted it). Events reach the bus "
        "only once committed with their checkpoint, so every row includes A's commit; "
        "B's rows minus A's is what crossing replicas costs. Counted: node.completed "
        "events emitted after the client read `: stream open` (sent once the "
        "subscription is live); the others were partly replayed from the log. "
        "p50/p95/p99: median over rounds; max: over all.",
        "without Redis, B learns of A's events only from its database log, read after "
        "0.25 s without a live event (app/runtime/streams.py POLL). stream open: GET sent -> "
        "`: stream open` read (with Redis it waits for the SUBSCRIBE to be confirmed).",
        "CPU ms/run: each server's CPU over the measured runs, per run. out of order or "
        "gaps: streams whose `id:`s were not 1, 2, 3, ... (none expected).",
        f"on this machine the servers, Postgres, Redis and the clients share {cpus()} CPUs.",
    ]
    if errors:
        table.notes.append(f"failed: {len(errors)}, the first: {errors[0][:200]}")
    table.notes += server_problems(problems)
    return [table, hop_table(args, pair_batches, results)] if pair_batches else [table]


def hop_table(
    args: argparse.Namespace, pair_batches: dict[int, list[PairBatch]], results: Results
) -> Table:
    """Table 3b: the same events read on A and on B at once; the difference is the hop."""
    table = Table(
        "3b. The cross-replica hop: each run streamed at once from A (executing) and from B; "
        "node.completed read on B - read on A",
        [
            "concurrent runs",
            "runs/s",
            "events counted",
            "hop p50 ms",
            "hop p95 ms",
            "hop p99 ms",
            "hop max ms",
            "on A p99 ms",
            "on B p99 ms",
            "out of order or gaps",
            "failed",
        ],
        "rrrrrrrrrrl",
    )
    errors: list[str] = []
    for concurrency in args.sse_clients:
        group = pair_batches.get(concurrency)
        if not group:
            continue
        hop = {q: med([percentile(b.hops, q) for b in group]) for q in (50, 95, 99)}
        pairs = [p for b in group for p in b.pairs]
        lags_a = med([percentile([x for p in b.pairs for x in p.a.lags], 99) for b in group])
        lags_b = med([percentile([x for p in b.pairs for x in p.b.lags], 99) for b in group])
        table.rows.append(
            [
                str(concurrency),
                spread([b.rate for b in group]),
                f"{sum(len(b.hops) for b in group):,}",
                ms(hop[50]),
                ms(hop[95]),
                ms(hop[99]),
                ms(max((max(b.hops) for b in group if b.hops), default=float("nan"))),
                ms(lags_a),
                ms(lags_b),
                str(sum(1 for p in pairs if p.a.broken or p.b.broken)),
                f"{sum(1 for p in pairs if not p.ok)}/{len(pairs)}",
            ]
        )
        errors += [w.error for p in pairs for w in (p.a, p.b) if w.error is not None]
        results.hop_p99[concurrency] = hop[99]
    table.notes += [
        "with Redis, on the same pair of servers as table 3, after its batches at each load: "
        "a client on A POSTs a run and reads its stream while a client on B reads the same "
        "run's stream (so twice the streams of table 3 at the same number of runs). Hop: "
        "for each node.completed emitted once both streams were open, time.time() when "
        "this process read it from B minus when it read it from A: Redis pub/sub and B's "
        "stream, without A's commit and without the emission-to-read time both share. "
        "p50/p95/p99: median over rounds; on A / on B p99: node.completed latency as in "
        "table 3, of these streams.",
    ]
    if errors:
        table.notes.append(f"failed: {len(errors)}, the first: {errors[0][:200]}")
    return table


# ---------------------------------------------------------------------------- targets


@dataclass
class Results:
    redis_cpu_ratio: float | None = None
    redis_total_ratio: float | None = None
    redis_rate_ratio: float | None = None
    scrape_cpu_ratio: dict[str, float] = field(default_factory=dict)
    #: (concurrent runs, "A" or "B") -> p99 of node.completed with Redis
    sse_p99: dict[tuple[int, str], float] = field(default_factory=dict)
    #: concurrent runs -> p99 of the hop (the same event read on B - read on A)
    hop_p99: dict[int, float] = field(default_factory=dict)


def targets_table(results: Results) -> Table:
    table = Table("4. Targets", ["target", "measured", "verdict"], "llr")
    limit = f"{(REDIS_COST_LIMIT - 1) * 100:.0f}%"
    if results.redis_cpu_ratio is not None:
        table.rows.append(
            [
                f"Redis adds <= {limit} to a run's cost: server CPU per run",
                f"{results.redis_cpu_ratio:.3f}x no Redis's "
                f"(runs/s {results.redis_rate_ratio or float('nan'):.3f}x)",
                "met" if results.redis_cpu_ratio <= REDIS_COST_LIMIT else "NOT met",
            ]
        )
    if results.redis_total_ratio is not None:
        table.rows.append(
            [
                f"... counting the Redis server's CPU too (<= {limit})",
                f"{results.redis_total_ratio:.3f}x",
                "met" if results.redis_total_ratio <= REDIS_COST_LIMIT else "NOT met",
            ]
        )
    for (concurrency, name), p99 in sorted(results.sse_p99.items(), reverse=True):
        if name != "B":
            continue
        same = results.sse_p99.get((concurrency, "A"))
        table.rows.append(
            [
                f"cross-replica SSE p99 < {CROSS_P99_LIMIT * 1e3:.0f} ms (node.completed, "
                f"{concurrency} concurrent runs)",
                f"{ms(p99)} ms" + (f" (same replica: {ms(same)} ms)" if same is not None else ""),
                "met" if p99 < CROSS_P99_LIMIT else "NOT met",
            ]
        )
    for concurrency, p99 in sorted(results.hop_p99.items(), reverse=True):
        table.rows.append(
            [
                f"... the hop alone (table 3b), {concurrency} concurrent runs",
                f"{ms(p99)} ms",
                "met" if p99 < CROSS_P99_LIMIT else "NOT met",
            ]
        )
    if not table.rows:
        table.notes.append("nothing measured (Redis unreachable, or sections skipped)")
    return table


# ------------------------------------------------------------------------------ main


def header(args: argparse.Namespace, pg: str, redis_version: str) -> list[str]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    return [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; flowcore {revision(args.revision)}",
        f"python: {platform.python_implementation()} {platform.python_version()} "
        f"({platform.platform()}); uvloop {version('uvloop')} (here and in the servers)",
        f"cpu: {cpu_model()}; {os.cpu_count()} CPUs ({cpus()} usable)",
        f"postgres: {pg}; redis server: {redis_version}; redis-py {version('redis')}, "
        f"prometheus-client {version('prometheus-client')}, httpx {version('httpx')}",
        f"mode: {'quick' if args.quick else 'full'}; load average (1, 5, 15 min) at the "
        f"start of measuring: {loadavg()}",
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.redis",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="one round, smaller batches")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument("--markdown", action="store_true", help="print GitHub tables")
    parser.add_argument(
        "--revision", help="the revision to print in the header (for a clean export of a commit)"
    )
    parser.add_argument("--rounds", type=int, help="cost rounds (default 4; quick 1)")
    parser.add_argument("--runs", type=int, help="cost runs per batch (default 300; quick 120)")
    parser.add_argument(
        "--cost-configs",
        default=",".join(c.key for c in COST_CONFIGS),
        help="the cost section's configurations, comma-separated (default: all of "
        f"{', '.join(c.key for c in COST_CONFIGS)}; none always runs)",
    )
    parser.add_argument("--sse-rounds", type=int, help="sse rounds (default 2; quick 1)")
    parser.add_argument("--sse-runs", type=int, help="sse runs per batch (default 200; quick 80)")
    parser.add_argument(
        "--sse-clients",
        default=",".join(map(str, SSE_LOADS)),
        help="concurrent runs of the sse section, comma-separated (default 50,20,5)",
    )
    parser.add_argument(
        "--max-load", type=float, default=1.0, help="wait for a 1-minute load below this"
    )
    parser.add_argument(
        "--max-wait",
        type=float,
        default=0.0,
        help="...for at most this many seconds (default 0: do not wait)",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 4)
    args.runs = args.runs or (120 if quick else 300)
    args.warmup = 20 if quick else 50
    args.sse_rounds = args.sse_rounds or (1 if quick else 2)
    args.sse_runs = args.sse_runs or (80 if quick else 200)
    args.sse_warmup = 10 if quick else 20
    args.cost_configs = {c.strip() for c in str(args.cost_configs).split(",") if c.strip()}
    unknown = args.cost_configs - {c.key for c in COST_CONFIGS}
    if unknown:
        parser.error(f"unknown cost configuration(s): {', '.join(sorted(unknown))}")
    args.sse_clients = sorted({int(c) for c in str(args.sse_clients).split(",")}, reverse=True)
    return args


async def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    problem = await postgres_unavailable()
    if problem is not None:
        log(f"Postgres is unreachable ({problem}): nothing to measure")
        raise SystemExit(2)
    pg = await postgres_version()
    if sys.platform == "linux":
        for name in await drop_stale_databases():
            log(f"dropped {name}, left behind by a benchmark that was killed")
    probe: RedisProbe | None = RedisProbe(REDIS_URL)
    assert probe is not None
    missing = await probe.available()
    redis_version = f"unreachable ({missing})" if missing else await probe.version()
    if missing:
        log(f"Redis at {REDIS_URL} is unreachable ({missing}): measuring without it")
        await probe.close()
        probe = None
    if args.max_wait > 0:
        await asyncio.to_thread(wait_for_quiet, args.max_load, args.max_wait)
    lines = header(args, pg, redis_version)
    if args.markdown:
        print("\n".join(f"- {line}" for line in lines) + "\n", flush=True)
    else:
        print("Flowcore Redis and /metrics benchmark\n" + "\n".join(lines) + "\n", flush=True)
    if os.getloadavg()[0] >= args.max_load:
        log(f"note: 1-minute load average {os.getloadavg()[0]:.2f}: expect noisy numbers")
    results = Results()
    try:
        for section in [s for s in SECTIONS if s in (args.only or SECTIONS)]:
            began = time.perf_counter()
            measure = section_cost if section == "cost" else section_sse
            for table in await measure(args, probe, results):
                emit(table, args.markdown)
            log(f"{section}: {time.perf_counter() - began:.0f} s")
    finally:
        if probe is not None:
            await probe.close()
    emit(targets_table(results), args.markdown)
    footer = f"total time {time.perf_counter() - started:.0f} s; load average at the end: "
    footer += loadavg()
    print(f"- {footer}" if args.markdown else footer, flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--scrape-child":
        scrape_child(argv[1], float(argv[2]))
        return
    args = parse_args(argv)
    if sys.platform != "win32":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
