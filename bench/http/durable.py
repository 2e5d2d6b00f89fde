"""Section ``durable``, table 1: durable runs in-process on Postgres, no HTTP: Flowcore's
service machinery running 10-node chains for 100 concurrent submitters, next to
LangGraph with its Postgres checkpointer (AsyncPostgresSaver) on the same load; then
table 2 (bench/http/per_node.py)."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.http.accounting import ServiceBatch, connections, db_cpu, failures
from bench.http.inprocess import flowcore_batch
from bench.http.langgraph_peer import LG_POOL, langgraph_available, langgraph_batch
from bench.http.per_node import per_node_table
from bench.http.targets import Results
from bench.support.databases import scratch_postgres
from bench.support.load import CLIENTS
from bench.support.machine import log
from bench.support.stats import med, ms, percentile, spread
from bench.support.tables import Table
from bench.support.workflows import NOOP


@dataclass
class Runner:
    key: str
    label: str
    measure: Callable[[str], Awaitable[ServiceBatch]]  # given a fresh database URL
    batches: list[ServiceBatch] = field(default_factory=list)


async def section_durable(args: argparse.Namespace, results: Results) -> list[Table]:
    runs, warmup = args.durable_runs, 20
    runners = [
        Runner(
            "flowcore",
            "Flowcore: Store + Dispatcher + RunJournal (noop nodes)",
            lambda url: flowcore_batch(url, NOOP, 10, runs, CLIENTS, warmup),
        )
    ]
    lg_missing = None if args.no_langgraph else langgraph_available()
    if not args.no_langgraph and lg_missing is None:
        for key, label, pooled, durability, count in (
            ("lg-pool", f"LangGraph, pool of {LG_POOL}, durability=async", True, "async", runs),
            ("lg-conn", "LangGraph, one connection, durability=async", False, "async", runs),
            ("lg-sync", f"LangGraph, pool of {LG_POOL}, durability=sync", True, "sync", runs // 2),
        ):
            runners.append(
                Runner(
                    key,
                    label,
                    functools.partial(
                        _lg_measure, n=10, runs=count, pooled=pooled, durability=durability
                    ),
                )
            )
    for rep in range(args.reps):
        for runner in runners:
            log(f"durable: {runner.label}, repetition {rep + 1}/{args.reps}")
            async with scratch_postgres(migrate=runner.key == "flowcore") as url:
                runner.batches.append(await runner.measure(url))

    table = Table(
        f"1. Durable runs in-process on Postgres: 10-node chains, {CLIENTS} concurrent",
        [
            "runner",
            "runs/s",
            "ms per durable node",
            "p50 ms",
            "p99 ms",
            "CPU ms/run",
            "DB CPU ms/run",
            "DB xacts/run",
            "DB conns",
            "vs best LangGraph",
            "failed",
        ],
        "lrrrrrrrrrl",
    )
    lg_async = [r for r in runners if r.key in ("lg-pool", "lg-conn")]
    best = max(lg_async, key=lambda r: med([b.rate for b in r.batches]), default=None)
    best_rate = med([b.rate for b in best.batches]) if best is not None else None
    for runner in runners:
        rates = [b.rate for b in runner.batches]
        versus = f"{med(rates) / best_rate:.2f}x" if best_rate else "-"
        table.rows.append(
            [
                runner.label,
                spread(rates),
                f"{med([b.wall / (b.runs * 10) for b in runner.batches]) * 1e3:.2f}",
                ms(med([percentile(b.latencies, 50) for b in runner.batches])),
                ms(med([percentile(b.latencies, 99) for b in runner.batches])),
                f"{med([b.cpu / b.runs for b in runner.batches]) * 1e3:.1f}",
                db_cpu(runner.batches),
                f"{med([b.xacts_per_run or 0.0 for b in runner.batches]):.1f}",
                connections(runner.batches),
                versus,
                failures(runner.batches),
            ]
        )
    flowcore = runners[0]
    results.flowcore_rate = med([b.rate for b in flowcore.batches])
    if best is not None and best_rate is not None:
        results.langgraph_rate, results.langgraph_label = best_rate, best.label
    commits = med([b.commits_per_run or 0.0 for b in flowcore.batches])
    table.notes += [
        f"each runner: {CLIENTS} concurrent submitters, each starting its next run when its "
        f"previous one finished; {runs} runs per batch (LangGraph durability=sync: "
        f"{runs // 2}) after {warmup} warm-up runs; {args.reps} repetition(s), runners "
        "interleaved, each batch in a fresh database. runs/s: median (min-max).",
        "Flowcore: Store.create_run, then the Dispatcher (max_concurrent_runs=100, "
        "LISTEN/NOTIFY wake-ups) claims the run, executes it with a RunJournal and commits "
        "its outcome; a run is done when its outcome is committed. The store's hot path "
        "runs single-statement transactions on an asyncpg pool as large as the default "
        "SQLAlchemy pool (10 + 10), which keeps the rest. Node results, checkpoints and "
        f"events commit in fenced transactions: {commits:.1f} commit_progress transactions "
        "per run (the engine writes checkpoints behind the run; the journal lets a running "
        "run's records wait up to commit_window_seconds (0.02 s) to commit together).",
        "LangGraph: StateGraph of 10 `async def` nodes returning {'steps': 1}, compiled "
        "with AsyncPostgresSaver; `await graph.ainvoke({'steps': 0}, {'configurable': "
        "{'thread_id': <new>}}, durability=...)`; durability=async (the default) writes "
        "each step's checkpoint while the next step runs, like Flowcore's journal; sync "
        "waits for it.",
        "ms per durable node: batch wall time / (runs x 10). CPU ms/run: this process's CPU "
        "time per run (Postgres runs in other processes). DB CPU ms/run: CPU of the "
        "Postgres backends connected to the scratch database during the batch (/proc; "
        "not the WAL writer or checkpointer), per run. DB xacts/run: commits + rollbacks "
        "pg_stat_database counted in the scratch database, per run (warm-up included). "
        "DB conns: connections to the scratch database at the end of the batch (Flowcore: "
        "both pools and its LISTEN connection).",
    ]
    if lg_missing is not None:
        table.notes.append(f"LangGraph's Postgres checkpointer is not installed: {lg_missing}")
    return [table, await per_node_table(args, results)]


async def _lg_measure(
    url: str, *, n: int, runs: int, pooled: bool, durability: str
) -> ServiceBatch:
    return await langgraph_batch(url, n, runs, CLIENTS, 10, pooled=pooled, durability=durability)
