"""``python -m bench.redis``: the command line, the header and the order of the sections
(bench/redis/__init__.py says what they measure)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Sequence

import bench.redis
from bench.redis.cost import section_cost
from bench.redis.cost_batch import COST_CONFIGS
from bench.redis.scraper import scrape_child
from bench.redis.sse import section_sse
from bench.redis.targets import Results, targets_table
from bench.support import cli
from bench.support.databases import postgres_ready
from bench.support.machine import log, version, wait_for_quiet
from bench.support.redis_probe import REDIS_URL, RedisProbe
from bench.support.tables import emit

SECTIONS = ("cost", "sse")
#: concurrent runs of the cross-replica section: a load that saturates this machine's 2
#: cores, a moderate one and a light one
SSE_LOADS = (50, 20, 5)


def header(args: argparse.Namespace, pg: str, redis_version: str) -> list[str]:
    return cli.header(
        args,
        loop=f"; uvloop {version('uvloop')} (here and in the servers)",
        lines=[
            f"postgres: {pg}; redis server: {redis_version}; redis-py {version('redis')}, "
            f"prometheus-client {version('prometheus-client')}, httpx {version('httpx')}",
            cli.mode_line(args),
        ],
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.parser(
        "python -m bench.redis", bench.redis.__doc__, SECTIONS, "one round, smaller batches"
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
        type=cli.numbers,
        default=",".join(map(str, SSE_LOADS)),
        help="concurrent runs of the sse section, comma-separated (default 50,20,5)",
    )
    cli.add_quiet_wait(parser, max_wait=0.0)
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
    args.sse_clients = sorted(set(args.sse_clients), reverse=True)
    return args


async def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    problem, pg = await postgres_ready()
    if problem is not None:
        log(f"Postgres is unreachable ({problem}): nothing to measure")
        raise SystemExit(2)
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
    cli.print_header("Flowcore Redis and /metrics benchmark", lines, args.markdown)
    if os.getloadavg()[0] >= args.max_load:
        log(f"note: 1-minute load average {os.getloadavg()[0]:.2f}: expect noisy numbers")
    results = Results()
    try:
        for section in cli.chosen(args, SECTIONS):
            began = time.perf_counter()
            measure = section_cost if section == "cost" else section_sse
            for table in await measure(args, probe, results):
                emit(table, args.markdown)
            log(f"{section}: {time.perf_counter() - began:.0f} s")
    finally:
        if probe is not None:
            await probe.close()
    emit(targets_table(results), args.markdown)
    cli.print_footer(started, args.markdown)


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--scrape-child":
        scrape_child(argv[1], float(argv[2]))
        return
    cli.run_on_uvloop(run(parse_args(argv)))
