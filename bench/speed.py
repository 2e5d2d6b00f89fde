"""Section ``speed``: 10 ms ``delay`` nodes, chains and fan-outs, against the asyncio floor
(the same sleeps in a plain asyncio loop, same process)."""

from __future__ import annotations

import argparse
import functools

from app.engine import ExecutionConfig, WorkflowExecutor
from bench.common import (
    DELAY,
    DELAY_NODE,
    Table,
    cell,
    chain_raw,
    engine_run,
    floor_chain,
    floor_fanout,
    log,
    med,
    prepared,
    roots_raw,
    side_by_side,
)

#: the seed README's claims: nodes -> (sequential ms, parallel ms)
SEED_CLAIMS = {10: (100, 30), 50: (500, 120), 100: (1000, 200), 500: (5000, 800)}


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
