"""No workflow makes a replica do unbounded work or store what it cannot hold: budgets
fail the run (kind ``budget``) naming the budget and its value; a node that produces a
value no store holds fails (kind ``output``) with a complete event log; and whatever the
database refuses, the run ends ``failed`` with a terminal event and no driver message.
Through the real HTTP API, on SQLite and Postgres."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import DataError

from app.store.repository import Store
from tests.service.support import (
    MakeSettings,
    Serve,
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


def lease_takeovers(metrics: str) -> float:
    (line,) = [m for m in metrics.splitlines() if m.startswith("flowcore_lease_takeovers_total ")]
    return float(line.split()[1])


async def assert_ends_cleanly(client: httpx.AsyncClient, run_id: str, kind: str) -> dict[str, Any]:
    """The run failed with ``kind``, its log ends with run.failed, its stream ends, and
    every read of it and the listing answer."""
    run = await finished(client, run_id, timeout=60)
    assert run["status"] == "failed", run
    assert run["error"]["kind"] == kind, run["error"]
    log = await events_json(client, run_id)
    assert [e["seq"] for e in log] == list(range(1, len(log) + 1))
    assert log[-1]["type"] == "run.failed", log[-5:]
    async with client.stream("GET", f"/v1/runs/{run_id}/events") as response:
        body = await asyncio.wait_for(response.aread(), 30)
    assert b"event: run.failed" in body
    for path in (f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/state", "/v1/runs"):
        assert (await client.get(path)).status_code == 200, path
    return run


# ----------------------------------------------------------------------------- budgets


async def test_recursive_subworkflows_stop_at_the_subrun_budget(client: httpx.AsyncClient) -> None:
    # each run of `fork` starts two of itself while d < 24: 2^24 runs without a budget
    workflow_id = unique("fork")
    await post_workflow(
        client,
        {
            "id": workflow_id,
            "nodes": [
                transform("go", d="input.d"),
                *(
                    {
                        "id": side,
                        "type": "subworkflow",
                        "config": {"workflow_id": workflow_id, "input": {"d": "input.d + 1"}},
                    }
                    for side in ("left", "right")
                ),
            ],
            "edges": [
                {"source": "go", "target": side, "condition": "input.d < 24"}
                for side in ("left", "right")
            ],
        },
    )
    run_id = (await start_run(client, workflow_id, {"d": 0}))["run_id"]
    # the replica answers meanwhile
    assert (await client.get("/healthz")).status_code == 200
    run = await assert_ends_cleanly(client, run_id, "budget")
    assert "max_subruns is 1000" in run["error"]["message"]


async def test_a_map_of_maps_stops_at_the_execution_budget(
    serve: Serve, make_settings: MakeSettings
) -> None:
    # 1,000 x 1,000 bodies; the operator's budget (lowered here to keep the test short:
    # the default, 100,000, is measured in docs/benchmarks.md) stops it
    settings = make_settings(execution={"max_node_executions": 5_000})
    async with serve(settings) as client:
        takeovers = lease_takeovers((await client.get("/metrics")).text)
        workflow_id = unique("maps")
        await post_workflow(
            client,
            {
                "id": workflow_id,
                "vars": {"xs": list(range(1000))},
                "nodes": [
                    {
                        "id": "outer",
                        "type": "map",
                        "config": {
                            "items": "vars.xs",
                            "workflow": {
                                "id": "body",
                                "nodes": [
                                    {
                                        "id": "inner",
                                        "type": "map",
                                        "config": {
                                            "items": "vars.xs",
                                            "node": {"id": "leaf", "type": "noop"},
                                        },
                                    }
                                ],
                            },
                        },
                    }
                ],
            },
        )
        run_id = (await start_run(client, workflow_id))["run_id"]
        run = await assert_ends_cleanly(client, run_id, "budget")
        assert "max_node_executions is 5000" in run["error"]["message"]
        # no heartbeat starved: the run was never taken over
        assert lease_takeovers((await client.get("/metrics")).text) == takeovers


async def test_doubling_strings_stop_at_the_output_budget(client: httpx.AsyncClient) -> None:
    # 20 doublings of 64 characters would be 64 MiB (13 made 64 MB before)
    nodes = [transform("n0", s="input.s")]
    nodes += [
        transform(f"n{i}", s=f"nodes.n{i - 1}.output.s + nodes.n{i - 1}.output.s")
        for i in range(1, 21)
    ]
    workflow_id = unique("double")
    await post_workflow(client, chain(workflow_id, *nodes))
    run_id = (await start_run(client, workflow_id, {"s": "x" * 64}))["run_id"]
    run = await assert_ends_cleanly(client, run_id, "budget")
    assert "max_output_bytes is 2.09715e+06" in run["error"]["message"]
    assert run["error"]["node_id"] == "n15"  # 64 * 2^15 = 2 MiB
    state = await client.get(f"/v1/runs/{run_id}/state")
    assert len(state.content) < 3 * 1024 * 1024


async def test_a_definition_lowers_a_budget_and_a_run_cannot_raise_it(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = unique("low")
    nodes = [transform(f"n{i}", v="1") for i in range(5)]
    await post_workflow(client, chain(workflow_id, *nodes, config={"max_node_executions": 3}))
    run = await start_run(client, workflow_id, config={"max_node_executions": 1_000_000}, wait=10)
    assert run["status"] == "failed"
    assert run["error"]["kind"] == "budget"
    assert "max_node_executions is 3" in run["error"]["message"]


async def test_size_knobs_are_capped(client: httpx.AsyncClient) -> None:
    http = {
        "id": unique("big"),
        "nodes": [
            {
                "id": "get",
                "type": "http",
                "config": {"url": "https://example.com/", "max_response_bytes": 1e12},
            }
        ],
    }
    problem = assert_problem(await client.post("/v1/workflows", json=http), 422, "invalid-workflow")
    assert problem["errors"][0]["field"] == "config.max_response_bytes"
    workflow_id = unique("knobs")
    await post_workflow(client, chain(workflow_id, transform("a", v="1")))
    for knob, value in (("max_parallel_nodes", "1000000000"), ("node_timeout", "1e999")):
        response = await client.post(
            "/v1/runs",
            content=f'{{"workflow_id": "{workflow_id}", "config": {{"{knob}": {value}}}}}',
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 422, (knob, response.text)


@pytest.mark.parametrize(
    ("seconds", "kind", "says"),
    [
        (1e308, "budget", "max_delay_seconds"),
        ("{{ 1.0 / 0.0 }}", "config", "non-negative number"),
        ("{{ input.s }}", "config", "'vars.pin'"),  # data is never evaluated as CEL
    ],
)
async def test_delays_are_bounded_and_data_stays_data(
    client: httpx.AsyncClient, seconds: Any, kind: str, says: str
) -> None:
    workflow_id = unique("nap")
    await post_workflow(
        client,
        chain(
            workflow_id,
            {"id": "nap", "type": "delay", "config": {"seconds": seconds}},
            vars={"pin": 0},
        ),
    )
    run = await start_run(client, workflow_id, {"s": "vars.pin"}, wait=10)
    assert run["status"] == "failed", run
    assert run["error"]["kind"] == kind
    assert says in run["error"]["message"]


async def test_cancelling_a_large_run_takes_effect_at_once(client: httpx.AsyncClient) -> None:
    workflow_id = unique("wide")
    await post_workflow(
        client,
        {
            "id": workflow_id,
            "nodes": [
                {
                    "id": "each",
                    "type": "map",
                    "config": {
                        "items": "input.xs",
                        "node": {"id": "nap", "type": "delay", "config": {"seconds": 60}},
                    },
                }
            ],
        },
    )
    run_id = (await start_run(client, workflow_id, {"xs": list(range(5000))}))["run_id"]
    await wait_status(client, run_id, "running")
    loop = asyncio.get_running_loop()
    asked = loop.time()
    assert (await client.post(f"/v1/runs/{run_id}/cancel")).status_code == 202
    run = await wait_status(client, run_id, "cancelled", timeout=10)
    assert run["status"] == "cancelled"
    print(f"cancelled after {loop.time() - asked:.3f}s")
    assert (await events_json(client, run_id))[-1]["type"] == "run.cancelled"


# ---------------------------------------------------------------------- unstorable output


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        (r"'a\x00b'", "NUL"),
        ("1.0 / 0.0", "Infinity is not a JSON number"),
        ("-1.0 / 0.0", "-Infinity is not a JSON number"),
    ],
)
async def test_a_node_producing_an_unstorable_value_fails_with_a_complete_log(
    client: httpx.AsyncClient, expression: str, says: str
) -> None:
    workflow_id = unique("bad")
    await post_workflow(
        client, chain(workflow_id, transform("ok", v="1"), transform("bad", v=expression))
    )
    run_id = (await start_run(client, workflow_id))["run_id"]
    run = await assert_ends_cleanly(client, run_id, "output")
    assert run["error"]["node_id"] == "bad"
    assert says in run["error"]["message"]
    log = await events_json(client, run_id)
    assert ("node.completed", "ok") in [(e["type"], e["node_id"]) for e in log]
    assert ("node.failed", "bad") in [(e["type"], e["node_id"]) for e in log]


async def test_an_output_nested_too_deep_fails_its_node(client: httpx.AsyncClient) -> None:
    # each noop outputs its parent's output one level deeper: n64's is 65 deep
    workflow_id = unique("deep")
    await post_workflow(
        client, chain(workflow_id, *({"id": f"n{i}", "type": "noop"} for i in range(70)))
    )
    run_id = (await start_run(client, workflow_id))["run_id"]
    run = await assert_ends_cleanly(client, run_id, "output")
    assert run["error"]["node_id"] == "n64"
    assert "nests deeper than 64 levels" in run["error"]["message"]


async def test_what_the_database_refuses_ends_the_run_with_a_terminal_event(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    commit = Store.commit_progress

    async def refusing(self: Store, lease: Any, records: Any, events: Any, **kw: Any) -> None:
        if any(e.node_id == "boom" and e.type.value == "node.completed" for e in events):
            raise DataError(
                "INSERT INTO events ...",
                {},
                Exception('invalid byte sequence for encoding "UTF8": 0x00 (secret-value)'),
            )
        await commit(self, lease, records, events, **kw)

    monkeypatch.setattr(Store, "commit_progress", refusing)
    workflow_id = unique("refused")
    await post_workflow(client, chain(workflow_id, transform("a", v="1"), transform("boom", v="2")))
    run_id = (await start_run(client, workflow_id))["run_id"]
    run = await assert_ends_cleanly(client, run_id, "storage")
    assert run["error"]["message"] == "the run's state could not be stored"
    for path in (f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/trace", "/v1/runs"):
        text = (await client.get(path)).text
        assert "secret-value" not in text
        assert "DataError" not in text
        assert "INSERT" not in text
