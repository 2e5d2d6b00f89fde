"""Crash and restart of the real service: a 30-node run on server A is cut short by
SIGKILL; server B on the same database (a new replica id, or the same one restarting)
takes the expired lease over and finishes the run from its last checkpoint.

The ``ledger`` nodes record every execution in a file outside the service, so the test
can tell which nodes ran again: only those whose result was not committed when A died.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.service_crash.conftest import (
    CHECKPOINT_STALLED_MARKER,
    FAULT_ENV,
    FINAL_CHECKPOINT_MARKER,
    STALL_AFTER_FINAL_CHECKPOINT,
    STALL_CHECKPOINT_OF,
    Database,
    Servers,
    chain_workflow,
    check_event_log,
    ledger_counts,
    ledger_entries,
    poll_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

NODES = 30
SLEEP = 0.1
#: kill server A once this many nodes have started
KILL_AFTER = 10
#: guards against a run that never gets going or never finishes; never timing assertions
DEADLINE = 60.0


@pytest.mark.parametrize(
    "replica_b", ["crash-b", "crash-a"], ids=["new-replica", "same-replica-restarts"]
)
async def test_a_run_survives_sigkill_of_its_server(
    servers: Servers, database: Database, ledger: Path, replica_b: str
) -> None:
    a = await servers.start("crash-a")
    created = await a.client.post("/v1/workflows", json=chain_workflow("chain", NODES, SLEEP))
    assert created.status_code == 201, created.text
    started = await a.client.post("/v1/runs", json={"workflow_id": "chain", "input": {}})
    assert started.status_code == 202, started.text
    run_id: str = started.json()["run_id"]
    node_ids = [f"n{i:02d}" for i in range(NODES)]

    async def enough_nodes_started() -> bool:
        return len(ledger_entries(ledger)) >= KILL_AFTER

    await poll_until(enough_nodes_started, DEADLINE, f"{KILL_AFTER} ledger lines ({a.describe()})")
    a.kill()
    killed_at = time.time()  # A is reaped: every commit it made has committed_at before this
    before_kill = ledger_counts(ledger)
    assert len(before_kill) < NODES, "the run finished before the kill; nothing was tested"

    b = await servers.start(replica_b)

    async def run_finished() -> bool:
        run = (await b.client.get(f"/v1/runs/{run_id}")).json()
        return run["status"] in ("succeeded", "failed", "cancelled")

    await poll_until(run_finished, DEADLINE, f"run {run_id} to finish ({b.describe()})")

    # (a) the outcome
    run = (await b.client.get(f"/v1/runs/{run_id}")).json()
    assert run["status"] == "succeeded", run
    assert run["output"] == {"last": node_ids[-1], "depth": NODES}, run

    # (b) one node result per node, all succeeded: in the table and in the trace
    rows = await database.fetch(
        "SELECT node_id, iteration, status, committed_at FROM node_results WHERE run_id = $1",
        run_id,
    )
    per_node = Counter(r["node_id"] for r in rows)
    assert per_node == Counter(node_ids), per_node
    assert {r["status"] for r in rows} == {"succeeded"}
    trace = (await b.client.get(f"/v1/runs/{run_id}/trace")).json()
    assert sorted(trace["node_timings"]) == node_ids
    assert {t["status"] for t in trace["node_timings"].values()} == {"succeeded"}

    # (c) the event log: 1..N, one run.started, one terminal event, last
    response = await b.client.get(
        f"/v1/runs/{run_id}/events", headers={"Accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    events = response.json()["items"]
    check_event_log(run_id, events, "run.succeeded")

    # (d) the ledger: every node ran; the ones committed before the kill ran once; the
    # ones that ran twice are exactly those in flight (started, not committed) at the kill
    committed = {r["node_id"] for r in rows if r["committed_at"] <= killed_at}
    assert committed, "no node was committed before the kill; nothing was tested"
    # a chain commits a prefix
    assert committed == set(node_ids[: len(committed)]), sorted(committed)
    assert {rid for rid, _ in ledger_entries(ledger)} == {run_id}
    runs = Counter(node_id for _, node_id in ledger_entries(ledger))
    assert set(runs) == set(node_ids), f"never ran: {set(node_ids) - set(runs)}"
    ran_again = {node_id for node_id, n in runs.items() if n > 1}
    assert not ran_again & committed, f"committed before the kill, ran again: {ran_again}"
    assert max(runs.values()) <= 2, runs
    in_flight = {node_id for (_, node_id) in before_kill} - committed
    assert ran_again == in_flight, (ran_again, in_flight)
    completed_events = Counter(e["node_id"] for e in events if e["type"] == "node.completed")
    print(
        f"\n[{replica_b}] killed after {sum(before_kill.values())} node starts; "
        f"{len(committed)} committed before the kill; re-ran {sorted(ran_again)}; "
        f"node.completed logged twice for {sorted(n for n, c in completed_events.items() if c > 1)}"
    )


async def test_a_crash_right_after_the_final_checkpoint(servers: Servers, ledger: Path) -> None:
    """SIGKILL right after a run's final checkpoint (with its terminal event) committed
    — fault injection in ``ledger_nodes`` stops the server at exactly that point. The
    replica that takes the run over must record the outcome the log already holds, not
    run the end of the run again: one terminal event, and no node runs again."""
    a = await servers.start("final-a", **{FAULT_ENV: STALL_AFTER_FINAL_CHECKPOINT})
    workflows = {
        "ok": chain_workflow("ok", 3, 0.05),
        "boom": {
            "id": "boom",
            "nodes": [
                {"id": "n00", "type": "ledger", "config": {"sleep": 0.05}},
                {"id": "n01", "type": "fail", "config": {"message": "boom", "times": 1}},
            ],
            "edges": [{"source": "n00", "target": "n01"}],
        },
    }
    run_ids: dict[str, str] = {}
    for name, workflow in workflows.items():
        created = await a.client.post("/v1/workflows", json=workflow)
        assert created.status_code == 201, created.text
        started = await a.client.post("/v1/runs", json={"workflow_id": name})
        assert started.status_code == 202, started.text
        run_ids[name] = started.json()["run_id"]

    async def both_stalled() -> bool:
        stalled = {r for r, n in ledger_entries(ledger) if n.startswith(FINAL_CHECKPOINT_MARKER)}
        return stalled == set(run_ids.values())

    await poll_until(both_stalled, DEADLINE, f"both final checkpoints ({a.describe()})")
    a.kill()
    b = await servers.start("final-b")
    runs: dict[str, dict[str, Any]] = {}

    async def both_finished() -> bool:
        for name, run_id in run_ids.items():
            runs[name] = (await b.client.get(f"/v1/runs/{run_id}")).json()
        return all(r["status"] in ("succeeded", "failed", "cancelled") for r in runs.values())

    await poll_until(both_finished, DEADLINE, f"both runs to finish ({b.describe()})")
    logs: dict[str, list[dict[str, Any]]] = {}
    for name, run_id in run_ids.items():
        response = await b.client.get(
            f"/v1/runs/{run_id}/events", headers={"Accept": "application/json"}
        )
        assert response.status_code == 200, response.text
        logs[name] = response.json()["items"]
    summary = {
        name: [f"{e['seq']} {e['type']} {e['node_id'] or ''}".strip() for e in log]
        for name, log in logs.items()
    }

    assert runs["ok"]["status"] == "succeeded", runs["ok"]
    assert runs["ok"]["output"] == {"last": "n02", "depth": 3}, runs["ok"]
    assert runs["boom"]["status"] == "failed", runs["boom"]
    assert runs["boom"]["error"]["message"] == "boom", runs["boom"]
    check_event_log(run_ids["ok"], logs["ok"], "run.succeeded")
    check_event_log(run_ids["boom"], logs["boom"], "run.failed")
    # nothing ran again: the ledger nodes once each, the failed node started once
    assert ledger_counts(ledger) == Counter(
        {(run_ids["ok"], n): 1 for n in ("n00", "n01", "n02")}
        | {(run_ids["boom"], "n00"): 1}
        | {(r, n): 1 for r, n in ledger_entries(ledger) if n.startswith(FINAL_CHECKPOINT_MARKER)}
    )
    starts = Counter(e["node_id"] for e in logs["boom"] if e["type"] == "node.started")
    assert starts == Counter({"n00": 1, "n01": 1}), summary


async def test_a_crash_between_a_node_s_events_and_its_checkpoint(
    servers: Servers, ledger: Path
) -> None:
    """SIGKILL while the checkpoint that completes ``n01`` is still being written, after
    the journal's periodic event flush had its chance (fault injection in
    ``ledger_nodes``; the engine goes on meanwhile and finishes the run on A, its later
    checkpoints queued behind the stalled one). Nodes whose results were not committed run
    again (at-least-once), but the log must not say that any node completed twice, nor
    that the run ended twice."""
    a = await servers.start("events-a", **{FAULT_ENV: f"{STALL_CHECKPOINT_OF}:n01"})
    created = await a.client.post("/v1/workflows", json=chain_workflow("c", 3, 0.05))
    assert created.status_code == 201, created.text
    started = await a.client.post("/v1/runs", json={"workflow_id": "c"})
    assert started.status_code == 202, started.text
    run_id: str = started.json()["run_id"]

    async def stalled() -> bool:
        return (run_id, CHECKPOINT_STALLED_MARKER) in ledger_entries(ledger)

    await poll_until(stalled, DEADLINE, f"n01's checkpoint to stall ({a.describe()})")
    a.kill()
    b = await servers.start("events-b")

    async def run_finished() -> bool:
        run = (await b.client.get(f"/v1/runs/{run_id}")).json()
        return run["status"] in ("succeeded", "failed", "cancelled")

    await poll_until(run_finished, DEADLINE, f"run {run_id} to finish ({b.describe()})")
    run = (await b.client.get(f"/v1/runs/{run_id}")).json()
    assert run["status"] == "succeeded", run
    assert run["output"] == {"last": "n02", "depth": 3}, run
    response = await b.client.get(
        f"/v1/runs/{run_id}/events", headers={"Accept": "application/json"}
    )
    assert response.status_code == 200, response.text
    events = response.json()["items"]
    check_event_log(run_id, events, "run.succeeded")
    log = [f"{e['seq']} {e['type']} {e['node_id'] or ''}".strip() for e in events]
    completed = Counter(e["node_id"] for e in events if e["type"] == "node.completed")
    assert completed == Counter({"n00": 1, "n01": 1, "n02": 1}), log
    # n00 was committed and ran once; n01 was not, and ran again; n02 ran on A too if
    # A got to it before the kill
    ran = Counter(node_id for rid, node_id in ledger_entries(ledger) if rid == run_id)
    assert ran["n00"] == 1, ran
    assert ran["n01"] == 2, ran
    assert ran["n02"] in (1, 2), ran
