"""Controlling runs over HTTP: cancel, signal, and the trace and state debug views."""

from __future__ import annotations

from typing import Any

import httpx

from tests.service.support import (
    assert_problem,
    chain,
    events_json,
    finished,
    post_workflow,
    start_run,
    transform,
    unique,
    wait_for_event,
    wait_status,
)


def sleeper(workflow_id: str) -> dict[str, Any]:
    return chain(
        workflow_id,
        transform("before", v="1"),
        {"id": "nap", "type": "delay", "config": {"seconds": 30}},
        transform("after", v="2"),
    )


def approval(workflow_id: str) -> dict[str, Any]:
    """``prepare`` -> ``approve`` (waits for the ``approval`` signal) -> ``act``."""
    return chain(
        workflow_id,
        transform("prepare", amount="input.amount"),
        {"id": "approve", "type": "wait", "config": {"signal": "approval"}},
        transform("act", approved="nodes.approve.output.ok", by="nodes.approve.output.by"),
        vars={"team": "payments", "limit": 100},
        output={"decision": "nodes.approve.output", "approved": "nodes.act.output.approved"},
    )


async def test_cancel_a_running_run(client: httpx.AsyncClient) -> None:
    workflow_id = unique("sleeper")
    await post_workflow(client, sleeper(workflow_id))
    run_id = (await start_run(client, workflow_id))["run_id"]
    await wait_for_event(client, run_id, "node.started", "nap")

    response = await client.post(f"/v1/runs/{run_id}/cancel")
    assert response.status_code == 202, response.text
    assert response.json()["cancel_requested"] is True or response.json()["status"] == "cancelled"

    run = await wait_status(client, run_id, "cancelled", "succeeded", "failed", timeout=15)
    assert run["status"] == "cancelled"
    assert run["finished_at"] is not None

    events = await events_json(client, run_id)
    assert events[-1]["type"] == "run.cancelled"
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    types = [(e["type"], e["node_id"]) for e in events]
    assert ("node.completed", "before") in types
    assert ("node.started", "after") not in types
    assert sum(1 for e in events if e["type"] in ("run.cancelled", "run.succeeded")) == 1

    again = await client.post(f"/v1/runs/{run_id}/cancel")
    assert_problem(again, 409, "invalid-state")


async def test_cancelling_a_finished_run_is_a_409(client: httpx.AsyncClient) -> None:
    workflow_id = unique("quick")
    await post_workflow(client, chain(workflow_id, transform("t", v="1")))
    run = await start_run(client, workflow_id, wait=10)
    assert run["status"] == "succeeded"

    response = await client.post(f"/v1/runs/{run['run_id']}/cancel")
    body = assert_problem(response, 409, "invalid-state")
    assert "succeeded" in body["detail"]
    assert (await client.get(f"/v1/runs/{run['run_id']}")).json()["status"] == "succeeded"


async def test_a_signal_resumes_a_waiting_run_with_its_payload(client: httpx.AsyncClient) -> None:
    workflow_id = unique("approval")
    await post_workflow(client, approval(workflow_id))
    run_id = (await start_run(client, workflow_id, {"amount": 42}))["run_id"]

    waiting = await wait_status(client, run_id, "waiting", "failed", "succeeded")
    assert waiting["status"] == "waiting"

    wrong = await client.post(f"/v1/runs/{run_id}/signal", json={"name": "other", "payload": 1})
    assert wrong.status_code == 202
    payload = {"ok": True, "by": "grace"}
    response = await client.post(
        f"/v1/runs/{run_id}/signal", json={"name": "approval", "payload": payload}
    )
    assert response.status_code == 202, response.text

    run = await finished(client, run_id)
    assert run["status"] == "succeeded", run
    assert run["output"] == {"decision": payload, "approved": True}
    state = (await client.get(f"/v1/runs/{run_id}/state")).json()
    assert state["node_outputs"]["approve"] == payload
    assert state["node_outputs"]["act"] == {"approved": True, "by": "grace"}

    late = await client.post(f"/v1/runs/{run_id}/signal", json={"name": "approval"})
    assert_problem(late, 409, "invalid-state")


async def test_a_signal_sent_before_the_wait_is_kept_for_it(client: httpx.AsyncClient) -> None:
    workflow_id = unique("early")
    definition = chain(
        workflow_id,
        {"id": "nap", "type": "delay", "config": {"seconds": 0.3}},
        {"id": "gate", "type": "wait", "config": {"signal": "go"}},
        output={"got": "nodes.gate.output"},
    )
    await post_workflow(client, definition)
    run_id = (await start_run(client, workflow_id))["run_id"]
    response = await client.post(f"/v1/runs/{run_id}/signal", json={"name": "go", "payload": 7})
    assert response.status_code == 202, response.text

    run = await finished(client, run_id)
    assert run["status"] == "succeeded", run
    assert run["output"] == {"got": 7}


async def test_signal_requests_are_validated(client: httpx.AsyncClient) -> None:
    workflow_id = unique("approval")
    await post_workflow(client, approval(workflow_id))
    run_id = (await start_run(client, workflow_id, {"amount": 1}))["run_id"]
    for body in ({}, {"name": ""}, {"name": "approval", "unexpected": 1}):
        response = await client.post(f"/v1/runs/{run_id}/signal", json=body)
        assert_problem(response, 422, "invalid-request")
    await wait_status(client, run_id, "waiting")
    assert (await client.post(f"/v1/runs/{run_id}/cancel")).status_code == 202
    assert (await finished(client, run_id))["status"] == "cancelled"


async def test_trace_has_per_node_timings_and_attempts(client: httpx.AsyncClient) -> None:
    workflow_id = unique("flaky")
    definition = chain(
        workflow_id,
        transform("first", v="1"),
        {
            "id": "flaky",
            "type": "fail",
            "config": {"message": "transient", "times": 1},
            "retry": {"max_retries": 2, "delay": 0},
        },
        transform("last", v="2"),
    )
    await post_workflow(client, definition)
    run = await start_run(client, workflow_id, wait=10)
    assert run["status"] == "succeeded", run

    response = await client.get(f"/v1/runs/{run['run_id']}/trace")
    assert response.status_code == 200, response.text
    trace = response.json()
    assert trace["run_id"] == run["run_id"]
    assert trace["status"] == "succeeded"
    assert trace["duration_ms"] is not None
    assert trace["duration_ms"] >= 0
    timings = trace["node_timings"]
    assert set(timings) == {"first", "flaky", "last"}
    assert timings["flaky"]["attempts"] == 2
    assert timings["first"]["attempts"] == 1
    assert timings["last"]["attempts"] == 1
    for timing in timings.values():
        assert timing["status"] == "succeeded"
        assert timing["duration_ms"] is not None
        assert timing["duration_ms"] >= 0
        assert timing["error"] is None

    retries = [e for e in await events_json(client, run["run_id"]) if e["type"] == "node.retry"]
    assert [e["node_id"] for e in retries] == ["flaky"]


def always_failing(workflow_id: str) -> dict[str, Any]:
    return chain(
        workflow_id,
        transform("first", v="1"),
        {
            "id": "boom",
            "type": "fail",
            "config": {"message": "always"},
            "retry": {"max_retries": 1, "delay": 0},
        },
    )


async def test_a_failed_run_reports_its_error(client: httpx.AsyncClient) -> None:
    workflow_id = unique("broken")
    await post_workflow(client, always_failing(workflow_id))
    run = await start_run(client, workflow_id, wait=10)
    assert run["status"] == "failed"
    assert run["error"]["message"] == "always"
    assert run["error"]["node_id"] == "boom"

    trace = (await client.get(f"/v1/runs/{run['run_id']}/trace")).json()
    assert trace["status"] == "failed"
    assert trace["node_timings"]["first"]["status"] == "succeeded"
    failures = [e for e in await events_json(client, run["run_id"]) if e["type"] == "node.failed"]
    assert [(e["node_id"], e["data"]["attempts"]) for e in failures] == [("boom", 2)]


async def test_trace_of_a_failed_run_shows_the_failed_node(client: httpx.AsyncClient) -> None:
    workflow_id = unique("broken")
    await post_workflow(client, always_failing(workflow_id))
    run = await start_run(client, workflow_id, wait=10)
    assert run["status"] == "failed"

    timings = (await client.get(f"/v1/runs/{run['run_id']}/trace")).json()["node_timings"]
    assert timings["boom"]["status"] == "failed"
    assert timings["boom"]["attempts"] == 2
    assert timings["boom"]["error"] == "always"
    assert timings["boom"]["error_kind"]


async def test_state_of_a_waiting_run_shows_the_pending_wait_and_variables(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = unique("approval")
    await post_workflow(client, approval(workflow_id))
    run_id = (await start_run(client, workflow_id, {"amount": 42}))["run_id"]
    await wait_status(client, run_id, "waiting")

    response = await client.get(f"/v1/runs/{run_id}/state")
    assert response.status_code == 200, response.text
    state = response.json()
    assert state["run_id"] == run_id
    assert state["status"] == "waiting"
    assert state["variables"] == {"team": "payments", "limit": 100}
    assert state["node_outputs"] == {"prepare": {"amount": 42}}
    assert "approve" in state["pending"], state
    assert "approval" in str(state["pending"]["approve"])
    assert "approve" in state["current_nodes"]
    assert state["checkpoint_id"]
    assert state["checkpoint_id"].startswith(f"{run_id}:")

    assert (await client.post(f"/v1/runs/{run_id}/cancel")).status_code == 202
    assert (await finished(client, run_id))["status"] == "cancelled"
