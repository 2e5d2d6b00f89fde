"""Checkpoints over HTTP: list, read, resume in place, fork to a new run."""

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
    wait_status,
)


def fixable(workflow_id: str) -> dict[str, Any]:
    """``a -> b -> c -> d``; ``c`` reads ``vars.fix``, which is not set: it fails."""
    return chain(
        workflow_id,
        transform("a", v="input.n + 1"),
        transform("b", v="nodes.a.output.v * 2"),
        transform("c", v="nodes.b.output.v + vars.fix"),
        transform("d", v="nodes.c.output.v"),
        output={"d": "nodes.d.output.v"},
    )


def three_steps(workflow_id: str) -> dict[str, Any]:
    return chain(
        workflow_id,
        transform("a", v="input.n + 1"),
        transform("b", v="nodes.a.output.v * 2"),
        transform("c", n="input.n", b="nodes.b.output.v"),
        output={"n": "nodes.c.output.n", "b": "nodes.c.output.b"},
    )


def started(events: list[dict[str, Any]]) -> list[str]:
    return [e["node_id"] for e in events if e["type"] == "node.started"]


async def checkpoints_of(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/runs/{run_id}/checkpoints")
    assert response.status_code == 200, response.text
    checkpoints: list[dict[str, Any]] = response.json()
    return checkpoints


async def test_list_and_get_checkpoints_of_a_finished_run(client: httpx.AsyncClient) -> None:
    workflow_id = unique("steps")
    await post_workflow(client, three_steps(workflow_id))
    run = await start_run(client, workflow_id, {"n": 1}, wait=10)
    assert run["status"] == "succeeded"
    run_id = run["run_id"]

    checkpoints = await checkpoints_of(client, run_id)
    assert checkpoints, "a finished run has checkpoints"
    sequences = [c["sequence"] for c in checkpoints]
    assert sequences == sorted(sequences)
    assert len(set(sequences)) == len(sequences)
    for checkpoint in checkpoints:
        assert checkpoint["run_id"] == run_id
        assert checkpoint["id"] == f"{run_id}:{checkpoint['sequence']}"
    completed = [node for c in checkpoints for node in c["completed"]]
    assert sorted(completed) == ["a", "b", "c"], "every node completes in exactly one"
    assert checkpoints[-1]["status"] == "succeeded"
    event_seqs = [c["event_seq"] for c in checkpoints]
    assert event_seqs == sorted(event_seqs)
    assert event_seqs[-1] == len(await events_json(client, run_id))

    after_a = next(c for c in checkpoints if c["completed"] == ["a"])
    response = await client.get(f"/v1/checkpoints/{after_a['id']}")
    assert response.status_code == 200, response.text
    detail = response.json()
    assert {k: detail[k] for k in after_a} == after_a
    state = detail["state"]
    assert set(state["completed"]) == {"a"}
    assert state["completed"]["a"]["output"] == {"v": 2}
    assert state["completed"]["a"]["status"] == "succeeded"
    assert state["input"] == {"n": 1}
    assert state["variables"] == {}

    last = (await client.get(f"/v1/checkpoints/{checkpoints[-1]['id']}")).json()
    assert set(last["state"]["completed"]) == {"a", "b", "c"}
    assert last["state"]["status"] == "succeeded"


async def test_unknown_checkpoints_are_404_problems(client: httpx.AsyncClient) -> None:
    workflow_id = unique("steps")
    await post_workflow(client, three_steps(workflow_id))
    run_id = (await start_run(client, workflow_id, {"n": 1}, wait=10))["run_id"]
    for checkpoint_id in (f"{run_id}:999", f"{run_id}:0", f"{run_id}:9999999999", "x1:1"):
        assert_problem(await client.get(f"/v1/checkpoints/{checkpoint_id}"), 404, "not-found")
        resume = await client.post(f"/v1/checkpoints/{checkpoint_id}/resume", json={})
        assert_problem(resume, 404, "not-found")
    # not of the form <run id>:<sequence>: the id itself is refused, naming the field
    for checkpoint_id in ("garbage", f"{run_id}:x", f"{run_id}:-1", "a%00b:1"):
        problem = assert_problem(
            await client.get(f"/v1/checkpoints/{checkpoint_id}"), 422, "invalid-request"
        )
        assert "checkpoint_id" in problem["detail"]
    assert_problem(await client.get(f"/v1/runs/{unique('nope')}/checkpoints"), 404, "not-found")


async def test_resume_in_place_does_not_run_completed_nodes_again(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = unique("fixable")
    await post_workflow(client, fixable(workflow_id))
    run = await start_run(client, workflow_id, {"n": 1}, wait=10)
    run_id = run["run_id"]
    assert run["status"] == "failed"
    assert run["error"]["node_id"] == "c"
    assert "fix" in run["error"]["message"]

    before_events = await events_json(client, run_id)
    checkpoints = await checkpoints_of(client, run_id)
    latest = checkpoints[-1]
    assert latest["status"] == "failed"
    before_state = (await client.get(f"/v1/checkpoints/{latest['id']}")).json()["state"]
    assert set(before_state["completed"]) == {"a", "b"}
    before_trace = (await client.get(f"/v1/runs/{run_id}/trace")).json()["node_timings"]

    response = await client.post(
        f"/v1/checkpoints/{latest['id']}/resume", json={"vars": {"fix": 100}}
    )
    assert response.status_code == 202, response.text
    assert response.json()["run_id"] == run_id
    assert response.json()["status"] in ("queued", "running", "succeeded")

    done = await finished(client, run_id)
    assert done["status"] == "succeeded", done
    assert done["output"] == {"d": 104}
    assert done["error"] is None

    events = await events_json(client, run_id)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "no gap, no duplicate"
    assert events[: len(before_events)] == before_events, "the log is append-only"
    assert started(events).count("a") == 1
    assert started(events).count("b") == 1
    assert started(events[len(before_events) :]) == ["c", "d"]
    assert events[len(before_events)]["type"] == "run.resumed"
    assert events[-1]["type"] == "run.succeeded"

    trace = (await client.get(f"/v1/runs/{run_id}/trace")).json()["node_timings"]
    assert set(trace) == {"a", "b", "c", "d"}
    for node in ("a", "b"):
        assert trace[node] == before_trace[node], "a committed node keeps its ledger row"
        assert trace[node]["attempts"] == 1
    after_state = (
        await client.get(f"/v1/checkpoints/{(await checkpoints_of(client, run_id))[-1]['id']}")
    ).json()["state"]
    for node in ("a", "b"):
        assert after_state["completed"][node] == before_state["completed"][node]
    assert after_state["variables"] == {"fix": 100}

    again = await client.post(f"/v1/checkpoints/{latest['id']}/resume", json={})
    body = assert_problem(again, 409, "invalid-state")
    assert "succeeded" in body["detail"]


async def test_resume_a_cancelled_run_in_place(client: httpx.AsyncClient) -> None:
    workflow_id = unique("gate")
    definition = chain(
        workflow_id,
        transform("a", v="1"),
        {"id": "gate", "type": "wait", "config": {"signal": "go"}},
        output={"got": "nodes.gate.output"},
    )
    await post_workflow(client, definition)
    run_id = (await start_run(client, workflow_id))["run_id"]
    await wait_status(client, run_id, "waiting")
    assert (await client.post(f"/v1/runs/{run_id}/cancel")).status_code == 202
    assert (await finished(client, run_id))["status"] == "cancelled"

    latest = (await checkpoints_of(client, run_id))[-1]
    response = await client.post(f"/v1/checkpoints/{latest['id']}/resume", json={})
    assert response.status_code == 202, response.text
    await wait_status(client, run_id, "waiting")
    signal = await client.post(f"/v1/runs/{run_id}/signal", json={"name": "go", "payload": "on"})
    assert signal.status_code == 202
    done = await finished(client, run_id)
    assert done["status"] == "succeeded", done
    assert done["output"] == {"got": "on"}
    assert started(await events_json(client, run_id)).count("a") == 1


async def test_fork_starts_a_new_run_from_the_checkpoint(client: httpx.AsyncClient) -> None:
    workflow_id = unique("steps")
    await post_workflow(client, three_steps(workflow_id))
    original = await start_run(client, workflow_id, {"n": 1}, wait=10)
    assert original["output"] == {"n": 1, "b": 4}
    after_a = next(
        c for c in await checkpoints_of(client, original["run_id"]) if c["completed"] == ["a"]
    )

    response = await client.post(
        f"/v1/checkpoints/{after_a['id']}/resume", json={"fork": True, "input": {"n": 10}}
    )
    assert response.status_code == 202, response.text
    fork = response.json()
    assert fork["run_id"] != original["run_id"]
    assert fork["forked_from"] == after_a["id"]
    assert response.headers["location"] == f"/v1/runs/{fork['run_id']}"

    done = await finished(client, fork["run_id"])
    assert done["status"] == "succeeded", done
    # `a` finished at the checkpoint (with n=1) and is not run again; c sees the new input
    assert done["output"] == {"n": 10, "b": 4}
    assert done["input"] == {"n": 10}
    assert started(await events_json(client, fork["run_id"])) == ["b", "c"]

    source = await client.get(f"/v1/runs/{original['run_id']}")
    assert source.json()["output"] == {"n": 1, "b": 4}, "the source run is untouched"


async def test_fork_a_failed_run_with_a_vars_patch(client: httpx.AsyncClient) -> None:
    workflow_id = unique("fixable")
    await post_workflow(client, fixable(workflow_id))
    failed = await start_run(client, workflow_id, {"n": 1}, wait=10)
    assert failed["status"] == "failed"
    latest = (await checkpoints_of(client, failed["run_id"]))[-1]

    response = await client.post(
        f"/v1/checkpoints/{latest['id']}/resume", json={"fork": True, "vars": {"fix": 1}}
    )
    assert response.status_code == 202, response.text
    fork_id = response.json()["run_id"]
    assert fork_id != failed["run_id"]
    done = await finished(client, fork_id)
    assert done["status"] == "succeeded", done
    assert done["output"] == {"d": 5}, "the original input by default"
    assert started(await events_json(client, fork_id)) == ["c", "d"]
    assert (await client.get(f"/v1/runs/{failed['run_id']}")).json()["status"] == "failed"


async def test_a_fork_without_an_input_patch_reports_the_input_it_ran_with(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = unique("steps")
    await post_workflow(client, three_steps(workflow_id))
    original = await start_run(client, workflow_id, {"n": 1}, wait=10)
    checkpoint_id = (await checkpoints_of(client, original["run_id"]))[0]["id"]
    response = await client.post(f"/v1/checkpoints/{checkpoint_id}/resume", json={"fork": True})
    done = await finished(client, response.json()["run_id"])
    assert done["output"] == {"n": 1, "b": 4}
    assert done["input"] == {"n": 1}


async def test_a_finished_fork_still_says_where_it_came_from(client: httpx.AsyncClient) -> None:
    workflow_id = unique("steps")
    await post_workflow(client, three_steps(workflow_id))
    original = await start_run(client, workflow_id, {"n": 1}, wait=10)
    checkpoint_id = (await checkpoints_of(client, original["run_id"]))[0]["id"]
    response = await client.post(
        f"/v1/checkpoints/{checkpoint_id}/resume", json={"fork": True, "input": {"n": 2}}
    )
    fork_id = response.json()["run_id"]
    done = await finished(client, fork_id)
    assert done["status"] == "succeeded"
    assert done["forked_from"] == checkpoint_id


async def test_resume_requests_are_validated(client: httpx.AsyncClient) -> None:
    workflow_id = unique("fixable")
    await post_workflow(client, fixable(workflow_id))
    failed = await start_run(client, workflow_id, {"n": 1}, wait=10)
    latest = (await checkpoints_of(client, failed["run_id"]))[-1]
    for body in ({"vars": [1]}, {"fork": "sometimes"}, {"unexpected": True}):
        response = await client.post(f"/v1/checkpoints/{latest['id']}/resume", json=body)
        assert_problem(response, 422, "invalid-request")
    assert (await client.get(f"/v1/runs/{failed['run_id']}")).json()["status"] == "failed"
