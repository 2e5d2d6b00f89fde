"""Section ``http``, tables 3 and 4: end to end, ``python -m app.cli serve`` in a
subprocess and 100 concurrent httpx clients, each doing POST /v1/runs and then reading
the run's SSE stream to its terminal event (or POST /v1/runs?wait=30), on Postgres, on
Postgres with Redis and on SQLite; then SSE on the idle server, one run at a time."""

from __future__ import annotations

import argparse

import httpx

from bench.http.accounting import ServiceBatch, connections, db_cpu, failures, measured
from bench.http.targets import Results
from bench.support.databases import pg_transactions, scratch_database
from bench.support.load import (
    CLIENTS,
    SERVER_ENV,
    Outcome,
    clients,
    drive,
    post_workflow,
    run_batch,
    sse_run,
    wait_run,
)
from bench.support.machine import cpus, log
from bench.support.redis_probe import REDIS_URL, forget, redis_env, redis_unavailable, unique_prefix
from bench.support.server import serve
from bench.support.stats import med, ms, percentile, spread
from bench.support.tables import Table
from bench.support.workflows import NOOP, chain_raw


async def http_batch(
    dialect: str, mode: str, runs: int, warmup: int, probes: int
) -> tuple[ServiceBatch, list[Outcome]]:
    """A fresh database and server; ``runs`` runs from CLIENTS clients after a warm-up;
    then (SSE) ``probes`` runs one at a time on the idle server. ``dialect`` is
    "postgres", "postgres+redis" (the server on Redis too, under a prefix of its own,
    deleted afterwards) or "sqlite"."""
    database, _, with_redis = dialect.partition("+")
    prefix = unique_prefix() if with_redis else None
    try:
        return await _http_batch(database, redis_env(prefix), mode, runs, warmup, probes)
    finally:
        if prefix is not None:
            await forget(prefix)


async def _http_batch(
    database: str, env: dict[str, str], mode: str, runs: int, warmup: int, probes: int
) -> tuple[ServiceBatch, list[Outcome]]:
    async with scratch_database(database) as url:
        postgres = url if database == "postgres" else None
        before = await pg_transactions(url) if postgres else None
        async with (
            serve(url, {**SERVER_ENV, **env}) as server,
            clients(server.base_url) as pool,
        ):
            workflow_id = await post_workflow(server.base_url, chain_raw(10, NOOP, "chain-noop-10"))
            run = sse_run if mode == "sse" else wait_run

            async def one(client: httpx.AsyncClient) -> Outcome:
                return await run(client, workflow_id)  # on the worker's own connection

            await drive(warmup, pool, one)
            server_cpu = server.cpu()
            batch = await measured(postgres, run_batch(runs, pool, one))
            batch.server_cpu = server.cpu() - server_cpu
            idle = [await one(pool[0]) for _ in range(probes)] if mode == "sse" else []
        if before is not None:
            total = warmup + runs + len(idle)
            batch.xacts_per_run = (await pg_transactions(url) - before) / total
    return batch, idle


async def section_http(args: argparse.Namespace, results: Results) -> list[Table]:
    runs, warmup, probes = args.http_runs, (20 if args.quick else 50), 10
    dialects = ["postgres", "postgres+redis", "sqlite"] if not args.no_postgres else ["sqlite"]
    if "postgres+redis" in dialects and (args.no_redis or await redis_unavailable() is not None):
        dialects.remove("postgres+redis")
    modes = ("sse", "wait")
    batches: dict[tuple[str, str], list[ServiceBatch]] = {
        (d, m): [] for d in dialects for m in modes
    }
    idle: dict[str, list[Outcome]] = {d: [] for d in dialects}
    for rep in range(args.http_reps):
        for dialect in dialects:
            for mode in modes:
                log(f"http: {dialect}, {mode}, {runs} runs, repetition {rep + 1}/{args.http_reps}")
                batch, probe = await http_batch(dialect, mode, runs, warmup, probes)
                batches[dialect, mode].append(batch)
                idle[dialect] += probe

    names = {"postgres": "Postgres", "postgres+redis": "Postgres + Redis", "sqlite": "SQLite"}
    mode_names = {"sse": "POST + SSE", "wait": "POST ?wait=30"}
    table = Table(
        f"3. End to end over HTTP: 10-node noop chain, {CLIENTS} concurrent clients",
        [
            "database",
            "client",
            "runs/s",
            "p50 ms",
            "p99 ms",
            "SSE first event p50 / p99 ms",
            "server CPU ms/run",
            "client CPU ms/run",
            "DB CPU ms/run",
            "DB xacts/run",
            "DB conns",
            "failed",
        ],
        "llrrrrrrrrrl",
    )
    errors: list[str] = []
    for (dialect, mode), group in batches.items():
        rates = [b.rate for b in group]
        results.http[dialect, mode] = med(rates)
        results.http_cpu[dialect, mode] = med([b.server_cpu / b.runs for b in group])
        firsts = [b.first_events for b in group if b.first_events]
        first_cell = (
            f"{ms(med([percentile(f, 50) for f in firsts]))} / "
            f"{ms(med([percentile(f, 99) for f in firsts]))}"
            if firsts
            else "-"
        )
        xacts = [b.xacts_per_run for b in group if b.xacts_per_run is not None]
        table.rows.append(
            [
                names[dialect],
                mode_names[mode],
                spread(rates),
                ms(med([percentile(b.latencies, 50) for b in group])),
                ms(med([percentile(b.latencies, 99) for b in group])),
                first_cell,
                f"{med([b.server_cpu / b.runs for b in group]) * 1e3:.1f}",
                f"{med([b.cpu / b.runs for b in group]) * 1e3:.1f}",
                db_cpu(group),
                f"{med(xacts):.1f}" if xacts else "-",
                connections(group),
                failures(group),
            ]
        )
        errors += [f"{names[dialect]} {mode}: {b.first_error}" for b in group if b.first_error]
    table.notes += [
        f"`python -m app.cli serve --no-migrate` in a subprocess with {SERVER_ENV} and "
        "otherwise default settings (pool of 10 + 10 connections, uvicorn on uvloop with "
        "its access log), on a fresh migrated database per row and repetition.",
        f"{CLIENTS} workers, each with its own httpx.AsyncClient and keep-alive "
        "connection, each looping: POST /v1/runs, then GET /v1/runs/{id}/events read to "
        "the end of the stream (or: POST /v1/runs?wait=30, answered when the run finished). "
        f"{runs} runs per batch after {warmup} warm-up runs; {args.http_reps} "
        "repetition(s); runs/s: median (min-max).",
        "latency: POST sent -> terminal `event:` line read (SSE) or response read (wait). "
        "SSE first event: GET sent -> first `event:` line (the `: stream open` comment "
        "before it does not count).",
        "server CPU: the server process's user + system CPU during the batch (/proc); "
        "client CPU: this process's. DB CPU: the Postgres backends' (see table 1). DB "
        "xacts/run: pg_stat_database commits + rollbacks over the server's life (warm-up "
        "and idle probes included) per run.",
        f"on this machine the server, Postgres and the clients share {cpus()} CPUs.",
    ]
    if "postgres+redis" in dialects:
        table.notes.append(
            f"Postgres + Redis: FLOWCORE_REDIS_URL={REDIS_URL} and a FLOWCORE_REDIS_PREFIX of "
            "its own per batch (cache, breakers, live events over pub/sub; wake-ups stay on "
            "NOTIFY). With one replica its streams need no channel: what Redis costs here "
            "is publishing each run's events for other replicas."
        )
    else:
        table.notes.append("Postgres + Redis: not measured (--no-redis, or Redis unreachable).")
    table.notes += [f"failed: {e}" for e in errors]

    idle_table = Table(
        "4. SSE on an idle server: one client, one run at a time (10-node noop chain)",
        ["database", "runs", "first event p50 ms", "first event max ms", "POST -> terminal p50 ms"],
        "lrrrr",
    )
    for dialect, outcomes in idle.items():
        idle_firsts = [o.first_event for o in outcomes if o.first_event is not None]
        idle_table.rows.append(
            [
                names[dialect],
                str(len(outcomes)),
                ms(percentile(idle_firsts, 50)),
                ms(max(idle_firsts)) if idle_firsts else "-",
                ms(percentile([o.latency for o in outcomes], 50)),
            ]
        )
    idle_table.notes.append(
        f"{probes} runs after each Postgres/SQLite SSE batch, on the same server, one at a "
        "time; first event: GET sent -> first `event:` line."
    )
    return [table, idle_table]
