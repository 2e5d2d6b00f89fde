"""The CheckpointStore conformance suite (tests/checkpoint_contract.py) over the
service's RunJournal, on SQLite and Postgres: a claimed run's journal, committing
fenced on its lease."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from app.bus import LocalEventBus
from app.runtime.journal import RunJournal
from app.store.db import create_engine
from app.store.repository import Lease
from tests.checkpoint_contract import CHECKS, Check
from tests.store_contract import IMPLEMENTATIONS


@pytest.fixture(params=list(IMPLEMENTATIONS))
async def journal(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[RunJournal]:
    engine = create_engine(database_url)
    made = IMPLEMENTATIONS[request.param](engine)
    if made is None:
        await engine.dispose()
        pytest.skip(f"{request.param} does not serve this database")
    store = made
    try:
        workflow = await store.create_workflow_version(
            f"contract-{uuid.uuid4().hex[:8]}", None, {"nodes": [{"id": "a", "type": "noop"}]}
        )
        await store.create_run(uuid.uuid4().hex, workflow, None, None, None, None)
        (run,) = await store.claim_runs("replica-a", 30, 1)
        yield RunJournal(store, Lease(run.id, "replica-a", run.epoch), LocalEventBus())
    finally:
        await store.close()
        await engine.dispose()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_the_journal_conforms(journal: RunJournal, check: Check) -> None:
    await check(journal, journal.lease.run_id)
