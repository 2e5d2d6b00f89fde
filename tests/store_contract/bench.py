"""What a check of the store's conformance suite works with: a ``Bench`` (a store on an
empty, migrated database, what its notifier announced, and helpers that reach a state
through the port) and a few helpers of its own.

A check reads what the store returns by attribute only (``run.status``, ``run.epoch``...):
ORM rows or domain records alike. ``Bench.set_run`` writes a run's columns directly, for
the states the port cannot reach on demand (an expired lease, runs created at the same
instant): the one place to adapt for a store that keeps its runs elsewhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.engine import Event, EventType
from app.store import Store
from app.store.db import create_engine
from app.store.notifications import Notification
from app.store.repository import Lease

#: how to open an implementation on an engine (None: it does not serve that database)
Factory = Callable[[AsyncEngine], Store | None]

OWNER = "replica-a"

#: the run's attributes ``Bench.state`` compares
RUN_FIELDS = (
    "status", "owner", "lease_until", "epoch", "claims", "started_at", "finished_at",
    "updated_at", "output", "error", "event_seq", "checkpoint_seq", "current_nodes",
    "resume_from", "vars_patch", "cancel_requested", "parked", "wake_at",
)  # fmt: skip


@dataclass
class Bench:
    """A store on an empty database, what its notifier announced, and helpers."""

    store: Store
    engine: AsyncEngine
    implementation: str
    #: opens another store of this implementation (another replica)
    factory: Factory
    #: every notification the store's notifier announced, in order
    heard: list[Notification] = field(default_factory=list)
    _made: int = 0

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    async def workflow(self, workflow_id: str = "flow") -> Any:
        return await self.store.create_workflow_version(
            workflow_id, None, {"nodes": [{"id": "a", "type": "noop"}]}
        )

    async def run(self, run_id: str | None = None, workflow: Any = None) -> str:
        """A queued run (of a workflow of its own unless one is given)."""
        self._made += 1
        run_id = run_id or f"run-{self._made}"
        workflow = workflow or await self.workflow(f"flow-of-{run_id}")
        _, created = await self.store.create_run(run_id, workflow, None, None, None, None)
        assert created
        return run_id

    async def claimed(self, owner: str = OWNER, lease_seconds: float = 30) -> Lease:
        """A new run, claimed by ``owner`` (no other run may be queued)."""
        run_id = await self.run()
        (run,) = await self.store.claim_runs(owner, lease_seconds, 1)
        assert (run.id, run.owner) == (run_id, owner)
        return Lease(run.id, owner, run.epoch)

    async def set_run(self, run_id: str, **columns: Any) -> None:
        """Write a run's columns directly (a state the port cannot reach on demand)."""
        assignments = ", ".join(f"{name} = :{name}" for name in columns)
        async with self.engine.begin() as conn:
            statement = text(f"UPDATE runs SET {assignments} WHERE id = :run_id")
            result = await conn.execute(statement, {**columns, "run_id": run_id})
            assert result.rowcount == 1

    async def expire(self, run_id: str) -> None:
        """Let the run's lease run out (its replica paused past it)."""
        await self.set_run(run_id, lease_until=await self.store.now() - 60.0)

    async def state(self, run_id: str) -> tuple[Any, ...]:
        """Everything the port says about a run: a write that must change nothing
        leaves this equal."""
        run = await self.store.get_run(run_id)
        assert run is not None
        return (
            tuple(getattr(run, name) for name in RUN_FIELDS),
            [(e.seq, e.type, e.data) for e in await self.store.events_after(run_id, 0)],
            [(c.sequence, c.status) for c in await self.store.checkpoints(run_id)],
            [(r.node_id, r.output) for r in await self.store.node_results(run_id)],
            await self.store.last_event_seq(run_id),
            await self.store.cancel_requested(run_id),
        )


@asynccontextmanager
async def open_bench(
    implementation: str, factory: Factory, database_url: str
) -> AsyncIterator[Bench]:
    """The store ``factory`` opens on the (migrated, empty) database at ``database_url``;
    the test is skipped where the implementation does not serve that database."""
    engine = create_engine(database_url)
    store = factory(engine)
    try:
        if store is None:
            pytest.skip(f"the {implementation} store does not serve {engine.dialect.name}")
        bench = Bench(store, engine, implementation, factory)
        store.notifier.subscribe(bench.heard.append)
        yield bench
    finally:
        if store is not None:
            await store.close()
        await engine.dispose()


Check = Callable[[Bench], Awaitable[None]]


def collector(checks: list[Check]) -> Callable[[Check], Check]:
    """A decorator that adds a check to ``checks``, in the order of definition."""

    def check(fn: Check) -> Check:
        checks.append(fn)
        return fn

    return check


def events(run_id: str, *seqs: int, type: EventType = EventType.NODE_CUSTOM) -> list[Event]:
    """Events of a run with these sequence numbers, each telling its number."""
    return [
        Event(s, type, run_id, f"n{s}", {"i": s, "deep": [None, {"x": 1.5}]}, 1000.0 + s)
        for s in seqs
    ]


async def pages(read: Callable[[str | None], Awaitable[Any]]) -> list[Any]:
    """Every page of a listing, following its cursors from the first."""
    found, cursor = [], None
    for _ in range(100):
        page = await read(cursor)
        found.append(page)
        cursor = page.next_cursor
        if cursor is None:
            return found
    raise AssertionError("the cursors never end")


async def next_heard(inbox: asyncio.Queue[Notification], wanted: Notification) -> None:
    """Wait until ``wanted`` comes into ``inbox`` (the caller bounds the wait)."""
    while await inbox.get() != wanted:
        pass
