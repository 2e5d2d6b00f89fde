"""When a run's progress commits, and what a run costs the claim loop.

The journal's group commit lets a running run's records wait for the window; a run
whose started nodes all sleep past the window's end commits at once (nothing can join
the group, and the window would close where a node wakes). The dispatcher claims a run
once, not once per echo of its notifications."""

from __future__ import annotations

import asyncio
import inspect
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from sqlalchemy import text

from app.bus import LocalEventBus
from app.config import Settings
from app.engine import Event, EventType
from app.engine.checkpoint import CheckpointRecord
from app.runtime.journal import RunJournal
from app.runtime.wiring import build
from app.store import Store, open_store
from app.store.db import create_engine
from app.store.notifications import Notification, RunControl, RunFinished, encode
from app.store.repository import NOTIFY_CHANNEL, Lease

#: long enough that nothing in a test waits it out: what commits did not wait for it
WINDOW = 60.0


@pytest.fixture
async def journal(database_url: str) -> AsyncIterator[RunJournal]:
    engine = create_engine(database_url)
    store = open_store(engine)
    try:
        workflow = await store.create_workflow_version(
            f"timing-{uuid.uuid4().hex[:8]}", None, {"nodes": [{"id": "a", "type": "noop"}]}
        )
        await store.create_run(uuid.uuid4().hex, workflow, None, None, None, None)
        (run,) = await store.claim_runs("replica-a", 30, 1)
        lease = Lease(run.id, "replica-a", run.epoch)
        journal = RunJournal(
            store, lease, LocalEventBus(), flush_seconds=WINDOW, commit_window=WINDOW
        )
        journal.start()
        yield journal
        await journal.close()
    finally:
        await store.close()
        await engine.dispose()


def _started(journal: RunJournal, seq: int, node: str) -> None:
    journal.publish(Event(seq, EventType.NODE_STARTED, journal.lease.run_id, node, {}))


def _record(journal: RunJournal, running: list[str], pending: dict[str, Any]) -> CheckpointRecord:
    return CheckpointRecord(
        run_id=journal.lease.run_id,
        sequence=1,
        created_at=time.time(),
        event_seq=len(running),
        status="running",
        completed={},
        variables={},
        frontier=running,
        pending=pending,
        workflow_id="timing",
        definition={"id": "timing", "nodes": [{"id": "a", "type": "noop"}]},
        input={},
    )


async def _committed(journal: RunJournal) -> int:
    return len(await journal.store.checkpoint_records(journal.lease.run_id))


async def _until(check: Callable[[], object]) -> None:
    """Until ``check()`` (or what it awaits to) is true; the caller bounds the wait."""
    while True:
        done = check()
        if inspect.isawaitable(done):
            done = await done
        if done:
            return
        await asyncio.sleep(0.01)


async def test_a_run_asleep_past_the_window_commits_at_once(journal: RunJournal) -> None:
    _started(journal, 1, "d")
    wake = {"kind": "delay", "wake_at": time.time() + 3600}
    await journal.append([_record(journal, ["d"], {"d": wake})])
    async with asyncio.timeout(WINDOW / 4):
        await _until(lambda: _committed(journal))
    events = await journal.store.events_after(journal.lease.run_id, 0)
    assert [e.type for e in events] == ["node.started"]


@pytest.mark.parametrize(
    "case", ["a node at work", "a node that wakes within the window", "no node started"]
)
async def test_a_run_that_may_go_on_within_the_window_waits_for_it(
    journal: RunJournal, case: str
) -> None:
    later = {"kind": "delay", "wake_at": time.time() + 3600}
    if case == "a node at work":
        _started(journal, 1, "d")
        _started(journal, 2, "busy")
        record = _record(journal, ["d", "busy"], {"d": later})
    elif case == "a node that wakes within the window":
        _started(journal, 1, "d")
        record = _record(journal, ["d"], {"d": {"kind": "delay", "wake_at": time.time() + 1}})
    else:  # its node is ready, not started yet
        record = _record(journal, ["d"], {})
    await journal.append([record])
    for _ in range(20):  # the flusher has had every chance to commit
        await asyncio.sleep(0)
    assert await _committed(journal) == 0
    await journal.close()  # what closes the window commits it
    assert await _committed(journal) == 1


#: the run id of a notification no dispatcher acts on (a RunControl of no run it holds)
MARKER = "marker"


async def _round_trip(store: Store, marked: asyncio.Event) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": NOTIFY_CHANNEL, "payload": encode(RunControl(MARKER))},
        )
    await marked.wait()


class _CountingClaims:
    """Counts the claim statements a store runs (a mixin over the dialect's store)."""

    claims = 0

    async def claim_runs(self, owner: str, lease_seconds: float, limit: int) -> list[Any]:
        self.claims += 1
        claimed: list[Any] = await super().claim_runs(owner, lease_seconds, limit)  # type: ignore[misc]
        return claimed


async def test_a_run_costs_the_claim_loop_one_claim_and_one_look_after_it(
    database_url: str,
) -> None:
    """On Postgres each notification comes twice (from this process and back over
    LISTEN): neither the echo of a run's creation nor its end is a reason to claim."""

    def counting(engine: Any) -> Store:
        store = open_store(engine)  # the dialect's store, counting its claims
        store.__class__ = type("Counting", (_CountingClaims, type(store)), {})
        return store

    settings = Settings(database_url=database_url, poll_seconds=WINDOW, heartbeat_seconds=WINDOW)
    runtime = await build(settings, store_factory=counting, dispatcher=True)
    store = runtime.store
    dispatcher = runtime.dispatcher
    assert isinstance(store, _CountingClaims)
    assert dispatcher is not None
    try:
        await runtime.start()
        workflow = await store.create_workflow_version(
            "one-claim", None, {"nodes": [{"id": "a", "type": "noop"}]}
        )
        finished, marked = asyncio.Event(), asyncio.Event()

        def on(notification: Notification) -> None:
            if isinstance(notification, RunFinished):
                finished.set()
            elif notification == RunControl(MARKER):
                marked.set()

        store.notifier.subscribe(on)
        async with asyncio.timeout(30):
            await _until(lambda: store.claims > 0)  # the first look, at start
            before = store.claims
            await store.create_run(uuid.uuid4().hex, workflow, None, None, None, None)
            await finished.wait()
            await _until(lambda: not dispatcher.active and store.claims >= before + 2)
            if store.postgres:
                # every echo over LISTEN has come once a notification sent after them has
                await _round_trip(store, marked)
        assert store.claims - before == 2
    finally:
        await runtime.close()
