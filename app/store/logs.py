"""What a run leaves behind: its events, checkpoints and node results."""

from __future__ import annotations

from sqlalchemy import func, select

from app.engine import CheckpointRecord
from app.store.base import (
    StoreBase,
    _record_from,
    one,
)
from app.store.models import CheckpointRow, EventRow, NodeResultRow
from app.store.records import StoredCheckpoint, StoredEvent, StoredNodeResult


class Logs(StoreBase):
    """Reads of runs' logs."""

    async def events_after(
        self, run_id: str, after_seq: int, limit: int = 500
    ) -> list[StoredEvent]:
        async with self._read() as session:
            query = (
                select(EventRow)
                .where(EventRow.run_id == run_id, EventRow.seq > after_seq)
                .order_by(EventRow.seq)
                .limit(limit)
            )
            return [StoredEvent.of(r) for r in (await session.execute(query)).scalars()]

    async def last_event_seq(self, run_id: str) -> int:
        async with self._read() as session:
            value = (
                await session.execute(
                    select(func.max(EventRow.seq)).where(EventRow.run_id == run_id)
                )
            ).scalar_one()
            return int(value or 0)

    async def checkpoints(self, run_id: str) -> list[StoredCheckpoint]:
        async with self._read() as session:
            query = (
                select(CheckpointRow)
                .where(CheckpointRow.run_id == run_id)
                .order_by(CheckpointRow.sequence)
            )
            return [StoredCheckpoint.of(r) for r in (await session.execute(query)).scalars()]

    async def checkpoint(self, run_id: str, sequence: int) -> StoredCheckpoint | None:
        async with self._read() as session:
            return one(StoredCheckpoint, await session.get(CheckpointRow, (run_id, sequence)))

    async def checkpoint_records(self, run_id: str) -> list[CheckpointRecord]:
        return [_record_from(row.record) for row in await self.checkpoints(run_id)]

    async def node_results(self, run_id: str) -> list[StoredNodeResult]:
        async with self._read() as session:
            query = (
                select(NodeResultRow)
                .where(NodeResultRow.run_id == run_id)
                .order_by(NodeResultRow.committed_at, NodeResultRow.node_id)
            )
            return [StoredNodeResult.of(r) for r in (await session.execute(query)).scalars()]
