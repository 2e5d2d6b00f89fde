"""Workflows: immutable versions, validation, listing, archiving."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Body, Response
from pydantic import WithJsonSchema
from starlette.convertors import Convertor, register_url_convertor

from app.api.body import CheckedRoute
from app.api.deps import ServicesDep
from app.api.errors import not_found, problems
from app.api.params import Limit, VersionPath, WorkflowCursor, WorkflowIdPath
from app.api.schemas import (
    JSON_OBJECT_SCHEMA,
    Issue,
    ValidationResult,
    WorkflowOut,
    WorkflowPage,
    WorkflowSummary,
)
from app.engine import (
    ValidationIssue,
    WorkflowValidationError,
    create_workflow,
    validate_workflow,
)
from app.store.models import WorkflowVersion


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
#: ids that are paths of this API
RESERVED_IDS = frozenset({"validate"})

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


def workflow_out(row: WorkflowVersion) -> WorkflowOut:
    return WorkflowOut(
        id=row.workflow_id,
        version=row.version,
        name=row.name,
        archived=row.archived,
        created_at=row.created_at,
        definition=row.definition,
    )


def _issues(body: dict[str, Any], services: ServicesDep) -> list[ValidationIssue]:
    """Every problem of a definition posted to the service (which, unlike the engine,
    names no workflow for you: an id is required)."""
    issues = validate_workflow(body, limits=services.limits)
    if "id" not in body:
        issues.insert(0, ValidationIssue("a workflow needs an id", field="id", code="schema"))
    elif isinstance(body["id"], str) and body["id"] in RESERVED_IDS:
        issues.insert(
            0, ValidationIssue(f"the id {body['id']!r} is reserved", field="id", code="schema")
        )
    return issues


@router.post("", status_code=201, response_model=WorkflowOut, responses=problems(400, 413))
async def create(body: DefinitionBody, services: ServicesDep, response: Response) -> WorkflowOut:
    """Store a definition as a new version (re-posting an id makes version n+1)."""
    issues = _issues(body, services)
    if issues:
        raise WorkflowValidationError(issues)  # 422 lists every problem
    definition = create_workflow(body, limits=services.limits)
    data = definition.model_dump(mode="json", exclude_none=True)
    row = await services.store.create_workflow_version(definition.id, definition.name, data)
    response.headers["Location"] = (
        f"/v1/workflows/{quote(row.workflow_id, safe='')}/versions/{row.version}"
    )
    return workflow_out(row)


@router.post("/validate", response_model=ValidationResult, responses=problems(400, 413))
async def validate(body: DefinitionBody, services: ServicesDep) -> ValidationResult:
    """Validate a definition without storing it."""
    issues = _issues(body, services)
    return ValidationResult(
        valid=not issues, errors=[Issue.model_validate(i.to_dict()) for i in issues]
    )


@router.get("", response_model=WorkflowPage, responses=problems(400))
async def list_workflows(
    services: ServicesDep,
    cursor: WorkflowCursor = None,
    limit: Limit = 50,
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


@router.get("/{workflow_id:workflow_id}", response_model=WorkflowOut, responses=problems(404))
async def get_latest(workflow_id: WorkflowIdPath, services: ServicesDep) -> WorkflowOut:
    """The latest version (404 once the workflow is archived)."""
    row = await services.store.get_workflow(workflow_id)
    if row is None:
        raise not_found(f"no workflow {workflow_id!r}")
    return workflow_out(row)


@router.get(
    "/{workflow_id:workflow_id}/versions/{version}",
    response_model=WorkflowOut,
    responses=problems(404),
)
async def get_version(
    workflow_id: WorkflowIdPath, version: VersionPath, services: ServicesDep
) -> WorkflowOut:
    """One version. An archived workflow's versions are gone from the API, like the
    workflow (its runs keep theirs: they finish, and can be resumed and forked)."""
    row = await services.store.get_workflow(workflow_id, version, include_archived=True)
    if row is None:
        raise not_found(f"no workflow {workflow_id!r} version {version}")
    if row.archived:
        raise not_found(f"workflow {workflow_id!r} is archived")
    return workflow_out(row)


@router.delete("/{workflow_id:workflow_id}", status_code=204, responses=problems(404))
async def archive(workflow_id: WorkflowIdPath, services: ServicesDep) -> Response:
    """Archive a workflow: it no longer starts runs; runs already started finish."""
    if not await services.store.archive_workflow(workflow_id):
        raise not_found(f"no workflow {workflow_id!r}")
    return Response(status_code=204)
