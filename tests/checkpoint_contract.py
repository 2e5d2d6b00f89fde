"""The conformance suite of ``CheckpointStore``: what every store of checkpoint records
must do, run over the engine's memory and file stores (tests/engine) and the service's
``RunJournal`` on SQLite and Postgres (tests/service).

A suite check gets a store that holds one run (``run_id``) to write to; it appends
records the way the engine does (in sequence order, the first holding the definition
and the input) and reads them back through the base class's derived methods."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from app.engine import CheckpointNotFoundError, CheckpointStore
from app.engine.checkpoint import CheckpointRecord, NodeCheckpoint

Check = Callable[[CheckpointStore, str], Awaitable[None]]
CHECKS: list[Check] = []


def check(fn: Check) -> Check:
    CHECKS.append(fn)
    return fn


def record(
    run_id: str,
    sequence: int,
    *,
    completed: dict[str, Any] | None = None,
    status: str = "running",
    parent: int | None = None,
    variables: dict[str, Any] | None = None,
) -> CheckpointRecord:
    return CheckpointRecord(
        run_id=run_id,
        sequence=sequence,
        created_at=1000.0 + sequence,
        event_seq=sequence * 2,
        status=status,
        completed={
            k: NodeCheckpoint("succeeded", v, attempts=1) for k, v in (completed or {}).items()
        },
        variables=variables or {"n": sequence},
        frontier=[],
        pending={},
        workflow_id="contract",
        definition={"id": "contract", "nodes": [{"id": "a", "type": "noop"}]}
        if sequence == 1
        else None,
        input={"x": 1} if sequence == 1 else None,
        parent=parent,
    )


@check
async def records_come_back_in_the_order_appended(store: CheckpointStore, run_id: str) -> None:
    await store.append([record(run_id, 1), record(run_id, 2, completed={"a": 1})])
    await store.append([record(run_id, 3, completed={"b": 2})])
    assert [r.sequence for r in await store.records(run_id)] == [1, 2, 3]


@check
async def a_checkpoint_folds_the_records_up_to_it(store: CheckpointStore, run_id: str) -> None:
    await store.append([record(run_id, 1), record(run_id, 2, completed={"a": 1})])
    await store.append([record(run_id, 3, completed={"b": 2}, status="succeeded")])
    second = await store.load(f"{run_id}:2")
    assert (second.sequence, set(second.completed)) == (2, {"a"})
    assert second.input == {"x": 1}
    assert second.definition is not None
    latest = await store.latest(run_id)
    assert latest is not None
    assert (latest.sequence, latest.status, set(latest.completed)) == (3, "succeeded", {"a", "b"})
    assert latest.variables == {"n": 3}


@check
async def the_list_says_what_each_record_holds(store: CheckpointStore, run_id: str) -> None:
    await store.append([record(run_id, 1), record(run_id, 2, completed={"a": 1, "b": 2})])
    infos = await store.list(run_id)
    assert [(i.id, i.sequence, i.completed) for i in infos] == [
        (f"{run_id}:1", 1, 0),
        (f"{run_id}:2", 2, 2),
    ]


@check
async def a_branch_continues_from_its_parent(store: CheckpointStore, run_id: str) -> None:
    # resumed from checkpoint 1 after 2 was written: record 3 continues from 1, not 2
    await store.append([record(run_id, 1), record(run_id, 2, completed={"a": 1})])
    await store.append([record(run_id, 3, completed={"c": 3}, parent=1)])
    branch = await store.load(f"{run_id}:3")
    assert set(branch.completed) == {"c"}


@check
async def what_is_not_there_is_not_found(store: CheckpointStore, run_id: str) -> None:
    assert await store.latest(run_id) is None
    assert await store.list(run_id) == []
    with pytest.raises(CheckpointNotFoundError):
        await store.load(f"{run_id}:1")
    await store.append([record(run_id, 1)])
    with pytest.raises(CheckpointNotFoundError):
        await store.load(f"{run_id}:2")
    with pytest.raises(CheckpointNotFoundError):
        await store.load("no-colon")
