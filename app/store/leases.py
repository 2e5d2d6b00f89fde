"""The queue and its leases: claims, heartbeats, release, and parked runs' wake-ups."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    CompoundSelect,
    Select,
    Subquery,
    and_,
    func,
    literal,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.orm import aliased
from sqlalchemy.sql.expression import ColumnElement

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

#: how many runs past ``limit`` a claim looks at in the fair order: the runs that other
#: replicas claiming at the same instant (woken by one notification) may have locked
CLAIM_LOOKAHEAD = 1000


#: the most SELECTs one UNION ALL joins (SQLite refuses a compound SELECT of 500)
_UNION_TERMS = 100


def _claimable(now: Any) -> ColumnElement[bool]:
    """Queued runs, active ones whose lease expired, parked ones that are due."""
    return or_(
        Run.status == QUEUED,
        and_(Run.status.in_(ACTIVE), Run.lease_until < now),
        and_(Run.status == WAITING, Run.parked.is_(True), Run.wake_at <= now),
    )


def _stale(now: Any) -> ColumnElement[bool]:
    """The claimable runs that are not queued, found through their indexes: active runs
    whose lease expired (``ix_runs_owner``: a lease is an owner and an until, set and
    cleared together) and parked runs that are due (``ix_runs_wake``)."""
    return or_(
        and_(Run.owner.is_not(None), Run.status.in_(ACTIVE), Run.lease_until < now),
        and_(Run.status == WAITING, Run.parked.is_(True), Run.wake_at <= now),
    )


def _queued_namespaces() -> Select[str]:
    """The namespaces that have queued runs, walked from one to the next from ''
    (below every string): one probe of ``ix_runs_queue`` each (a loose index scan), not
    a read of every queued run. '' itself may come out: it has no queued runs then."""
    after = aliased(Run)
    walk = select(literal("").label("namespace")).cte("walk", recursive=True)
    walk = walk.union_all(
        select(
            select(after.namespace)
            .where(after.status == QUEUED, after.namespace > walk.c.namespace)
            .order_by(after.namespace)
            .limit(1)
            .scalar_subquery()
        ).where(walk.c.namespace.is_not(None))
    )
    return select(walk.c.namespace).where(walk.c.namespace.is_not(None))


def _union_all(
    selects: list[Select[*tuple[Any, ...]]],
) -> CompoundSelect[*tuple[Any, ...]]:
    """UNION ALL of ``selects``, nested so that no compound joins more than
    ``_UNION_TERMS``."""
    while len(selects) > _UNION_TERMS:
        selects = [
            select(union_all(*selects[i : i + _UNION_TERMS]).subquery())
            for i in range(0, len(selects), _UNION_TERMS)
        ]
    return union_all(*selects)


def _fair_order(now: Any, namespaces: Sequence[str], depth: int) -> Subquery:
    """The first ``depth`` places of the fair order (see ``Leases._claim``): the turns of
    the stale runs and of the first ``depth`` queued runs of each of ``namespaces``, each
    read from the head of its queue (``ix_runs_queue``)."""
    columns = (Run.id, Run.namespace, Run.created_at)
    heads = [
        select(*columns)
        .where(Run.status == QUEUED, Run.namespace == namespace)
        .order_by(Run.created_at, Run.id)
        .limit(depth)
        .subquery()
        for namespace in namespaces
    ]
    claimable = _union_all(
        [select(*columns).where(_stale(now)), *(select(head) for head in heads)]
    ).subquery("claimable")
    ranked = select(
        claimable,
        func.row_number()
        .over(
            partition_by=claimable.c.namespace,
            order_by=(claimable.c.created_at, claimable.c.id),
        )
        .label("rank"),
    ).subquery("ranked")
    held = (
        select(Run.namespace, func.count().label("n"))
        .where(Run.owner.is_not(None), Run.status.in_(ACTIVE), Run.lease_until >= now)
        .group_by(Run.namespace)
        .subquery("held")
    )
    turn = (func.coalesce(held.c.n, 0) + ranked.c.rank).label("turn")
    return (
        select(ranked.c.id, ranked.c.created_at, turn)
        .select_from(ranked.outerjoin(held, held.c.namespace == ranked.c.namespace))
        .where(ranked.c.rank <= depth)
        .order_by(turn, ranked.c.created_at, ranked.c.id)
        .limit(depth)
        .subquery("fair")
    )


class Leases(StoreBase):
    """The dispatcher's side of the queue."""

    async def claim_runs(self, owner: str, lease_seconds: float, limit: int) -> list[StoredRun]:
        """Claim up to ``limit`` runs: queued ones, active ones whose lease expired, and
        parked ones that are due; fairly across namespaces (see ``_claim``), returned
        oldest first, as the dispatcher starts them."""
        if limit <= 0:
            return []
        claimed = await self._claim(owner, float(lease_seconds), limit)
        claimed.sort(key=lambda run: run.created_at)  # RETURNING gives the rows' order
        return claimed

    async def _claim(self, owner: str, lease_seconds: float, limit: int) -> list[StoredRun]:
        """claim_runs's write, fair across namespaces.

        A claimable run's *turn* is the number of runs its namespace holds (running, or
        waiting on a live lease) plus its rank among its namespace's claimable runs,
        oldest first. The runs with the lowest turns are claimed, the oldest first among
        equal turns: a namespace with 5,000 queued runs takes one turn after another, and
        a namespace's single run still comes next. With one namespace this is oldest
        first. ``FOR UPDATE SKIP LOCKED`` keeps replicas from claiming the same run; a
        claim looks ``CLAIM_LOOKAHEAD`` runs past ``limit`` in this order for ones that
        replicas claiming at the same time have not locked.

        Only the head of each namespace's queue is ranked: a run past the first N queued
        runs of its namespace has a turn past N, so the first N places of the order are
        among those and the stale runs (see ``_fair_order``)."""
        now = db_now(self.engine)
        depth = limit + CLAIM_LOOKAHEAD
        async with self._write() as session:
            namespaces = list((await session.execute(_queued_namespaces())).scalars())
            fair = _fair_order(now, namespaces, depth)
            ids = list(
                (
                    await session.execute(
                        select(Run.id)
                        .join(fair, fair.c.id == Run.id)
                        .where(_claimable(now))  # again, on the row as it is when locked
                        .order_by(fair.c.turn, fair.c.created_at, fair.c.id)
                        .limit(limit)
                        .with_for_update(of=Run, skip_locked=True)
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
