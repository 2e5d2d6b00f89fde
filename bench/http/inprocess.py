"""Flowcore in-process: the service machinery as ``app.runtime.wiring.build`` wires it,
minus HTTP, with a store that counts its commits; a batch of runs through it.

bench/http/langgraph_peer.py measures LangGraph the same way, on the same load."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from app.engine import create_workflow
from app.runtime.wiring import build
from app.store.db import is_postgres
from app.store.models import NodeResultRow, Run
from app.store.notifications import Notification, RunFinished
from app.store.postgres import PostgresStore
from app.store.records import StoredWorkflow
from app.store.repository import Store
from app.store.sqlite import SqliteStore, sqlite_path
from bench.http.accounting import ServiceBatch, measured
from bench.support.databases import pg_transactions
from bench.support.load import CLIENTS, Outcome, drive, run_batch
from bench.support.workflows import Raw, chain_raw


class _Counting(Store):
    """A store counting the fenced progress commits the journals make."""

    commits = 0

    async def commit_progress(self, *args: Any, **kwargs: Any) -> None:
        self.commits += 1
        await super().commit_progress(*args, **kwargs)


class CountingStore(_Counting):
    pass


class CountingPostgresStore(_Counting, PostgresStore):
    pass


class CountingSqliteStore(_Counting, SqliteStore):
    pass


def counting_store(engine: AsyncEngine) -> _Counting:
    """The store ``open_store`` would pick, counting."""
    if is_postgres(engine):
        return CountingPostgresStore(engine)
    path = sqlite_path(engine)
    return CountingSqliteStore(engine, path) if path is not None else CountingStore(engine)


class InProcessService:
    """One replica as ``app.runtime.wiring.build`` wires it, minus HTTP: a Store (one
    that counts its commits), the live bus and a Dispatcher that claims, leases and
    executes runs with durable journals.

    The dispatcher's log is captured, not printed: a run it logs an error for is
    counted as failed at once (one that fails to commit its failure never gets an
    outcome, see the noop chain of 1,000 nodes), and the error goes into the table."""

    def __init__(self, url: str, max_concurrent_runs: int = CLIENTS) -> None:
        self.settings = Settings(
            database_url=url,
            max_concurrent_runs=max_concurrent_runs,
            poll_seconds=0.1,
            replica_id="bench-in-process",
        )
        self._waiting: dict[str, asyncio.Future[str | None]] = {}
        #: run id -> outcome, of the runs of the batch being measured
        self.submitted: dict[str, Outcome] = {}
        self._log = logging.getLogger("flowcore.runtime")
        self._handler = _Capture(self._on_log)

    def _on_log(self, record: logging.LogRecord) -> None:
        run_id = record.args[0] if isinstance(record.args, tuple) and record.args else None
        future = self._waiting.get(run_id) if isinstance(run_id, str) else None
        if future is not None and not future.done() and record.levelno >= logging.ERROR:
            error = record.exc_info[1] if record.exc_info else None
            message = record.getMessage() + (f": {error!r}" if error is not None else "")
            future.set_result(message)

    def _on_notification(self, notification: Notification) -> None:
        future = (
            self._waiting.get(notification.run_id)
            if isinstance(notification, RunFinished)
            else None
        )
        if future is not None and not future.done():
            future.set_result(None)  # its outcome is committed

    async def add_workflow(self, raw: Raw) -> StoredWorkflow:
        definition = create_workflow(raw, limits=self.settings.execution_config())
        data = definition.model_dump(mode="json", exclude_none=True)
        return await self.store.create_workflow_version(definition.id, definition.name, data)

    async def run(self, workflow: StoredWorkflow) -> Outcome:
        """Queue a run and wait for its outcome to be committed."""
        run_id = uuid.uuid4().hex
        future = asyncio.get_running_loop().create_future()
        self._waiting[run_id] = future
        start = time.perf_counter()
        try:
            await self.store.create_run(run_id, workflow, {}, None, None, None)
            error = await future
        finally:
            del self._waiting[run_id]
        outcome = Outcome(time.perf_counter() - start, error is None, error=error)
        self.submitted[run_id] = outcome
        return outcome

    async def check(self, batch: ServiceBatch) -> None:
        """The batch's runs that did not succeed become failures (with the first
        error); counts the node results in the database."""
        async with self.engine.connect() as conn:
            failed = (
                await conn.execute(
                    select(Run.id, Run.status, Run.error).where(
                        Run.id.in_(list(self.submitted)), Run.status != "succeeded"
                    )
                )
            ).all()
            batch.node_results = int(
                (await conn.execute(select(func.count()).select_from(NodeResultRow))).scalar_one()
            )
        for row in failed:
            outcome = self.submitted[row.id]
            if outcome.ok:
                outcome.ok = False
                outcome.error = str((row.error or {}).get("message", row.status))
        for outcome in self.submitted.values():
            if outcome.error and len(outcome.error) > 200:
                outcome.error = outcome.error[:199] + "…"

    async def __aenter__(self) -> InProcessService:
        self._log.addHandler(self._handler)
        self._log.propagate = False
        self.runtime = await build(self.settings, store_factory=counting_store, dispatcher=True)
        store = self.runtime.store
        assert isinstance(store, _Counting)
        self.store = store
        self.engine = self.runtime.engine
        self.store.notifier.subscribe(self._on_notification)
        await self.runtime.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            # stopping cancels the claim loop, perhaps in the middle of a query: the pool
            # then logs a CancelledError while it closes that connection
            with quiet("sqlalchemy.pool"):
                await self.runtime.close()
                gc.collect()  # tasks that died with an exception are reported now, quietly
        finally:
            self._log.removeHandler(self._handler)
            self._log.propagate = True


class _Capture(logging.Handler):
    """Hands log records to a callback instead of printing them."""

    def __init__(self, callback: Callable[[logging.LogRecord], None]) -> None:
        super().__init__(logging.DEBUG)
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        self.callback(record)


@contextlib.contextmanager
def quiet(name: str) -> Iterator[None]:
    """Silence a logger for a while (asyncio's "Task exception was never retrieved")."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


async def flowcore_batch(
    url: str, node: Raw, n: int, runs: int, concurrency: int, warmup: int
) -> ServiceBatch:
    """A batch of ``runs`` runs of an ``n``-node chain through the service machinery,
    from ``concurrency`` submitters."""
    before = await pg_transactions(url)
    async with InProcessService(url, max(concurrency, 1)) as service:
        workflow = await service.add_workflow(chain_raw(n, node, f"chain-{node['type']}-{n}"))
        submitters = range(concurrency)

        async def one(_: int) -> Outcome:
            return await service.run(workflow)

        if warmup:
            await drive(warmup, submitters, one)
        commits = service.store.commits
        service.submitted.clear()
        batch = await measured(url, run_batch(runs, submitters, one))
        batch.commits_per_run = (service.store.commits - commits) / runs
        await service.check(batch)
    batch.xacts_per_run = (await pg_transactions(url) - before) / (runs + warmup)
    return batch
