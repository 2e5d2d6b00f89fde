"""Two replicas on one Postgres share 200 runs; one of them is SIGKILLed halfway. The
survivor takes over the dead replica's runs once their leases expire, and every run
succeeds exactly once: one terminal event, one result per node, and — per the side-effect
ledger — no node whose result was committed before the kill ran again."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.service_crash.conftest import (
    Database,
    Server,
    Servers,
    chain_workflow,
    check_event_log,
    finished_twice,
    ledger_counts,
    poll_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

RUNS = 200
NODES = 3
SLEEP = 0.05
CLIENTS = 8
#: guards against runs that never finish; never timing assertions
DEADLINE = 90.0


async def list_runs(server: Server, status: str) -> list[dict[str, Any]]:
    """Every run with ``status``, following the cursor."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"status": status, "limit": 200}
        if cursor:
            params["cursor"] = cursor
        response = await server.client.get("/v1/runs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        items.extend(page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return items


async def test_a_replica_dies_halfway_and_every_run_succeeds_exactly_once(
    servers: Servers, database: Database, ledger: Path
) -> None:
    # one after the other: each migrates the (fresh) database at start-up
    r1 = await servers.start("r1", FLOWCORE_MAX_CONCURRENT_RUNS="20")
    r2 = await servers.start("r2", FLOWCORE_MAX_CONCURRENT_RUNS="20")
    # the first node of every run waits at the gate: all runs are queued (and the first
    # 20 on each replica claimed) before any finishes, so the kill lands mid-way
    workflow = chain_workflow("small", NODES, SLEEP, gated=True)
    created = await r1.client.post("/v1/workflows", json=workflow)
    assert created.status_code == 201, created.text
    node_ids = [f"n{i:02d}" for i in range(NODES)]

    # submit RUNS runs, alternating between the replicas, from CLIENTS concurrent clients
    run_ids: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(RUNS):
        queue.put_nowait(i)

    async def client() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            server = (r1, r2)[i % 2]
            response = await server.client.post(
                "/v1/runs", json={"workflow_id": "small", "input": {"i": i}}
            )
            assert response.status_code == 202, response.text
            run_id = response.json()["run_id"]
            run_ids.append(run_id)

    started = time.monotonic()
    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    submitted = time.monotonic() - started
    servers.gate.touch()
    opened = time.monotonic()
    done_at_kill = 0

    async def half_done() -> bool:
        nonlocal done_at_kill
        rows = await database.fetch("SELECT count(*) AS n FROM runs WHERE status = 'succeeded'")
        done_at_kill = int(rows[0]["n"])
        return done_at_kill >= RUNS // 2

    await poll_until(half_done, DEADLINE, f"{RUNS // 2} runs to succeed", interval=0.02)
    r1.kill()
    killed_at = time.time()  # r1 is reaped: its commits all have committed_at before this
    orphaned = {
        r["id"]
        for r in await database.fetch(
            "SELECT id FROM runs WHERE owner = 'r1' AND status IN ('running', 'waiting')"
        )
    }
    started_before_kill = ledger_counts(ledger)
    assert orphaned, f"r1 held no run when it was killed ({done_at_kill} done); nothing tested"

    async def all_done() -> bool:
        return len(await list_runs(r2, "succeeded")) == RUNS

    await poll_until(all_done, DEADLINE, f"all {RUNS} runs to succeed ({r2.describe()})")
    total = time.monotonic() - opened

    # every run succeeded, with the right output
    finished = await list_runs(r2, "succeeded")
    assert sorted(r["run_id"] for r in finished) == sorted(run_ids)
    assert len(set(run_ids)) == RUNS
    for run in finished:
        assert run["output"] == {"last": node_ids[-1], "depth": NODES}, run

    # each run's event log: 1..N, one run.started, exactly one terminal event and last
    logs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in await database.fetch(
        "SELECT run_id, seq, type, node_id FROM events ORDER BY run_id, seq"
    ):
        logs[row["run_id"]].append(dict(row))
    assert set(logs) == set(run_ids)
    # the taken-over runs' logs through the API of the survivor are the same
    for run_id in orphaned:
        response = await r2.client.get(
            f"/v1/runs/{run_id}/events", headers={"Accept": "application/json"}
        )
        assert response.status_code == 200, response.text
        assert [(e["seq"], e["type"]) for e in response.json()["items"]] == [
            (e["seq"], e["type"]) for e in logs[run_id]
        ]

    # one node_results row per node of every run, all succeeded
    rows = await database.fetch("SELECT run_id, node_id, status, committed_at FROM node_results")
    assert Counter((r["run_id"], r["node_id"]) for r in rows) == Counter(
        (run_id, node_id) for run_id in run_ids for node_id in node_ids
    )
    assert {r["status"] for r in rows} == {"succeeded"}

    # the ledger: every node of every run ran; nothing committed before the kill ran
    # again; what ran again is exactly what was in flight on r1 (started, not committed)
    ran = ledger_counts(ledger)
    assert set(ran) == {(run_id, node_id) for run_id in run_ids for node_id in node_ids}
    committed = {(r["run_id"], r["node_id"]) for r in rows if r["committed_at"] <= killed_at}
    ran_again = {key for key, n in ran.items() if n > 1}
    assert not ran_again & committed, f"committed before the kill, ran again: {ran_again}"
    assert max(ran.values()) <= 2
    in_flight = {(r, n) for r, n in started_before_kill if r in orphaned} - committed
    assert ran_again == in_flight, (sorted(ran_again), sorted(in_flight))

    claims = Counter(r["claims"] for r in await database.fetch("SELECT claims FROM runs"))
    runs_finished_twice = sorted(r for r, log in logs.items() if finished_twice(log))
    completed_twice = [
        (run_id, node_id)
        for run_id, log in logs.items()
        for node_id, n in Counter(
            e["node_id"] for e in log if e["type"] == "node.completed"
        ).items()
        if n > 1
    ]
    print(
        f"\n{RUNS} runs: submitted in {submitted:.2f}s, all succeeded {total:.2f}s after the "
        f"gate opened; {done_at_kill} done when r1 was killed; r1 held {len(orphaned)} runs; "
        f"{len(committed)} node results committed before the kill; "
        f"{len(ran_again)} nodes re-ran (in flight on r1); runs by claim count {dict(claims)}; "
        f"runs that logged a terminal event twice: {len(runs_finished_twice)}; "
        f"nodes that logged node.completed twice: {len(completed_twice)}"
    )
    assert not runs_finished_twice, runs_finished_twice
    assert not completed_twice, completed_twice
    for run_id, events in logs.items():
        check_event_log(run_id, events, "run.succeeded")
