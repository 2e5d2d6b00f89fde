"""Workflows as the service offers them: immutable versions, validated against the
operator's limits, listed, archived."""

from __future__ import annotations

from typing import Any

from app.engine import (
    ExecutionConfig,
    ValidationIssue,
    WorkflowValidationError,
    create_workflow,
    validate_workflow,
)
from app.runtime.access import AuditTrail, Caller, Role
from app.runtime.audit import WORKFLOW_ARCHIVED, WORKFLOW_CREATED
from app.runtime.errors import NotFound
from app.runtime.records import Page, WorkflowRecord
from app.store.repository import Store

#: ids that are paths of the API (``POST /v1/workflows/validate``)
RESERVED_IDS = frozenset({"validate"})


class WorkflowService:
    """Create, validate, read, list and archive workflow versions, each in the caller's
    namespace (``app.runtime.access``): another namespace's workflows do not exist."""

    def __init__(
        self, store: Store, limits: ExecutionConfig, audit: AuditTrail | None = None
    ) -> None:
        self.store = store
        self.limits = limits
        self.audit = audit

    def issues(self, caller: Caller, body: dict[str, Any]) -> list[ValidationIssue]:
        """Every problem of a definition posted to the service (which, unlike the engine,
        names no workflow for you: an id is required, and not a reserved one)."""
        caller.need(Role.READER)
        return self._issues(body)

    def _issues(self, body: dict[str, Any]) -> list[ValidationIssue]:
        issues = validate_workflow(body, limits=self.limits)
        workflow_id = body.get("id")
        if "id" not in body:
            issues.insert(0, ValidationIssue("a workflow needs an id", field="id", code="schema"))
        elif isinstance(workflow_id, str) and workflow_id in RESERVED_IDS:
            message = f"the id {workflow_id!r} is reserved"
            issues.insert(0, ValidationIssue(message, field="id", code="schema"))
        return issues

    async def create(self, caller: Caller, body: dict[str, Any]) -> WorkflowRecord:
        """Store ``body`` as the next version of its id (WorkflowValidationError lists
        every problem)."""
        caller.need(Role.WRITER)
        issues = self._issues(body)
        if issues:
            raise WorkflowValidationError(issues)
        definition = create_workflow(body, limits=self.limits)
        data = definition.model_dump(mode="json", exclude_none=True)
        row = await self.store.create_workflow_version(
            definition.id, definition.name, data, namespace=caller.namespace
        )
        if self.audit is not None:
            target = f"workflow:{row.workflow_id}@{row.version}"
            await self.audit.record(caller, WORKFLOW_CREATED, target)
        return WorkflowRecord.of(row)

    async def listing(self, caller: Caller, cursor: str | None, limit: int) -> Page[WorkflowRecord]:
        caller.need(Role.READER)
        page = await self.store.list_workflows(cursor, limit, namespace=caller.namespace)
        return Page([WorkflowRecord.of(row) for row in page.items], page.next_cursor)

    async def latest(self, caller: Caller, workflow_id: str) -> WorkflowRecord:
        row = await self.store.get_workflow(workflow_id, namespace=caller.namespace)
        if row is None:
            raise NotFound(f"no workflow {workflow_id!r}")
        caller.need(Role.READER)
        return WorkflowRecord.of(row)

    async def version(self, caller: Caller, workflow_id: str, version: int) -> WorkflowRecord:
        """One version. An archived workflow's versions are gone with it (its runs keep
        theirs: they finish, and can be resumed and forked)."""
        row = await self.store.get_workflow(
            workflow_id, version, include_archived=True, namespace=caller.namespace
        )
        if row is None:
            raise NotFound(f"no workflow {workflow_id!r} version {version}")
        if row.archived:
            raise NotFound(f"workflow {workflow_id!r} is archived")
        caller.need(Role.READER)
        return WorkflowRecord.of(row)

    async def archive(self, caller: Caller, workflow_id: str) -> None:
        latest = await self.store.get_workflow(workflow_id, namespace=caller.namespace)
        if latest is None:
            raise NotFound(f"no workflow {workflow_id!r}")
        caller.need(Role.WRITER)
        if not await self.store.archive_workflow(workflow_id, namespace=caller.namespace):
            raise NotFound(f"no workflow {workflow_id!r}")
        if self.audit is not None:
            await self.audit.record(caller, WORKFLOW_ARCHIVED, f"workflow:{workflow_id}")
