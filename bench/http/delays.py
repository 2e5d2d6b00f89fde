"""Table 6: durable runs against the asyncio floor (issue 11). 200 ``delay`` nodes of
10 ms through the service in-process (store, dispatcher, journal), as a fan-out (10 at a
time) and as a chain, next to the same sleeps in a plain asyncio loop in the same process,
interleaved; and a single 10-node run, one at a time, on an idle service."""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

from bench.common import DELAY_NODE, floor_chain, floor_fanout
from bench.http.inprocess import InProcessService
from bench.support.databases import scratch_database
from bench.support.machine import log
from bench.support.stats import med, ms
from bench.support.tables import Table
from bench.support.workflows import NOOP, chain_raw, roots_raw

NODES, WIDTH = 200, 10
#: the issue's targets: a durable run's wall time / the floor's
FANOUT_TARGET, CHAIN_TARGET, SINGLE_TARGET = 1.10, 1.03, 0.010


async def _timed(work: Callable[[], Awaitable[object]]) -> float:
    started = time.perf_counter()
    await work()
    return time.perf_counter() - started


async def _measure(dialect: str, reps: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {}
    async with scratch_database(dialect) as url:
        service = InProcessService(url, 4)
        service.settings.execution = {"max_parallel_nodes": WIDTH, "max_nodes": 20_000}
        async with service as s:
            fan = await s.add_workflow(roots_raw(NODES, DELAY_NODE))
            chain = await s.add_workflow(chain_raw(NODES, DELAY_NODE))
            ten = await s.add_workflow(chain_raw(10, NOOP))
            for workflow in (fan, chain, ten):  # warm
                await s.run(workflow)
            for _ in range(reps):
                for name, work in (
                    ("fan-out", lambda: s.run(fan)),
                    ("fan-out floor", lambda: floor_fanout(NODES, WIDTH)),
                    ("chain", lambda: s.run(chain)),
                    ("chain floor", lambda: floor_chain(NODES)),
                ):
                    samples.setdefault(name, []).append(await _timed(work))
                for _ in range(10):
                    outcome = await s.run(ten)
                    if not outcome.ok:
                        raise RuntimeError(f"a 10-node run failed: {outcome.error}")
                    samples.setdefault("single", []).append(outcome.latency)
            failed = [o.error for o in s.submitted.values() if not o.ok]
            if failed:
                raise RuntimeError(f"{len(failed)} runs failed: {failed[0]}")
    return samples


async def section_delays(args: argparse.Namespace) -> list[Table]:
    reps = 2 if args.quick else 5
    table = Table(
        f"6. Durable runs vs the asyncio floor: {NODES} delay nodes of 10 ms (in-process)",
        ["database", "shape", "durable ms", "floor ms", "ratio", "target", "verdict"],
        "llrrrrl",
    )
    dialects = ["sqlite"] if args.no_postgres else ["postgres", "sqlite"]
    for dialect in dialects:
        log(f"delays: {dialect}, {reps} repetitions")
        samples = await _measure(dialect, reps)
        for shape, target in (("fan-out", FANOUT_TARGET), ("chain", CHAIN_TARGET)):
            ratios = [
                run / floor
                for run, floor in zip(samples[shape], samples[f"{shape} floor"], strict=True)
            ]
            ratio = med(ratios)
            table.rows.append(
                [
                    dialect,
                    f"{shape} ({WIDTH} at a time)" if shape == "fan-out" else shape,
                    ms(med(samples[shape])),
                    ms(med(samples[f"{shape} floor"])),
                    f"{ratio:.3f}x",
                    f"<= {target:.2f}x",
                    "met" if ratio <= target else "NOT met",
                ]
            )
        single = med(samples["single"])
        table.rows.append(
            [
                dialect,
                "one 10-node noop run, idle",
                ms(single),
                "-",
                "-",
                f"<= {ms(SINGLE_TARGET, 0)} ms",
                "met" if single <= SINGLE_TARGET else "NOT met",
            ]
        )
    table.notes.append(
        f"ratio: the median of each repetition's durable / floor wall time ({reps} "
        "repetitions, interleaved with the floor in one process); floor: the same sleeps "
        "with asyncio.sleep (asyncio.gather of 10 at a time for the fan-out). One 10-node "
        "run: create_run to its committed outcome, median of 10 per repetition (the HTTP "
        "figure is table 4's)."
    )
    return [table]
