"""The audit log, read by a namespace's admins: who did what, when, from where."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from app.api.body import CheckedRoute
from app.api.deps import CallerDep, ServicesDep
from app.api.errors import problems
from app.api.params import AuditCursor, Limit
from app.runtime.audit import ACTION_PATTERN, AuditEntry

router = APIRouter(
    prefix="/v1/audit",
    tags=["audit"],
    route_class=CheckedRoute,
    responses=problems(401, 403, 422, 500),
)

ActionQuery = Annotated[
    str | None,
    Query(
        pattern=ACTION_PATTERN,
        description="Only entries of this action (`key.created`, `run.cancelled`...).",
    ),
]
SinceQuery = Annotated[
    float | None,
    Query(ge=0, allow_inf_nan=False, description="Only entries at or after this time (epoch s)."),
]


class AuditEntryOut(BaseModel):
    """One entry of the audit log."""

    id: int
    at: float = Field(description="When (epoch s).")
    actor: str = Field(description="The public id of the caller's key (`anonymous` without auth).")
    role: str = Field(description="The caller's role then.")
    action: str = Field(description="What was done: `key.created`, `run.cancelled`...")
    target: str | None = Field(description="What it was done to: `<kind>:<id>`.")
    source: str | None = Field(description="The client's address.")
    detail: dict[str, Any] | None = Field(
        description="A few facts of the action (never a secret or a request body)."
    )


class AuditPage(BaseModel):
    items: list[AuditEntryOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null: the last."
    )


def audit_entry_out(entry: AuditEntry) -> AuditEntryOut:
    return AuditEntryOut(
        id=entry.id,
        at=entry.at,
        actor=entry.actor,
        role=entry.role,
        action=entry.action,
        target=entry.target,
        source=entry.source,
        detail=entry.detail,
    )


@router.get("", response_model=AuditPage, responses=problems(400))
async def list_audit(
    services: ServicesDep,
    caller: CallerDep,
    action: ActionQuery = None,
    since: SinceQuery = None,
    cursor: AuditCursor = None,
    limit: Limit = 50,
) -> AuditPage:
    """The audit log of the caller's namespace, newest first (admin keys only)."""
    page = await services.audit.listing(
        caller, cursor=cursor, limit=limit, action=action, since=since
    )
    return AuditPage(
        items=[audit_entry_out(entry) for entry in page.items], next_cursor=page.next_cursor
    )
