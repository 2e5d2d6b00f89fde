"""Workflows: immutable versions, validation, listing, archiving."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response

from app.api.deps import ServicesDep
from app.api.errors import not_found
from app.api.schemas import Issue, ValidationResult, WorkflowOut, WorkflowPage, WorkflowSummary
from app.engine import create_workflow, validate_workflow
from app.store.models import WorkflowVersion

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])

DefinitionBody = Annotated[
    dict[str, Any],
    Body(
        description="A workflow definition (see docs/dsl.md).",
        examples=[
            {
                "id": "greet",
                "nodes": [
                    {
                        "id": "hello",
                        "type": "transform",
                        "config": {"output": {"text": "'Hello, ' + input.name"}},
                    }
                ],
                "output": {"greeting": "nodes.hello.output.text"},
            }
        ],
    ),
]


def workflow_out(row: WorkflowVersion) -> WorkflowOut:
    return WorkflowOut(
        id=row.workflow_id,
        version=row.version,
        name=row.name,
        archived=row.archived,
        created_at=row.created_at,
        definition=row.definition,
    )


@router.post("", status_code=201, response_model=WorkflowOut)
async def create(body: DefinitionBody, services: ServicesDep, response: Response) -> WorkflowOut:
    """Store a definition as a new version (re-posting an id makes version n+1)."""
    definition = create_workflow(body, limits=services.limits)  # 422 lists every problem
    data = definition.model_dump(mode="json", exclude_none=True)
    row = await services.store.create_workflow_version(definition.id, definition.name, data)
    response.headers["Location"] = f"/v1/workflows/{row.workflow_id}/versions/{row.version}"
    return workflow_out(row)


@router.post("/validate", response_model=ValidationResult)
async def validate(body: DefinitionBody, services: ServicesDep) -> ValidationResult:
    """Validate a definition without storing it."""
    issues = validate_workflow(body, limits=services.limits)
    return ValidationResult(
        valid=not issues, errors=[Issue.model_validate(i.to_dict()) for i in issues]
    )


@router.get("", response_model=WorkflowPage)
async def list_workflows(
    services: ServicesDep,
    cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> WorkflowPage:
    """The latest version of every workflow that is not archived, by id."""
    page = await services.store.list_workflows(cursor, limit)
    return WorkflowPage(
        items=[
            WorkflowSummary(
                id=r.workflow_id, version=r.version, name=r.name, created_at=r.created_at
            )
            for r in page.items
        ],
        next_cursor=page.next_cursor,
    )


@router.get("/{workflow_id}", response_model=WorkflowOut)
async def get_latest(workflow_id: str, services: ServicesDep) -> WorkflowOut:
    row = await services.store.get_workflow(workflow_id)
    if row is None:
        raise not_found(f"no workflow {workflow_id!r}")
    return workflow_out(row)


@router.get("/{workflow_id}/versions/{version}", response_model=WorkflowOut)
async def get_version(workflow_id: str, version: int, services: ServicesDep) -> WorkflowOut:
    row = await services.store.get_workflow(workflow_id, version, include_archived=True)
    if row is None:
        raise not_found(f"no workflow {workflow_id!r} version {version}")
    return workflow_out(row)


@router.delete("/{workflow_id}", status_code=204)
async def archive(workflow_id: str, services: ServicesDep) -> Response:
    """Archive a workflow: it no longer starts runs; runs already started finish."""
    if not await services.store.archive_workflow(workflow_id):
        raise not_found(f"no workflow {workflow_id!r}")
    return Response(status_code=204)
