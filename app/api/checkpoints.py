"""Checkpoints: list, read, resume in place or fork a new run."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Body, Response

from app.api.body import CheckedRoute
from app.api.deps import CallerDep, ServicesDep
from app.api.errors import problems
from app.api.params import CheckpointIdPath, RunIdPath
from app.api.runs import run_out
from app.api.schemas import CheckpointDetail, CheckpointOut, ResumeIn, RunOut
from app.runtime.records import CheckpointSummary

router = APIRouter(tags=["checkpoints"], route_class=CheckedRoute, responses=problems(422, 500))


def checkpoint_out(found: CheckpointSummary) -> CheckpointOut:
    return CheckpointOut(
        id=found.id,
        run_id=found.run_id,
        sequence=found.sequence,
        parent=found.parent,
        status=found.status,
        event_seq=found.event_seq,
        created_at=found.created_at,
        completed=found.completed,
    )


@router.get(
    "/v1/runs/{run_id}/checkpoints", response_model=list[CheckpointOut], responses=problems(404)
)
async def list_checkpoints(
    run_id: RunIdPath, services: ServicesDep, caller: CallerDep
) -> list[CheckpointOut]:
    return [checkpoint_out(found) for found in await services.runs.checkpoints(caller, run_id)]


@router.get(
    "/v1/checkpoints/{checkpoint_id}", response_model=CheckpointDetail, responses=problems(404)
)
async def get_checkpoint(
    checkpoint_id: CheckpointIdPath, services: ServicesDep, caller: CallerDep
) -> CheckpointDetail:
    """A checkpoint, with the run's full state at that point."""
    found, state = await services.runs.checkpoint(caller, checkpoint_id)
    return CheckpointDetail(**checkpoint_out(found).model_dump(), state=state)


@router.post(
    "/v1/checkpoints/{checkpoint_id}/resume",
    status_code=202,
    response_model=RunOut,
    responses=problems(400, 404, 409, 413),
)
async def resume(
    checkpoint_id: CheckpointIdPath,
    services: ServicesDep,
    caller: CallerDep,
    response: Response,
    body: Annotated[ResumeIn | None, Body()] = None,
) -> RunOut:
    """Resume the run from this checkpoint (failed, cancelled, waiting or interrupted
    runs), or with ``fork: true`` start a new run from it, optionally with a new input
    and variables. Nodes the checkpoint holds as finished never run again."""
    body = body or ResumeIn()
    run = await services.runs.resume(
        caller, checkpoint_id, fork=body.fork, input=body.input, vars=body.vars
    )
    if body.fork:
        response.headers["Location"] = f"/v1/runs/{quote(run.id, safe='')}"
    return run_out(run)
