"""Runs: start (idempotent), read, list, cancel, signal, trace, state."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Response

from app.api.body import CheckedRoute
from app.api.deps import CallerDep, ServicesDep
from app.api.errors import problems
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
from app.runtime.records import RunRecord

router = APIRouter(
    prefix="/v1/runs", tags=["runs"], route_class=CheckedRoute, responses=problems(422, 500)
)

STATUSES = ("queued", "running", "waiting", "succeeded", "failed", "cancelled")


def run_out(run: RunRecord) -> RunOut:
    base = f"/v1/runs/{run.id}"
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
        duration_ms=run.duration_ms,
        current_nodes=run.current_nodes,
        cancel_requested=run.cancel_requested,
        forked_from=run.fork_of,
        parked=run.parked,
        wake_at=run.wake_at,
        links=RunLinks(
            self=base,
            events=f"{base}/events",
            cancel=f"{base}/cancel",
            checkpoints=f"{base}/checkpoints",
            trace=f"{base}/trace",
        ),
    )


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
    caller: CallerDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    wait: WaitSeconds = None,
) -> RunOut:
    """Queue a run of a workflow version. The same ``Idempotency-Key`` with the same body
    returns the same run; with a different body it is a 409."""
    started = await services.runs.start(
        caller,
        body.workflow_id,
        body.version,
        body.input,
        body.config,
        idempotency_key=idempotency_key,
        wait=wait,
    )
    if started.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    if started.finished:
        response.status_code = 200
    response.headers["Location"] = f"/v1/runs/{quote(started.run.id, safe='')}"
    return run_out(started.run)


@router.get("", response_model=RunPage, responses=problems(400))
async def list_runs(
    services: ServicesDep,
    caller: CallerDep,
    workflow_id: WorkflowIdQuery = None,
    status: Annotated[str | None, Query(pattern="^(" + "|".join(STATUSES) + ")$")] = None,
    cursor: RunCursor = None,
    limit: Limit = 50,
) -> RunPage:
    """Runs, newest first, filtered by workflow and status."""
    page = await services.runs.listing(
        caller, workflow_id=workflow_id, status=status, cursor=cursor, limit=limit
    )
    return RunPage(items=[run_out(r) for r in page.items], next_cursor=page.next_cursor)


@router.get("/{run_id}", response_model=RunOut, responses=problems(404))
async def get_run(run_id: RunIdPath, services: ServicesDep, caller: CallerDep) -> RunOut:
    return run_out(await services.runs.get(caller, run_id))


@router.post(
    "/{run_id}/cancel", status_code=202, response_model=RunOut, responses=problems(404, 409)
)
async def cancel_run(run_id: RunIdPath, services: ServicesDep, caller: CallerDep) -> RunOut:
    """Cancel: a run no replica holds (queued, parked, stopped at a breakpoint) at
    once; a running one's nodes are cancelled by its replica and its state
    checkpointed."""
    return run_out(await services.runs.cancel(caller, run_id))


@router.post(
    "/{run_id}/signal",
    status_code=202,
    response_model=RunOut,
    responses=problems(400, 404, 409, 413),
)
async def signal_run(
    run_id: RunIdPath, body: SignalIn, services: ServicesDep, caller: CallerDep
) -> RunOut:
    """Deliver a signal to the run's ``wait`` node (kept until that node waits for it)."""
    return run_out(await services.runs.signal(caller, run_id, body.name, body.payload))


@router.get("/{run_id}/trace", response_model=TraceOut, responses=problems(404))
async def trace(run_id: RunIdPath, services: ServicesDep, caller: CallerDep) -> TraceOut:
    """Duration and per-node timings, attempts and errors, from the node ledger."""
    found = await services.runs.trace(caller, run_id)
    return TraceOut(
        run_id=found.run_id,
        status=found.status,
        duration_ms=found.duration_ms,
        node_timings={
            node_id: NodeTimingOut(
                status=t.status,
                attempts=t.attempts,
                duration_ms=t.duration_ms,
                error=t.error,
                error_kind=t.error_kind,
            )
            for node_id, t in found.node_timings.items()
        },
    )


@router.get("/{run_id}/state", response_model=StateOut, responses=problems(404))
async def state(run_id: RunIdPath, services: ServicesDep, caller: CallerDep) -> StateOut:
    """The run's state at its latest checkpoint: variables, outputs, pending waits."""
    found = await services.runs.state(caller, run_id)
    return StateOut(
        run_id=found.run_id,
        status=found.status,
        current_nodes=found.current_nodes,
        variables=found.variables,
        node_outputs=found.node_outputs,
        pending=found.pending,
        checkpoint_id=found.checkpoint_id,
    )
