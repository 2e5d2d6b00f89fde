"""Workflows: immutable versions, validation, listing, archiving."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Response
from pydantic import WithJsonSchema
from starlette.convertors import Convertor, register_url_convertor

from app.api.body import CheckedRoute
from app.api.deps import CallerDep, ServicesDep
from app.api.errors import problems
from app.api.params import Limit, VersionPath, WorkflowCursor, WorkflowIdPath
from app.api.schemas import (
    JSON_OBJECT_SCHEMA,
    Issue,
    ValidationResult,
    WorkflowOut,
    WorkflowPage,
    WorkflowSummary,
)
from app.runtime.records import WorkflowRecord


class _WorkflowIdConvertor(Convertor[str]):
    """A path segment naming a workflow: anything but ``validate`` (the route of its own
    that ``POST /v1/workflows/validate`` is). The id's pattern is checked as a parameter,
    so a malformed id is a 422 naming it, not a 404."""

    regex = "(?!validate(?:/|$))[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("workflow_id", _WorkflowIdConvertor())
router = APIRouter(
    prefix="/v1/workflows",
    tags=["workflows"],
    route_class=CheckedRoute,
    responses=problems(422, 500),
)

DefinitionBody = Annotated[
    dict[str, Any],
    WithJsonSchema(JSON_OBJECT_SCHEMA),
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


def workflow_out(record: WorkflowRecord) -> WorkflowOut:
    return WorkflowOut(
        id=record.workflow_id,
        version=record.version,
        name=record.name,
        archived=record.archived,
        created_at=record.created_at,
        definition=record.definition,
    )


@router.post("", status_code=201, response_model=WorkflowOut, responses=problems(400, 413))
async def create(
    body: DefinitionBody, services: ServicesDep, caller: CallerDep, response: Response
) -> WorkflowOut:
    """Store a definition as a new version (re-posting an id makes version n+1)."""
    record = await services.workflows.create(caller, body)  # 422 lists every problem
    response.headers["Location"] = (
        f"/v1/workflows/{quote(record.workflow_id, safe='')}/versions/{record.version}"
    )
    return workflow_out(record)


@router.post("/validate", response_model=ValidationResult, responses=problems(400, 413))
async def validate(
    body: DefinitionBody, services: ServicesDep, caller: CallerDep
) -> ValidationResult:
    """Validate a definition without storing it."""
    issues = services.workflows.issues(caller, body)
    return ValidationResult(
        valid=not issues, errors=[Issue.model_validate(i.to_dict()) for i in issues]
    )


@router.get("", response_model=WorkflowPage, responses=problems(400))
async def list_workflows(
    services: ServicesDep,
    caller: CallerDep,
    cursor: WorkflowCursor = None,
    limit: Limit = 50,
) -> WorkflowPage:
    """The latest version of every workflow that is not archived, by id."""
    page = await services.workflows.listing(caller, cursor, limit)
    return WorkflowPage(
        items=[
            WorkflowSummary(
                id=r.workflow_id, version=r.version, name=r.name, created_at=r.created_at
            )
            for r in page.items
        ],
        next_cursor=page.next_cursor,
    )


@router.get("/{workflow_id:workflow_id}", response_model=WorkflowOut, responses=problems(404))
async def get_latest(
    workflow_id: WorkflowIdPath, services: ServicesDep, caller: CallerDep
) -> WorkflowOut:
    """The latest version (404 once the workflow is archived)."""
    return workflow_out(await services.workflows.latest(caller, workflow_id))


@router.get(
    "/{workflow_id:workflow_id}/versions/{version}",
    response_model=WorkflowOut,
    responses=problems(404),
)
async def get_version(
    workflow_id: WorkflowIdPath, version: VersionPath, services: ServicesDep, caller: CallerDep
) -> WorkflowOut:
    """One version. An archived workflow's versions are gone from the API, like the
    workflow (its runs keep theirs: they finish, and can be resumed and forked)."""
    return workflow_out(await services.workflows.version(caller, workflow_id, version))


@router.delete("/{workflow_id:workflow_id}", status_code=204, responses=problems(404))
async def archive(
    workflow_id: WorkflowIdPath, services: ServicesDep, caller: CallerDep
) -> Response:
    """Archive a workflow: it no longer starts runs; runs already started finish."""
    await services.workflows.archive(caller, workflow_id)
    return Response(status_code=204)
