"""The store's workflows: immutable versions of definitions."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError

from app.store.base import (
    _CURSOR_ID,
    Page,
    StoreBase,
    _rowcount,
    one,
)
from app.store.errors import (
    InvalidCursor,
    StoreError,
)
from app.store.models import WorkflowVersion
from app.store.records import DEFAULT_NAMESPACE, StoredWorkflow


class WorkflowRows(StoreBase):
    """Workflow versions: create, read, list, archive."""

    async def create_workflow_version(
        self,
        workflow_id: str,
        name: str | None,
        definition: dict[str, Any],
        *,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> StoredWorkflow:
        """Store ``definition`` as the next version of ``workflow_id`` in ``namespace``."""
        for _ in range(5):  # two writers racing for the same version number: retry
            async with self._write() as session:
                latest = (
                    await session.execute(
                        select(func.max(WorkflowVersion.version)).where(
                            WorkflowVersion.namespace == namespace,
                            WorkflowVersion.workflow_id == workflow_id,
                        )
                    )
                ).scalar_one()
                version = (latest or 0) + 1
                row = WorkflowVersion(
                    namespace=namespace,
                    workflow_id=workflow_id,
                    version=version,
                    name=name,
                    definition={**definition, "version": version},
                    created_at=time.time(),
                    archived=False,
                )
                session.add(row)
                try:
                    await session.commit()
                except IntegrityError:
                    await session.rollback()
                    continue
                return StoredWorkflow.of(row)
        raise StoreError(f"could not allocate a version of workflow {workflow_id!r}")

    async def get_workflow(
        self,
        workflow_id: str,
        version: int | None = None,
        *,
        include_archived: bool = False,
        namespace: str = DEFAULT_NAMESPACE,
    ) -> StoredWorkflow | None:
        row = await self._workflow_row(namespace, workflow_id, version)
        if row is None or (row.archived and not include_archived and version is None):
            return None
        return row

    async def _workflow_row(
        self, namespace: str, workflow_id: str, version: int | None
    ) -> StoredWorkflow | None:
        """A version of ``workflow_id`` (its latest when ``version`` is None)."""
        async with self._read() as session:
            query = select(WorkflowVersion).where(
                WorkflowVersion.namespace == namespace, WorkflowVersion.workflow_id == workflow_id
            )
            if version is not None:
                query = query.where(WorkflowVersion.version == version)
            else:
                query = query.order_by(WorkflowVersion.version.desc()).limit(1)
            return one(StoredWorkflow, (await session.execute(query)).scalar_one_or_none())

    async def list_workflows(
        self, cursor: str | None, limit: int, *, namespace: str = DEFAULT_NAMESPACE
    ) -> Page:
        """The latest version of each workflow of ``namespace``, by id, ``limit`` at a
        time."""
        async with self._read() as session:
            latest = (
                select(
                    WorkflowVersion.workflow_id,
                    func.max(WorkflowVersion.version).label("version"),
                )
                .where(WorkflowVersion.namespace == namespace)
                .group_by(WorkflowVersion.workflow_id)
                .subquery()
            )
            query = (
                select(WorkflowVersion)
                .join(
                    latest,
                    and_(
                        WorkflowVersion.namespace == namespace,
                        WorkflowVersion.workflow_id == latest.c.workflow_id,
                        WorkflowVersion.version == latest.c.version,
                    ),
                )
                .where(WorkflowVersion.archived.is_(False))
                .order_by(WorkflowVersion.workflow_id)
                .limit(limit + 1)
            )
            if cursor:
                if not _CURSOR_ID.fullmatch(cursor):
                    raise InvalidCursor(f"bad cursor {cursor[:80]!r}")
                query = query.where(WorkflowVersion.workflow_id > cursor)
            rows = [StoredWorkflow.of(r) for r in (await session.execute(query)).scalars()]
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, rows[-1].workflow_id if more else None)

    async def list_versions(
        self, workflow_id: str, *, namespace: str = DEFAULT_NAMESPACE
    ) -> list[StoredWorkflow]:
        async with self._read() as session:
            query = (
                select(WorkflowVersion)
                .where(
                    WorkflowVersion.namespace == namespace,
                    WorkflowVersion.workflow_id == workflow_id,
                )
                .order_by(WorkflowVersion.version)
            )
            return [StoredWorkflow.of(r) for r in (await session.execute(query)).scalars()]

    async def archive_workflow(
        self, workflow_id: str, *, namespace: str = DEFAULT_NAMESPACE
    ) -> bool:
        """Archive every version (runs already started keep their pinned version)."""
        async with self._write() as session:
            result = await session.execute(
                update(WorkflowVersion)
                .where(
                    WorkflowVersion.namespace == namespace,
                    WorkflowVersion.workflow_id == workflow_id,
                )
                .values(archived=True)
            )
            await session.commit()
            return bool(_rowcount(result))
