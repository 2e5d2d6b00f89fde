"""What a parked run costs a replica: runs sleeping an hour, started against one server
(a subprocess, Postgres), its resident memory measured before and after, and a one-node
run timed while they sleep. Side by side: the same sleepers held in process (parking
off), which is what a sleeping run cost before parking.

    python -m bench.parked [--runs 10000] [--markdown]

The marginal cost is measured between two equal batches after a warm-up batch, so the
allocator's one-off growth (the first requests, the first compiled definitions) is not
counted: (RSS after batch 2 - RSS after batch 1) / runs per batch.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass

import asyncpg
import httpx

from bench.support.databases import plain_dsn, postgres_unavailable, scratch_postgres
from bench.support.machine import log, status_kb
from bench.support.server import serve
from bench.support.stats import med
from bench.support.tables import Table, emit

CLIENTS = 50
HOUR = 3600


SLEEPER = {
    "id": "sleeper",
    "nodes": [
        {"id": "nap", "type": "delay", "config": {"seconds": HOUR}},
        {"id": "after", "type": "transform", "config": {"output": {"v": "1"}}},
    ],
    "edges": [{"source": "nap", "target": "after"}],
}
QUICK = {
    "id": "quick",
    "nodes": [{"id": "a", "type": "transform", "config": {"output": {"v": "1"}}}],
}


def connect(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=CLIENTS)
    )


@dataclass
class Outcome:
    label: str
    runs: int
    per_run_bytes: float
    rss_mb: float
    quick_ms: float
    quick_ok: int
    quick_total: int


async def start_many(client: httpx.AsyncClient, workflow_id: str, count: int, tag: str) -> None:
    queue = iter(range(count))

    async def worker() -> None:
        for index in queue:
            # an Idempotency-Key makes a retry after a dropped connection safe
            headers = {"Idempotency-Key": f"{tag}-{index}"}
            for attempt in range(3):
                try:
                    response = await client.post(
                        "/v1/runs", json={"workflow_id": workflow_id}, headers=headers
                    )
                    break
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    if attempt == 2:
                        raise
            response.raise_for_status()

    await asyncio.gather(*(worker() for _ in range(CLIENTS)))


async def settled(url: str, *, parked: int, running: int) -> None:
    """Until the database holds ``parked`` parked runs and ``running`` running ones."""
    connection = await asyncpg.connect(plain_dsn(url))
    try:
        deadline = time.monotonic() + 600
        while True:
            row = await connection.fetchrow(
                "SELECT count(*) FILTER (WHERE parked) AS parked, "
                "count(*) FILTER (WHERE status = 'running') AS running FROM runs"
            )
            if row["parked"] >= parked and row["running"] >= running:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"never settled: {dict(row)}")
            await asyncio.sleep(0.5)
    finally:
        await connection.close()


async def measure(runs: int, parking: bool) -> Outcome:
    label = "parked (leaves the replica)" if parking else "held in process (parking off)"
    env = {
        "FLOWCORE_PARK_AFTER_SECONDS": "0.5" if parking else "100000",
        # with parking off, every sleeper needs a slot of its own (and one is left over)
        "FLOWCORE_MAX_CONCURRENT_RUNS": "50" if parking else str(3 * runs + 10),
    }
    async with scratch_postgres() as url, serve(url, env, name="parked") as server:
        pid = server.process.pid
        async with connect(server.base_url) as client:
            for workflow in (SLEEPER, QUICK):
                (await client.post("/v1/workflows", json=workflow)).raise_for_status()
        total = 0
        sizes: list[int] = []
        for batch in range(3):  # a warm-up batch, then two measured ones
            log(f"{label}: batch {batch + 1} of {runs} sleepers")
            # a client per batch: the server closes connections idle for 5 s
            async with connect(server.base_url) as client:
                await start_many(client, "sleeper", runs, f"batch{batch}")
            total += runs
            await settled(url, parked=total if parking else 0, running=0 if parking else total)
            await asyncio.sleep(1.0)  # let the last commits and log lines settle
            sizes.append(status_kb("VmRSS", pid))
        quick: list[float] = []
        ok = 0
        async with connect(server.base_url) as client:
            for _ in range(20):
                started = time.perf_counter()
                response = await client.post(
                    "/v1/runs", params={"wait": 10}, json={"workflow_id": "quick"}
                )
                quick.append(time.perf_counter() - started)
                ok += response.json().get("status") == "succeeded"
        per_run = (sizes[2] - sizes[1]) * 1024 / runs
        return Outcome(label, total, per_run, sizes[2] / 1024, med(quick) * 1000, ok, len(quick))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000, help="sleepers per batch")
    parser.add_argument("--held", type=int, default=2_000, help="sleepers per batch, parking off")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    problem = await postgres_unavailable()
    if problem:
        raise SystemExit(f"Postgres is needed: {problem}")
    outcomes = [await measure(args.runs, True), await measure(args.held, False)]
    table = Table(
        "Sleeping runs on one replica: marginal memory per run, and a one-node run meanwhile",
        [
            "sleepers",
            "runs in all",
            "bytes per run",
            "server RSS (MB)",
            "one-node run (median)",
            "succeeded in 10 s",
        ],
        "lrrrrr",
    )
    for o in outcomes:
        table.rows.append(
            [
                o.label,
                f"{o.runs:,}",
                f"{o.per_run_bytes:,.0f}",
                f"{o.rss_mb:,.1f}",
                f"{o.quick_ms:,.1f} ms",
                f"{o.quick_ok}/{o.quick_total}",
            ]
        )
    table.notes += [
        "bytes per run: (RSS after the third batch - RSS after the second) / runs per batch; "
        "the first batch warms the process up.",
        "parked: FLOWCORE_PARK_AFTER_SECONDS=0.5 and 50 slots; held: parking off and a slot per "
        "sleeper (with 50 slots the 51st sleeper, and every one-node run, would wait an hour).",
        'A delay of an hour: `{"type": "delay", "config": {"seconds": 3600}}` then a transform.',
    ]
    emit(table, args.markdown)


if __name__ == "__main__":
    asyncio.run(main())
