"""Section ``overhead``: ``noop`` nodes, microseconds per node, warm (execute alone) and
cold (create_workflow, then the first execute, which compiles)."""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass

from app.engine import ExecutionConfig, WorkflowExecutor, create_workflow
from bench.common import (
    LIMITS,
    NOOP,
    SHAPES,
    Table,
    calibrate,
    cell,
    chain_raw,
    engine_run,
    log,
    med,
    prepared,
    timed,
)


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
