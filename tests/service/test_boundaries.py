"""Values the store cannot hold are refused where they enter, with a 422 (or 400) problem
naming what is wrong, the same on SQLite and Postgres — and nothing is half-written: the
listing of runs answers 200 afterwards, every time.

Bodies are written as raw JSON text where ``json.dumps`` would not write what a hostile
client can send (``NaN``, ``Infinity``, ``1e999``, a lone surrogate escape)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.service.support import (
    PROBLEM,
    assert_problem,
    chain,
    events_json,
    finished,
    post_workflow,
    start_run,
    transform,
    unique,
)

JSON = {"Content-Type": "application/json"}
MAX_INT = 2**31 - 1


def nested(depth: int, leaf: Any = 1) -> Any:
    value = leaf
    for _ in range(depth):
        value = {"k": value}
    return value


def raw_nested(depth: int) -> str:
    return '{"k": ' * depth + "1" + "}" * depth


async def listing_answers(client: httpx.AsyncClient) -> None:
    """The guarantee behind every refusal: nothing poisonous got stored."""
    for path in ("/v1/runs", "/v1/workflows"):
        response = await client.get(path)
        assert response.status_code == 200, response.text
        response.json()


async def a_waiting_run(client: httpx.AsyncClient) -> tuple[str, str]:
    """A run parked on a `wait` node, and its first checkpoint's id."""
    workflow_id = unique("approve")
    await post_workflow(
        client,
        chain(
            workflow_id,
            transform("a", v="1"),
            {"id": "w", "type": "wait", "config": {"signal": "go"}},
        ),
    )
    run = await start_run(client, workflow_id, {"n": 1}, wait=10)
    assert run["status"] == "waiting", run
    return run["run_id"], f"{run['run_id']}:1"


# ------------------------------------------------------------------------------ nesting


async def test_one_nesting_limit_at_every_entrance(client: httpx.AsyncClient) -> None:
    workflow_id = unique("echo")
    await post_workflow(client, chain(workflow_id, transform("a", v="input")))
    run_id, checkpoint = await a_waiting_run(client)
    too_deep = [
        ("/v1/runs", {"workflow_id": workflow_id, "input": nested(65)}, "body.input"),
        ("/v1/runs", {"workflow_id": workflow_id, "input": nested(300)}, "body.input"),
        (f"/v1/runs/{run_id}/signal", {"name": "go", "payload": nested(300)}, "body.payload"),
        (f"/v1/checkpoints/{checkpoint}/resume", {"vars": {"v": nested(64)}}, "body.vars.v"),
        (f"/v1/checkpoints/{checkpoint}/resume", {"fork": True, "input": nested(65)}, "body.input"),
        ("/v1/workflows", {"id": "deep", "nodes": [], "vars": nested(70)}, "vars"),
    ]
    for path, body, field in too_deep:
        response = await client.post(path, json=body)
        problem = response.json()
        assert response.status_code == 422, (path, response.text)
        assert response.headers["content-type"].startswith(PROBLEM)
        assert field in problem["detail"], problem
        assert "nests deeper than 64 levels" in problem["detail"]
    # deeper than the JSON parser goes: refused the same way, not a 400 or a 500
    response = await client.post(
        "/v1/runs",
        content=f'{{"workflow_id": "{workflow_id}", "input": {raw_nested(5000)}}}',
        headers=JSON,
    )
    assert_problem(response, 422, "invalid-request")
    # at the limit: accepted, stored and read back whole, everywhere
    run = await start_run(client, workflow_id, nested(63), wait=10)
    assert run["status"] == "succeeded", run
    assert run["output"] == {"a": {"v": nested(63)}}
    await listing_answers(client)


async def test_a_signal_payload_at_the_limit_leaves_every_read_answering(
    client: httpx.AsyncClient,
) -> None:
    run_id, _ = await a_waiting_run(client)
    signal = await client.post(
        f"/v1/runs/{run_id}/signal", json={"name": "go", "payload": nested(64)}
    )
    assert signal.status_code == 202, signal.text
    run = await finished(client, run_id)
    # the wait node's output is the payload: 64 levels, as much as a node may output
    assert run["status"] == "succeeded", run
    for path in (f"/v1/runs/{run_id}", f"/v1/runs/{run_id}/state", f"/v1/runs/{run_id}/trace"):
        assert (await client.get(path)).status_code == 200, path
    assert (await events_json(client, run_id))[-1]["type"] == "run.succeeded"
    await listing_answers(client)


# ------------------------------------------------------------------ NUL, NaN, infinity


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ('"a\\u0000b"', "NUL"),
        ('{"k\\u0000": 1}', "NUL"),
        ('"\\ud800"', "lone surrogate"),
        ("NaN", "NaN is not a JSON number"),
        ("Infinity", "Infinity is not a JSON number"),
        ("-Infinity", "-Infinity is not a JSON number"),
        ("[1, 1e999]", "Infinity is not a JSON number"),
        ("1" * 5000, "cannot be read"),
    ],
)
async def test_values_no_store_holds_are_refused_in_every_body(
    client: httpx.AsyncClient, raw: str, reason: str
) -> None:
    workflow_id = unique("echo")
    await post_workflow(client, chain(workflow_id, transform("a", v="input")))
    run_id, checkpoint = await a_waiting_run(client)
    bodies = [
        ("/v1/runs", f'{{"workflow_id": "{workflow_id}", "input": {{"x": {raw}}}}}'),
        (f"/v1/runs/{run_id}/signal", f'{{"name": "go", "payload": [{raw}]}}'),
        (f"/v1/checkpoints/{checkpoint}/resume", f'{{"vars": {{"v": {raw}}}}}'),
        (f"/v1/checkpoints/{checkpoint}/resume", f'{{"fork": true, "input": {raw}}}'),
        ("/v1/workflows", f'{{"id": "w", "vars": {{"v": {raw}}}, "nodes": []}}'),
        ("/v1/workflows/validate", f'{{"id": "w", "nodes": [], "name": {raw}}}'),
    ]
    for path, body in bodies:
        response = await client.post(path, content=body, headers=JSON)
        problem = assert_problem(response, 422, "invalid-request")
        assert reason in problem["detail"], (path, problem)
        assert problem["errors"][0]["field"].startswith("body"), problem
    # nothing reached the store: the waiting run is as it was, the listing answers
    assert (await client.get(f"/v1/runs/{run_id}")).json()["status"] == "waiting"
    await listing_answers(client)


async def test_nul_in_path_query_and_cursor_values(client: httpx.AsyncClient) -> None:
    for path in (
        "/v1/runs/a%00b",
        "/v1/runs/a%00b/events",
        "/v1/workflows/a%00b",
        "/v1/workflows/a%00b/versions/1",
        "/v1/checkpoints/a%00b:1",
    ):
        problem = assert_problem(await client.get(path), 422, "invalid-request")
        assert problem["errors"][0]["field"].startswith("path."), problem
    problem = assert_problem(
        await client.get("/v1/runs", params={"workflow_id": "a\x00b"}), 422, "invalid-request"
    )
    assert problem["errors"][0]["field"] == "query.workflow_id"
    for path in ("/v1/runs", "/v1/workflows"):
        for cursor in ("a\x00b", "1.5:a\x00b", "nan:abc", "inf:abc", "x" * 301):
            response = await client.get(path, params={"cursor": cursor})
            assert response.status_code in (400, 422), (path, cursor, response.text)
            assert response.headers["content-type"].startswith(PROBLEM)
    await listing_answers(client)


# ------------------------------------------------------------------------------ integers


async def test_integers_beyond_their_columns_are_refused(client: httpx.AsyncClient) -> None:
    workflow_id = unique("int")
    await post_workflow(client, chain(workflow_id, transform("a", v="1")))
    run = await start_run(client, workflow_id, wait=10)
    run_id = run["run_id"]
    for response in (
        await client.get(f"/v1/workflows/{workflow_id}/versions/11322153907541544"),
        await client.get(f"/v1/workflows/{workflow_id}/versions/0"),
        await client.post("/v1/runs", json={"workflow_id": workflow_id, "version": 3_000_000_000}),
        await client.get(f"/v1/runs/{run_id}/events", params={"after": 1_307_674_368_000}),
        await client.get(f"/v1/runs/{run_id}/events", params={"after": -1}),
        await client.get(f"/v1/runs/{run_id}/events", params={"lastEventId": 2**31}),
        await client.get(
            f"/v1/runs/{run_id}/events",
            params={"after": 2**31},
            headers={"Accept": "application/json"},
        ),
        await client.get("/v1/runs", params={"limit": 10**12}),
        await client.post("/v1/runs?wait=1e309", json={"workflow_id": workflow_id}),
        await client.post("/v1/runs?wait=nan", json={"workflow_id": workflow_id}),
    ):
        assert_problem(response, 422, "invalid-request")
    # the largest values that fit are fine
    missing = await client.get(f"/v1/workflows/{workflow_id}/versions/{MAX_INT}")
    assert_problem(missing, 404, "not-found")
    page = await client.get(
        f"/v1/runs/{run_id}/events",
        params={"after": MAX_INT},
        headers={"Accept": "application/json"},
    )
    assert page.json() == {"items": [], "next_cursor": None}


@pytest.mark.parametrize("value", ["-5", "2147483648", "abc", "1.5", "+5", "1e3"])
async def test_a_bad_last_event_id_is_a_400_not_a_stream(
    client: httpx.AsyncClient, value: str
) -> None:
    workflow_id = unique("sse")
    await post_workflow(client, chain(workflow_id, transform("a", v="1")))
    run_id = (await start_run(client, workflow_id, wait=10))["run_id"]
    response = await client.get(
        f"/v1/runs/{run_id}/events",
        headers={"Accept": "text/event-stream", "Last-Event-ID": value},
    )
    problem = assert_problem(response, 400, "bad-event-id")
    assert "Last-Event-ID" in problem["detail"]


async def test_a_stream_after_the_last_event_of_a_finished_run_ends_at_once(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = unique("sse")
    await post_workflow(client, chain(workflow_id, transform("a", v="1")))
    run_id = (await start_run(client, workflow_id, wait=10))["run_id"]
    for after in ("1000", str(MAX_INT)):
        async with client.stream(
            "GET", f"/v1/runs/{run_id}/events", headers={"Last-Event-ID": after}
        ) as response:
            assert response.status_code == 200
            body = await response.aread()  # ends: the run is over, nothing comes after
        assert b"event:" not in body


# --------------------------------------------------------------------------- workflow ids


@pytest.mark.parametrize(
    "bad_id", ["a/b", "a\r\nb", "a\nb", "a\x00b", "-a", ".a", "a b", "x" * 129, "é", ""]
)
async def test_workflow_ids_follow_one_pattern(client: httpx.AsyncClient, bad_id: str) -> None:
    response = await client.post(
        "/v1/workflows", json={"id": bad_id, "nodes": [transform("a", v="1")]}
    )
    problem = response.json()
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    fields = [e.get("field") or "" for e in problem["errors"]]
    assert any(f in ("id", "body.id") for f in fields), problem
    await listing_answers(client)


async def test_a_workflow_needs_an_id_and_a_node(client: httpx.AsyncClient) -> None:
    problem = assert_problem(await client.post("/v1/workflows", json={}), 422, "invalid-workflow")
    assert {e["field"] for e in problem["errors"]} == {"id", "nodes"}
    no_nodes = await client.post("/v1/workflows", json={"id": unique("empty"), "nodes": []})
    problem = assert_problem(no_nodes, 422, "invalid-workflow")
    assert [e["field"] for e in problem["errors"]] == ["nodes"]
    listed = (await client.get("/v1/workflows")).json()["items"]
    assert "workflow" not in [w["id"] for w in listed]


async def test_location_headers_are_url_encoded_and_readable(client: httpx.AsyncClient) -> None:
    workflow_id = f"{unique('v1.2')}_x"
    response = await client.post("/v1/workflows", json=chain(workflow_id, transform("a", v="1")))
    assert response.status_code == 201
    location = response.headers["location"]
    assert location == f"/v1/workflows/{workflow_id}/versions/1"
    assert (await client.get(location)).status_code == 200
    run = await client.post("/v1/runs", json={"workflow_id": workflow_id})
    assert (await client.get(run.headers["location"])).status_code == 200
    # the id reads and archives through its own path
    assert (await client.delete(f"/v1/workflows/{workflow_id}")).status_code == 204


@pytest.mark.parametrize("raw", ["1e999", "NaN", "-Infinity"])
async def test_non_finite_numbers_in_a_definition_are_refused_at_post(
    client: httpx.AsyncClient, raw: str
) -> None:
    body = (
        f'{{"id": "{unique("nan")}", "nodes": [{{"id": "d", "type": "delay", '
        f'"config": {{"seconds": {raw}}}}}]}}'
    )
    response = await client.post("/v1/workflows", content=body, headers=JSON)
    problem = assert_problem(response, 422, "invalid-request")
    assert "body.nodes[0].config.seconds" in problem["detail"]


# ----------------------------------------------------------------------- archived, 405


async def test_an_archived_workflow_is_gone_from_the_api_but_its_runs_go_on(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = unique("old")
    await post_workflow(client, chain(workflow_id, transform("a", v="1"), transform("b", v="2")))
    run = await start_run(client, workflow_id, wait=10)
    assert (await client.delete(f"/v1/workflows/{workflow_id}")).status_code == 204
    assert_problem(await client.get(f"/v1/workflows/{workflow_id}"), 404, "not-found")
    version = await client.get(f"/v1/workflows/{workflow_id}/versions/1")
    assert "archived" in assert_problem(version, 404, "not-found")["detail"]
    refused = await client.post("/v1/runs", json={"workflow_id": workflow_id})
    assert_problem(refused, 404, "not-found")
    # its runs keep their version: they read, and fork
    assert (await client.get(f"/v1/runs/{run['run_id']}")).status_code == 200
    fork = await client.post(f"/v1/checkpoints/{run['run_id']}:1/resume", json={"fork": True})
    assert fork.status_code == 202, fork.text
    assert (await finished(client, fork.json()["run_id"]))["status"] == "succeeded"
    # "validate" is a path of the API, not a workflow id
    reserved = await client.post(
        "/v1/workflows", json={"id": "validate", "nodes": [transform("a", v="1")]}
    )
    assert "reserved" in assert_problem(reserved, 422, "invalid-workflow")["detail"] + str(
        reserved.json()["errors"]
    )
    assert_problem(await client.get("/v1/workflows/validate"), 405, "method-not-allowed")


async def test_405_names_the_allowed_methods(client: httpx.AsyncClient) -> None:
    response = await client.put("/v1/runs")
    assert_problem(response, 405, "method-not-allowed")
    assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}


# ----------------------------------------------------------------------- the contract


async def test_every_error_response_is_documented_as_a_problem(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert {"type", "title", "status", "detail"} <= set(schemas["Problem"]["properties"])
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            assert "500" in responses, (method, path)
            if path.startswith("/v1/"):
                assert "422" in responses, (method, path)
            for status, response in responses.items():
                if status[0] in "45":
                    assert list(response["content"]) == [PROBLEM], (method, path, status)
    # what each operation documents is what it does (the API fuzzing covers the rest)
    runs = spec["paths"]["/v1/runs"]["post"]["responses"]
    assert {"200", "202", "404", "409", "413", "422"} <= set(runs)
    events = spec["paths"]["/v1/runs/{run_id}/events"]["get"]["responses"]
    assert {"400", "404"} <= set(events)


async def test_the_json_event_list_pages(client: httpx.AsyncClient) -> None:
    workflow_id = unique("pages")
    await post_workflow(client, chain(workflow_id, *(transform(f"n{i}", v="1") for i in range(10))))
    run_id = (await start_run(client, workflow_id, wait=10))["run_id"]
    everything = await events_json(client, run_id)
    assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 7}
        if cursor:
            params["cursor"] = cursor
        page = (
            await client.get(
                f"/v1/runs/{run_id}/events", params=params, headers={"Accept": "application/json"}
            )
        ).json()
        pages += 1
        assert len(page["items"]) <= 7
        seen += [e["seq"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [e["seq"] for e in everything]
    assert pages == -(-len(everything) // 7)
    assert_problem(
        await client.get(
            f"/v1/runs/{run_id}/events",
            params={"cursor": "x"},
            headers={"Accept": "application/json"},
        ),
        422,
        "invalid-request",
    )


async def test_no_definition_or_run_names_a_file_for_the_server_to_write(
    client: httpx.AsyncClient, tmp_path: Any
) -> None:
    target = str(tmp_path / "trace.json")
    definition = chain(
        unique("trace"),
        transform("a", v="1"),
        config={"trace_execution": True, "trace_output": target},
    )
    problem = assert_problem(
        await client.post("/v1/workflows", json=definition), 422, "invalid-workflow"
    )
    assert problem["errors"][0]["field"] == "config.trace_output"
    workflow_id = unique("plain")
    await post_workflow(client, chain(workflow_id, transform("a", v="1")))
    for knob, value in (("trace_output", target), ("enable_checkpoints", False)):
        response = await client.post(
            "/v1/runs",
            json={"workflow_id": workflow_id, "config": {"trace_execution": True, knob: value}},
        )
        problem = assert_problem(response, 422, "invalid-config")
        assert f"{knob} cannot be set per run" in problem["detail"]
