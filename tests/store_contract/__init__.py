"""The conformance suite of the store: what every implementation of its port must do,
on every database it serves. In the spirit of LangGraph's checkpoint conformance tests
and Procrastinate's in-memory twin: one suite, every implementation
(``IMPLEMENTATIONS``), run on SQLite and Postgres by tests/service/test_store_contract.py.

- ``catalog``: workflows and their versions; creating runs, idempotency, paging.
- ``queue``: claims, leases, heartbeats, release, and fencing (a stale lease writes
  nothing).
- ``progress``: events after a sequence, checkpoints, node results, signals and parked
  runs, cancel and resume, the notifications of the store's writes.

The lifecycle's table is walked move by move in tests/service/test_lifecycle.py, not
here. ``bench`` holds what a check works with."""

from __future__ import annotations

import pytest

from app.store import Store, open_store

# the checks' asserts say what they compared, as a test module's do
pytest.register_assert_rewrite(
    *(f"{__name__}.{m}" for m in ("bench", "catalog", "queue", "progress"))
)

from tests.store_contract import catalog, progress, queue  # noqa: E402
from tests.store_contract.bench import Bench, Check, Factory, open_bench  # noqa: E402

#: every implementation of the store, each checked by the whole suite: one line per new one
IMPLEMENTATIONS: dict[str, Factory] = {
    "portable": Store,
    "for the dialect": open_store,
}

_UNSORTED_CLAIMS = (
    "Store.claim_runs (app/store/repository.py) returns its claims in the order of "
    "UPDATE ... RETURNING (the rows' order), not oldest first as PostgresStore.claim_runs "
    "does (it sorts them by created_at)"
)
#: (check, implementation, dialect) -> how that implementation breaks the contract there:
#: the check is expected to fail (strictly, so that a fix says so)
KNOWN_FAILURES: dict[tuple[str, str, str], str] = {
    ("claimed_runs_come_back_oldest_first", "portable", "sqlite"): _UNSORTED_CLAIMS,
    ("claimed_runs_come_back_oldest_first", "portable", "postgresql"): _UNSORTED_CLAIMS,
    ("claimed_runs_come_back_oldest_first", "for the dialect", "sqlite"): _UNSORTED_CLAIMS,
}

CHECKS: list[Check] = [*catalog.CHECKS, *queue.CHECKS, *progress.CHECKS]


def known_failure(check: Check, bench: Bench) -> str | None:
    return KNOWN_FAILURES.get((check.__name__, bench.implementation, bench.dialect))


__all__ = ["CHECKS", "IMPLEMENTATIONS", "Bench", "Check", "known_failure", "open_bench"]
