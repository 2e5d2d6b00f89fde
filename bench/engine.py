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
import functools
import gc
import importlib.metadata
import json
import os
import platform
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from app.engine import ExecutionConfig, WorkflowExecutor, create_workflow
from bench.checkpoints import section_checkpoints
from bench.common import (
    DELAY,
    DELAY_NODE,
    LIMITS,
    NOOP,
    SHAPES,
    Table,
    calibrate,
    cell,
    chain_raw,
    cpu_model,
    emit,
    engine_run,
    floor_chain,
    floor_fanout,
    loadavg,
    log,
    med,
    prepared,
    revision,
    roots_raw,
    side_by_side,
    timed,
)
from bench.features import nesting_table, time_table
from bench.features_memory import MEMORY_NODES, base_rss_table, memory_table
from bench.features_memory import child_main as features_child_main
from bench.memory import memory_child, section_memory
from bench.vs_langgraph import section_langgraph

SECTIONS = ("speed", "overhead", "memory", "langgraph", "features", "checkpoints")
#: the seed README's claims: nodes -> (sequential ms, parallel ms)
SEED_CLAIMS = {10: (100, 30), 50: (500, 120), 100: (1000, 200), 500: (5000, 800)}


# ------------------------------------------------------------------ section 1: speed


async def section_speed(args: argparse.Namespace) -> Table:
    sizes = [10, 50, 100] if args.quick else [10, 50, 100, 500]
    table = Table(
        "1. Execution speed: 10 ms delay nodes vs the asyncio floor",
        [
            "nodes",
            "chain engine ms",
            "chain floor ms",
            "overhead %",
            "fan-out engine ms",
            "fan-out floor ms",
            "overhead %",
            "speedup",
            "seed claim seq / par ms",
        ],
        "rrrrrrrrr",
    )
    chain_exec = WorkflowExecutor()
    fan_exec = WorkflowExecutor(ExecutionConfig(max_parallel_nodes=10))
    # warm the code paths (plugin loading, first task creation) before any timing
    await fan_exec.execute(prepared(roots_raw(4, {"type": "delay", "config": {"seconds": 0}})))
    overheads: dict[int, tuple[float, float]] = {}
    for n in sizes:
        reps = args.reps if n * DELAY <= 1.0 else min(args.reps, 3)
        log(f"speed: {n} nodes, {reps} reps")
        chain = prepared(chain_raw(n, DELAY_NODE))
        fan = prepared(roots_raw(n, DELAY_NODE))
        s = await side_by_side(
            {
                "chain": engine_run(chain_exec, chain, f"delay chain {n}"),
                "chain_floor": functools.partial(floor_chain, n),
                "fan": engine_run(fan_exec, fan, f"delay fan-out {n}"),
                "fan_floor": functools.partial(floor_fanout, n, 10),
            },
            reps,
            warm_up=False,
        )
        chain_ovh = med(s["chain"]) / med(s["chain_floor"]) - 1
        fan_ovh = med(s["fan"]) / med(s["fan_floor"]) - 1
        overheads[n] = (chain_ovh, fan_ovh)
        seq, par = SEED_CLAIMS[n]
        table.rows.append(
            [
                str(n),
                cell(s["chain"], 1e3),
                cell(s["chain_floor"], 1e3),
                f"{chain_ovh * 100:+.2f}",
                cell(s["fan"], 1e3),
                cell(s["fan_floor"], 1e3),
                f"{fan_ovh * 100:+.2f}",
                f"{med(s['chain']) / med(s['fan']):.1f}x",
                f"{seq} / {par}",
            ]
        )
    table.notes += [
        "chain: n0->n1->...; default WorkflowExecutor. fan-out: the same nodes with no "
        "edges (all roots), ExecutionConfig(max_parallel_nodes=10).",
        "floor: `for _ in range(n): await asyncio.sleep(0.01)`; fan-out: "
        "Semaphore(10) + gather of n sleeps. overhead % = median engine / median floor - 1.",
        "speedup = engine chain / engine fan-out (medians); the ideal with 10 at a time "
        "is min(n, 10)x.",
        f"{args.reps} repetitions (at most 3 for workflows sleeping more than 1 s in "
        "total), engine and floor interleaved; no warm-up run (definitions are compiled "
        "before timing).",
    ]
    last = max(sizes)
    chain_ovh, fan_ovh = overheads[last]
    met = "met" if max(chain_ovh, fan_ovh) <= 0.02 else "NOT met"
    table.notes.append(
        f"target (within 2% of the floor at {last} nodes): chain {chain_ovh * 100:+.2f}%, "
        f"fan-out {fan_ovh * 100:+.2f}% -> {met}."
    )
    return table


# --------------------------------------------------------------- section 2: overhead


@dataclass
class OverheadRow:
    shape: str
    n: int
    parallel: int
    warm: list[float]  # seconds per run
    create: list[float]  # seconds per create_workflow
    first: list[float]  # seconds per first execute (includes compiling)


async def measure_overhead(shape: str, n: int, parallel: int, reps: int) -> OverheadRow:
    make = SHAPES[shape]
    executor = WorkflowExecutor(ExecutionConfig(max_parallel_nodes=parallel))
    definition = prepared(make(n, NOOP))
    label = f"noop {shape} {n} p={parallel}"
    run = engine_run(executor, definition, label)
    inner = await calibrate(run)
    row = OverheadRow(shape, n, parallel, [], [], [])
    for _ in range(reps):
        # cold: create_workflow, then the first execute (which compiles)
        raws = [make(n, NOOP) for _ in range(inner)]
        gc.collect()
        t0 = time.perf_counter()
        definitions = [create_workflow(raw, limits=LIMITS) for raw in raws]
        t1 = time.perf_counter()
        for d in definitions:
            await executor.execute(d, {})
        t2 = time.perf_counter()
        row.create.append((t1 - t0) / inner)
        row.first.append((t2 - t1) / inner)
        del raws, definitions
        # warm: execute only, on an already compiled definition
        row.warm.append(await timed(run, inner))
    return row


async def section_overhead(args: argparse.Namespace) -> tuple[Table, list[OverheadRow]]:
    sizes = [10, 100, 1_000, 10_000]
    table = Table(
        "2. Engine overhead: noop nodes, microseconds per node",
        [
            "shape",
            "nodes",
            "max_parallel",
            "warm µs/node",
            "warm run ms",
            "create_workflow µs/node",
            "first execute µs/node",
            "cold total µs/node",
        ],
        "lrrrrrrr",
    )
    await WorkflowExecutor().execute(prepared(chain_raw(3, NOOP)))  # warm the code paths
    rows: list[OverheadRow] = []
    for shape, parallel in (("chain", 10), ("fan-out", 10), ("fan-out", 1000)):
        for n in sizes:
            log(f"overhead: {shape} {n} p={parallel}")
            row = await measure_overhead(shape, n, parallel, args.reps)
            rows.append(row)
            cold = [c + f for c, f in zip(row.create, row.first, strict=True)]
            table.rows.append(
                [
                    shape,
                    f"{n:,}",
                    str(parallel),
                    cell(row.warm, 1e6 / n),
                    cell(row.warm, 1e3, 2),
                    cell(row.create, 1e6 / n),
                    cell(row.first, 1e6 / n),
                    cell(cold, 1e6 / n),
                ]
            )
    table.notes += [
        "warm: `await executor.execute(workflow, {})` alone, on a definition created and "
        "compiled beforehand and after a warm-up run; fast runs are looped to >= 30 ms "
        "per sample.",
        "cold: `create_workflow(defn, limits=...)` (parse + validate) and the first "
        "execute (which compiles, then runs), on fresh definitions each repetition.",
        "chain: n0->...->n(n-1); fan-out: n0 -> each of the n-1 other nodes. "
        f"{args.reps} repetitions; cells are median (min).",
    ]
    worst = max(rows, key=lambda r: med(r.warm) / r.n)
    verdict = "met" if med(worst.warm) / worst.n <= 25e-6 else "NOT met"
    table.notes.append(
        f"target <= 25 µs/node (warm): worst row {worst.shape} {worst.n:,} "
        f"p={worst.parallel} at {med(worst.warm) / worst.n * 1e6:.1f} µs/node -> {verdict}."
    )
    for row in rows:
        if row.shape == "fan-out" and row.n == 10_000:
            cold_s = med(row.create) + med(row.first)
            table.notes.append(
                f"target 10,000-node fan-out < 0.5 s (p={row.parallel}): warm run "
                f"{med(row.warm):.3f} s -> {'met' if med(row.warm) < 0.5 else 'NOT met'}; "
                f"cold create_workflow + first execute {cold_s:.3f} s."
            )
    return table, rows


# ---------------------------------------------------------------------------- header


def wait_for_load(limit: float) -> None:
    """Sleep until the 1-minute load average is below ``limit``."""
    while True:
        try:
            with open("/proc/loadavg") as f:
                load = float(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if load < limit:
            return
        log(f"load average {load:.2f} >= {limit}: waiting")
        time.sleep(15)


def header(args: argparse.Namespace) -> list[str]:
    try:
        langgraph = importlib.metadata.version("langgraph")
    except importlib.metadata.PackageNotFoundError:
        langgraph = "not installed"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return [
        f"date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; flowcore {revision(args.revision)}",
        f"python: {platform.python_implementation()} {platform.python_version()} "
        f"({platform.platform()})",
        f"cpu: {cpu_model()}; {os.cpu_count()} CPUs ({affinity} usable)",
        f"event loop: {type(asyncio.get_event_loop_policy()).__name__}; langgraph {langgraph}",
        f"mode: {'quick' if args.quick else 'full'}, {args.reps} repetitions; "
        "cells are median (min)",
        f"load average (1, 5, 15 min) at start: {loadavg()}",
    ]


# ------------------------------------------------------------------------------ main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and sizes")
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    parser.add_argument("--no-langgraph", action="store_true", help="skip the LangGraph section")
    parser.add_argument("--markdown", action="store_true", help="print GitHub tables")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; 3 quick)")
    parser.add_argument(
        "--wait-load",
        type=float,
        default=None,
        metavar="LOAD",
        help="before starting, wait until the 1-minute load average is below LOAD",
    )
    parser.add_argument(
        "--revision", help="the revision to print in the header (for a clean export of a commit)"
    )
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--features-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reps is None:
        args.reps = 3 if args.quick else 5
    return args


def selected(args: argparse.Namespace) -> Iterable[str]:
    chosen = args.only or SECTIONS
    for section in SECTIONS:
        if section not in chosen:
            continue
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
        wait_for_load(args.wait_load)
    started = time.perf_counter()
    lines = header(args)
    if args.markdown:
        print("\n".join(f"- {line}" for line in lines) + "\n")
    else:
        print("Flowcore engine benchmark\n" + "\n".join(lines) + "\n")
    asyncio.run(run_sections(args, list(selected(args))))
    footer = (
        f"total time {time.perf_counter() - started:.0f} s; load average at the end: {loadavg()}"
    )
    print(f"- {footer}" if args.markdown else footer, flush=True)


if __name__ == "__main__":
    main()
