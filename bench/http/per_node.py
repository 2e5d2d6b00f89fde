"""Section ``durable``, table 2: the cost per durable node (Flowcore in-process, Postgres)
for chains of 10, 100 and 1,000 nodes, one run at a time and several at once."""

from __future__ import annotations

import argparse

from bench.http.accounting import failures
from bench.http.inprocess import flowcore_batch, quiet
from bench.http.targets import Results
from bench.support.databases import scratch_postgres
from bench.support.machine import log
from bench.support.stats import med, ms
from bench.support.tables import Table
from bench.support.workflows import NOOP, Raw

#: the chain lengths, and how many runs one at a time of each (quick, full)
LENGTHS = {10: (5, 10), 100: (3, 5), 1000: (2, 3)}
#: a node whose output has a constant size, like LangGraph's ``return {"steps": 1}``
STEP: Raw = {"type": "transform", "config": {"output": {"steps": "1"}}}


async def per_node_table(args: argparse.Namespace, results: Results) -> Table:
    concurrency = 5 if args.quick else 10
    table = Table(
        "2. Cost per durable node (Flowcore in-process, Postgres) by chain length",
        [
            "node",
            "nodes",
            "1 at a time: ms/run",
            "ms/node",
            f"{concurrency} at a time: runs",
            "runs/s",
            "ms/node",
            "commits/run",
            "node results",
            "failed",
        ],
        "lrrrrrrrrl",
    )
    errors: list[str] = []
    for node, label in ((STEP, "transform"), (NOOP, "noop")):
        for n in args.lengths:
            log(f"durable: {label} chain of {n}")
            doomed = node is NOOP and n == 1000  # one run shows how it ends
            count = 1 if doomed else LENGTHS[n][0 if args.quick else 1]
            with quiet("asyncio"):
                async with scratch_postgres() as url:
                    single = await flowcore_batch(url, node, n, count, 1, 0 if doomed else 1)
            batches = [single]
            conc_cells = ["-", "-", "-"]
            if node is STEP:
                runs = max(concurrency, (1000 if args.quick else 2000) // n)
                async with scratch_postgres() as url:
                    conc = await flowcore_batch(url, node, n, runs, concurrency, 0)
                batches.append(conc)
                per_node = conc.wall / (conc.runs * n)
                conc_cells = [str(runs), f"{conc.rate:,.1f}", f"{per_node * 1e3:.3f}"]
                results.per_node[n] = (med(single.latencies) / n, per_node)
            latency = med(single.latencies)
            error = next((b.first_error for b in batches if b.first_error), None)
            if error:
                errors.append(f"{label} {n}: {error}")
            table.rows.append(
                [
                    label,
                    f"{n:,}",
                    ms(latency) if single.failed < single.runs else "-",
                    f"{latency / n * 1e3:.3f}" if single.failed < single.runs else "-",
                    *conc_cells,
                    f"{batches[-1].commits_per_run or 0:.1f}",
                    f"{sum(b.node_results or 0 for b in batches):,}",
                    failures(batches),
                ]
            )
    table.notes += [
        "1 at a time: runs one after another (no warm-up beyond one run), latency from "
        "create_run to the committed outcome, median; ms/node = that / nodes.",
        f"{concurrency} at a time: a batch of `runs` runs, {concurrency} in flight; ms/node = "
        "batch wall time / (runs x nodes). commits/run: commit_progress transactions.",
        "transform: `{'type': 'transform', 'config': {'output': {'steps': '1'}}}`, a "
        "constant-size output (like LangGraph's {'steps': 1}). noop passes its input "
        "through, so node i's output nests node i-1's: a chain's outputs and events grow "
        "as n^2 (noop rows: 1 at a time only).",
        "node results: rows in node_results afterwards (warm-up included).",
    ]
    table.notes += [f"failed: {e}" for e in errors]
    return table
