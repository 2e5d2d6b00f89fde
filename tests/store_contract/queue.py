"""Checks of the queue and its leases: claims (their order and limit, never twice), a
lease's expiry and takeover, heartbeats, release, and fencing: a write made with a
lease that moved on raises LeaseLost and changes nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest

from app.engine import EventType
from app.store.errors import InvalidTransition, LeaseLost
from app.store.notifications import RELEASED, RunFinished, RunQueued
from app.store.repository import Lease
from tests.checkpoint_contract import record
from tests.store_contract.bench import Bench, Check, collector, events

CHECKS: list[Check] = []
check = collector(CHECKS)


async def created_at(bench: Bench, order: dict[str, float]) -> None:
    """Runs of one workflow, in the order of ``order``, each created at its time."""
    workflow = await bench.workflow()
    for run_id, at in order.items():
        await bench.run(run_id, workflow)
        await bench.set_run(run_id, created_at=at)


#: created (and stored) c, e, a, d, b; by created_at b, d, a, e, c: neither the order
#: of the rows nor that of the ids
SHUFFLED = {"c": 500.0, "e": 400.0, "a": 300.0, "d": 200.0, "b": 100.0}


@check
async def claims_take_the_oldest_runs_up_to_the_limit(bench: Bench) -> None:
    store = bench.store
    await created_at(bench, SHUFFLED)
    now = await store.now()
    claimed = await store.claim_runs("A", 30, 2)
    assert sorted(run.id for run in claimed) == ["b", "d"]
    for run in [*claimed, await store.get_run("b")]:
        assert run is not None
        assert (run.status, run.owner, run.epoch, run.claims) == ("running", "A", 1, 1)
        assert run.lease_until is not None
        assert now + 25 < run.lease_until < now + 35
        assert run.started_at is not None
        assert run.started_at >= now - 1
    assert await store.count_queued() == 3
    assert await store.claim_runs("A", 30, 0) == []
    assert sorted(run.id for run in await store.claim_runs("B", 30, 10)) == ["a", "c", "e"]
    assert await store.claim_runs("C", 30, 10) == []
    assert await store.count_queued() == 0
    assert bench.heard == [RunQueued(run_id) for run_id in SHUFFLED]  # claims announce nothing


@check
async def claimed_runs_come_back_oldest_first(bench: Bench) -> None:
    # the dispatcher starts them in this order
    await created_at(bench, SHUFFLED)
    assert [run.id for run in await bench.store.claim_runs("A", 30, 2)] == ["b", "d"]
    assert [run.id for run in await bench.store.claim_runs("A", 30, 10)] == ["a", "e", "c"]


@check
async def concurrent_claims_never_share_a_run(bench: Bench) -> None:
    store = bench.store
    workflow = await bench.workflow()
    run_ids = {await bench.run(f"run-{i}", workflow) for i in range(6)}
    batches = await asyncio.gather(*(store.claim_runs(f"owner-{i}", 30, 2) for i in range(4)))
    batches.append(await store.claim_runs("owner-last", 30, 10))
    claimed = [run.id for batch in batches for run in batch]
    assert sorted(claimed) == sorted(run_ids)  # each once
    for batch in batches:
        for run in batch:
            stored = await store.get_run(run.id)
            assert stored is not None
            assert (stored.owner, stored.epoch) == (run.owner, 1)


# ------------------------------------------------------------------- fairness


async def in_namespaces(bench: Bench, runs: dict[str, tuple[str, float]]) -> None:
    """Queued runs: run id -> (its namespace, when it was created)."""
    workflow = await bench.workflow()
    for run_id, (namespace, at) in runs.items():
        await bench.run(run_id, workflow)
        await bench.set_run(run_id, namespace=namespace, created_at=at)


@check
async def claims_are_fair_across_namespaces(bench: Bench) -> None:
    # "a" queued 40 runs before "b" queued 2: b's first one is claimed in a's first
    # claim all the same, then each takes its turn, oldest first among equal turns
    runs = {f"a{i:02}": ("a", 100.0 + i) for i in range(40)}
    runs |= {"b0": ("b", 500.0), "b1": ("b", 501.0)}
    await in_namespaces(bench, runs)
    store = bench.store
    assert [run.id for run in await store.claim_runs("A", 30, 2)] == ["a00", "b0"]
    # a now holds one run and b one: a01 (a's 2nd turn) and b1 (b's 2nd), then a's
    assert [run.id for run in await store.claim_runs("A", 30, 3)] == ["a01", "a02", "b1"]
    assert [run.id for run in await store.claim_runs("A", 30, 2)] == ["a03", "a04"]
    assert await store.count_queued() == 35


@check
async def a_namespace_holding_runs_waits_for_the_others(bench: Bench) -> None:
    # one claim at a time (a replica's slot freeing up): "a" already runs 3 runs, so
    # "b"'s newer run comes before a's older queued ones; runs whose lease ran out are
    # not held by anyone (and are claimable again)
    await in_namespaces(bench, {f"a{i}": ("a", 100.0 + i) for i in range(6)})
    store = bench.store
    held = await store.claim_runs("A", 30, 3)
    assert [run.id for run in held] == ["a0", "a1", "a2"]
    await in_namespaces(bench, {"b0": ("b", 900.0)})
    assert [run.id for run in await store.claim_runs("B", 30, 1)] == ["b0"]
    assert [run.id for run in await store.claim_runs("B", 30, 1)] == ["a3"]
    for run in held:
        await bench.expire(run.id)
    await in_namespaces(bench, {"c0": ("c", 1000.0)})
    # a holds a3 only now: c0's first turn comes before a0's second
    assert [run.id for run in await store.claim_runs("C", 30, 1)] == ["c0"]
    assert [run.id for run in await store.claim_runs("C", 30, 1)] == ["a0"]


def claimed_ids(claimed: Iterable[Any]) -> list[str]:
    """The ids of runs a claim returned, sorted (runs created at once come in any order)."""
    return sorted(run.id for run in claimed)


@check
async def stale_runs_take_their_turns_among_queued_ones(bench: Bench) -> None:
    # a run whose lease ran out and a parked run that is due rank by age among their
    # namespace's queued runs, a namespace may have only such runs, and a run held on a
    # live lease counts for its namespace: all in one claim
    runs = {f"a{i:02}": ("a", 100.0 + i) for i in range(10)}
    runs |= {"ax": ("a", 50.0), "ap": ("a", 105.5), "cp": ("c", 900.0)}
    runs |= {"bh": ("b", 10.0), "bx": ("b", 200.0), "b0": ("b", 300.0)}
    runs |= {f"d{i}": ("d", 400.0) for i in (2, 1, 3)}  # created at once: ranked by id
    await in_namespaces(bench, runs)
    store = bench.store
    now = await store.now()
    for run_id in ("ax", "bx"):  # their replica paused past the lease
        await bench.set_run(run_id, status="running", owner="gone", lease_until=now - 60, epoch=1)
    await bench.set_run("bh", status="running", owner="alive", lease_until=now + 600, epoch=1)
    for run_id in ("ap", "cp"):
        await bench.set_run(run_id, status="waiting", parked=True, wake_at=now - 1)
    # turns: ax cp d1 (1), a00 bx d2 (2), a01 b0 d3 (3), a02 (4) .. a05 (7), ap (8), a06
    assert claimed_ids(await store.claim_runs("A", 30, 4)) == ["a00", "ax", "cp", "d1"]
    # a holds 2, b 1 (bx's lease ran out), c and d 1: bx d2 (2), a01 b0 d3 (3), a02 (4)
    assert claimed_ids(await store.claim_runs("A", 30, 5)) == ["a01", "b0", "bx", "d2", "d3"]
    # a holds 3: a02 (4) .. a05 (7), then the parked one, before a06 (9)
    assert claimed_ids(await store.claim_runs("A", 30, 5)) == ["a02", "a03", "a04", "a05", "ap"]
    assert await store.count_queued() == 4
    for run_id, epoch in (("bx", 2), ("ap", 1)):
        run = await store.get_run(run_id)
        assert run is not None
        assert (run.status, run.owner, run.epoch, run.parked, run.wake_at) == (
            "running", "A", epoch, False, None
        )  # fmt: skip


@check
async def runs_created_at_once_take_their_turns_by_id(bench: Bench) -> None:
    # the head of a queue may be several runs created at the same instant, stored in
    # another order than their ids'
    await in_namespaces(bench, {"e2": ("e", 50.0), "e1": ("e", 50.0), "e0": ("e", 50.0)})
    await in_namespaces(bench, {"f0": ("f", 60.0)})
    store = bench.store
    assert claimed_ids(await store.claim_runs("A", 30, 1)) == ["e0"]
    assert claimed_ids(await store.claim_runs("A", 30, 1)) == ["f0"]
    assert claimed_ids(await store.claim_runs("A", 30, 1)) == ["e1"]
    assert claimed_ids(await store.claim_runs("A", 30, 5)) == ["e2"]


@check
async def concurrent_fair_claims_each_find_runs(bench: Bench) -> None:
    # replicas woken together each claim runs (none comes back empty-handed while
    # enough are queued), never the same one, and the claims still share fairly
    runs = {f"a{i:02}": ("a", 100.0 + i) for i in range(20)}
    runs |= {f"b{i}": ("b", 500.0 + i) for i in range(4)}
    await in_namespaces(bench, runs)
    store = bench.store
    batches = await asyncio.gather(*(store.claim_runs(f"owner-{i}", 30, 2) for i in range(4)))
    assert [len(batch) for batch in batches] == [2, 2, 2, 2]
    claimed = [run.id for batch in batches for run in batch]
    assert len(set(claimed)) == 8
    assert sum(run_id.startswith("b") for run_id in claimed) >= 2


@check
async def an_expired_lease_is_taken_over_with_a_higher_epoch(bench: Bench) -> None:
    store = bench.store
    lease = await bench.claimed("A")
    first = await store.get_run(lease.run_id)
    assert first is not None
    assert await store.claim_runs("B", 30, 10) == []  # held: nobody else takes it
    await bench.expire(lease.run_id)
    (taken,) = await store.claim_runs("B", 30, 10)
    assert (taken.id, taken.status, taken.owner, taken.epoch, taken.claims) == (
        lease.run_id, "running", "B", 2, 2
    )  # fmt: skip
    assert taken.started_at == first.started_at  # it started once
    assert await store.heartbeat("A", [lease], 30) == ([lease.run_id], [])
    with pytest.raises(LeaseLost):
        await store.commit_progress(lease, [], events(lease.run_id, 1))
    await store.commit_progress(Lease(lease.run_id, "B", 2), [], events(lease.run_id, 1))
    assert await store.last_event_seq(lease.run_id) == 1


@check
async def a_heartbeat_extends_only_its_own_leases(bench: Bench) -> None:
    store = bench.store
    mine, theirs = await bench.claimed("A", 5), await bench.claimed("B", 5)
    now = await store.now()
    assert await store.heartbeat("A", [mine], 120) == ([], [])
    extended = await store.get_run(mine.run_id)
    assert extended is not None
    assert extended.lease_until is not None
    assert now + 115 < extended.lease_until < now + 125
    untouched = await bench.state(theirs.run_id)
    # another owner's run, under our name or theirs; our run at a stale epoch
    for owner, lease in (("A", Lease(theirs.run_id, "A", theirs.epoch)), ("A", theirs)):
        assert await store.heartbeat(owner, [lease], 300) == ([theirs.run_id], [])
    assert await bench.state(theirs.run_id) == untouched
    before = await bench.state(mine.run_id)
    assert await store.heartbeat("A", [Lease(mine.run_id, "A", 0)], 300) == ([mine.run_id], [])
    assert await bench.state(mine.run_id) == before
    assert await store.heartbeat("A", [], 300) == ([], [])
    # a lease that ran out but that nobody took over is still its owner's to extend
    await bench.expire(theirs.run_id)
    assert await store.heartbeat("B", [theirs], 60) == ([], [])
    assert await store.claim_runs("C", 30, 10) == []
    # it says which of its runs were asked to cancel; a run that ended is lost
    await store.request_cancel(theirs.run_id)
    assert await store.heartbeat("B", [theirs], 60) == ([], [theirs.run_id])
    await store.finish_run(mine, "succeeded", None, None)
    assert await store.heartbeat("A", [mine], 60) == ([mine.run_id], [])


@check
async def released_runs_go_back_to_the_queue_fenced(bench: Bench) -> None:
    store = bench.store
    a1, a2, a3 = [await bench.claimed("A") for _ in range(3)]
    b1 = await bench.claimed("B")
    held_by_b = await bench.state(b1.run_id)
    assert await store.release_runs("A", [a1.run_id, b1.run_id]) == 1
    released = await store.get_run(a1.run_id)
    assert released is not None
    assert (released.status, released.owner, released.lease_until, released.epoch) == (
        "queued", None, None, 2
    )  # fmt: skip
    assert await store.count_queued() == 1
    assert await store.release_runs("A", []) == 0
    assert await store.release_runs("A") == 2  # all it still holds
    assert await bench.state(b1.run_id) == held_by_b
    assert await store.release_runs("A") == 0
    with pytest.raises(LeaseLost):
        await store.commit_progress(a2, [], events(a2.run_id, 1))
    assert bench.heard[-3:] == [RunQueued(RELEASED)] * 3
    retaken = await store.claim_runs("C", 30, 10)
    assert sorted((run.id, run.epoch) for run in retaken) == sorted(
        (lease.run_id, 3) for lease in (a1, a2, a3)
    )


# ------------------------------------------------------------------- fencing


def fenced_writes(bench: Bench, lease: Lease) -> list[Callable[[], Awaitable[None]]]:
    """Every write a replica makes for a run it holds, made with ``lease``."""
    store, run_id = bench.store, lease.run_id
    succeeded = events(run_id, 9, type=EventType.RUN_SUCCEEDED)
    return [
        lambda: store.commit_progress(
            lease, [record(run_id, 2, completed={"x": 1})], events(run_id, 2, 3)
        ),
        lambda: store.commit_progress(lease, [], [], status="waiting", current_nodes=["x"]),
        lambda: store.commit_progress(lease, [], events(run_id, 2), bulk=True),
        lambda: store.commit_progress(
            lease, [record(run_id, 3)], succeeded, outcome=("succeeded", {"ok": 1}, None)
        ),
        lambda: store.finish_run(lease, "failed", None, {"message": "late"}),
        lambda: store.finish_run(lease, "waiting", None, None, parked=True, wake_at=None),
        lambda: store.fail_run(lease, {"message": "late"}),
    ]


@check
async def a_stale_lease_writes_nothing(bench: Bench) -> None:
    store = bench.store
    lease = await bench.claimed("A")
    run_id = lease.run_id
    await store.commit_progress(lease, [record(run_id, 1)], events(run_id, 1))
    await bench.expire(run_id)
    (taken,) = await store.claim_runs("B", 30, 10)
    holder = Lease(run_id, "B", taken.epoch)
    before = await bench.state(run_id)
    # the lease it had, its owner at the new epoch, the new owner at the old epoch
    for stale in (lease, Lease(run_id, "A", holder.epoch), Lease(run_id, "B", lease.epoch)):
        for write in fenced_writes(bench, stale):
            with pytest.raises(LeaseLost):
                await write()
            assert await bench.state(run_id) == before
    assert RunFinished(run_id) not in bench.heard
    # the holder writes; once the run ended, nobody does
    await store.commit_progress(holder, [record(run_id, 2)], events(run_id, 2))
    await store.finish_run(holder, "succeeded", {"ok": True}, None)
    ended = await bench.state(run_id)
    assert ended[-2] == 2  # its last event
    for write in fenced_writes(bench, holder):
        with pytest.raises(LeaseLost):
            await write()
        assert await bench.state(run_id) == ended


@check
async def an_outcome_must_be_one(bench: Bench) -> None:
    store = bench.store
    lease = await bench.claimed()
    before = await bench.state(lease.run_id)
    for status in ("waiting", "running", "queued"):
        with pytest.raises(InvalidTransition):
            await store.commit_progress(lease, [], [], outcome=(status, None, None))
    for status in ("running", "queued"):
        with pytest.raises(InvalidTransition):
            await store.finish_run(lease, status, None, None)
    with pytest.raises(InvalidTransition):  # only a waiting run parks
        await store.finish_run(lease, "succeeded", None, None, parked=True)
    assert await bench.state(lease.run_id) == before


@check
async def progress_commits_records_results_and_events_at_once(bench: Bench) -> None:
    store = bench.store
    lease = await bench.claimed()
    run_id = lease.run_id
    records = [record(run_id, 1), record(run_id, 2, completed={"a": {"v": 1}})]
    await store.commit_progress(
        lease, records, events(run_id, 1, 2, 3), status="waiting", current_nodes=["b"]
    )
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.status, run.current_nodes, run.event_seq, run.checkpoint_seq) == (
        "waiting", ["b"], 3, 2
    )  # fmt: skip
    assert (run.owner, run.epoch, run.finished_at) == (lease.owner, 1, None)
    committed = await bench.state(run_id)
    assert committed[1:4] == (
        [(s, "node.custom", {"i": s, "deep": [None, {"x": 1.5}]}) for s in (1, 2, 3)],
        [(1, "running"), (2, "running")],
        [("a", {"v": 1})],
    )
    # the same commit again (retried after a connection died) and an older batch of
    # events: nothing more, and the run's counters do not go back
    await store.commit_progress(lease, records, events(run_id, 1, 2, 3))
    await store.commit_progress(lease, [], events(run_id, 2))
    assert (await bench.state(run_id))[1:] == committed[1:]
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.event_seq, run.checkpoint_seq) == (3, 2)
    # the outcome: the last record, the terminal event and the status commit together
    await store.commit_progress(
        lease,
        [record(run_id, 3, status="succeeded", completed={"b": 2})],
        events(run_id, 4, type=EventType.RUN_SUCCEEDED),
        outcome=("succeeded", {"out": 1}, None),
    )
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.status, run.output, run.error, run.event_seq, run.checkpoint_seq) == (
        "succeeded", {"out": 1}, None, 4, 3
    )  # fmt: skip
    assert (run.owner, run.lease_until, run.current_nodes) == (None, None, [])
    assert run.finished_at is not None
    assert bench.heard[-1] == RunFinished(run_id)


@check
async def finishing_records_the_outcome_and_lets_go(bench: Bench) -> None:
    store = bench.store
    lease = await bench.claimed()
    now = await store.now()
    await store.finish_run(lease, "failed", {"partial": [1]}, {"message": "no", "kind": "x"})
    run = await store.get_run(lease.run_id)
    assert run is not None
    assert (run.status, run.output, run.error) == (
        "failed",
        {"partial": [1]},
        {"message": "no", "kind": "x"},
    )
    assert (run.owner, run.lease_until, run.parked, run.wake_at) == (None, None, False, None)
    assert run.finished_at is not None
    assert run.finished_at >= now - 1
    assert bench.heard[-1] == RunFinished(lease.run_id)


@check
async def a_failed_run_ends_its_log_with_run_failed(bench: Bench) -> None:
    store = bench.store
    lease = await bench.claimed()
    run_id = lease.run_id
    await store.commit_progress(lease, [], events(run_id, 1, 2))
    error = {"message": "its state could not be stored", "kind": "internal"}
    await store.fail_run(lease, error)
    log = await store.events_after(run_id, 0)
    assert [(e.seq, e.type) for e in log] == [
        (1, "node.custom"),
        (2, "node.custom"),
        (3, "run.failed"),
    ]
    assert log[-1].data == {"error": {**error, "node_id": None}}
    run = await store.get_run(run_id)
    assert run is not None
    assert (run.status, run.error, run.event_seq, run.owner) == ("failed", error, 3, None)
    assert run.finished_at is not None
    assert await store.last_event_seq(run_id) == 3
    assert bench.heard[-1] == RunFinished(run_id)
