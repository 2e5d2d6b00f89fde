"""``python -m bench.http``: the command line, the header and the order of the sections
(bench/http/__init__.py says what they measure)."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence

import bench.http
from bench.http.auth import section_auth
from bench.http.delays import section_delays
from bench.http.durable import section_durable
from bench.http.endtoend import section_http
from bench.http.per_node import LENGTHS
from bench.http.targets import Results, targets_table
from bench.support import cli
from bench.support.databases import postgres_ready
from bench.support.machine import log, version, wait_for_quiet
from bench.support.tables import emit

SECTIONS = ("durable", "http", "delays", "auth")
QUICK = "smaller batches, one repetition"


def header(args: argparse.Namespace, pg: str) -> list[str]:
    return cli.header(
        args,
        loop=f"; event loop: uvloop {version('uvloop')} (here and in the server)",
        lines=[
            f"postgres: {pg}; sqlalchemy {version('sqlalchemy')}, asyncpg "
            f"{version('asyncpg')}, aiosqlite {version('aiosqlite')}, httpx {version('httpx')}",
            f"langgraph {version('langgraph')}, langgraph-checkpoint-postgres "
            f"{version('langgraph-checkpoint-postgres')}, psycopg {version('psycopg')}",
            cli.mode_line(args),
        ],
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.parser("python -m bench.http", bench.http.__doc__, SECTIONS, QUICK)
    parser.add_argument("--no-langgraph", action="store_true", help="skip LangGraph")
    parser.add_argument("--no-redis", action="store_true", help="skip the Postgres + Redis rows")
    parser.add_argument("--reps", type=int, help="in-process repetitions (default 3; quick 1)")
    parser.add_argument("--durable-runs", type=int, help="in-process runs per batch (200; 100)")
    parser.add_argument(
        "--lengths",
        type=cli.numbers,
        default=",".join(map(str, LENGTHS)),
        help="the chain lengths of table 2, comma-separated (default: all of 10,100,1000)",
    )
    parser.add_argument("--http-runs", type=int, help="HTTP runs per batch (default 300; 150)")
    parser.add_argument("--http-reps", type=int, default=1, help="HTTP repetitions (default 1)")
    cli.add_quiet_wait(parser, max_wait=900.0)
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.durable_runs is None:
        args.durable_runs = 100 if args.quick else 200
    if args.http_runs is None:
        args.http_runs = 150 if args.quick else 300
    args.lengths = sorted(set(args.lengths))
    if not set(args.lengths) <= set(LENGTHS):
        parser.error(f"--lengths: choose among {', '.join(map(str, LENGTHS))}")
    return args


async def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    problem, pg = await postgres_ready()
    args.no_postgres = problem is not None
    if args.max_wait > 0:
        await asyncio.to_thread(wait_for_quiet, args.max_load, args.max_wait)
    cli.print_header("Flowcore service benchmark", header(args, pg), args.markdown)
    results = Results()
    sections = cli.chosen(args, SECTIONS)
    if "durable" in sections and args.no_postgres:
        log(f"Postgres is unreachable ({problem}); skipping the in-process section")
        sections.remove("durable")
    for section in sections:
        began = time.perf_counter()
        if section == "delays":
            tables = await section_delays(args)
        elif section == "auth":
            tables = await section_auth(args)
        else:
            measure = section_durable if section == "durable" else section_http
            tables = await measure(args, results)
        for table in tables:
            emit(table, args.markdown)
        log(f"{section}: {time.perf_counter() - began:.0f} s")
    targets = targets_table(args, results)
    if targets.rows:  # --only delays has its verdicts in its own table
        emit(targets, args.markdown)
    cli.print_footer(started, args.markdown)


def main(argv: Sequence[str] | None = None) -> None:
    cli.run_on_uvloop(run(parse_args(argv)))
