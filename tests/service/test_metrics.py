"""/metrics after a scripted set of runs: successes, failures, retries, cache hits and an
open circuit breaker; and the engine's MetricsCollector agrees with it. The label values
stay bounded: workflow ids past ``metrics_workflow_labels`` and requests no route matched
or with an unusual method add no series."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest
from pydantic import BaseModel, ConfigDict, ValidationError

from app.cache.breakers import _BreakerMetrics
from app.config import Settings
from app.engine import (
    BaseNode,
    BreakerState,
    NodeContext,
    NodeRegistry,
    NodeResult,
    WorkflowContext,
)
from app.main import create_app
from app.observability import metrics
from app.observability.metrics import BoundedLabels
from tests.service.support import (
    MakeSettings,
    Serve,
    chain,
    finished,
    greet,
    post_workflow,
    start_run,
    transform,
    unique,
)


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


# ------------------------------------------------------------ bounded label values


def series(text: str, prefix: str) -> set[str]:
    """The ``name{labels}`` keys of the samples whose name starts with ``prefix``."""
    return {key for key in samples(text) if key.startswith(prefix)}


def label_values(text: str, name: str, label: str) -> dict[str, float]:
    """``label`` value -> the sum of ``name``'s samples with it."""
    out: dict[str, float] = {}
    for key, number in samples(text).items():
        metric, _, rest = key.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if metric == name and label in found:
            out[found[label]] = out.get(found[label], 0.0) + number
    return out


async def scrape_until(
    client: httpx.AsyncClient, done: Callable[[str], bool], timeout: float = 10.0
) -> str:
    """/metrics once ``done`` holds for it. A run's outcome can commit (and ``?wait``
    answer) a moment before its replica has counted it as finished."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        text = (await client.get("/metrics")).text
        if done(text) or loop.time() > deadline:
            return text
        await asyncio.sleep(0.02)


def test_workflow_labels_give_the_first_n_ids_their_own_value_then_other() -> None:
    labels = BoundedLabels(2)
    assert [labels.label(w) for w in ("a", "b", "a", "c", "d", "b", "c")] == [
        "a",
        "b",
        "a",
        "other",
        "other",
        "b",
        "other",
    ]
    assert labels.labelled == {"a", "b"}

    labels.configure(1)  # at startup: a new bound, and the ids seen so far forgotten
    assert labels.labelled == frozenset()
    assert [labels.label(w) for w in ("c", "a", "c")] == ["c", "other", "c"]


def test_workflow_labels_reserve_their_own_values_and_zero_means_one_series() -> None:
    labels = BoundedLabels(3)
    # a workflow called "other" or "_all" takes no slot: it would be mistaken for the rest
    assert [labels.label(w) for w in ("other", "_all", "x", "y", "z", "w")] == [
        "other",
        "other",
        "x",
        "y",
        "z",
        "other",
    ]

    none = BoundedLabels(0)
    assert {none.label(w) for w in ("a", "b", "other")} == {"_all"}
    assert none.labelled == frozenset()
    with pytest.raises(ValueError, match="limit must be >= 0"):
        BoundedLabels(-1)


def test_the_workflow_label_bound_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().metrics_workflow_labels == 50
    monkeypatch.setenv("FLOWCORE_METRICS_WORKFLOW_LABELS", "7")
    assert Settings().metrics_workflow_labels == 7
    monkeypatch.setenv("FLOWCORE_METRICS_WORKFLOW_LABELS", "-1")
    with pytest.raises(ValidationError):
        Settings()


async def test_workflow_ids_past_the_bound_are_counted_under_other(
    make_settings: MakeSettings, serve: Serve
) -> None:
    ids = [unique(f"bounded{i}") for i in range(6)]
    async with serve(make_settings(metrics_workflow_labels=3)) as client:
        for workflow_id in ids:
            await post_workflow(client, greet(workflow_id))
        before = (await client.get("/metrics")).text
        for workflow_id in ids:  # one after another: the first three seen are ids[:3]
            run = await start_run(client, workflow_id, {"name": "Ada"}, wait=10)
            assert run["status"] == "succeeded", run
        after = await scrape_until(
            client,
            lambda text: (
                value(text, "flowcore_runs_finished_total")
                - value(before, "flowcore_runs_finished_total")
                >= len(ids)
            ),
        )

    def grew(name: str, label: str = "workflow_id") -> dict[str, float]:
        old, new = label_values(before, name, label), label_values(after, name, label)
        changed = {k: v - old.get(k, 0.0) for k, v in new.items()}
        return {k: v for k, v in changed.items() if v}

    expected = {ids[0]: 1.0, ids[1]: 1.0, ids[2]: 1.0, "other": 3.0}
    assert grew("flowcore_runs_started_total") == expected
    assert grew("flowcore_runs_finished_total") == expected
    assert grew("flowcore_run_duration_seconds_count") == expected
    assert grew("flowcore_run_queue_wait_seconds_count") == expected
    assert grew("flowcore_runs_finished_total", "status") == {"succeeded": 6.0}
    for workflow_id in ids[3:]:  # not a single series of their own, in any family
        assert workflow_id not in after


#: methods outside the standard ones that uvicorn's parser (llhttp) still passes on
UNUSUAL_METHODS = ("PROPFIND", "MKCOL", "PURGE", "REPORT", "LOCK", "SEARCH", "SUBSCRIBE")


async def test_unknown_paths_and_methods_add_no_http_series(client: httpx.AsyncClient) -> None:
    def unknown_path() -> str:
        return f"/v1/{uuid.uuid4().hex}/{uuid.uuid4().hex}"

    async def unusual(i: int) -> None:
        method = UNUSUAL_METHODS[i % len(UNUSUAL_METHODS)]
        # an unknown path (404) or a known route that does not take the method (405)
        response = await client.request(method, unknown_path() if i % 2 else "/healthz")
        assert response.status_code == (404 if i % 2 else 405), (method, response.text)

    await client.get(unknown_path())
    for i in range(2):
        await unusual(i)  # the `unmatched` and `other` series exist from here on
    await client.get("/metrics")
    before = (await client.get("/metrics")).text
    for _ in range(50):
        assert (await client.get(unknown_path())).status_code == 404
    for i in range(2, 2 + 4 * len(UNUSUAL_METHODS)):
        await unusual(i)
    after = (await client.get("/metrics")).text

    added = series(after, "flowcore_http_") - series(before, "flowcore_http_")
    assert not added, sorted(added)

    def grew(**labels: str) -> float:
        name = "flowcore_http_requests_total"
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew(method="GET", route="unmatched", status="404") == 50
    assert grew(method="other", route="unmatched", status="404") == 2 * len(UNUSUAL_METHODS)
    assert grew(method="other", route="/healthz", status="405") == 2 * len(UNUSUAL_METHODS)
    app = create_app(Settings())
    templates = set(app.openapi()["paths"]) | {getattr(route, "path", "") for route in app.routes}
    routes = label_values(after, "flowcore_http_requests_total", "route").keys()
    assert routes <= templates | {"unmatched"}, sorted(routes - templates)
    methods = label_values(after, "flowcore_http_requests_total", "method").keys()
    assert methods <= metrics.HTTP_METHODS | {"other"}, sorted(methods)


def test_breaker_labels_are_bounded_too() -> None:
    # a breaker's key may come from run input (the http node's target origin)
    metrics.BREAKER_LABELS.configure(3)
    try:
        published = _BreakerMetrics()
        for n in range(20):
            key = f"http:https://host-{n}.example"
            published.transition(key, BreakerState.CLOSED, BreakerState.OPEN)
        text = generate_latest(REGISTRY).decode()
        hosts = {
            line.split('breaker="')[1].split('"')[0]
            for line in text.splitlines()
            if line.startswith("flowcore_circuit_breaker_state{") and "host-" in line
        }
        assert len(hosts) == 3
        assert 'breaker="other"' in text
        assert len(published._shown) == 3
    finally:
        metrics.BREAKER_LABELS.configure(50)
