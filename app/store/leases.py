"""The queue and its leases: claims, heartbeats, release, and parked runs' wake-ups."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from sqlalchemy import and_, func, or_, select, update

from app.store.base import (
    Lease,
    StoreBase,
    _rowcount,
)
from app.store.db import db_now
from app.store.lifecycle import (
    ACTIVE,
    QUEUED,
    RUNNING,
    WAITING,
)
from app.store.models import Run
from app.store.notifications import (
    RELEASED,
    RunQueued,
)
from app.store.records import StoredRun


class Leases(StoreBase):
    """The dispatcher's side of the queue."""

    async def claim_runs(self, owner: str, lease_seconds: float, limit: int) -> list[StoredRun]:
        """Claim up to ``limit`` runs: queued ones, active ones whose lease expired, and
        parked ones that are due; oldest first, as the dispatcher starts them."""
        if limit <= 0:
            return []
        claimed = await self._claim(owner, float(lease_seconds), limit)
        claimed.sort(key=lambda run: run.created_at)  # RETURNING gives the rows' order
        return claimed

    async def _claim(self, owner: str, lease_seconds: float, limit: int) -> list[StoredRun]:
        """claim_runs's write. ``FOR UPDATE SKIP LOCKED`` keeps replicas from claiming
        the same run."""
        now = db_now(self.engine)
        async with self._write() as session:
            ids = list(
                (
                    await session.execute(
                        select(Run.id)
                        .where(
                            or_(
                                Run.status == QUEUED,
                                and_(Run.status.in_(ACTIVE), Run.lease_until < now),
                                and_(
                                    Run.status == WAITING,
                                    Run.parked.is_(True),
                                    Run.wake_at <= now,
                                ),
                            )
                        )
                        .order_by(Run.created_at)
                        .limit(limit)
                        .with_for_update(skip_locked=True)
                    )
                ).scalars()
            )
            if not ids:
                await session.rollback()
                return []
            claimed = [
                StoredRun.of(row)
                for row in (
                    await session.execute(
                        update(Run)
                        .where(Run.id.in_(ids))
                        .values(
                            status=RUNNING,
                            owner=owner,
                            lease_until=now + lease_seconds,
                            epoch=Run.epoch + 1,
                            claims=Run.claims + 1,
                            started_at=func.coalesce(Run.started_at, now),
                            updated_at=now,
                            parked=False,
                            wake_at=None,
                        )
                        .returning(Run)
                    )
                ).scalars()
            ]
            await session.commit()
        return claimed

    async def heartbeat(
        self, owner: str, leases: Iterable[Lease], lease_seconds: float
    ) -> tuple[list[str], list[str]]:
        """Extend these leases. Returns the runs whose lease was lost and the runs whose
        cancellation was requested."""
        leases = list(leases)
        if not leases:
            return [], []
        return await self._heartbeat(owner, leases, lease_seconds)

    async def _heartbeat(
        self, owner: str, leases: list[Lease], lease_seconds: float
    ) -> tuple[list[str], list[str]]:
        now = db_now(self.engine)
        lost: list[str] = []
        async with self._turn(), self._write() as session:
            for lease in leases:
                result = await session.execute(
                    update(Run)
                    .where(
                        Run.id == lease.run_id,
                        Run.owner == owner,
                        Run.epoch == lease.epoch,
                        Run.status.in_(ACTIVE),
                    )
                    .values(lease_until=now + lease_seconds)
                )
                if not _rowcount(result):
                    lost.append(lease.run_id)
            cancel = list(
                (
                    await session.execute(
                        select(Run.id).where(
                            Run.id.in_([lease.run_id for lease in leases]),
                            Run.cancel_requested.is_(True),
                        )
                    )
                ).scalars()
            )
            await session.commit()
        return lost, cancel

    async def cancel_requested(self, run_id: str) -> bool:
        async with self._read() as session:
            value = (
                await session.execute(select(Run.cancel_requested).where(Run.id == run_id))
            ).scalar_one_or_none()
            return bool(value)

    async def release_runs(self, owner: str, run_ids: Sequence[str] | None = None) -> int:
        """Give runs back to the queue (shutdown): another replica resumes them from their
        last checkpoint at once."""
        async with self._write() as session:
            query = update(Run).where(Run.owner == owner, Run.status.in_(ACTIVE))
            if run_ids is not None:
                query = query.where(Run.id.in_(list(run_ids)))
            result = await session.execute(
                query.values(
                    status=QUEUED,
                    owner=None,
                    lease_until=None,
                    epoch=Run.epoch + 1,
                    updated_at=time.time(),
                )
            )
            await self._notify(session, RunQueued(RELEASED))
            await session.commit()
        self._announce(RunQueued(RELEASED))
        return _rowcount(result)

    async def next_wake_at(self) -> float | None:
        """When the first parked run is due (None: none waits on a timer)."""
        async with self._read() as session:
            value = (
                await session.execute(
                    select(func.min(Run.wake_at)).where(Run.status == WAITING, Run.parked.is_(True))
                )
            ).scalar_one_or_none()
            return float(value) if value is not None else None
