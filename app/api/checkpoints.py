"""Checkpoints: list, read, resume in place or fork a new run."""

from __future__ import annotations

import uuid
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Body, Response

from app.api.body import CheckedRoute
from app.api.deps import ServicesDep
from app.api.errors import not_found, problems
from app.api.params import MAX_INT, CheckpointIdPath, RunIdPath
from app.api.runs import run_out
from app.api.schemas import CheckpointDetail, CheckpointOut, ResumeIn, RunOut
from app.engine.checkpoint import CheckpointRecord, fold, parse_checkpoint_id
from app.engine.checkpoint import chain_to as checkpoint_chain
from app.store.models import CheckpointRow

router = APIRouter(tags=["checkpoints"], route_class=CheckedRoute, responses=problems(422, 500))


def checkpoint_out(row: CheckpointRow) -> CheckpointOut:
    return CheckpointOut(
        id=f"{row.run_id}:{row.sequence}",
        run_id=row.run_id,
        sequence=row.sequence,
        parent=row.parent,
        status=row.status,
        event_seq=row.event_seq,
        created_at=row.created_at,
        completed=sorted(row.record.get("completed", {})),
    )


@router.get(
    "/v1/runs/{run_id}/checkpoints", response_model=list[CheckpointOut], responses=problems(404)
)
async def list_checkpoints(run_id: RunIdPath, services: ServicesDep) -> list[CheckpointOut]:
    if await services.store.get_run(run_id) is None:
        raise not_found(f"no run {run_id!r}")
    return [checkpoint_out(row) for row in await services.store.checkpoints(run_id)]


async def _chain(services: ServicesDep, checkpoint_id: str) -> tuple[str, list[CheckpointRecord]]:
    run_id, sequence = parse_checkpoint_id(checkpoint_id)
    if sequence > MAX_INT:
        raise not_found(f"no checkpoint {checkpoint_id!r}")
    records = checkpoint_chain(await services.store.checkpoint_records(run_id), sequence)
    if not records or records[-1].sequence != sequence:
        raise not_found(f"no checkpoint {checkpoint_id!r}")
    return run_id, records


@router.get(
    "/v1/checkpoints/{checkpoint_id}", response_model=CheckpointDetail, responses=problems(404)
)
async def get_checkpoint(
    checkpoint_id: CheckpointIdPath, services: ServicesDep
) -> CheckpointDetail:
    """A checkpoint, with the run's full state at that point."""
    run_id, records = await _chain(services, checkpoint_id)
    row = await services.store.checkpoint(run_id, records[-1].sequence)
    assert row is not None
    state = fold(records).to_dict()
    state.pop("definition", None)
    return CheckpointDetail(**checkpoint_out(row).model_dump(), state=state)


@router.post(
    "/v1/checkpoints/{checkpoint_id}/resume",
    status_code=202,
    response_model=RunOut,
    responses=problems(400, 404, 409, 413),
)
async def resume(
    checkpoint_id: CheckpointIdPath,
    services: ServicesDep,
    response: Response,
    body: Annotated[ResumeIn | None, Body()] = None,
) -> RunOut:
    """Resume the run from this checkpoint (failed, cancelled, waiting or interrupted
    runs), or with ``fork: true`` start a new run from it, optionally with a new input
    and variables. Nodes the checkpoint holds as finished never run again."""
    body = body or ResumeIn()
    run_id, records = await _chain(services, checkpoint_id)
    run = await services.store.get_run(run_id)
    if run is None:
        raise not_found(f"no run {run_id!r}")
    if body.fork:
        workflow = await services.store.get_workflow(
            run.workflow_id, run.workflow_version, include_archived=True
        )
        if workflow is None:
            raise not_found(f"workflow {run.workflow_id!r} version {run.workflow_version} is gone")
        forked, _ = await services.store.create_run(
            uuid.uuid4().hex,
            workflow,
            body.input if body.input is not None else fold(records).input,
            run.config,
            None,
            None,
            fork_of=checkpoint_id,
            vars_patch=body.vars,
        )
        response.headers["Location"] = f"/v1/runs/{quote(forked.id, safe='')}"
        return run_out(forked)
    resumed = await services.store.queue_resume(run_id, checkpoint_id, body.vars)
    return run_out(resumed)
