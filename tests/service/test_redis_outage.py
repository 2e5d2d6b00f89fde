"""The service with a Redis that stops or hangs: runs go on with identical results,
``/readyz`` reports the degradation, and everything recovers when Redis is back.

Each test runs its own ``redis-server`` (tests/redis_support.py) so that it can kill it
(SIGKILL) or freeze it (SIGSTOP: connections stay open and nothing answers).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.redis_support import RedisServer
from tests.service.support import (
    MakeSettings,
    Serve,
    chain,
    events_json,
    finished,
    post_workflow,
    start_run,
    transform,
    unique,
    wait_for_event,
)

pytestmark = pytest.mark.slow


def settings_for(make_settings: MakeSettings, server: RedisServer) -> Any:
    return make_settings(
        redis_url=server.url,
        redis_timeout_seconds=0.2,
        redis_retry_seconds=0.1,
        execution={"enable_cache": True},
    )


async def readyz(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text  # degraded is still ready
    body: dict[str, Any] = response.json()
    return body


async def wait_ready_state(client: httpx.AsyncClient, status: str, timeout: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        body = await readyz(client)
        if body["status"] == status:
            expected = "up" if status == "ready" else "down"
            assert body["checks"]["redis"]["state"] == expected, body
            return
        if loop.time() > deadline:
            raise AssertionError(f"/readyz never became {status!r}: {body}")
        await asyncio.sleep(0.05)


def pipeline(workflow_id: str) -> dict[str, Any]:
    """Transforms around two delays; ``price`` is cached (it hits in Redis once warm)."""
    return chain(
        workflow_id,
        transform("order", total="input.qty * 3"),
        {"id": "pause1", "type": "delay", "config": {"seconds": 0.4}},
        {
            **transform("price", amount="nodes.order.output.total + 1"),
            "cache": {"ttl": 600},
        },
        {"id": "pause2", "type": "delay", "config": {"seconds": 0.2}},
        transform("receipt", line="'total: ' + string(nodes.price.output.amount)"),
        output={"line": "nodes.receipt.output.line", "amount": "nodes.price.output.amount"},
    )


def outcome(run: dict[str, Any]) -> tuple[str, Any]:
    return run["status"], run["output"]


async def test_readyz_reports_redis_down_and_recovers(
    serve: Serve, make_settings: MakeSettings, redis_server: RedisServer
) -> None:
    async with serve(settings_for(make_settings, redis_server)) as client:
        body = await readyz(client)
        assert body["status"] == "ready"
        assert body["checks"]["redis"]["state"] == "up"
        assert "latency_ms" in body["checks"]["redis"]

        redis_server.stop()
        await wait_ready_state(client, "degraded")
        down = (await readyz(client))["checks"]["redis"]
        assert down["error"]
        assert down["since"] is not None

        redis_server.start()  # same port
        await wait_ready_state(client, "ready")


@pytest.mark.parametrize("failure", ["stopped", "hung"])
async def test_a_run_finishes_the_same_when_redis_fails_mid_run_and_things_recover(
    serve: Serve, make_settings: MakeSettings, redis_server: RedisServer, failure: str
) -> None:
    workflow_id = unique("outage")
    async with serve(settings_for(make_settings, redis_server)) as client:
        await post_workflow(client, pipeline(workflow_id))
        baseline = await finished(
            client, (await start_run(client, workflow_id, {"qty": 4}))["run_id"]
        )
        assert outcome(baseline) == ("succeeded", {"line": "total: 13", "amount": 13})

        run = await start_run(client, workflow_id, {"qty": 4})
        # the outage begins while the run is inside its first delay
        await wait_for_event(client, run["run_id"], "node.started", "pause1")
        if failure == "stopped":
            redis_server.stop()
        else:
            redis_server.pause()
        try:
            during = await finished(client, run["run_id"], timeout=30)
            assert outcome(during) == outcome(baseline)
            await wait_ready_state(client, "degraded")
            # and a run started while Redis is away works the same
            another = await finished(
                client, (await start_run(client, workflow_id, {"qty": 4}))["run_id"], timeout=30
            )
            assert outcome(another) == outcome(baseline)
        finally:
            if failure == "stopped":
                redis_server.start()
            else:
                redis_server.resume()

        await wait_ready_state(client, "ready")
        after = await finished(client, (await start_run(client, workflow_id, {"qty": 4}))["run_id"])
        assert outcome(after) == outcome(baseline)
        # the run that lived through the outage ran every node once, the log has no gap
        events = await events_json(client, run["run_id"])
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        completed = [e["node_id"] for e in events if e["type"] == "node.completed"]
        assert completed == ["order", "pause1", "price", "pause2", "receipt"]
