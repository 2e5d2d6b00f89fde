"""The run lifecycle, walked on both backends: every move of ``lifecycle.TRANSITIONS``
is made by one store operation, and every move the table does not have is refused by
each of them."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import update

from app.store import Store
from app.store.db import create_engine
from app.store.errors import InvalidTransition, LeaseLost
from app.store.lifecycle import (
    ACTIVE,
    TERMINAL,
    TRANSITIONS,
    WAITING,
    RunStatus,
    can_move,
    sources_of,
)
from app.store.models import Run
from app.store.records import StoredWorkflow
from app.store.repository import Lease
from tests.store_contract import IMPLEMENTATIONS

STATUSES = [s.value for s in RunStatus]
OWNER = "replica-a"


@pytest.fixture(params=list(IMPLEMENTATIONS))
async def store(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[Store]:
    """Each implementation: the portable Store, and the one ``open_store`` picks (on
    Postgres, PostgresStore; on SQLite, the same portable one)."""
    engine = create_engine(database_url)
    made = IMPLEMENTATIONS[request.param](engine)
    if made is None:
        await engine.dispose()
        pytest.skip(f"{request.param} does not serve this database")
    store = made
    try:
        yield store
    finally:
        await store.close()
        await engine.dispose()


@pytest.fixture
async def workflow(store: Store) -> StoredWorkflow:
    return await store.create_workflow_version(
        f"life-{uuid.uuid4().hex[:8]}", None, {"nodes": [{"id": "a", "type": "noop"}]}
    )


Make = Callable[..., Awaitable[str]]


@pytest.fixture
def make(store: Store, workflow: StoredWorkflow) -> Make:
    """A run in ``status``: held by OWNER at epoch 1 (its lease expired or not), or
    let go of (``owned=False``), parked and due or not."""

    async def run_in(
        status: str,
        *,
        owned: bool = True,
        expired: bool = False,
        parked: bool = False,
        due: bool = False,
    ) -> str:
        run, _ = await store.create_run(uuid.uuid4().hex, workflow, None, None, None, None)
        now = time.time()
        values: dict[str, Any] = {"status": status, "epoch": 1, "parked": parked}
        if owned and status in ACTIVE:
            values |= {"owner": OWNER, "lease_until": now + (-60 if expired else 60)}
        if parked:
            values["wake_at"] = now + (-1 if due else 3600)
        async with store.engine.begin() as conn:
            await conn.execute(update(Run).where(Run.id == run.id).values(**values))
        return run.id

    return run_in


async def status_of(store: Store, run_id: str) -> str:
    run = await store.get_run(run_id)
    assert run is not None
    return run.status


# --------------------------------------------------------------------------- the table


def test_the_table_is_whole() -> None:
    assert set(TRANSITIONS) == set(RunStatus)
    assert not TRANSITIONS[RunStatus.SUCCEEDED]  # the one end that cannot be undone
    for status in TERMINAL:
        assert not can_move(status, RunStatus.RUNNING)  # only through the queue again


# ------------------------------------------------------------------------- each move


async def test_claim_takes_queued_expired_and_due_runs_only(store: Store, make: Make) -> None:
    claimable = {
        "queued": await make("queued"),
        "running, lease expired": await make("running", expired=True),
        "waiting, lease expired": await make("waiting", expired=True),
        "parked and due": await make("waiting", owned=False, parked=True, due=True),
    }
    not_claimable = {
        "running": await make("running"),
        "waiting, held": await make("waiting"),
        "parked, not due": await make("waiting", owned=False, parked=True),
        "at a breakpoint": await make("waiting", owned=False),
        **{status: await make(status) for status in TERMINAL},
    }
    claimed = {run.id for run in await store.claim_runs("replica-b", 15, 100)}
    assert claimed == set(claimable.values())
    for run_id in claimable.values():
        assert await status_of(store, run_id) == "running"
    for name, run_id in not_claimable.items():
        assert run_id not in claimed, name


@pytest.mark.parametrize("source", STATUSES)
async def test_cancel_follows_the_table(store: Store, make: Make, source: str) -> None:
    run_id = await make(source)
    if not can_move(source, "cancelled"):
        with pytest.raises(InvalidTransition):
            await store.request_cancel(run_id)
        assert await status_of(store, run_id) == source
        return
    run = await store.request_cancel(run_id)
    if source in ACTIVE:  # held by a replica: flagged, its replica cancels it
        assert (run.status, run.cancel_requested) == (source, True)
    else:
        assert run.status == "cancelled"
    if source == WAITING:  # let go of (a breakpoint, parked): cancelled at once
        unowned = await make(WAITING, owned=False)
        assert (await store.request_cancel(unowned)).status == "cancelled"


@pytest.mark.parametrize("source", STATUSES)
async def test_resume_follows_the_table(store: Store, make: Make, source: str) -> None:
    run_id = await make(source)
    if can_move(source, "queued"):
        run = await store.queue_resume(run_id, f"{run_id}:1", None)
        assert (run.status, run.owner, run.epoch) == ("queued", None, 2)
    else:
        with pytest.raises(InvalidTransition):
            await store.queue_resume(run_id, f"{run_id}:1", None)
        assert await status_of(store, run_id) == source


@pytest.mark.parametrize("target", ["succeeded", "failed", "cancelled", "waiting"])
@pytest.mark.parametrize("source", STATUSES)
async def test_finish_follows_the_table(store: Store, make: Make, source: str, target: str) -> None:
    run_id = await make(source)
    # a held run's lease; a run nobody holds gets the owner written too, so that only
    # the status decides
    async with store.engine.begin() as conn:
        await conn.execute(update(Run).where(Run.id == run_id).values(owner=OWNER))
    lease = Lease(run_id, OWNER, 1)
    if source in sources_of(target):
        await store.finish_run(lease, target, None, None)
        run = await store.get_run(run_id)
        assert run is not None
        assert (run.status, run.owner, run.lease_until) == (target, None, None)
    else:
        with pytest.raises(LeaseLost):
            await store.finish_run(lease, target, None, None)
        assert await status_of(store, run_id) == source


@pytest.mark.parametrize("source", STATUSES)
async def test_release_gives_held_runs_back_to_the_queue(
    store: Store, make: Make, source: str
) -> None:
    run_id = await make(source)
    released = await store.release_runs(OWNER, [run_id])
    if source in ACTIVE:
        assert released == 1
        assert can_move(source, "queued")
        assert await status_of(store, run_id) == "queued"
    else:
        assert released == 0
        assert await status_of(store, run_id) == source


def test_every_move_of_the_table_is_made_by_some_operation() -> None:
    # (source, target) -> the operation of this module that makes it
    made_by = {
        ("queued", "running"): "claim",
        ("running", "running"): "claim (takeover)",
        ("waiting", "running"): "claim (takeover, wake)",
        ("queued", "cancelled"): "cancel",
        ("waiting", "cancelled"): "cancel (let go) / finish",
        **{
            (s, t): "finish"
            for t in ("succeeded", "failed", "cancelled", "waiting")
            for s in sources_of(t)
        },
        **{(s, "queued"): "resume / release" for s in sources_of("queued")},
    }
    moves = {(s.value, t.value) for s, targets in TRANSITIONS.items() for t in targets}
    assert moves <= set(made_by), moves - set(made_by)
