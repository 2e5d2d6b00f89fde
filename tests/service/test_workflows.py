"""Workflows over HTTP: immutable versions, validation, cursor paging, archiving."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.service.support import (
    assert_problem,
    chain,
    greet,
    post_workflow,
    start_run,
    transform,
    unique,
)


def invalid_definition(workflow_id: str) -> dict[str, Any]:
    """Three problems: an unknown node type, a bad expression, a dangling edge."""
    return {
        "id": workflow_id,
        "nodes": [
            {"id": "a", "type": "no-such-type"},
            transform("b", x="1 +"),
        ],
        "edges": [{"source": "b", "target": "ghost"}],
    }


async def test_post_creates_versions_one_then_two(client: httpx.AsyncClient) -> None:
    definition = greet(unique("greet"))
    workflow_id = definition["id"]

    first = await client.post("/v1/workflows", json=definition)
    assert first.status_code == 201, first.text
    assert first.headers["location"] == f"/v1/workflows/{workflow_id}/versions/1"
    assert first.json()["version"] == 1
    assert first.json()["archived"] is False

    changed = {**definition, "name": "Greeter v2"}
    second = await client.post("/v1/workflows", json=changed)
    assert second.status_code == 201, second.text
    assert second.headers["location"] == f"/v1/workflows/{workflow_id}/versions/2"
    assert second.json()["version"] == 2

    latest = await client.get(f"/v1/workflows/{workflow_id}")
    assert latest.status_code == 200
    assert latest.json()["version"] == 2
    assert latest.json()["name"] == "Greeter v2"

    v1 = await client.get(f"/v1/workflows/{workflow_id}/versions/1")
    assert v1.status_code == 200
    assert v1.json()["version"] == 1
    assert v1.json()["name"] is None
    assert v1.json()["definition"]["nodes"][0]["id"] == "hello"

    assert_problem(await client.get(f"/v1/workflows/{workflow_id}/versions/3"), 404, "not-found")


async def test_a_run_pins_the_version_it_started_on(client: httpx.AsyncClient) -> None:
    workflow_id = unique("pinned")
    await post_workflow(
        client, chain(workflow_id, transform("t", v="'one'"), output={"v": "nodes.t.output.v"})
    )
    await post_workflow(
        client, chain(workflow_id, transform("t", v="'two'"), output={"v": "nodes.t.output.v"})
    )

    latest = await start_run(client, workflow_id, wait=10)
    assert (latest["workflow_version"], latest["output"]) == (2, {"v": "two"})
    pinned = await start_run(client, workflow_id, version=1, wait=10)
    assert (pinned["workflow_version"], pinned["output"]) == (1, {"v": "one"})


async def test_list_pages_with_a_cursor(client: httpx.AsyncClient) -> None:
    prefix = unique("page")
    ids = [f"{prefix}-{i}" for i in range(5)]
    for workflow_id in ids:
        await post_workflow(client, greet(workflow_id))
    await post_workflow(client, greet(ids[0]))  # a second version is still one item

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, str | int] = {"limit": 2}
        if cursor is not None:
            params["cursor"] = cursor
        response = await client.get("/v1/workflows", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen += [item["id"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 10, "paging does not end"

    assert len(seen) == len(set(seen)), f"duplicates across pages: {seen}"
    assert sorted(seen) == sorted(ids)
    assert pages == 3
    versions = {
        item["id"]: item["version"] for item in (await client.get("/v1/workflows")).json()["items"]
    }
    assert versions[ids[0]] == 2


async def test_validate_reports_without_storing(client: httpx.AsyncClient) -> None:
    good = greet(unique("valid"))
    response = await client.post("/v1/workflows/validate", json=good)
    assert response.status_code == 200, response.text
    assert response.json() == {"valid": True, "errors": []}
    assert_problem(await client.get(f"/v1/workflows/{good['id']}"), 404, "not-found")

    bad = invalid_definition(unique("invalid"))
    response = await client.post("/v1/workflows/validate", json=bad)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["valid"] is False
    where = {(e["node"], e["field"]) for e in body["errors"]}
    assert ("a", "type") in where
    assert ("b", "config.output.x") in where
    assert all(e["message"] for e in body["errors"])
    assert_problem(await client.get(f"/v1/workflows/{bad['id']}"), 404, "not-found")


async def test_an_invalid_definition_is_a_422_naming_node_field_and_reason(
    client: httpx.AsyncClient,
) -> None:
    bad = invalid_definition(unique("invalid"))
    response = await client.post("/v1/workflows", json=bad)
    body = assert_problem(response, 422, "/invalid-workflow")
    errors = body["errors"]
    assert len(errors) == 3, errors
    by_node = {e["node"]: e for e in errors if e["node"] is not None}
    assert by_node["a"]["field"] == "type"
    assert "no-such-type" in by_node["a"]["message"]
    assert by_node["b"]["field"] == "config.output.x"
    assert by_node["b"]["message"]
    dangling = [e for e in errors if e["node"] is None]
    assert dangling
    assert "ghost" in dangling[0]["message"]
    assert_problem(await client.get(f"/v1/workflows/{bad['id']}"), 404, "not-found")


@pytest.mark.parametrize(
    "body",
    [
        [1, 2, 3],
        {"id": "bad-config", "nodes": [{"id": "d", "type": "delay", "config": {}}]},
        {"id": "x" * 500, "nodes": [{"id": "a", "type": "noop"}]},
        {
            "id": "cyclic",
            "nodes": [{"id": "a", "type": "noop"}, {"id": "b", "type": "noop"}],
            "edges": [{"source": "a", "target": "b"}, {"source": "b", "target": "a"}],
        },
    ],
    ids=["not-an-object", "bad-config", "id-too-long", "cycle"],
)
async def test_bad_definitions_are_422_problems_never_500(
    client: httpx.AsyncClient, body: Any
) -> None:
    response = await client.post("/v1/workflows", json=body)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_delete_archives(client: httpx.AsyncClient) -> None:
    workflow_id = unique("archive")
    await post_workflow(client, greet(workflow_id))
    before = await start_run(client, workflow_id, {"name": "Ada"}, wait=10)
    assert before["status"] == "succeeded"

    response = await client.delete(f"/v1/workflows/{workflow_id}")
    assert response.status_code == 204, response.text

    assert_problem(await client.get(f"/v1/workflows/{workflow_id}"), 404, "not-found")
    # its versions are gone from the API with it (its runs keep theirs)
    version = await client.get(f"/v1/workflows/{workflow_id}/versions/1")
    assert "archived" in assert_problem(version, 404, "not-found")["detail"]
    listed = (await client.get("/v1/workflows", params={"limit": 200})).json()["items"]
    assert workflow_id not in {item["id"] for item in listed}

    refused = await client.post(
        "/v1/runs", json={"workflow_id": workflow_id, "input": {"name": "Ada"}}
    )
    assert_problem(refused, 404, "not-found")
    # the run started before archiving is still readable
    assert (await client.get(f"/v1/runs/{before['run_id']}")).status_code == 200


async def test_an_archived_workflow_starts_no_run_even_by_version(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = unique("archive")
    await post_workflow(client, greet(workflow_id))
    assert (await client.delete(f"/v1/workflows/{workflow_id}")).status_code == 204
    refused = await client.post(
        "/v1/runs", json={"workflow_id": workflow_id, "version": 1, "input": {"name": "Ada"}}
    )
    assert 400 <= refused.status_code < 500, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")


async def test_unknown_workflow_is_a_404_problem(client: httpx.AsyncClient) -> None:
    missing = unique("missing")
    assert_problem(await client.get(f"/v1/workflows/{missing}"), 404, "not-found")
    assert_problem(await client.get(f"/v1/workflows/{missing}/versions/1"), 404, "not-found")
    assert_problem(await client.delete(f"/v1/workflows/{missing}"), 404, "not-found")
    response = await client.post("/v1/runs", json={"workflow_id": missing})
    body = assert_problem(response, 404, "not-found")
    assert missing in body["detail"]
