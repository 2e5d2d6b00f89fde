"""Conversation memory through the real HTTP API, on SQLite and Postgres: a workflow's
``memory`` nodes append turns that a restarted service and another replica still hold,
``GET /v1/conversations/{id}`` shows them (paged), ``DELETE`` erases them, and each
namespace has its own."""

from __future__ import annotations

from typing import Any

import httpx

from tests.service.support import MakeSettings, Serve, chain, unique

BOOTSTRAP = "bootstrap-" + "c" * 40


def chat(workflow_id: str) -> dict[str, Any]:
    """Appends the user's turn and an answer to the conversation ``input.session``."""
    turn = {"conversation": "{{ input.session }}", "op": "append"}
    return chain(
        workflow_id,
        {
            "id": "user",
            "type": "memory",
            "config": {**turn, "message": {"role": "user", "content": "{{ input.text }}"}},
        },
        {
            "id": "answer",
            "type": "memory",
            "config": {
                **turn,
                "message": {"role": "assistant", "content": "re: {{ input.text }}"},
                "window": 50,
            },
        },
        output={"window": "nodes.answer.output"},
    )


async def say(client: httpx.AsyncClient, workflow_id: str, session: str, text: str) -> Any:
    response = await client.post(
        "/v1/runs",
        json={"workflow_id": workflow_id, "input": {"session": session, "text": text}},
        params={"wait": 20},
    )
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["status"] == "succeeded", run
    return run["output"]["window"]


def contents(conversation: dict[str, Any]) -> list[str]:
    return [m["content"] for m in conversation["messages"]["items"]]


async def test_a_conversation_outlives_its_service_and_is_shared_by_replicas(
    serve: Serve, make_settings: MakeSettings
) -> None:
    workflow_id, session = unique("chat"), unique("session")
    async with serve(make_settings()) as first:
        assert (await first.post("/v1/workflows", json=chat(workflow_id))).status_code == 201
        await say(first, workflow_id, session, "one")
        await say(first, workflow_id, session, "two")
    # a restarted service (a new server on the same database)
    async with serve(make_settings()) as restarted:
        window = await say(restarted, workflow_id, session, "three")
        assert [m["content"] for m in window["messages"]] == [
            "one", "re: one", "two", "re: two", "three", "re: three",
        ]  # fmt: skip
        # two replicas at once: what one appends, the other reads and extends
        async with serve(make_settings()) as other:
            await say(other, workflow_id, session, "four")
            shown = await restarted.get(f"/v1/conversations/{session}")
            assert shown.status_code == 200, shown.text
            body = shown.json()
            assert contents(body)[-2:] == ["four", "re: four"]
            assert len(contents(body)) == 8
            assert [m["seq"] for m in body["messages"]["items"]] == list(range(1, 9))
            assert body["messages"]["items"][0]["role"] == "user"
            assert (body["id"], body["summary"], body["entities"]) == (session, None, {})
            assert (body["max_messages"], body["summarize_after"], body["window_size"]) == (
                100,
                50,
                10,
            )


async def test_messages_are_paged_and_delete_erases_them(client: httpx.AsyncClient) -> None:
    workflow_id, session = unique("chat"), unique("session")
    assert (await client.post("/v1/workflows", json=chat(workflow_id))).status_code == 201
    for text in ("a", "b", "c"):
        await say(client, workflow_id, session, text)
    seen, cursor = [], None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 4}
        if cursor is not None:
            params["cursor"] = cursor
        page = (await client.get(f"/v1/conversations/{session}", params=params)).json()
        assert len(page["messages"]["items"]) <= 4
        seen += contents(page)
        cursor = page["messages"]["next_cursor"]
        if cursor is None:
            break
    assert seen == ["a", "re: a", "b", "re: b", "c", "re: c"]
    bad = await client.get(f"/v1/conversations/{session}", params={"cursor": "x"})
    assert bad.status_code == 422
    for not_an_id in ("a%00b", "x" * 201):
        assert (await client.get(f"/v1/conversations/{not_an_id}")).status_code == 422
    assert (await client.delete(f"/v1/conversations/{session}")).status_code == 204
    assert (await client.get(f"/v1/conversations/{session}")).status_code == 404
    assert (await client.delete(f"/v1/conversations/{session}")).status_code == 404
    # the next turn starts a new conversation knowing nothing of the erased one
    window = await say(client, workflow_id, session, "again")
    assert [m["content"] for m in window["messages"]] == ["again", "re: again"]


async def test_each_namespace_has_its_own_conversations(
    serve: Serve, make_settings: MakeSettings
) -> None:
    settings = make_settings(auth="required", bootstrap_admin_key=BOOTSTRAP)
    async with serve(settings) as base:
        root = {"Authorization": f"Bearer {BOOTSTRAP}"}
        keys = {}
        for namespace in ("team-a", "team-b"):
            response = await base.post(
                "/v1/keys", json={"namespace": namespace, "role": "writer"}, headers=root
            )
            assert response.status_code == 201, response.text
            keys[namespace] = {"Authorization": f"Bearer {response.json()['key']}"}
        async with (
            httpx.AsyncClient(base_url=base.base_url, headers=keys["team-a"], timeout=20) as a,
            httpx.AsyncClient(base_url=base.base_url, headers=keys["team-b"], timeout=20) as b,
        ):
            workflow_id, session = unique("chat"), unique("session")
            for client in (a, b):
                assert (
                    await client.post("/v1/workflows", json=chat(workflow_id))
                ).status_code == 201
            await say(a, workflow_id, session, "from a")
            assert (await b.get(f"/v1/conversations/{session}")).status_code == 404
            assert (await b.delete(f"/v1/conversations/{session}")).status_code == 404
            window = await say(b, workflow_id, session, "from b")
            assert [m["content"] for m in window["messages"]] == ["from b", "re: from b"]
            assert contents((await a.get(f"/v1/conversations/{session}")).json()) == [
                "from a",
                "re: from a",
            ]
            assert (await b.delete(f"/v1/conversations/{session}")).status_code == 204
            assert (await a.get(f"/v1/conversations/{session}")).status_code == 200
