"""Section ``auth``, table 7: what API keys and rate limits cost a run end to end.

The same load as table 3 (100 clients, POST /v1/runs then the run's SSE stream, 10-node
noop chain) against three servers, interleaved repetition by repetition, on Postgres and
on SQLite:

- ``off``: FLOWCORE_AUTH=disabled (what table 3 measures);
- ``keys``: FLOWCORE_AUTH=required, every client with a writer key of namespace
  ``bench`` made through ``POST /v1/keys`` (looked up in the database, then cached);
- ``keys + limits``: the same, with the key and namespace rate limits on (high enough
  never to refuse: every request takes a token from two buckets, locally).

Issue 12's target: keys and limits add < 5% server CPU per run."""

from __future__ import annotations

import argparse

import httpx

from bench.http.accounting import ServiceBatch, failures, measured
from bench.support.databases import scratch_database
from bench.support.load import (
    CLIENTS,
    SERVER_ENV,
    Outcome,
    clients,
    drive,
    post_workflow,
    run_batch,
    sse_run,
)
from bench.support.machine import cpus, log
from bench.support.server import serve
from bench.support.stats import med, spread
from bench.support.tables import Table
from bench.support.workflows import NOOP, chain_raw

BOOTSTRAP = "bench-bootstrap-" + "0" * 32
MODES: dict[str, dict[str, str]] = {
    "off": {"FLOWCORE_AUTH": "disabled"},
    "keys": {"FLOWCORE_AUTH": "required", "FLOWCORE_BOOTSTRAP_ADMIN_KEY": BOOTSTRAP},
    "keys + limits": {
        "FLOWCORE_AUTH": "required",
        "FLOWCORE_BOOTSTRAP_ADMIN_KEY": BOOTSTRAP,
        "FLOWCORE_RATE_LIMIT_PER_SECOND": "100000",
        "FLOWCORE_NAMESPACE_RATE_LIMIT_PER_SECOND": "100000",
    },
}
TARGET = 1.05


async def _writer_key(base_url: str) -> dict[str, str]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        response = await client.post(
            "/v1/keys",
            json={"namespace": "bench", "role": "writer"},
            headers={"Authorization": f"Bearer {BOOTSTRAP}"},
        )
        response.raise_for_status()
        return {"Authorization": f"Bearer {response.json()['key']}"}


async def auth_batch(database: str, mode: str, runs: int, warmup: int) -> ServiceBatch:
    async with (
        scratch_database(database) as url,
        serve(url, {**SERVER_ENV, **MODES[mode]}) as server,
    ):
        headers = await _writer_key(server.base_url) if mode != "off" else None
        workflow_id = await post_workflow(
            server.base_url, chain_raw(10, NOOP, "chain-noop-10"), headers
        )
        async with clients(server.base_url, headers=headers) as pool:

            async def one(client: httpx.AsyncClient) -> Outcome:
                return await sse_run(client, workflow_id)

            await drive(warmup, pool, one)
            cpu = server.cpu()
            batch = await measured(None, run_batch(runs, pool, one))
            batch.server_cpu = server.cpu() - cpu
    return batch


async def section_auth(args: argparse.Namespace) -> list[Table]:
    runs, warmup = args.http_runs, (20 if args.quick else 50)
    reps = max(args.http_reps, 1 if args.quick else 3)
    databases = ["sqlite"] if args.no_postgres else ["postgres", "sqlite"]
    batches: dict[tuple[str, str], list[ServiceBatch]] = {
        (d, m): [] for d in databases for m in MODES
    }
    for rep in range(reps):
        for database in databases:
            for mode in MODES:
                log(f"auth: {database}, {mode}, {runs} runs, repetition {rep + 1}/{reps}")
                batches[database, mode].append(await auth_batch(database, mode, runs, warmup))
    table = Table(
        f"7. API keys and rate limits: 10-node noop chain, POST + SSE, {CLIENTS} clients",
        ["database", "auth", "runs/s", "server CPU ms/run", "CPU vs off", "target", "failed"],
        "llrrrll",
    )
    for database in databases:
        off = med([b.server_cpu / b.runs for b in batches[database, "off"]])
        for mode in MODES:
            group = batches[database, mode]
            cpu = med([b.server_cpu / b.runs for b in group])
            ratio = cpu / off if off else float("nan")
            verdict = "-" if mode == "off" else ("met" if ratio <= TARGET else "not met")
            table.rows.append(
                [
                    "Postgres" if database == "postgres" else "SQLite",
                    mode,
                    spread([b.rate for b in group]),
                    f"{cpu * 1e3:.2f}",
                    f"{ratio:.3f}x",
                    verdict if mode == "off" else f"<= {TARGET:.2f}x: {verdict}",
                    failures(group),
                ]
            )
    table.notes += [
        f"three servers per database, a fresh migrated database each, interleaved; {reps} "
        f"repetition(s) of {runs} runs after {warmup} warm-up runs; medians (runs/s: "
        "median (min-max)).",
        "keys: every request of the load carries a writer key of namespace `bench`, "
        "created through POST /v1/keys with the bootstrap key (looked up once, then held in "
        "the replica's key cache, FLOWCORE_AUTH_CACHE_SECONDS=5). limits: 100,000 "
        "requests/s per key and per namespace, never refusing; buckets in the process "
        "(no Redis).",
        "server CPU: the server process's user + system CPU during the batch, per run; "
        f"the server, Postgres and the clients share {cpus()} CPUs.",
    ]
    return [table]
