"""Prometheus metrics, all in one module, named by Prometheus conventions: a
``flowcore_`` prefix, base units, ``_total`` counters; labelled by workflow id, node type,
status and route template — never by run id (unbounded cardinality).

Every label value comes from a bounded set:

- ``workflow_id``: the first ``metrics_workflow_labels`` distinct workflow ids this
  process sees since the app started, then ``other`` (``_all`` for every run when the
  setting is 0) — see :class:`BoundedLabels`;
- ``node_type``: the registered node types (a workflow naming another does not validate);
- HTTP ``route``: the app's route templates, ``unmatched`` for a request no route matched
  (a 404), and ``method``: the standard HTTP methods, any other folded into ``other``.
- ``breaker``: the circuit-breaker keys the workflows use (``circuit_breaker.key`` or the
  node type's default, e.g. the ``http`` node's target host): not capped here.
- ``model`` (the ``flowcore_llm_*`` families): the model names ``llm`` nodes are
  configured with, the first 50 this process sees, then ``other`` (``MODEL_LABELS``);
  ``kind`` prompt or completion, ``outcome`` ok or an error's kind.
- ``action`` (audit write failures): the audit log's actions (``app.runtime.audit``), any
  other folded into ``other``.

With several uvicorn workers, set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory:
``/metrics`` then aggregates every worker's samples (prometheus-client multiprocess mode).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.engine import MetricsCollector, RunResult
from app.nodes.llm_calls import LlmCall

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)

RUNS_STARTED = Counter(
    "flowcore_runs_started_total", "Runs a replica started executing.", ["workflow_id"]
)
RUNS_FINISHED = Counter(
    "flowcore_runs_finished_total", "Runs that reached an outcome.", ["workflow_id", "status"]
)
RUN_DURATION = Histogram(
    "flowcore_run_duration_seconds",
    "Wall time of a run's execution.",
    ["workflow_id"],
    buckets=_LATENCY,
)
QUEUE_WAIT = Histogram(
    "flowcore_run_queue_wait_seconds",
    "From a run's creation to its first claim.",
    ["workflow_id"],
    buckets=_LATENCY,
)
ACTIVE_RUNS = Gauge(
    "flowcore_active_runs", "Runs this replica is executing.", multiprocess_mode="livesum"
)
QUEUE_DEPTH = Gauge(
    "flowcore_queue_depth",
    "Runs waiting to be claimed (as seen by this replica).",
    multiprocess_mode="max",
)
NODE_DURATION = Histogram(
    "flowcore_node_duration_seconds",
    "Wall time of a node, attempts included.",
    ["node_type"],
    buckets=_LATENCY,
)
NODE_ATTEMPTS = Counter(
    "flowcore_node_attempts_total", "Node attempts, retries included.", ["node_type", "status"]
)
NODE_RETRIES = Counter("flowcore_node_retries_total", "Node retries.", ["node_type"])
NODE_TIMEOUTS = Counter("flowcore_node_timeouts_total", "Node timeouts.", ["node_type"])
CACHE_HITS = Counter(
    "flowcore_cache_hits_total",
    "Node results served from the cache, by the tier that had them (memory, redis).",
    ["node_type", "tier"],
)
CACHE_MISSES = Counter(
    "flowcore_cache_misses_total", "Cache lookups that found nothing.", ["node_type"]
)
BREAKER_STATE = Gauge(
    "flowcore_circuit_breaker_state",
    "1 for the state each circuit breaker is in (closed, open, half_open), else 0.",
    ["breaker", "state"],
    multiprocess_mode="max",
)
BREAKER_TRANSITIONS = Counter(
    "flowcore_circuit_breaker_transitions_total",
    "Circuit-breaker state changes seen by this replica.",
    ["breaker", "from_state", "to_state"],
)
TOKENS_STREAMED = Counter(
    "flowcore_tokens_streamed_total", "node.token events committed and published."
)
LLM_TOKENS = Counter(
    "flowcore_llm_tokens_total",
    "Tokens of llm calls as the endpoint reported them (kind: prompt, completion), by "
    "the configured model.",
    ["model", "kind"],
)
LLM_REQUESTS = Counter(
    "flowcore_llm_requests_total",
    "llm calls (one per attempt), by model and outcome (ok, unavailable, rejected, "
    "timeout, error).",
    ["model", "outcome"],
)
LLM_REQUEST_DURATION = Histogram(
    "flowcore_llm_request_duration_seconds",
    "Wall time of an llm call, from the request to the last chunk (or the error).",
    ["model"],
    buckets=_LATENCY,
)
LLM_TIME_TO_FIRST_TOKEN = Histogram(
    "flowcore_llm_time_to_first_token_seconds",
    "From an llm call's request to its first content token (streamed calls).",
    ["model"],
    buckets=_LATENCY,
)
REDIS_UP = Gauge(
    "flowcore_redis_up",
    "1 when Redis answers, 0 while the replica runs on its in-process fallbacks.",
    multiprocess_mode="min",
)
REDIS_FAILURES = Counter("flowcore_redis_failures_total", "Redis calls that failed or timed out.")
RELAY_DROPPED = Counter(
    "flowcore_events_relay_dropped_total",
    "Live events not relayed to other replicas over Redis (down or outbox full); their "
    "SSE clients read them from the database log instead.",
)
DB_POOL_IN_USE = Gauge(
    "flowcore_db_pool_connections_in_use",
    "Database connections checked out of this replica's pool.",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "flowcore_db_pool_connections",
    "Database connections this replica's pool holds open (in use or idle).",
    multiprocess_mode="livesum",
)
REDIS_POOL_IN_USE = Gauge(
    "flowcore_redis_pool_connections_in_use",
    "Redis connections in use (pub/sub included).",
    multiprocess_mode="livesum",
)
REDIS_POOL_SIZE = Gauge(
    "flowcore_redis_pool_max_connections",
    "The Redis pool's size (redis_pool_size).",
    multiprocess_mode="livesum",
)

#: called before every scrape (and by the app every few seconds, so that other workers'
#: values stay fresh in multiprocess mode): they set gauges that are read, not counted
SAMPLERS: list[Callable[[], None]] = []


def sample() -> None:
    for sampler in list(SAMPLERS):
        with contextlib.suppress(Exception):  # a sampler must never break a scrape
            sampler()


RUNS_PARKED = Counter(
    "flowcore_runs_parked_total",
    "Runs that left a replica to wait for a timer or a signal (claimed again when due).",
)
LEASE_TAKEOVERS = Counter(
    "flowcore_lease_takeovers_total",
    "Runs claimed again after their lease expired or was released.",
)
CHECKPOINTS_WRITTEN = Counter("flowcore_checkpoints_written_total", "Checkpoint records committed.")
EVENTS_PUBLISHED = Counter("flowcore_events_published_total", "Run events committed and published.")
AUDIT_WRITE_FAILURES = Counter(
    "flowcore_audit_write_failures_total",
    "Audit log entries not written after their operation committed (each logged at ERROR "
    "with the entry), by action (the audit log's actions, any other folded into 'other').",
    ["action"],
)
SSE_CONNECTIONS = Gauge(
    "flowcore_sse_connections", "Open server-sent event streams.", multiprocess_mode="livesum"
)
HTTP_REQUESTS = Counter(
    "flowcore_http_requests_total", "HTTP requests.", ["method", "route", "status"]
)
HTTP_DURATION = Histogram(
    "flowcore_http_request_duration_seconds",
    "HTTP request latency.",
    ["method", "route"],
    buckets=_LATENCY,
)


class BoundedLabels:
    """A label whose values come from users (workflow ids, circuit-breaker keys), bounded
    so that creating workflows or calling new hosts cannot grow the exposition without
    limit.

    The first ``limit`` distinct workflow ids seen get their own label value; every other
    id is counted under :attr:`OTHER`. With ``limit`` 0 there are no per-workflow labels:
    every run is counted under :attr:`ALL`. A workflow whose id is one of these two values
    never gets a slot of its own (it is counted under ``other``, or ``_all``).

    The set is per process and starts empty when the app starts (:meth:`configure`); with
    several uvicorn workers each worker picks its own first ids, so the aggregated
    exposition holds at most ``workers * limit`` ids plus ``other``. Not locked: it is used
    from the event loop only.
    """

    OTHER = "other"
    ALL = "_all"

    def __init__(self, limit: int = 50) -> None:
        self.limit = 0
        self._given: set[str] = set()
        self.configure(limit)

    def configure(self, limit: int) -> None:
        """Set the bound and forget the ids seen so far (at startup)."""
        if limit < 0:
            raise ValueError(f"limit must be >= 0, not {limit}")
        self.limit = limit
        self._given = set()

    def label(self, workflow_id: str) -> str:
        if self.limit == 0:
            return self.ALL
        if workflow_id in self._given:
            return workflow_id
        if len(self._given) >= self.limit or workflow_id in (self.OTHER, self.ALL):
            return self.OTHER
        self._given.add(workflow_id)
        return workflow_id

    @property
    def labelled(self) -> frozenset[str]:
        """The workflow ids that have a label value of their own."""
        return frozenset(self._given)


#: configured by the app at startup from ``Settings.metrics_workflow_labels``
WORKFLOW_LABELS = BoundedLabels()
#: the ``breaker`` label: a node's breaker key, or the target origin of an ``http`` node
BREAKER_LABELS = BoundedLabels()
#: the ``model`` label of the llm families: the model names llm nodes are configured with
MODEL_LABELS = BoundedLabels()


def record_llm_call(call: LlmCall) -> None:
    """Account for one llm call (the observer the composition root installs)."""
    model = MODEL_LABELS.label(call.model)
    LLM_REQUESTS.labels(model, call.outcome).inc()
    LLM_REQUEST_DURATION.labels(model).observe(max(call.seconds, 0.0))
    if call.first_token_seconds is not None:
        LLM_TIME_TO_FIRST_TOKEN.labels(model).observe(max(call.first_token_seconds, 0.0))
    if call.prompt_tokens:
        LLM_TOKENS.labels(model, "prompt").inc(call.prompt_tokens)
    if call.completion_tokens:
        LLM_TOKENS.labels(model, "completion").inc(call.completion_tokens)


def run_started(workflow_id: str) -> None:
    """Count a run this replica starts executing."""
    RUNS_STARTED.labels(WORKFLOW_LABELS.label(workflow_id)).inc()


#: the engine's in-process statistics of this worker's runs, fed from the same place as
#: the Prometheus families below, so the two always agree
COLLECTOR = MetricsCollector()


def record_run(result: RunResult, claimed_at: float, created_at: float, first_claim: bool) -> None:
    """Account for a finished run and its nodes (once, when it ends)."""
    COLLECTOR.record_run(result)
    workflow = WORKFLOW_LABELS.label(result.workflow_id)
    RUNS_FINISHED.labels(workflow, result.status.value).inc()
    RUN_DURATION.labels(workflow).observe(max(result.duration_ms / 1000.0, 0.0))
    if first_claim:
        QUEUE_WAIT.labels(workflow).observe(max(claimed_at - created_at, 0.0))
    for record in result.node_results.values():
        if record.metadata and record.metadata.get("cache_hit"):
            continue  # counted by the service cache (hits and misses, by tier)
        if record.attempts == 0:
            continue
        NODE_ATTEMPTS.labels(record.type, record.status.value).inc(record.attempts)
        if record.attempts > 1:
            NODE_RETRIES.labels(record.type).inc(record.attempts - 1)
        if record.error_kind == "timeout":
            NODE_TIMEOUTS.labels(record.type).inc()
        duration = record.duration_ms
        if duration is not None:
            NODE_DURATION.labels(record.type).observe(duration / 1000.0)


def metrics_response(_request: Request) -> Response:
    """The exposition (every worker's, in multiprocess mode)."""
    sample()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


#: the ``method`` label values; any other method a client sends is counted as ``other``
HTTP_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
#: the ``route`` label of a request that no route matched (a 404 of any path)
UNMATCHED_ROUTE = "unmatched"


class HttpMetrics:
    """Counts requests and their latency by method, route *template* and status. The
    labels stay bounded: a path no route matched is counted as ``unmatched``, a method
    outside :data:`HTTP_METHODS` as ``other``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route: Any = scope.get("route")
            # the template as documented: `/v1/workflows/{workflow_id}`, not its
            # `{workflow_id:workflow_id}` convertor
            template = (
                getattr(route, "path_format", None)
                or getattr(route, "path", None)
                or UNMATCHED_ROUTE
            )
            method = scope.get("method", "GET")
            if method not in HTTP_METHODS:
                method = "other"
            HTTP_REQUESTS.labels(method, template, str(status)).inc()
            HTTP_DURATION.labels(method, template).observe(time.perf_counter() - started)
