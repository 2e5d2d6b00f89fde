"""Section ``sse``, table 3: two replicas on one Postgres (and one Redis): A executes, B
serves the API only; clients on B (or, for reference, on A) read the SSE streams of runs
of delay nodes, and each ``node.completed`` is timed from its emission on A to its read.
With Redis, each pair of servers then also measures the hop alone (bench/redis/hops.py)."""

from __future__ import annotations

import argparse

from bench.redis import CHAIN
from bench.redis.hops import hop_table
from bench.redis.replicas import PairBatch, SseBatch, pair_batch, sse_batch
from bench.redis.targets import Results
from bench.support.databases import scratch_postgres
from bench.support.load import SERVER_ENV, post_workflow
from bench.support.machine import cpus, loadavg, log
from bench.support.redis_probe import RedisProbe, redis_env, unique_prefix
from bench.support.server import serve, server_problems
from bench.support.stats import med, ms, percentile, spread
from bench.support.tables import Table
from bench.support.workflows import Raw, chain_raw

DELAY_SECONDS = 0.02
DELAY_NODE: Raw = {"type": "delay", "config": {"seconds": DELAY_SECONDS}}


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
                serve(url, {**SERVER_ENV, **env}, name="A", problems=problems) as a,
                serve(
                    url,
                    {**SERVER_ENV, **env, "FLOWCORE_DISPATCHER_ENABLED": "false"},
                    name="B",
                    problems=problems,
                ) as b,
            ):
                workflow_id = await post_workflow(
                    a.base_url, chain_raw(CHAIN, DELAY_NODE, "delay-chain")
                )
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
