"""The store's audit log: entries appended, one short transaction each, and read back
newest first, a namespace at a time."""

from __future__ import annotations

import math
import re
import time
from typing import Any

from sqlalchemy import String, select

from app.store.base import Page, StoreBase
from app.store.errors import InvalidCursor
from app.store.models import AuditRow
from app.store.records import StoredAudit

#: the id of the last entry of a page: what a cursor of the audit log holds (the column
#: is a 32-bit integer, so at most 10 digits; the value is checked too)
_AUDIT_CURSOR = re.compile(r"[1-9][0-9]{0,9}")
_MAX_ID = 2**31 - 1


def _width(column: str) -> int:
    kind = AuditRow.__table__.c[column].type
    if not isinstance(kind, String) or kind.length is None:
        raise TypeError(f"audit_log.{column} is not a string of bounded length")
    return kind.length


#: what the columns hold: a longer value is cut to fit (Postgres would refuse it)
_WIDTHS = {
    name: _width(name) for name in ("namespace", "actor", "role", "action", "target", "source")
}


def _fit(column: str, value: str | None) -> str | None:
    return None if value is None else value[: _WIDTHS[column]]


class AuditRows(StoreBase):
    """The audit log: append, list."""

    async def append_audit(
        self,
        namespace: str,
        *,
        actor: str,
        role: str,
        action: str,
        target: str | None = None,
        source: str | None = None,
        detail: dict[str, Any] | None = None,
        at: float | None = None,
    ) -> StoredAudit:
        """Append one entry (``at``: now by default) in a transaction of its own; the
        strings are cut to their columns' widths."""
        row = AuditRow(
            at=time.time() if at is None else at,
            namespace=_fit("namespace", namespace),
            actor=_fit("actor", actor),
            role=_fit("role", role),
            action=_fit("action", action),
            target=_fit("target", target),
            source=_fit("source", source),
            detail=detail,
        )
        async with self._write() as session:
            session.add(row)
            await session.commit()
        return StoredAudit.of(row)

    async def list_audit(
        self,
        namespace: str,
        *,
        cursor: str | None,
        limit: int,
        action: str | None = None,
        since: float | None = None,
    ) -> Page:
        """``namespace``'s entries, newest first (by id: the order they were appended),
        only ``action``'s and only those at or after ``since`` when given; the cursor is
        the id of the last entry seen."""
        query = (
            select(AuditRow)
            .where(AuditRow.namespace == namespace)
            .order_by(AuditRow.id.desc())
            .limit(limit + 1)
        )
        if action is not None:
            query = query.where(AuditRow.action == action)
        if since is not None:
            if not math.isfinite(since):
                raise ValueError(f"since must be a finite time, not {since!r}")
            query = query.where(AuditRow.at >= since)
        if cursor:
            if not _AUDIT_CURSOR.fullmatch(cursor) or int(cursor) > _MAX_ID:
                raise InvalidCursor(f"bad cursor {cursor[:80]!r}")
            query = query.where(AuditRow.id < int(cursor))
        async with self._read() as session:
            rows = [StoredAudit.of(r) for r in (await session.execute(query)).scalars()]
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, str(rows[-1].id) if more else None)
