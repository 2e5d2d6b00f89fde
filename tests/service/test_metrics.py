"""/metrics after a scripted set of runs: successes, failures, retries, cache hits and an
open circuit breaker; and the engine's MetricsCollector agrees with it."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from pydantic import BaseModel, ConfigDict

from app.engine import BaseNode, NodeContext, NodeRegistry, NodeResult, WorkflowContext
from app.observability import metrics
from tests.service.support import chain, finished, post_workflow, start_run, transform, unique


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value, from the Prometheus text exposition."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def value(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for key, number in samples(text).items():
        metric, _, rest = key.partition("{")
        if metric != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if all(found.get(k) == v for k, v in labels.items()):
            total += number
    return total


async def test_metrics_count_runs_nodes_retries_cache_hits_and_requests(
    client: httpx.AsyncClient,
) -> None:
    ok_id, bad_id = unique("ok"), unique("bad")
    await post_workflow(
        client,
        chain(
            ok_id,
            transform("a", v="input.v"),
            {
                "id": "flaky",
                "type": "fail",
                "config": {"times": 1},
                "retry": {"max_retries": 2, "delay": 0},
            },
            {**transform("cached", c="'same'"), "cache": {"ttl": 600, "key": "same"}},
        ),
    )
    await post_workflow(client, chain(bad_id, {"id": "boom", "type": "fail"}))
    before = (await client.get("/metrics")).text

    for v in (1, 2):
        run = await start_run(client, ok_id, {"v": v})
        assert (await finished(client, run["run_id"]))["status"] == "succeeded"
    run = await start_run(client, bad_id, {})
    assert (await finished(client, run["run_id"]))["status"] == "failed"

    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    after = response.text

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("flowcore_runs_started_total", workflow_id=ok_id) == 2
    assert delta("flowcore_runs_finished_total", workflow_id=ok_id, status="succeeded") == 2
    assert delta("flowcore_runs_finished_total", workflow_id=bad_id, status="failed") == 1
    assert delta("flowcore_run_duration_seconds_count", workflow_id=ok_id) == 2
    # `flaky` fails its first attempt in each run, then succeeds: two retries
    assert delta("flowcore_node_retries_total", node_type="fail") == 2
    assert delta("flowcore_node_attempts_total", node_type="fail", status="succeeded") == 4
    # the second run serves `cached` from the cache
    assert delta("flowcore_cache_hits_total", node_type="transform") == 1
    assert delta("flowcore_checkpoints_written_total") > 0
    assert delta("flowcore_events_published_total") > 0
    # requests by route template, never by run id
    assert delta("flowcore_http_requests_total", method="POST", route="/v1/runs", status="202") == 3
    assert delta("flowcore_http_requests_total", method="GET", route="/v1/runs/{run_id}") >= 3
    assert run["run_id"] not in after
    assert "flowcore_active_runs" in after
    assert "flowcore_sse_connections" in after
    assert "flowcore_queue_depth" in after


async def test_metrics_after_an_open_breaker_and_agreement_with_the_metrics_collector(
    client: httpx.AsyncClient,
) -> None:
    """A breaker that opens shows in its state gauge and transitions; and the engine's
    MetricsCollector statistics of this worker agree with the Prometheus numbers."""
    breaker = unique("payments")
    fragile, fine = unique("fragile"), unique("fine")
    await post_workflow(
        client,
        chain(
            fragile,
            {
                "id": "charge",
                "type": "fail",
                "circuit_breaker": {
                    "key": breaker,
                    "failure_threshold": 2,
                    "recovery_timeout": 600,
                },
            },
        ),
    )
    await post_workflow(
        client,
        chain(
            fine,
            {
                "id": "flaky",
                "type": "fail",
                "config": {"times": 1},
                "retry": {"max_retries": 1, "delay": 0},
            },
            {**transform("cached", c="'x'"), "cache": {"ttl": 600, "key": breaker}},
        ),
    )
    stats_before = metrics.COLLECTOR.get_statistics()
    before = (await client.get("/metrics")).text

    errors = []
    for _ in range(3):  # fails, fails (opens), refused fast
        run = await finished(client, (await start_run(client, fragile, {}))["run_id"])
        assert run["status"] == "failed"
        errors.append(run["error"])
    for _ in range(2):
        run = await finished(client, (await start_run(client, fine, {}))["run_id"])
        assert run["status"] == "succeeded"
    assert "circuit breaker" in str(errors[-1])

    after = (await client.get("/metrics")).text
    stats_after = metrics.COLLECTOR.get_statistics()

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert value(after, "flowcore_circuit_breaker_state", breaker=breaker, state="open") == 1
    assert value(after, "flowcore_circuit_breaker_state", breaker=breaker, state="closed") == 0
    assert (
        delta(
            "flowcore_circuit_breaker_transitions_total",
            breaker=breaker,
            from_state="closed",
            to_state="open",
        )
        == 1
    )
    assert delta("flowcore_cache_hits_total", node_type="transform") == 1
    assert delta("flowcore_cache_misses_total", node_type="transform") == 1

    # the MetricsCollector saw exactly what Prometheus counted
    def grew(key: str) -> float:
        return float(stats_after[key]) - float(stats_before[key])

    by_status = {
        status: stats_after["workflows_by_status"].get(status, 0)
        - stats_before["workflows_by_status"].get(status, 0)
        for status in ("succeeded", "failed")
    }
    assert by_status == {
        "succeeded": delta("flowcore_runs_finished_total", status="succeeded"),
        "failed": delta("flowcore_runs_finished_total", status="failed"),
    }
    assert by_status == {"succeeded": 2, "failed": 3}
    assert grew("retries") == delta("flowcore_node_retries_total") == 2
    assert grew("cache_hits") == delta("flowcore_cache_hits_total") == 1
    assert grew("total_workflows") == delta("flowcore_run_duration_seconds_count") == 5
    ran = grew("total_nodes") - grew("cache_hits")
    assert ran == delta("flowcore_node_duration_seconds_count")


class TokensConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokens: list[str]


class TokensNode(BaseNode):
    """Streams its configured tokens one by one, like a language-model node."""

    config_model = TokensConfig

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        tokens: list[str] = node_context.config["tokens"]
        for token in tokens:
            node_context.emit_token(token)
        return NodeResult(output={"text": "".join(tokens)})


@pytest.fixture
def tokens_node() -> Iterator[str]:
    name = unique("test_tokens").replace("-", "_")
    NodeRegistry.register(name)(TokensNode)
    try:
        yield name
    finally:
        NodeRegistry.unregister(name)


async def test_streamed_tokens_are_counted(client: httpx.AsyncClient, tokens_node: str) -> None:
    workflow_id = unique("tokens")
    words = ["Flow", "core", " streams", " tokens"]
    await post_workflow(
        client, chain(workflow_id, {"id": "say", "type": tokens_node, "config": {"tokens": words}})
    )
    before = (await client.get("/metrics")).text
    run = await finished(client, (await start_run(client, workflow_id, {}))["run_id"])
    assert run["status"] == "succeeded"
    after = (await client.get("/metrics")).text
    streamed = value(after, "flowcore_tokens_streamed_total") - value(
        before, "flowcore_tokens_streamed_total"
    )
    assert streamed == len(words)
