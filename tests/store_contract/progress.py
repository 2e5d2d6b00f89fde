"""Checks of what a run leaves and what it is told: events after a sequence,
checkpoints and node results, signals and parked runs, cancel and resume, and the
notifications of the store's writes (in this process, and through the database to
another replica where the store listens)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import pytest

from app.engine.checkpoint import NodeCheckpoint
from app.store.errors import InvalidTransition, LeaseLost, NotFound
from app.store.notifications import RELEASED, Notification, RunControl, RunFinished, RunQueued
from app.store.repository import Lease
from tests.checkpoint_contract import record
from tests.store_contract.bench import Bench, Check, collector, events, next_heard

CHECKS: list[Check] = []
check = collector(CHECKS)


# ---------------------------------------------------------------------- events


@check
async def events_after_a_sequence_are_exactly_the_later_ones(bench: Bench) -> None:
    store = bench.store
    lease, other = await bench.claimed(), await bench.claimed()
    run_id = lease.run_id
    await store.commit_progress(lease, [], events(run_id, 1, 2, 3))
    await store.commit_progress(lease, [], events(run_id, 4, 5, 6), bulk=True)  # catching up
    await store.commit_progress(other, [], events(other.run_id, 1, 2))

    async def seqs(after: int, limit: int = 500) -> list[int]:
        return [e.seq for e in await store.events_after(run_id, after, limit)]

    assert await seqs(0) == [1, 2, 3, 4, 5, 6]
    assert await seqs(2) == [3, 4, 5, 6]
    assert await seqs(2, limit=3) == [3, 4, 5]
    assert await seqs(5) == [6]
    assert await seqs(6) == []
    (fourth,) = await store.events_after(run_id, 3, 1)
    assert (fourth.run_id, fourth.seq, fourth.type, fourth.node_id, fourth.created_at) == (
        run_id, 4, "node.custom", "n4", 1004.0
    )  # fmt: skip
    assert fourth.data == {"i": 4, "deep": [None, {"x": 1.5}]}
    assert [e.run_id for e in await store.events_after(other.run_id, 0)] == [other.run_id] * 2
    assert await store.last_event_seq(run_id) == 6
    assert await store.last_event_seq(other.run_id) == 2
    assert await store.last_event_seq("no-such-run") == 0
    assert await store.events_after("no-such-run", 0) == []


# ------------------------------------------------------------ checkpoints, results


@check
async def checkpoints_come_back_as_committed(bench: Bench) -> None:
    store = bench.store
    lease = await bench.claimed()
    run_id = lease.run_id
    failed = NodeCheckpoint("failed", None, "bad", "timeout", 3, started_at=1.0, finished_at=2.5)
    written = [
        record(run_id, 1),
        record(run_id, 2, completed={"a": {"x": [1, 2]}, "b": None}),
        record(run_id, 3, parent=1, status="waiting", variables={"v": [True, None]}),
    ]
    written[2].completed["f"] = failed
    await store.commit_progress(lease, written[:2], [])
    await store.commit_progress(lease, written[2:], [])
    rows = await store.checkpoints(run_id)
    assert [(c.run_id, c.sequence, c.parent, c.status, c.event_seq) for c in rows] == [
        (run_id, 1, None, "running", 2),
        (run_id, 2, None, "running", 4),
        (run_id, 3, 1, "waiting", 6),
    ]
    second = await store.checkpoint(run_id, 2)
    assert second is not None
    assert (second.sequence, second.created_at, second.record) == (2, 1002.0, written[1].to_dict())
    assert await store.checkpoint(run_id, 4) is None
    assert await store.checkpoint("no-such-run", 1) is None
    assert await store.checkpoint_records(run_id) == written
    assert await store.checkpoint_records("no-such-run") == []
    assert await store.checkpoints("no-such-run") == []
    # each node finished, once, in the order committed (then by id)
    results = await store.node_results(run_id)
    assert [
        (r.run_id, r.node_id, r.iteration, r.status, r.output, r.attempts) for r in results
    ] == [
        (run_id, "a", 0, "succeeded", {"x": [1, 2]}, 1),
        (run_id, "b", 0, "succeeded", None, 1),
        (run_id, "f", 0, "failed", None, 3),
    ]
    assert (results[2].error, results[2].error_kind) == ("bad", "timeout")
    assert (results[2].started_at, results[2].finished_at) == (1.0, 2.5)
    assert results[0].committed_at <= results[2].committed_at
    # a node's result is written once: a later record of it does not replace it
    await store.commit_progress(lease, [record(run_id, 4, completed={"a": "again"})], [])
    assert next(r.output for r in await store.node_results(run_id)) == {"x": [1, 2]}
    assert await store.node_results("no-such-run") == []


# ------------------------------------------------------------------- signals


@check
async def signals_are_taken_once_in_arrival_order(bench: Bench) -> None:
    store = bench.store
    first, second = await bench.run(), await bench.run()
    await store.add_signal(first, "go", {"n": 1})
    await store.add_signal(second, "other", None)
    await store.add_signal(first, "go", [2])
    await store.add_signal(first, "stop", "three")
    taken = await store.take_signals([first])
    assert [(s.run_id, s.name, s.payload) for s in taken] == [
        (first, "go", {"n": 1}),
        (first, "go", [2]),
        (first, "stop", "three"),
    ]
    assert await store.take_signals([first]) == []
    assert [s.name for s in await store.take_signals([first, second])] == ["other"]
    assert await store.take_signals([]) == []
    assert bench.heard.count(RunControl(first)) == 3
    # returned (their run parked before it took them): taken again, and only those
    await store.return_signals(first, [taken[0].id, taken[2].id])
    await store.return_signals(first, [])
    assert [s.payload for s in await store.take_signals([first])] == [{"n": 1}, "three"]
    with pytest.raises(NotFound):
        await store.add_signal("no-such-run", "go", None)
    await store.request_cancel(second)  # queued: cancelled at once
    with pytest.raises(InvalidTransition):
        await store.add_signal(second, "late", None)
    assert await store.take_signals([second]) == []


@check
async def concurrent_takers_never_share_a_signal(bench: Bench) -> None:
    store = bench.store
    run_id = await bench.run()
    for i in range(6):
        await store.add_signal(run_id, "go", i)
    batches = await asyncio.gather(*(store.take_signals([run_id]) for _ in range(8)))
    batches.append(await store.take_signals([run_id]))
    assert sorted(s.payload for batch in batches for s in batch) == list(range(6))  # each once


@check
async def a_parked_run_wakes_at_its_time_or_on_a_signal(bench: Bench) -> None:
    store = bench.store
    timer, waiter, due = [await bench.claimed() for _ in range(3)]
    now = await store.now()
    assert await store.next_wake_at() is None
    await store.finish_run(timer, "waiting", None, None, parked=True, wake_at=now + 3600)
    await store.finish_run(waiter, "waiting", None, None, parked=True, wake_at=None)
    for lease in (timer, waiter):
        run = await store.get_run(lease.run_id)
        assert run is not None
        assert (run.status, run.parked, run.owner, run.lease_until) == ("waiting", True, None, None)
    assert await store.next_wake_at() == now + 3600
    assert await store.claim_runs("B", 30, 10) == []  # neither is due
    assert await store.count_queued() == 0
    await store.add_signal(waiter.run_id, "go", 1)  # due at once, and any replica hears so
    assert bench.heard[-2:] == [RunControl(waiter.run_id), RunQueued(waiter.run_id)]
    (woken,) = await store.claim_runs("B", 30, 10)
    assert (woken.id, woken.owner, woken.epoch, woken.parked, woken.wake_at) == (
        waiter.run_id, "B", 2, False, None
    )  # fmt: skip
    await store.finish_run(due, "waiting", None, None, parked=True, wake_at=now - 1)
    assert await store.next_wake_at() == now - 1
    assert [run.id for run in await store.claim_runs("B", 30, 10)] == [due.run_id]
    assert await store.next_wake_at() == now + 3600


@check
async def what_came_while_it_ran_wakes_a_run_that_parks(bench: Bench) -> None:
    store = bench.store
    signalled, cancelled, returned = [await bench.claimed() for _ in range(3)]
    await store.add_signal(signalled.run_id, "go", 1)  # a signal it has not taken yet
    await store.request_cancel(cancelled.run_id)  # a cancellation it has not seen
    await store.add_signal(returned.run_id, "go", 2)
    (taken,) = await store.take_signals([returned.run_id])
    for lease in (signalled, cancelled, returned):
        await store.finish_run(lease, "waiting", None, None, parked=True, wake_at=None)
    assert [r.id for r in await store.claim_runs("B", 30, 10)] == [
        signalled.run_id,
        cancelled.run_id,
    ]
    kept = await store.get_run(cancelled.run_id)
    assert kept is not None
    assert kept.cancel_requested
    await store.return_signals(returned.run_id, [taken.id])  # taken, then it parked
    assert bench.heard[-1] == RunQueued(returned.run_id)
    assert [r.id for r in await store.claim_runs("B", 30, 10)] == [returned.run_id]
    assert [s.payload for s in await store.take_signals([returned.run_id])] == [2]


# ------------------------------------------------------------ cancel and resume


@check
async def cancelling_a_queued_run_ends_its_log(bench: Bench) -> None:
    store = bench.store
    run_id = await bench.run()
    run = await store.request_cancel(run_id)
    assert (run.status, run.error, run.event_seq) == (
        "cancelled", {"message": "the run was cancelled", "kind": "cancelled"}, 1
    )  # fmt: skip
    assert run.finished_at is not None
    assert [(e.seq, e.type) for e in await store.events_after(run_id, 0)] == [(1, "run.cancelled")]
    stored = await store.get_run(run_id)
    assert stored is not None
    assert (stored.status, stored.event_seq, stored.finished_at) == (
        "cancelled",
        1,
        run.finished_at,
    )
    assert bench.heard[-1] == RunFinished(run_id)
    assert (await store.count_queued(), await store.cancel_requested(run_id)) == (0, False)
    with pytest.raises(NotFound):
        await store.request_cancel("no-such-run")


@check
async def cancelling_a_held_run_asks_its_replica(bench: Bench) -> None:
    store = bench.store
    lease = await bench.claimed()
    run_id = lease.run_id
    await store.commit_progress(lease, [], events(run_id, 1, 2))
    assert await store.cancel_requested(run_id) is False
    run = await store.request_cancel(run_id)
    assert (run.status, run.cancel_requested, run.owner) == ("running", True, lease.owner)
    assert bench.heard[-1] == RunControl(run_id)
    assert await store.cancel_requested(run_id) is True
    assert await store.last_event_seq(run_id) == 2  # its replica writes the end
    assert await store.heartbeat(lease.owner, [lease], 30) == ([], [run_id])
    await store.finish_run(lease, "cancelled", None, {"message": "cancelled"})
    assert await store.cancel_requested(run_id) is False
    assert await store.cancel_requested("no-such-run") is False


@check
async def a_resume_queues_the_run_from_a_checkpoint_and_fences_its_holder(bench: Bench) -> None:
    store = bench.store
    lease = await bench.claimed("A")
    run_id = lease.run_id
    await store.commit_progress(lease, [record(run_id, 1), record(run_id, 2)], [], status="waiting")
    run = await store.queue_resume(run_id, f"{run_id}:1", {"n": 5})
    assert (run.status, run.owner, run.lease_until, run.epoch) == ("queued", None, None, 2)
    assert (run.resume_from, run.vars_patch) == (f"{run_id}:1", {"n": 5})
    assert bench.heard[-2:] == [RunControl(run_id), RunQueued(run_id)]
    with pytest.raises(LeaseLost):  # the replica that held it stops writing
        await store.commit_progress(lease, [record(run_id, 3)], [])
    assert await store.count_queued() == 1
    (again,) = await store.claim_runs("B", 30, 10)
    assert (again.epoch, again.resume_from, again.vars_patch) == (3, f"{run_id}:1", {"n": 5})
    # its own checkpoints then supersede the request: an interruption continues from them
    await store.commit_progress(Lease(run_id, "B", 3), [record(run_id, 3, parent=1)], [])
    resumed = await store.get_run(run_id)
    assert resumed is not None
    assert (resumed.resume_from, resumed.vars_patch, resumed.checkpoint_seq) == (None, None, 3)
    # a failed run is resumed in place: its failure is forgotten
    await store.finish_run(Lease(run_id, "B", 3), "failed", None, {"message": "x"})
    run = await store.queue_resume(run_id, f"{run_id}:3", None)
    assert (run.status, run.error, run.finished_at, run.vars_patch) == ("queued", None, None, None)
    with pytest.raises(NotFound):
        await store.queue_resume("no-such-run", "no-such-run:1", None)


# -------------------------------------------------------------- notifications


@check
async def each_write_announces_what_it_changed(bench: Bench) -> None:
    store, heard = bench.store, bench.heard
    lease = await bench.claimed("A")
    run_id = lease.run_id

    async def told(write: Awaitable[object]) -> list[Notification]:
        start = len(heard)
        await write
        return heard[start:]

    assert heard == [RunQueued(run_id)]  # created; the claim said nothing
    assert await told(store.commit_progress(lease, [record(run_id, 1)], events(run_id, 1))) == []
    assert await told(store.heartbeat("A", [lease], 30)) == []
    assert await told(store.add_signal(run_id, "go", None)) == [RunControl(run_id)]
    assert await told(store.take_signals([run_id])) == []
    assert await told(store.request_cancel(run_id)) == [RunControl(run_id)]
    assert await told(store.finish_run(lease, "cancelled", None, None)) == [RunFinished(run_id)]
    assert await told(store.queue_resume(run_id, f"{run_id}:1", None)) == [
        RunControl(run_id),
        RunQueued(run_id),
    ]
    assert await told(store.claim_runs("A", 30, 1)) == []
    assert await told(store.release_runs("A")) == [RunQueued(RELEASED)]
    store.notifier.unsubscribe(heard.append)
    await bench.run()
    assert heard[-1] == RunQueued(RELEASED)  # an unsubscribed listener hears no more


@check
async def a_listening_store_hears_the_others_writes(bench: Bench) -> None:
    other = bench.factory(bench.engine)
    assert other is not None
    try:
        # Postgres's store listens (LISTEN/NOTIFY); the others hear other replicas only
        # through relays (Redis wake-ups) and say so, and the dispatcher then polls
        listens = await other.listen()
        assert listens == (type(other).__name__ == "PostgresStore"), type(other).__name__
        if not listens:
            return
        inbox: asyncio.Queue[Notification] = asyncio.Queue()
        other.notifier.subscribe(inbox.put_nowait)
        lease = await bench.claimed()
        await asyncio.wait_for(next_heard(inbox, RunQueued(lease.run_id)), 10)
        await bench.store.request_cancel(lease.run_id)
        await asyncio.wait_for(next_heard(inbox, RunControl(lease.run_id)), 10)
        await bench.store.finish_run(lease, "cancelled", None, None)
        await asyncio.wait_for(next_heard(inbox, RunFinished(lease.run_id)), 10)
    finally:
        await other.unlisten()
        await other.close()


@check
async def the_store_answers_on_the_database_clock(bench: Bench) -> None:
    store = bench.store
    assert abs(await store.now() - time.time()) < 5
    assert 0 <= await store.ping() < 30
    assert await store.current_revision() is not None
