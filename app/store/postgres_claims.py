"""The claim statement of ``PostgresStore``: the fair order of ``Leases._claim`` read
from the head of each namespace's queue, the runs locked one at a time as the claim
takes them (``FOR UPDATE SKIP LOCKED``), claimed and returned in one statement."""

from __future__ import annotations

import functools

from app.store.leases import CLAIM_LOOKAHEAD
from app.store.lifecycle import ACTIVE, QUEUED, RUNNING, WAITING, sql_list
from app.store.models import Run

#: what the store's Postgres statements share: a run's columns, the database clock, the
#: statuses of a run a replica holds
RUN_COLUMNS = ", ".join(column.name for column in Run.__table__.columns)
PG_NOW = "extract(epoch FROM clock_timestamp())::float8"
PG_ACTIVE = sql_list(ACTIVE)

_PG_CLAIMABLE = (
    f"status = '{QUEUED}' OR (status IN {PG_ACTIVE} AND lease_until < {PG_NOW}) "
    f"OR (status = '{WAITING}' AND parked AND wake_at <= {PG_NOW})"
)
# The fair order (``Leases._claim``) from the index, not from every claimable run: a run
# past the first N of its namespace's queue has a turn past N, so the first N of the
# order are among the first N queued runs of each namespace (``ix_runs_queue``, read from
# the head, namespace by namespace) and the stale runs, which are few: leases that ran
# out (``ix_runs_owner``: a lease is an owner and an until, set and cleared together)
# and parked runs that are due (``ix_runs_wake``). ``walk`` finds the namespaces that
# have queued runs one index probe each (a loose index scan), each the next after the
# last, from '' (below every string): every probe is one plan, on ``ix_runs_queue`` (a
# first probe with no lower bound may be planned on another index of namespaces, which
# reads past every finished run). ``clock``: the database's now, read once.
_PG_CLAIM_SOURCES = f"""
WITH RECURSIVE clock AS (
    SELECT {PG_NOW} AS now
), walk (namespace) AS (
    SELECT ''::varchar
    UNION ALL
    SELECT (SELECT r.namespace FROM runs r WHERE r.status = '{QUEUED}'
        AND r.namespace > walk.namespace ORDER BY r.namespace LIMIT 1)
    FROM walk WHERE walk.namespace IS NOT NULL
), stale AS (
    SELECT id, namespace, created_at FROM runs
    WHERE (owner IS NOT NULL AND status IN {PG_ACTIVE}
            AND lease_until < (SELECT now FROM clock))
        OR (status = '{WAITING}' AND parked AND wake_at <= (SELECT now FROM clock))
), held AS (
    SELECT namespace, count(*) AS n FROM runs
    WHERE owner IS NOT NULL AND status IN {PG_ACTIVE}
        AND lease_until >= (SELECT now FROM clock)
    GROUP BY namespace
)"""


def _pg_fair(depth: int, skip: int = 0) -> str:
    """Places ``skip + 1`` to ``depth`` of the fair order: the turns of the stale runs and
    of the first ``depth`` queued runs of each namespace (with the runs tied with the
    last one: ranks break ties on the id)."""
    return f"""
        SELECT c.id, c.created_at, coalesce(held.n, 0) + c.rank AS turn FROM (
            SELECT id, namespace, created_at,
                row_number() OVER (PARTITION BY namespace ORDER BY created_at, id) AS rank
            FROM (
                SELECT head.* FROM walk CROSS JOIN LATERAL (
                    SELECT id, namespace, created_at FROM runs
                    WHERE status = '{QUEUED}' AND namespace = walk.namespace
                    ORDER BY created_at FETCH FIRST {depth} ROWS WITH TIES
                ) head
                UNION ALL
                SELECT id, namespace, created_at FROM stale
            ) claimable
        ) c LEFT JOIN held ON held.namespace = c.namespace
        WHERE c.rank <= {depth}
        ORDER BY turn, c.created_at, c.id
        LIMIT {depth - skip} OFFSET {skip}"""


def _pg_locked(fair: str) -> str:
    """The runs of ``fair`` in its order that this claim could lock and that are still
    claimable once locked (rechecked on the row as it is then). The LATERAL locks them
    one at a time as the LIMIT above pulls them, never the whole of ``fair`` first."""
    return f"""
        SELECT locked.id FROM ({fair}) fair CROSS JOIN LATERAL (
            SELECT id FROM runs WHERE runs.id = fair.id AND ({_PG_CLAIMABLE})
            FOR UPDATE SKIP LOCKED
        ) locked
        ORDER BY fair.turn, fair.created_at, fair.id"""


@functools.lru_cache(maxsize=256)
def pg_claim(limit: int) -> str:
    """The claim of up to ``limit`` runs: the first ``limit`` places of the fair order,
    and only if some of those were locked by another claim or are gone (or fewer runs
    are claimable) the next ``CLAIM_LOOKAHEAD``, from a deeper head of each queue. An
    Append runs its branches in order and the LIMIT stops it, so the deep branch costs
    nothing when the first one fills the claim; both read one snapshot, so their places
    never overlap.

    ``limit`` is written into the statement rather than sent as a parameter: the plan
    Postgres keeps for a prepared statement then knows it (it plans a LIMIT parameter as
    a tenth of the rows it limits, which on a long queue is thousands), so that plan is
    reused instead of planning each claim anew. ``PostgresStore._claim`` asks for powers
    of two only, so a replica prepares a handful of these."""
    depth = limit + CLAIM_LOOKAHEAD
    return f"""{_PG_CLAIM_SOURCES}
UPDATE runs SET status = '{RUNNING}', owner = $1, lease_until = {PG_NOW} + $2,
    epoch = epoch + 1, claims = claims + 1, started_at = coalesce(started_at, {PG_NOW}),
    updated_at = {PG_NOW}, parked = false, wake_at = NULL
WHERE id IN (
    SELECT id FROM (
        ({_pg_locked(_pg_fair(limit))})
        UNION ALL
        ({_pg_locked(_pg_fair(depth, skip=limit))})
    ) claimed
    LIMIT {limit}
)
RETURNING {RUN_COLUMNS}
"""
