"""Parked runs: a run that waits on nothing but top-level delays and signals leaves the
replica (status ``waiting``, ``parked``, ``wake_at``), frees its slot, and any replica
takes it up again when it is due, when its signal comes or when it is cancelled. Also:
resuming a running run in place stops the earlier execution at once."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.service.support import (
    MakeSettings,
    Serve,
    chain,
    events_json,
    finished,
    poll_run,
    post_workflow,
    start_run,
    transform,
    unique,
    wait_for_event,
    wait_status,
)


@pytest.fixture
async def client(serve: Serve, make_settings: MakeSettings) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(make_settings(park_after_seconds=0.2, max_concurrent_runs=5)) as http:
        yield http


def delay(node_id: str, seconds: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "delay", "config": {"seconds": seconds}}


def wait(node_id: str, signal: str, **config: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "wait", "config": {"signal": signal, **config}}


async def parked(client: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    return await poll_run(client, run_id, lambda r: r["parked"], timeout=20)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} ([0-9.e+-]+)$", text, re.M)
    assert match, name
    return float(match.group(1))


async def test_sleeping_runs_leave_the_replica_and_block_nothing(
    client: httpx.AsyncClient,
) -> None:
    before = (await client.get("/metrics")).text
    sleepy = unique("day")
    await post_workflow(client, chain(sleepy, delay("nap", 86_400), transform("after", v="1")))
    started = time.time()
    run_ids = [(await start_run(client, sleepy))["run_id"] for _ in range(20)]  # 4x the slots
    for run_id in run_ids:
        run = await parked(client, run_id)
        assert run["status"] == "waiting"
        assert started + 86_400 <= run["wake_at"] <= time.time() + 86_400
        assert run["current_nodes"] == []
    # every slot is free: a one-node run goes at once
    quick = unique("quick")
    await post_workflow(client, chain(quick, transform("a", v="1")))
    assert (await start_run(client, quick, wait=10))["status"] == "succeeded"
    after = (await client.get("/metrics")).text
    parked_now = metric(after, "flowcore_runs_parked_total") - metric(
        before, "flowcore_runs_parked_total"
    )
    assert parked_now == 20
    # ?wait answers once the outcome is committed; the dispatcher lets the run's slot go
    # right after, so the gauge comes back to where it was, and no parked run holds one
    idle = metric(before, "flowcore_active_runs")
    deadline = asyncio.get_running_loop().time() + 10
    while metric(after, "flowcore_active_runs") != idle:
        assert asyncio.get_running_loop().time() < deadline, "a parked run holds a slot"
        await asyncio.sleep(0.05)
        after = (await client.get("/metrics")).text


async def test_a_parked_delay_wakes_when_due_and_goes_on(client: httpx.AsyncClient) -> None:
    workflow_id = unique("nap")
    await post_workflow(
        client,
        chain(workflow_id, transform("a", v="1"), delay("nap", 1.5), transform("b", v="2")),
    )
    run_id = (await start_run(client, workflow_id))["run_id"]
    run = await parked(client, run_id)
    assert run["status"] == "waiting"
    done = await finished(client, run_id)
    assert done["status"] == "succeeded", done
    assert done["output"] == {"b": {"v": 2}}
    log = [(e["type"], e["node_id"]) for e in await events_json(client, run_id)]
    assert ("run.waiting", None) in log
    assert ("run.resumed", None) in log
    assert log.count(("node.completed", "a")) == 1  # a committed node never runs again
    assert log[-1] == ("run.succeeded", None)


async def test_a_signal_wakes_a_parked_wait(client: httpx.AsyncClient) -> None:
    workflow_id = unique("approve")
    await post_workflow(
        client,
        chain(workflow_id, wait("w", "go"), transform("after", v="nodes.w.output.ok")),
    )
    run_id = (await start_run(client, workflow_id))["run_id"]
    run = await parked(client, run_id)
    assert run["wake_at"] is None  # only a signal wakes it
    signal = await client.post(
        f"/v1/runs/{run_id}/signal", json={"name": "go", "payload": {"ok": True}}
    )
    assert signal.status_code == 202
    done = await finished(client, run_id)
    assert done["status"] == "succeeded", done
    assert done["output"] == {"after": {"v": True}}


async def test_signals_for_a_later_wait_are_kept_while_parked(client: httpx.AsyncClient) -> None:
    workflow_id = unique("two")
    await post_workflow(client, chain(workflow_id, wait("first", "go"), wait("second", "later")))
    run_id = (await start_run(client, workflow_id))["run_id"]
    await parked(client, run_id)
    # a signal nobody waits for yet wakes the run, which keeps it and parks again
    await client.post(f"/v1/runs/{run_id}/signal", json={"name": "later", "payload": 2})
    woken = await poll_run(client, run_id, lambda r: not r["parked"] or r["status"] != "waiting")
    assert woken["status"] in ("queued", "running", "waiting"), woken
    await parked(client, run_id)
    await client.post(f"/v1/runs/{run_id}/signal", json={"name": "go", "payload": 1})
    done = await finished(client, run_id)
    assert done["status"] == "succeeded", done
    assert done["output"] == {"second": 2}


async def test_a_wait_timeout_fires_while_parked(client: httpx.AsyncClient) -> None:
    workflow_id = unique("late")
    await post_workflow(client, chain(workflow_id, wait("w", "go", timeout=1.5)))
    run_id = (await start_run(client, workflow_id))["run_id"]
    run = await parked(client, run_id)
    assert run["wake_at"] is not None
    done = await finished(client, run_id)
    assert done["status"] == "failed"
    assert done["error"]["kind"] == "timeout"


async def test_a_parked_run_is_cancelled_at_once(client: httpx.AsyncClient) -> None:
    workflow_id = unique("cancel")
    await post_workflow(client, chain(workflow_id, delay("nap", 86_400)))
    run_id = (await start_run(client, workflow_id))["run_id"]
    await parked(client, run_id)
    cancelled = await client.post(f"/v1/runs/{run_id}/cancel")
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"
    # its stream replays the log and ends with the cancellation
    async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
        body = await asyncio.wait_for(response.aread(), 10)
    assert body.rstrip().endswith(b"}")
    assert b"event: run.cancelled" in body
    log = await events_json(client, run_id)
    assert log[-1]["type"] == "run.cancelled"
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))


async def test_a_run_stopped_at_a_breakpoint_can_be_cancelled(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = unique("break")
    await post_workflow(
        client,
        chain(
            workflow_id,
            {"id": "boom", "type": "fail"},
            config={"break_on_error": True},
        ),
    )
    run = await start_run(client, workflow_id, wait=10)
    assert run["status"] == "waiting"
    cancelled = await client.post(f"/v1/runs/{run['run_id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"
    assert (await events_json(client, run["run_id"]))[-1]["type"] == "run.cancelled"


async def test_resuming_a_running_run_stops_the_earlier_execution_at_once(
    serve: Serve, make_settings: MakeSettings
) -> None:
    # a body run's delay does not park: the run keeps its slot while it sleeps
    async with serve(make_settings()) as client:
        workflow_id = unique("busy")
        await post_workflow(
            client,
            chain(
                workflow_id,
                transform("a", v="1"),
                {
                    "id": "each",
                    "type": "map",
                    "config": {"items": "[1, 2]", "node": delay("nap", 60)},
                },
            ),
        )
        baseline = metric((await client.get("/metrics")).text, "flowcore_active_runs")
        run_id = (await start_run(client, workflow_id))["run_id"]
        await wait_status(client, run_id, "running")
        await wait_for_event(client, run_id, "node.completed", "a")  # checkpointed with it
        checkpoints = (await client.get(f"/v1/runs/{run_id}/checkpoints")).json()
        assert checkpoints
        resumed = await client.post(f"/v1/checkpoints/{checkpoints[0]['id']}/resume")
        assert resumed.status_code == 202, resumed.text

        async def one_execution() -> bool:
            run = (await client.get(f"/v1/runs/{run_id}")).json()
            text = (await client.get("/metrics")).text
            return (
                run["status"] == "running" and metric(text, "flowcore_active_runs") == baseline + 1
            )

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not await one_execution():
            assert loop.time() < deadline, "the earlier execution is still here"
            await asyncio.sleep(0.05)
        cancel = await client.post(f"/v1/runs/{run_id}/cancel")
        assert cancel.status_code == 202
        assert (await finished(client, run_id))["status"] == "cancelled"
        while metric((await client.get("/metrics")).text, "flowcore_active_runs") != baseline:
            assert loop.time() < deadline + 10, "an execution outlived its run"
            await asyncio.sleep(0.05)
