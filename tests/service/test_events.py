"""A run's events: server-sent events (replay, live tail, reconnect with Last-Event-ID,
comment heartbeats) and the JSON list."""

from __future__ import annotations

from typing import Any

import httpx

from tests.service.support import (
    MakeSettings,
    Serve,
    SSEFrame,
    SSEReader,
    chain,
    events_json,
    finished,
    get_run,
    post_workflow,
    read_sse,
    sse_lines,
    start_run,
    transform,
    unique,
    wait_status,
)

TERMINAL_EVENTS = ("run.succeeded", "run.failed", "run.cancelled")
SSE = {"Accept": "text/event-stream"}


def naps(workflow_id: str, count: int = 6, seconds: float = 0.1) -> dict[str, Any]:
    """``count`` delay nodes in a row: a run that stays running for a while."""
    nodes = [
        {"id": f"nap{i}", "type": "delay", "config": {"seconds": seconds}} for i in range(count)
    ]
    return chain(
        workflow_id, *nodes, transform("done", ok="true"), output={"ok": "nodes.done.output.ok"}
    )


def assert_complete(frames: list[SSEFrame], run_id: str) -> None:
    """Ids 1..N without gap or duplicate, each frame's event and data agree, and the
    stream ended with exactly one terminal event."""
    assert [f.id for f in frames] == list(range(1, len(frames) + 1)), [f.id for f in frames]
    for frame in frames:
        assert frame.data["seq"] == frame.id
        assert frame.data["type"] == frame.event
        assert frame.data["run_id"] == run_id
    assert frames[-1].event in TERMINAL_EVENTS
    assert sum(1 for f in frames if f.event in TERMINAL_EVENTS) == 1


async def assert_logged(client: httpx.AsyncClient, run_id: str, frames: list[SSEFrame]) -> None:
    """The streamed frames are the durable log, once the run has finished (the live tail
    may run ahead of the log's commits until then)."""
    await finished(client, run_id)
    logged = await events_json(client, run_id)
    assert [(e["seq"], e["type"], e["data"]) for e in logged] == [
        (f.id, f.event, f.data["data"]) for f in frames
    ]


async def stream(
    client: httpx.AsyncClient,
    run_id: str,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    stop_after: int | None = None,
) -> SSEReader:
    async with client.stream(
        "GET", f"/v1/runs/{run_id}/events", headers={**SSE, **(headers or {})}, params=params
    ) as response:
        return await read_sse(sse_lines(response), stop_after=stop_after)


async def test_the_stream_of_a_finished_run_replays_the_log_and_ends(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = unique("steps")
    await post_workflow(
        client, chain(workflow_id, transform("a", v="1"), transform("b", v="nodes.a.output.v"))
    )
    run_id = (await start_run(client, workflow_id, wait=10))["run_id"]

    async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=SSE) as response:
        assert response.headers["cache-control"] == "no-cache"
        reader = await read_sse(sse_lines(response))
    assert_complete(reader.frames, run_id)
    assert [f.event for f in reader.frames] == [
        "run.started",
        "node.started",
        "node.completed",
        "node.started",
        "node.completed",
        "run.succeeded",
    ]
    assert reader.frames[2].data["node_id"] == "a"
    assert reader.frames[2].data["data"]["output"] == {"v": 1}
    assert reader.comments, "the stream opens with a comment, which the parser ignores"

    listed = await events_json(client, run_id)
    assert [(e["seq"], e["type"], e["node_id"], e["data"]) for e in listed] == [
        (f.id, f.event, f.data["node_id"], f.data["data"]) for f in reader.frames
    ]
    after = await client.get(
        f"/v1/runs/{run_id}/events",
        params={"after": 4},
        headers={"Accept": "application/json"},
    )
    assert [e["seq"] for e in after.json()["items"]] == [5, 6]


async def test_the_stream_tails_a_running_run_live(client: httpx.AsyncClient) -> None:
    workflow_id = unique("naps")
    await post_workflow(client, naps(workflow_id))
    run_id = (await start_run(client, workflow_id))["run_id"]

    reader = await stream(client, run_id)
    assert_complete(reader.frames, run_id)
    assert reader.frames[-1].event == "run.succeeded"
    assert reader.frames[-1].data["data"]["output"] == {"ok": True}
    assert len(reader.frames) == 1 + 2 * 7 + 1
    await assert_logged(client, run_id, reader.frames)


async def test_reconnect_with_last_event_id_gets_exactly_the_missing_events(
    client: httpx.AsyncClient,
) -> None:
    workflow_id = unique("naps")
    await post_workflow(client, naps(workflow_id, count=8))
    run_id = (await start_run(client, workflow_id))["run_id"]

    first = await stream(client, run_id, stop_after=3)
    assert [f.id for f in first.frames] == [1, 2, 3]
    assert (await get_run(client, run_id))["status"] in ("queued", "running"), (
        "the run should still be running when the client disconnects"
    )

    second = await stream(client, run_id, headers={"Last-Event-ID": str(first.frames[-1].id)})
    assert second.frames[0].id == 4
    assert_complete(first.frames + second.frames, run_id)
    await assert_logged(client, run_id, first.frames + second.frames)


async def test_reconnect_with_the_last_event_id_query(client: httpx.AsyncClient) -> None:
    workflow_id = unique("naps")
    await post_workflow(client, naps(workflow_id, count=8))
    run_id = (await start_run(client, workflow_id))["run_id"]

    first = await stream(client, run_id, stop_after=5)
    second = await stream(client, run_id, params={"lastEventId": str(first.frames[-1].id)})
    assert second.frames[0].id == 6
    assert_complete(first.frames + second.frames, run_id)

    # several reconnects in a row, each after a single event
    frames: list[SSEFrame] = []
    while not frames or frames[-1].event not in TERMINAL_EVENTS:
        last = str(frames[-1].id) if frames else "0"
        frames += (
            await stream(client, run_id, headers={"Last-Event-ID": last}, stop_after=1)
        ).frames
        assert len(frames) < 100
    assert_complete(frames, run_id)
    await assert_logged(client, run_id, frames)


async def test_heartbeats_are_comments_and_the_stream_resumes_after_them(
    serve: Serve, make_settings: MakeSettings
) -> None:
    async with serve(make_settings(sse_heartbeat_seconds=0.2)) as client:
        workflow_id = unique("gate")
        definition = chain(
            workflow_id,
            {"id": "gate", "type": "wait", "config": {"signal": "go"}},
            output={"got": "nodes.gate.output"},
        )
        await post_workflow(client, definition)
        run_id = (await start_run(client, workflow_id))["run_id"]
        await wait_status(client, run_id, "waiting")

        async with client.stream("GET", f"/v1/runs/{run_id}/events", headers=SSE) as response:
            lines = sse_lines(response)
            reader = await read_sse(lines, until_comment="keepalive")
            assert reader.frames, "the events so far come first"
            assert reader.frames[-1].event == "run.waiting"
            signal = await client.post(
                f"/v1/runs/{run_id}/signal", json={"name": "go", "payload": {"x": 1}}
            )
            assert signal.status_code == 202
            await read_sse(lines, reader=reader)

        assert any("keepalive" in c for c in reader.comments)
        assert_complete(reader.frames, run_id)
        assert reader.frames[-1].data["data"]["output"] == {"got": {"x": 1}}


async def test_the_stream_of_a_run_cancelled_while_queued_ends_at_once(
    serve: Serve, make_settings: MakeSettings
) -> None:
    async with serve(make_settings(dispatcher_enabled=False)) as client:
        workflow_id = unique("never")
        await post_workflow(client, chain(workflow_id, transform("a", v="1")))
        run_id = (await start_run(client, workflow_id))["run_id"]
        assert (await get_run(client, run_id))["status"] == "queued"

        cancelled = await client.post(f"/v1/runs/{run_id}/cancel")
        assert cancelled.status_code == 202
        assert cancelled.json()["status"] == "cancelled"
        assert (await finished(client, run_id))["status"] == "cancelled"

        # no replica ever held it: its log is the cancellation alone, and ends there
        reader = await stream(client, run_id)
        assert [(f.id, f.event) for f in reader.frames] == [(1, "run.cancelled")]
        assert [(e["seq"], e["type"]) for e in await events_json(client, run_id)] == [
            (1, "run.cancelled")
        ]
