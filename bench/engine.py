"""Engine benchmarks: prints tables, asserts nothing.

    python -m bench.engine                 # everything (about 5 minutes)
    python -m bench.engine --quick         # fewer repetitions and sizes
    python -m bench.engine --only overhead --only memory
    python -m bench.engine --markdown      # GitHub tables (for docs/benchmarks.md)

Sections:

``speed``        10 ms ``delay`` nodes, chains and fan-outs, against the asyncio floor
                 (the same sleeps in a plain asyncio loop, same process).
``overhead``     ``noop`` nodes: microseconds per node, warm and cold.
``memory``       RSS and tracemalloc growth per node at 10,000 nodes, each in a fresh
                 subprocess (bench/memory.py).
``langgraph``    the same no-op graphs as a LangGraph ``StateGraph``, if installed
                 (bench/vs_langgraph.py).
``features``     the seed's "Memory Usage" table: base executor, per node, caching,
                 tracing, metrics (bench/features_memory.py); and each feature's time
                 per node (bench/features.py).
``checkpoints``  checkpoint cost per node with the file and in-memory stores at 10, 100
                 and 1,000 nodes (bench/checkpoints.py).

Every timed sample is preceded by ``gc.collect()``; compared things are measured in
the same process and interleaved repetition by repetition; cells read
``median (min)`` over the repetitions. Progress goes to stderr, tables to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import time
from collections.abc import Iterable, Sequence

from bench.checkpoints import section_checkpoints
from bench.features import nesting_table, time_table
from bench.features_memory import MEMORY_NODES, base_rss_table, memory_table
from bench.features_memory import child_main as features_child_main
from bench.memory import memory_child, section_memory
from bench.overhead import section_overhead
from bench.speed import section_speed
from bench.support import cli
from bench.support.machine import loadavg, log, version, wait_for_quiet
from bench.support.tables import emit
from bench.vs_langgraph import section_langgraph

SECTIONS = ("speed", "overhead", "memory", "langgraph", "features", "checkpoints")


# ---------------------------------------------------------------------------- header


def header(args: argparse.Namespace) -> list[str]:
    return cli.header(
        args,
        loop="",
        lines=[
            f"event loop: {type(asyncio.get_event_loop_policy()).__name__}; "
            f"langgraph {version('langgraph')}",
            f"mode: {'quick' if args.quick else 'full'}, {args.reps} repetitions; "
            "cells are median (min)",
            f"load average (1, 5, 15 min) at start: {loadavg()}",
        ],
    )


# ------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = cli.parser("python -m bench.engine", __doc__, SECTIONS, "fewer repetitions and sizes")
    parser.add_argument("--no-langgraph", action="store_true", help="skip the LangGraph section")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; 3 quick)")
    parser.add_argument(
        "--wait-load",
        type=float,
        default=None,
        metavar="LOAD",
        help="before starting, wait until the 1-minute load average is below LOAD",
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--features-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    return args


def selected(args: argparse.Namespace) -> Iterable[str]:
    for section in cli.chosen(args, SECTIONS):
        if section == "langgraph":
            if args.no_langgraph:
                continue
            try:
                import langgraph.graph  # noqa: F401
            except ImportError:
                log("langgraph is not installed (uv sync --extra bench); skipping section 3")
                continue
        yield section


async def run_sections(args: argparse.Namespace, sections: list[str]) -> None:
    for section in sections:
        started = time.perf_counter()
        if section == "speed":
            emit(await section_speed(args), args.markdown)
        elif section == "overhead":
            emit((await section_overhead(args))[0], args.markdown)
        elif section == "memory":
            emit(section_memory(args), args.markdown)
        elif section == "langgraph":
            for table in await section_langgraph(args):
                emit(table, args.markdown)
        elif section == "features":
            emit(base_rss_table(1 if args.quick else 3), args.markdown)
            emit(memory_table(2_000 if args.quick else MEMORY_NODES), args.markdown)
            emit(await time_table(args), args.markdown)
            emit(await nesting_table(args), args.markdown)
        else:
            emit(await section_checkpoints(args), args.markdown)
        log(f"{section}: {time.perf_counter() - started:.1f} s")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_child:
        print(json.dumps(asyncio.run(memory_child(args.memory_child))))
        return
    if args.features_child:
        print(features_child_main(args.features_child))
        return
    if args.wait_load is not None:
        wait_for_quiet(args.wait_load, math.inf)
    started = time.perf_counter()
    cli.print_header("Flowcore engine benchmark", header(args), args.markdown)
    asyncio.run(run_sections(args, list(selected(args))))
    cli.print_footer(started, args.markdown)


if __name__ == "__main__":
    main()
