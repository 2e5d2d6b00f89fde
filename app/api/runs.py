"""Runs: start (idempotent), read, list, cancel, signal, trace, state."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Response

from app.api.body import CheckedRoute
from app.api.deps import Services, ServicesDep
from app.api.errors import ApiError, not_found, problems
from app.api.params import (
    IdempotencyKey,
    Limit,
    RunCursor,
    RunIdPath,
    WaitSeconds,
    WorkflowIdQuery,
)
from app.api.schemas import (
    NodeTimingOut,
    RunCreate,
    RunLinks,
    RunOut,
    RunPage,
    SignalIn,
    StateOut,
    TraceOut,
)
from app.engine import (
    ExecutionConfig,
    InputValidationError,
    ValidationIssue,
)
from app.engine.checkpoint import chain_to as checkpoint_chain
from app.engine.checkpoint import fold
from app.engine.config import LIMIT_FIELDS, PROCESS_FIELDS
from app.engine.schema import check_input
from app.store.models import Run
from app.store.repository import TERMINAL, IdempotencyConflict

router = APIRouter(
    prefix="/v1/runs", tags=["runs"], route_class=CheckedRoute, responses=problems(422, 500)
)

STATUSES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")


def run_out(run: Run) -> RunOut:
    base = f"/v1/runs/{run.id}"
    duration = (
        (run.finished_at - run.started_at) * 1000.0
        if run.finished_at is not None and run.started_at is not None
        else None
    )
    return RunOut(
        run_id=run.id,
        workflow_id=run.workflow_id,
        workflow_version=run.workflow_version,
        status=run.status,
        input=run.input,
        output=run.output,
        error=run.error,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        duration_ms=duration,
        current_nodes=list(run.current_nodes or []),
        cancel_requested=bool(run.cancel_requested),
        forked_from=run.fork_of,
        parked=bool(run.parked),
        wake_at=run.wake_at if run.parked else None,
        links=RunLinks(
            self=base,
            events=f"{base}/events",
            cancel=f"{base}/cancel",
            checkpoints=f"{base}/checkpoints",
            trace=f"{base}/trace",
        ),
    )


def request_hash(body: RunCreate) -> str:
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


#: knobs the service decides for every run: a run is always checkpointed (that is what
#: makes it durable), and code cannot travel in a request
_SERVICE_FIELDS = frozenset({"error_handler", "enable_checkpoints"})


def check_config(overrides: dict[str, Any] | None) -> None:
    """Run config overrides: known knobs only, no limits, valid values (422 otherwise)."""
    if not overrides:
        return
    issues = []
    for key in overrides:
        if key in LIMIT_FIELDS or key in PROCESS_FIELDS or key in _SERVICE_FIELDS:
            issues.append(ValidationIssue(f"{key} cannot be set per run", field=f"config.{key}"))
        elif key not in ExecutionConfig.model_fields:
            issues.append(ValidationIssue(f"unknown execution knob {key!r}", field=f"config.{key}"))
    if not issues:
        try:
            ExecutionConfig.model_validate(overrides)
        except ValueError as exc:
            issues.append(ValidationIssue(str(exc).splitlines()[0], field="config"))
    if issues:
        raise ApiError(
            422,
            "invalid-config",
            "Invalid run config",
            "; ".join(str(issue) for issue in issues),
            errors=[issue.to_dict() for issue in issues],
        )


async def wait_for_outcome(services: Services, run_id: str, seconds: float) -> Run | None:
    """Wait up to ``seconds`` for a run to finish (woken by notifications, with a slow
    poll as the fallback); the run, or None if it is gone."""
    done = asyncio.Event()

    def listener(payload: str) -> None:
        if payload == f"done:{run_id}":
            done.set()

    services.store.local_listeners.append(listener)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            run = await services.store.get_run(run_id)
            if run is None or run.status in TERMINAL or run.status == "waiting":
                return run
            remaining = deadline - loop.time()
            if remaining <= 0:
                return run
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), min(remaining, 0.5))
    finally:
        services.store.local_listeners.remove(listener)


@router.post(
    "",
    status_code=202,
    response_model=RunOut,
    responses={
        200: {"model": RunOut, "description": "finished within ?wait"},
        **problems(400, 404, 409, 413),
    },
)
async def start_run(
    body: RunCreate,
    services: ServicesDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    wait: WaitSeconds = None,
) -> RunOut:
    """Queue a run of a workflow version. The same ``Idempotency-Key`` with the same body
    returns the same run; with a different body it is a 409."""
    digest = request_hash(body)
    if idempotency_key is not None:
        existing = await services.store.run_by_idempotency_key(idempotency_key)
        if existing is not None:
            if existing.request_hash != digest:
                # the other request's run is not named: its caller may not be this one
                raise IdempotencyConflict(
                    f"Idempotency-Key {idempotency_key!r} was used for a different request"
                )
            response.headers["Idempotent-Replayed"] = "true"
            return await _respond(services, existing, response, wait)
    row = await services.store.get_workflow(body.workflow_id, body.version)
    if row is None or row.archived:
        where = f" version {body.version}" if body.version else ""
        raise not_found(f"no workflow {body.workflow_id!r}{where}")
    definition = services.definitions.get(row.workflow_id, row.version, row.definition)
    check_config(body.config)
    if definition.input_schema is not None:
        problems = check_input(definition.input_schema, body.input)
        if problems:
            raise InputValidationError(problems)
    run, created = await services.store.create_run(
        uuid.uuid4().hex,
        row,
        body.input,
        body.config,
        idempotency_key,
        digest,
    )
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return await _respond(services, run, response, wait)


async def _respond(services: Services, run: Run, response: Response, wait: float | None) -> RunOut:
    response.headers["Location"] = f"/v1/runs/{quote(run.id, safe='')}"
    if wait:
        finished = await wait_for_outcome(
            services, run.id, min(wait, services.settings.max_wait_seconds)
        )
        if finished is not None:
            run = finished
            if run.status in TERMINAL:
                response.status_code = 200
    return run_out(run)


@router.get("", response_model=RunPage, responses=problems(400))
async def list_runs(
    services: ServicesDep,
    workflow_id: WorkflowIdQuery = None,
    status: Annotated[str | None, Query(pattern="^(" + "|".join(STATUSES) + ")$")] = None,
    cursor: RunCursor = None,
    limit: Limit = 50,
) -> RunPage:
    """Runs, newest first, filtered by workflow and status."""
    page = await services.store.list_runs(
        workflow_id=workflow_id, status=status, cursor=cursor, limit=limit
    )
    return RunPage(items=[run_out(r) for r in page.items], next_cursor=page.next_cursor)


async def _run_or_404(services: Services, run_id: str) -> Run:
    run = await services.store.get_run(run_id)
    if run is None:
        raise not_found(f"no run {run_id!r}")
    return run


@router.get("/{run_id}", response_model=RunOut, responses=problems(404))
async def get_run(run_id: RunIdPath, services: ServicesDep) -> RunOut:
    return run_out(await _run_or_404(services, run_id))


@router.post(
    "/{run_id}/cancel", status_code=202, response_model=RunOut, responses=problems(404, 409)
)
async def cancel_run(run_id: RunIdPath, services: ServicesDep) -> RunOut:
    """Cancel: a run no replica holds (queued, parked, stopped at a breakpoint) at
    once; a running one's nodes are cancelled by its replica and its state
    checkpointed."""
    return run_out(await services.store.request_cancel(run_id))


@router.post(
    "/{run_id}/signal",
    status_code=202,
    response_model=RunOut,
    responses=problems(400, 404, 409, 413),
)
async def signal_run(run_id: RunIdPath, body: SignalIn, services: ServicesDep) -> RunOut:
    """Deliver a signal to the run's ``wait`` node (kept until that node waits for it)."""
    return run_out(await services.store.add_signal(run_id, body.name, body.payload))


@router.get("/{run_id}/trace", response_model=TraceOut, responses=problems(404))
async def trace(run_id: RunIdPath, services: ServicesDep) -> TraceOut:
    """Duration and per-node timings, attempts and errors, from the node ledger."""
    run = await _run_or_404(services, run_id)
    timings = {
        r.node_id: NodeTimingOut(
            status=r.status,
            attempts=r.attempts,
            duration_ms=(r.finished_at - r.started_at) * 1000.0
            if r.finished_at is not None and r.started_at is not None
            else None,
            error=r.error,
            error_kind=r.error_kind,
        )
        for r in await services.store.node_results(run_id)
    }
    # a node that failed is not in the ledger (it runs again on resume): the log has it
    started: dict[str, float] = {}
    for event in await _all_events(services, run_id):
        node_id = event.node_id
        if node_id is None or (node_id in timings and timings[node_id].status != "failed"):
            continue
        if event.type == "node.started":
            started.setdefault(node_id, event.created_at)
        elif event.type == "node.failed":
            began = started.pop(node_id, None)
            timings[node_id] = NodeTimingOut(
                status="failed",
                attempts=int(event.data.get("attempts", 1)),
                duration_ms=(event.created_at - began) * 1000.0 if began is not None else None,
                error=event.data.get("error"),
                error_kind=event.data.get("kind"),
            )
    out = run_out(run)
    return TraceOut(
        run_id=run.id, status=run.status, duration_ms=out.duration_ms, node_timings=timings
    )


async def _all_events(services: Services, run_id: str) -> list[Any]:
    """A run's whole log, read a page at a time (its length is bounded by the run's
    budgets, not by a page size)."""
    events: list[Any] = []
    while True:
        page = await services.store.events_after(
            run_id, events[-1].seq if events else 0, limit=10_000
        )
        events += page
        if len(page) < 10_000:
            return events


@router.get("/{run_id}/state", response_model=StateOut, responses=problems(404))
async def state(run_id: RunIdPath, services: ServicesDep) -> StateOut:
    """The run's state at its latest checkpoint: variables, outputs, pending waits."""
    run = await _run_or_404(services, run_id)
    records = await services.store.checkpoint_records(run_id)
    if not records:
        return StateOut(
            run_id=run.id,
            status=run.status,
            current_nodes=list(run.current_nodes or []),
            variables={},
            node_outputs={},
            pending={},
            checkpoint_id=None,
        )
    checkpoint = fold(checkpoint_chain(records, records[-1].sequence))
    return StateOut(
        run_id=run.id,
        status=run.status,
        current_nodes=list(run.current_nodes or checkpoint.frontier),
        variables=checkpoint.variables,
        node_outputs={
            k: v.output for k, v in checkpoint.completed.items() if v.status == "succeeded"
        },
        pending=checkpoint.pending,
        checkpoint_id=checkpoint.id,
    )
