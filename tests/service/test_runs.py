"""Runs over HTTP: start, ``?wait``, read, list with filters and paging, idempotency, and
every way a bad request is refused (never with a 500)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.service.support import (
    MakeSettings,
    Serve,
    assert_problem,
    chain,
    finished,
    greet,
    post_workflow,
    start_run,
    unique,
)


async def test_start_returns_202_with_run_id_and_links(client: httpx.AsyncClient) -> None:
    workflow_id = unique("greet")
    await post_workflow(client, greet(workflow_id))

    response = await client.post(
        "/v1/runs", json={"workflow_id": workflow_id, "input": {"name": "Ada"}}
    )
    assert response.status_code == 202, response.text
    run = response.json()
    run_id = run["run_id"]
    assert run_id
    assert response.headers["location"] == f"/v1/runs/{run_id}"
    assert run["status"] in ("queued", "running", "succeeded")
    assert run["workflow_id"] == workflow_id
    assert run["workflow_version"] == 1
    assert run["links"] == {
        "self": f"/v1/runs/{run_id}",
        "events": f"/v1/runs/{run_id}/events",
        "cancel": f"/v1/runs/{run_id}/cancel",
        "checkpoints": f"/v1/runs/{run_id}/checkpoints",
        "trace": f"/v1/runs/{run_id}/trace",
    }

    done = await finished(client, run_id)
    assert done["status"] == "succeeded"
    assert done["output"] == {"greeting": "Hello, Ada"}
    assert done["input"] == {"name": "Ada"}
    assert done["error"] is None
    assert done["started_at"] is not None
    assert done["finished_at"] is not None
    assert done["duration_ms"] is not None
    assert done["duration_ms"] >= 0
    assert done["current_nodes"] == []


async def test_wait_returns_the_finished_run(client: httpx.AsyncClient) -> None:
    workflow_id = unique("greet")
    await post_workflow(client, greet(workflow_id))

    response = await client.post(
        "/v1/runs", params={"wait": 5}, json={"workflow_id": workflow_id, "input": {"name": "Bo"}}
    )
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["status"] == "succeeded"
    assert run["output"] == {"greeting": "Hello, Bo"}

    again = await client.get(f"/v1/runs/{run['run_id']}")
    assert again.status_code == 200
    assert again.json()["status"] == "succeeded"
    assert again.json()["output"] == {"greeting": "Hello, Bo"}


async def test_wait_that_runs_out_returns_202_with_the_unfinished_run(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = unique("slow")
    await post_workflow(
        client, chain(workflow_id, {"id": "nap", "type": "delay", "config": {"seconds": 30}})
    )
    response = await client.post(
        "/v1/runs", params={"wait": 0.3}, json={"workflow_id": workflow_id}
    )
    assert response.status_code == 202, response.text
    run = response.json()
    assert run["status"] in ("queued", "running")
    cancelled = await client.post(f"/v1/runs/{run['run_id']}/cancel")
    assert cancelled.status_code == 202
    assert (await finished(client, run["run_id"]))["status"] == "cancelled"


async def test_list_filters_and_pages(client: httpx.AsyncClient) -> None:
    ok_id, bad_id = unique("ok"), unique("bad")
    await post_workflow(client, greet(ok_id))
    await post_workflow(
        client, chain(bad_id, {"id": "boom", "type": "fail", "config": {"message": "no"}})
    )
    ok_runs = [
        (await start_run(client, ok_id, {"name": str(i)}, wait=10))["run_id"] for i in range(5)
    ]
    bad_run = (await start_run(client, bad_id, wait=10))["run_id"]
    assert (await finished(client, bad_run))["status"] == "failed"

    response = await client.get("/v1/runs", params={"workflow_id": bad_id})
    assert response.status_code == 200
    assert [r["run_id"] for r in response.json()["items"]] == [bad_run]

    failed = (await client.get("/v1/runs", params={"status": "failed"})).json()["items"]
    assert [r["run_id"] for r in failed] == [bad_run]
    assert failed[0]["error"]["message"] == "no"

    both = await client.get("/v1/runs", params={"workflow_id": ok_id, "status": "failed"})
    assert both.json() == {"items": [], "next_cursor": None}

    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        params: dict[str, str | int] = {"workflow_id": ok_id, "limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await client.get("/v1/runs", params=params)).json()
        assert len(page["items"]) <= 2
        assert all(r["workflow_id"] == ok_id for r in page["items"])
        seen += [r["run_id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert cursor is None, "paging does not end"
    assert len(seen) == len(set(seen)), f"duplicates across pages: {seen}"
    assert seen == list(reversed(ok_runs)), "newest first"


async def test_list_refuses_bad_filters_and_cursors(client: httpx.AsyncClient) -> None:
    assert_problem(
        await client.get("/v1/runs", params={"status": "sleeping"}), 422, "invalid-request"
    )
    # not of the form next_cursor has: refused as a parameter, naming it
    problem = assert_problem(
        await client.get("/v1/runs", params={"cursor": "garbage"}), 422, "invalid-request"
    )
    assert problem["errors"][0]["field"] == "query.cursor"
    assert_problem(await client.get("/v1/runs", params={"limit": 0}), 422, "invalid-request")


async def test_idempotency_key_replays_the_same_run(client: httpx.AsyncClient) -> None:
    workflow_id = unique("greet")
    await post_workflow(client, greet(workflow_id))
    key = unique("key")
    body = {"workflow_id": workflow_id, "input": {"name": "Cy"}}

    first = await client.post("/v1/runs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    assert "idempotent-replayed" not in first.headers
    run_id = first.json()["run_id"]

    second = await client.post("/v1/runs", json=body, headers={"Idempotency-Key": key})
    assert second.status_code in (200, 202), second.text
    assert second.json()["run_id"] == run_id
    assert second.headers["idempotent-replayed"] == "true"

    await finished(client, run_id)
    listed = (await client.get("/v1/runs", params={"workflow_id": workflow_id})).json()
    assert [r["run_id"] for r in listed["items"]] == [run_id], "exactly one run"

    different = {"workflow_id": workflow_id, "input": {"name": "Someone else"}}
    conflict = await client.post("/v1/runs", json=different, headers={"Idempotency-Key": key})
    body_out = assert_problem(conflict, 409, "idempotency-conflict")
    # the other request's run is not named: whoever reuses a key may not own that run
    assert key in body_out["detail"]
    assert run_id not in conflict.text

    other_key = await client.post("/v1/runs", json=body, headers={"Idempotency-Key": unique("k")})
    assert other_key.status_code == 202
    assert other_key.json()["run_id"] != run_id


async def test_input_is_checked_against_the_input_schema(client: httpx.AsyncClient) -> None:
    workflow_id = unique("typed")
    schema = {
        "type": "object",
        "required": ["name"],
        "properties": {"name": {"type": "string"}},
    }
    await post_workflow(client, {**greet(workflow_id), "input_schema": schema})

    response = await client.post("/v1/runs", json={"workflow_id": workflow_id, "input": {}})
    body = assert_problem(response, 422, "/invalid-input")
    assert "name" in body["detail"]
    assert body["errors"]

    wrong_type = await client.post(
        "/v1/runs", json={"workflow_id": workflow_id, "input": {"name": 7}}
    )
    assert_problem(wrong_type, 422, "/invalid-input")
    assert (await client.get("/v1/runs", params={"workflow_id": workflow_id})).json()["items"] == []

    ok = await start_run(client, workflow_id, {"name": "Di"}, wait=10)
    assert ok["output"] == {"greeting": "Hello, Di"}


async def test_an_unknown_config_knob_is_a_422_naming_it(client: httpx.AsyncClient) -> None:
    workflow_id = unique("greet")
    await post_workflow(client, greet(workflow_id))

    response = await client.post(
        "/v1/runs",
        json={"workflow_id": workflow_id, "input": {"name": "x"}, "config": {"warp_speed": 9}},
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    fields = [e.get("field") for e in response.json()["errors"]]
    assert "config.warp_speed" in fields

    bad_value = await client.post(
        "/v1/runs",
        json={
            "workflow_id": workflow_id,
            "input": {"name": "x"},
            "config": {"max_retries": "many"},
        },
    )
    assert bad_value.status_code == 422, bad_value.text
    assert bad_value.headers["content-type"].startswith("application/problem+json")

    known = await start_run(client, workflow_id, {"name": "x"}, config={"max_retries": 1}, wait=10)
    assert known["status"] == "succeeded"


async def test_a_body_over_the_limit_is_a_413_problem(
    serve: Serve, make_settings: MakeSettings
) -> None:
    async with serve(make_settings(max_body_bytes=2048)) as client:
        workflow_id = unique("greet")
        await post_workflow(client, greet(workflow_id))
        big = {"workflow_id": workflow_id, "input": {"name": "x" * 4096}}

        response = await client.post("/v1/runs", json=big)
        body = assert_problem(response, 413, "payload-too-large")
        assert "2048" in body["detail"]

        small = await start_run(client, workflow_id, {"name": "x"}, wait=10)
        assert small["status"] == "succeeded"
        listed = (await client.get("/v1/runs", params={"workflow_id": workflow_id})).json()
        assert len(listed["items"]) == 1, "the refused request started nothing"


async def test_a_chunked_body_over_the_limit_is_a_413_problem(
    serve: Serve, make_settings: MakeSettings
) -> None:
    async with serve(make_settings(max_body_bytes=2048)) as client:
        workflow_id = unique("greet")
        await post_workflow(client, greet(workflow_id))
        payload = json.dumps({"workflow_id": workflow_id, "input": {"name": "x" * 4096}}).encode()

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(payload), 512):
                yield payload[i : i + 512]

        response = await client.post(
            "/v1/runs", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert "content-length" not in response.request.headers
        assert_problem(response, 413, "payload-too-large")


async def test_malformed_requests_are_422_problems_never_500(client: httpx.AsyncClient) -> None:
    workflow_id = unique("greet")
    await post_workflow(client, greet(workflow_id))
    json_header = {"Content-Type": "application/json"}
    cases: list[tuple[str, str, bytes | None]] = [
        ("POST", "/v1/runs", b"{not json"),
        ("POST", "/v1/runs", b""),
        ("POST", "/v1/runs", b"[1, 2]"),
        ("POST", "/v1/runs", json.dumps({"input": {}}).encode()),  # no workflow_id
        ("POST", "/v1/runs", json.dumps({"workflow_id": workflow_id, "extra": 1}).encode()),
        ("POST", "/v1/runs", json.dumps({"workflow_id": workflow_id, "version": 0}).encode()),
        ("POST", "/v1/runs", b"\xff\xfe\x00garbage"),
        ("POST", "/v1/workflows", b"{not json"),
        ("POST", "/v1/workflows/validate", b'{"id": '),
    ]
    for method, path, content in cases:
        response = await client.request(method, path, content=content, headers=json_header)
        body = assert_problem(response, 422, "invalid-request")
        assert body["detail"], (path, content)
    assert (await client.get("/v1/runs", params={"workflow_id": workflow_id})).json()["items"] == []


async def test_unknown_run_is_a_404_problem(client: httpx.AsyncClient) -> None:
    missing = unique("no-run")
    for method, path in [
        ("GET", f"/v1/runs/{missing}"),
        ("POST", f"/v1/runs/{missing}/cancel"),
        ("GET", f"/v1/runs/{missing}/trace"),
        ("GET", f"/v1/runs/{missing}/state"),
        ("GET", f"/v1/runs/{missing}/checkpoints"),
        ("GET", f"/v1/runs/{missing}/events"),
        ("GET", f"/v1/checkpoints/{missing}:1"),
        ("POST", f"/v1/checkpoints/{missing}:1/resume"),
    ]:
        json_body: dict[str, Any] | None = {} if method == "POST" else None
        response = await client.request(method, path, json=json_body)
        assert_problem(response, 404, "not-found")
    signal = await client.post(f"/v1/runs/{missing}/signal", json={"name": "go"})
    assert_problem(signal, 404, "not-found")
