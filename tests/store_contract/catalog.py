"""Checks of workflows and their versions, and of creating and listing runs:
idempotency, and paging with cursors (a stable order, no repeat or gap across pages)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.store.errors import IdempotencyConflict, InvalidCursor
from app.store.notifications import RunQueued
from tests.store_contract.bench import Bench, Check, collector, pages

CHECKS: list[Check] = []
check = collector(CHECKS)


@check
async def workflow_versions_count_up_and_stay_pinned(bench: Bench) -> None:
    store = bench.store
    first = await store.create_workflow_version("flow", "one", {"nodes": [1]})
    second = await store.create_workflow_version("flow", "two", {"nodes": [1, 2]})
    assert (first.workflow_id, first.version, second.version) == ("flow", 1, 2)
    assert second.definition == {"nodes": [1, 2], "version": 2}
    latest = await store.get_workflow("flow")
    assert latest is not None
    assert (latest.version, latest.name, latest.archived) == (2, "two", False)
    pinned = await store.get_workflow("flow", 1)
    assert pinned is not None
    assert (pinned.version, pinned.name, pinned.definition) == (
        1,
        "one",
        {"nodes": [1], "version": 1},
    )
    assert await store.get_workflow("flow", 3) is None
    assert await store.get_workflow("other") is None
    # writers racing for the next version each get one of their own
    racing = await asyncio.gather(
        *(store.create_workflow_version("flow", f"r{i}", {"nodes": []}) for i in range(4))
    )
    assert sorted(w.version for w in racing) == [3, 4, 5, 6]
    versions = await store.list_versions("flow")
    assert [v.version for v in versions] == [1, 2, 3, 4, 5, 6]
    assert [v.name for v in versions[:2]] == ["one", "two"]
    assert await store.list_versions("other") == []
    assert (await store.create_workflow_version("other", None, {})).version == 1


@check
async def an_archived_workflow_is_hidden_but_its_versions_stay(bench: Bench) -> None:
    store = bench.store
    for workflow_id in ("gone", "gone", "kept"):
        await bench.workflow(workflow_id)
    assert await store.archive_workflow("gone") is True
    assert await store.get_workflow("gone") is None
    archived = await store.get_workflow("gone", include_archived=True)
    assert archived is not None
    assert (archived.version, archived.archived) == (2, True)
    pinned = await store.get_workflow("gone", 1)  # runs pinned to it still find it
    assert pinned is not None
    assert (pinned.version, pinned.archived) == (1, True)
    assert [v.archived for v in await store.list_versions("gone")] == [True, True]
    assert [w.workflow_id for w in (await store.list_workflows(None, 10)).items] == ["kept"]
    assert await store.archive_workflow("never") is False
    kept = await store.get_workflow("kept")
    assert kept is not None
    assert not kept.archived


@check
async def workflows_page_by_id_with_their_latest_version(bench: Bench) -> None:
    store = bench.store
    for workflow_id in ("e", "c_3", "a-1", "d", "b.2", "c_3", "c_3"):
        await bench.workflow(workflow_id)
    found = await pages(lambda cursor: store.list_workflows(cursor, 2))
    assert [len(page.items) for page in found] == [2, 2, 1]
    assert [(w.workflow_id, w.version) for page in found for w in page.items] == [
        ("a-1", 1),
        ("b.2", 1),
        ("c_3", 3),
        ("d", 1),
        ("e", 1),
    ]
    whole = await store.list_workflows(None, 5)  # exactly one page: no cursor to nothing
    assert (len(whole.items), whole.next_cursor) == (5, None)
    after_last = await store.list_workflows("e", 2)
    assert (after_last.items, after_last.next_cursor) == ([], None)
    with pytest.raises(InvalidCursor):
        await store.list_workflows("not a cursor!", 2)


# ----------------------------------------------------------------------- runs


@check
async def a_created_run_is_queued_and_reads_back(bench: Bench) -> None:
    store = bench.store
    workflow = await bench.workflow()
    data = {"deep": [1, 2.5, {"x": None, "ü": "ß"}], "empty": {}}
    run, created = await store.create_run("run-1", workflow, data, {"t": 5}, None, None)
    stored = await store.get_run("run-1")
    assert created is True
    assert stored is not None
    for r in (run, stored):
        assert (r.id, r.workflow_id, r.workflow_version) == ("run-1", "flow", 1)
        assert (r.status, r.owner, r.epoch) == ("queued", None, 0)
        assert (r.input, r.config) == (data, {"t": 5})
    assert stored.created_at == run.created_at
    assert (stored.event_seq, stored.checkpoint_seq, stored.claims) == (0, 0, 0)
    assert (stored.started_at, stored.finished_at, stored.cancel_requested) == (None, None, False)
    assert await store.get_run("run-0") is None
    await store.create_run("run-2", workflow, "text", None, None, None, fork_of="run-1",
                           vars_patch={"n": 2})  # fmt: skip
    fork = await store.get_run("run-2")
    assert fork is not None
    assert (fork.input, fork.fork_of, fork.vars_patch) == ("text", "run-1", {"n": 2})
    assert bench.heard == [RunQueued("run-1"), RunQueued("run-2")]
    assert await store.count_queued() == 2
    # a claim hands its replica everything the run was created with
    request = ("workflow_id", "workflow_version", "input", "config", "fork_of", "vars_patch")
    created_with = {
        r: [getattr(await store.get_run(r), a) for a in request] for r in ("run-1", "run-2")
    }
    claimed = {
        run.id: [getattr(run, a) for a in request] for run in await store.claim_runs("A", 30, 5)
    }
    assert claimed == created_with


@check
async def the_same_idempotency_key_returns_the_run_it_made(bench: Bench) -> None:
    store = bench.store
    workflow = await bench.workflow()
    first, created = await store.create_run("run-a", workflow, {"n": 1}, None, "key", "h1")
    again, created_again = await store.create_run("run-b", workflow, {"n": 1}, None, "key", "h1")
    assert (first.id, created, again.id, created_again) == ("run-a", True, "run-a", False)
    assert (again.input, again.idempotency_key) == ({"n": 1}, "key")
    assert await store.get_run("run-b") is None
    keyed = await store.run_by_idempotency_key("key")
    assert keyed is not None
    assert keyed.id == "run-a"
    assert await store.run_by_idempotency_key("other key") is None
    with pytest.raises(IdempotencyConflict):  # the same key for another request
        await store.create_run("run-c", workflow, {"n": 2}, None, "key", "h2")
    assert await store.get_run("run-c") is None
    # racing requests with one key make one run, and all of them get it
    raced = await asyncio.gather(
        *(store.create_run(f"race-{i}", workflow, None, None, "race", "h") for i in range(4))
    )
    assert len({run.id for run, _ in raced}) == 1
    assert sorted(made for _, made in raced) == [False, False, False, True]
    # without a key, every request makes a run
    for run_id in ("free-1", "free-2"):
        assert (await store.create_run(run_id, workflow, None, None, None, None))[1]
    assert await store.count_queued() == 4
    winner = next(run.id for run, made in raced if made)
    queued = [n.run_id for n in bench.heard if isinstance(n, RunQueued)]
    assert queued == ["run-a", winner, "free-1", "free-2"]  # each run made, once


@check
async def runs_page_newest_first_without_gaps_or_repeats(bench: Bench) -> None:
    store = bench.store
    workflow, other = await bench.workflow("flow"), await bench.workflow("other")
    # created at: r0 900; r1, r2, r3 and x0 at the same instant; r4 1100; r5, r6 1200
    created = {"r0": 900.0, "r1": 1e3, "r2": 1e3, "r3": 1e3, "r4": 1100.0, "r5": 1200.0,
               "r6": 1200.0, "x0": 1e3}  # fmt: skip
    for run_id, at in created.items():
        await bench.run(run_id, other if run_id == "x0" else workflow)
        await bench.set_run(run_id, created_at=at)
    newest_first = ["r6", "r5", "r4", "r3", "r2", "r1", "r0"]

    def listing(workflow_id: str | None = "flow", status: str | None = None, limit: int = 2) -> Any:
        return lambda cursor: store.list_runs(
            workflow_id=workflow_id, status=status, cursor=cursor, limit=limit
        )

    found = await pages(listing())
    assert [len(page.items) for page in found] == [2, 2, 2, 1]
    assert [run.id for page in found for run in page.items] == newest_first
    everything = await pages(listing(None, limit=3))
    assert [run.id for page in everything for run in page.items] == [
        "r6", "r5", "r4", "x0", "r3", "r2", "r1", "r0"
    ]  # fmt: skip
    # a run created between two pages is newer than the cursor: the rest stay as they were
    first = await listing()(None)
    await bench.run("new", workflow)
    rest = await pages(lambda cursor: listing()(cursor or first.next_cursor))  # from the 2nd
    assert [run.id for run in first.items] + [r.id for p in rest for r in p.items] == newest_first
    await store.request_cancel("r5")
    await store.request_cancel("r1")
    cancelled = await pages(listing(status="cancelled", limit=1))
    assert [run.id for page in cancelled for run in page.items] == ["r5", "r1"]
    whole = await listing(limit=8)(None)  # exactly one page: no cursor to nothing
    assert ([run.id for run in whole.items], whole.next_cursor) == (["new", *newest_first], None)
    # a cursor past the last run of a listing: an empty last page
    past = (await listing(limit=7)(None)).next_cursor
    assert past is not None
    await store.request_cancel("r0")
    tail = await listing(status="queued")(past)
    assert (tail.items, tail.next_cursor) == ([], None)
    for cursor in ("nonsense", "nan:r1", "1.5:bad id!", "1.5"):
        with pytest.raises(InvalidCursor):
            await listing()(cursor)
