"""One namespace filling the queue does not starve another: with 5,000 runs of
``team-a`` queued before it, a run started through the API in namespace ``default``
finishes while nearly all of team-a's still wait. Through the real HTTP server, on
SQLite and Postgres; asserted on counts and order, never on durations.

team-a's runs are written straight into the database (5,000 HTTP calls would test
nothing more), copies of a run the API made, with its workflow copied into team-a."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from sqlalchemy import text

from app.store.db import create_engine
from app.store.models import WorkflowVersion
from tests.service.support import MakeSettings, Serve, chain, post_workflow, start_run, unique

FLOOD = 5_000
SLOTS = 4
NAMESPACE = "team-a"


async def flood(database_url: str, template_id: str) -> None:
    """``FLOOD`` queued runs of ``NAMESPACE``, copies of run ``template_id`` created an
    hour ago (before any other run), and its workflow's versions in ``NAMESPACE``."""
    columns = ", ".join(c.name for c in WorkflowVersion.__table__.columns if c.name != "namespace")
    copy_workflow = text(
        f"INSERT INTO workflow_versions (namespace, {columns}) "
        f"SELECT CAST(:namespace AS VARCHAR(64)), {columns} FROM workflow_versions "
        "WHERE workflow_id = (SELECT workflow_id FROM runs WHERE id = :template)"
    )
    copy_run = text(
        "INSERT INTO runs (id, namespace, workflow_id, workflow_version, status, input, "
        "config, created_at, updated_at, epoch, claims, event_seq, checkpoint_seq, "
        "cancel_requested, parked) "
        "SELECT CAST(:id AS VARCHAR(64)), CAST(:namespace AS VARCHAR(64)), workflow_id, "
        "workflow_version, 'queued', input, config, CAST(:at AS FLOAT), CAST(:at AS FLOAT), "
        "0, 0, 0, 0, false, false FROM runs WHERE id = :template"
    )
    start = time.time() - 3600
    rows = [
        {
            "id": f"flood-{i:05}",
            "namespace": NAMESPACE,
            "at": start + i / 1000,
            "template": template_id,
        }
        for i in range(FLOOD)
    ]
    engine = create_engine(database_url)
    try:
        async with engine.begin() as conn:
            await conn.execute(copy_workflow, {"namespace": NAMESPACE, "template": template_id})
            await conn.execute(copy_run, rows)
    finally:
        await engine.dispose()


async def scalar(database_url: str, sql: str, **params: Any) -> Any:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text(sql), params)).scalar_one()
    finally:
        await engine.dispose()


async def test_a_flooded_namespace_does_not_starve_another(
    serve: Serve, make_settings: MakeSettings, database_url: str
) -> None:
    settings = make_settings(max_concurrent_runs=SLOTS)
    async with serve(settings) as client:
        workflow_id = unique("pause")
        pause = {"id": "pause", "type": "delay", "config": {"seconds": 0.2}}
        await post_workflow(client, chain(workflow_id, pause))
        template = await start_run(client, workflow_id, wait=30)
        assert template["status"] == "succeeded", template
        await flood(database_url, template["run_id"])

        # the replica works on team-a's runs, every slot taken
        not_queued = "SELECT count(*) FROM runs WHERE namespace = :namespace AND status <> 'queued'"
        async with asyncio.timeout(30):
            while True:
                if await scalar(database_url, not_queued, namespace=NAMESPACE) >= SLOTS:
                    break
                await asyncio.sleep(0.05)

        run = await start_run(client, workflow_id, wait=20)
        assert run["status"] == "succeeded", run

        queued = "SELECT count(*) FROM runs WHERE namespace = :namespace AND status = 'queued'"
        assert await scalar(database_url, queued, namespace=NAMESPACE) > FLOOD - 200
        # it took the next free slot: team-a's runs that started after it came and
        # before it started are those a claim already under way took, at most a few
        overtaken = (
            "SELECT count(*) FROM runs WHERE namespace = :namespace "
            "AND started_at > :created AND started_at < :started"
        )
        started_meanwhile = await scalar(
            database_url,
            overtaken,
            namespace=NAMESPACE,
            created=run["created_at"],
            started=run["started_at"],
        )
        assert started_meanwhile <= 2 * SLOTS
