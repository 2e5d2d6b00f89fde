"""Two replicas on one Postgres and one Redis: a run executes on one, an SSE client on the
other receives every event live, in order, without a gap or a duplicate.

Replica A runs the dispatcher; replica B serves the API only, so the run can only execute
on A. B's log poll is pushed out to 60 s: the stream can only finish in time if the
events reach B live over Redis (and the test fails, by its deadline, if they do not).
And Redis carries dispatcher wake-ups from one replica to another.

A stream on the replica that executes its run gets it from the in-process fan-out: that
replica subscribes to no Redis channel for it (nor reads its own messages back).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.redis_link import RedisLink
from app.runtime import streams as events_api
from tests.redis_support import require_redis, unique_prefix
from tests.service.support import (
    MakeSettings,
    Serve,
    chain,
    events_json,
    finished,
    post_workflow,
    read_sse,
    sse_lines,
    start_run,
    unique,
)

pytestmark = pytest.mark.slow

NODES = 12


def slow_chain(workflow_id: str) -> dict[str, Any]:
    nodes = [{"id": f"step{i}", "type": "delay", "config": {"seconds": 0.03}} for i in range(NODES)]
    return chain(workflow_id, *nodes)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_an_sse_client_on_one_replica_sees_a_run_on_the_other_live(
    serve: Serve, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_url = require_redis()
    prefix = unique_prefix()
    monkeypatch.setattr(events_api, "POLL", 60.0)
    executor_settings = make_settings(redis_url=redis_url, redis_prefix=prefix)
    viewer_settings = make_settings(
        redis_url=redis_url, redis_prefix=prefix, dispatcher_enabled=False
    )
    workflow_id = unique("live")
    async with serve(executor_settings) as a, serve(viewer_settings) as b:
        await post_workflow(b, slow_chain(workflow_id))
        # submitted to B, executed on A (B has no dispatcher), watched on B
        run = await start_run(b, workflow_id, {})
        async with (
            asyncio.timeout(30),
            b.stream(
                "GET", f"/v1/runs/{run['run_id']}/events", headers={"Accept": "text/event-stream"}
            ) as response,
        ):
            reader = await read_sse(sse_lines(response))
        done = await finished(a, run["run_id"])
        assert done["status"] == "succeeded"

    seqs = [frame.id for frame in reader.frames]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # in order, no gap, no duplicate
    kinds = [frame.event for frame in reader.frames]
    assert kinds[-1] == "run.succeeded"
    assert [f.data["node_id"] for f in reader.frames if f.event == "node.completed"] == [
        f"step{i}" for i in range(NODES)
    ]
    # exactly what the durable log holds
    async with serve(viewer_settings) as c:
        logged = await events_json(c, run["run_id"])
    assert [(e["seq"], e["type"]) for e in logged] == list(zip(seqs, kinds, strict=True))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_redis_wakes_an_idle_dispatcher_on_another_replica(
    serve: Serve, make_settings: MakeSettings
) -> None:
    """Without LISTEN/NOTIFY (SQLite) and with a 60 s poll, only the Redis wake-up can make
    replica A claim a run submitted to replica B within the deadline."""
    redis_url = require_redis()
    prefix = unique_prefix()
    worker = make_settings(redis_url=redis_url, redis_prefix=prefix, poll_seconds=60)
    front = make_settings(redis_url=redis_url, redis_prefix=prefix, dispatcher_enabled=False)
    workflow_id = unique("wake")
    async with serve(worker) as a, serve(front) as b:
        await post_workflow(b, slow_chain(workflow_id))
        for _ in range(3):  # each one after A went idle again
            run = await start_run(b, workflow_id, {})
            done = await finished(b, run["run_id"], timeout=20)
            assert done["status"] == "succeeded"
        assert (await a.get("/readyz")).json()["checks"]["redis"]["state"] == "up"


async def no_subscriber(probe: RedisLink, channel: str, timeout: float = 10.0) -> None:
    """Wait until nobody subscribes to ``channel`` (a stream opened before its run was
    claimed had SUBSCRIBEd, and UNSUBSCRIBEs once it is claimed here)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        [(_name, count)] = await probe.client.pubsub_numsub(channel)
        if count == 0:
            return
        assert loop.time() < deadline, f"{count} subscriber(s) to {channel} after {timeout} s"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_a_stream_on_the_executing_replica_uses_no_redis_channel(
    serve: Serve, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run waits for a signal, so it is surely still executing on A while Redis is
    asked who subscribes to its channel: nobody. The stream still gets every event live
    (a 60 s log poll would time it out)."""
    redis_url = require_redis()
    prefix = unique_prefix()
    monkeypatch.setattr(events_api, "POLL", 60.0)
    settings = make_settings(redis_url=redis_url, redis_prefix=prefix)
    workflow_id = unique("here")
    definition = chain(
        workflow_id,
        {"id": "before", "type": "delay", "config": {"seconds": 0.01}},
        {"id": "gate", "type": "wait", "config": {"signal": "go"}},
        {"id": "after", "type": "delay", "config": {"seconds": 0.01}},
    )
    probe = RedisLink(redis_url, prefix=prefix)
    channel = probe.key("events", "")
    try:
        async with serve(settings) as a:
            await post_workflow(a, definition)
            run = await start_run(a, workflow_id, {})
            run_id = run["run_id"]
            async with (
                asyncio.timeout(30),
                a.stream(
                    "GET", f"/v1/runs/{run_id}/events", headers={"Accept": "text/event-stream"}
                ) as response,
            ):
                lines = sse_lines(response)
                reader = await read_sse(lines, stop_after=1)
                while reader.frames[-1].event != "run.waiting":
                    await read_sse(lines, reader=reader, stop_after=len(reader.frames) + 1)
                # the stream is open and the run executes (waits) on A: no subscriber
                await no_subscriber(probe, channel + run_id)
                assert (
                    await a.post(f"/v1/runs/{run_id}/signal", json={"name": "go"})
                ).status_code == 202
                await read_sse(lines, reader=reader)
    finally:
        await probe.close()
    seqs = [frame.id for frame in reader.frames]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert reader.frames[-1].event == "run.succeeded"
    assert [f.data["node_id"] for f in reader.frames if f.event == "node.completed"] == [
        "before",
        "gate",
        "after",
    ]
