"""The conformance suite of the store: what every implementation of its port must do,
on every database it serves. In the spirit of LangGraph's checkpoint conformance tests
and Procrastinate's in-memory twin: one suite, every implementation
(``IMPLEMENTATIONS``), run on SQLite and Postgres by tests/service/test_store_contract.py.

- ``catalog``: workflows and their versions; creating runs, idempotency, paging.
- ``queue``: claims, leases, heartbeats, release, and fencing (a stale lease writes
  nothing).
- ``progress``: events after a sequence, checkpoints, node results, signals and parked
  runs, cancel and resume, the notifications of the store's writes.
- ``audit``: the audit log: entries as appended, newest first, paging, namespaces,
  filters.
- ``namespaces``: workflow ids, runs, lists and idempotency keys per namespace; API
  keys.
- ``secrets``: put (create, replace), list, read ciphertexts, delete, and the walk with
  compare-and-set replacement that key rotation uses.
- ``conversations``: conversation memory: bounded appends, saves, summaries, entities,
  paging, erasure, namespaces.

The lifecycle's table is walked move by move in tests/service/test_lifecycle.py, not
here. ``bench`` holds what a check works with."""

from __future__ import annotations

import pytest

from app.store import Store, open_store

# the checks' asserts say what they compared, as a test module's do
pytest.register_assert_rewrite(
    *(
        f"{__name__}.{m}"
        for m in (
            "bench",
            "catalog",
            "queue",
            "progress",
            "audit",
            "secrets",
            "namespaces",
            "conversations",
        )
    )
)

from tests.store_contract import (  # noqa: E402
    audit,
    catalog,
    conversations,
    namespaces,
    progress,
    queue,
    secrets,
)
from tests.store_contract.bench import Bench, Check, Factory, open_bench  # noqa: E402

#: every implementation of the store, each checked by the whole suite: one line per new one
IMPLEMENTATIONS: dict[str, Factory] = {
    "portable": Store,
    "for the dialect": open_store,
}

#: (check, implementation, dialect) -> how that implementation breaks the contract there:
#: the check is expected to fail (strictly, so that a fix says so). Empty: every
#: implementation passes every check (the suite found the portable store's claims
#: unsorted; they are sorted now)
KNOWN_FAILURES: dict[tuple[str, str, str], str] = {}

CHECKS: list[Check] = [
    *catalog.CHECKS,
    *queue.CHECKS,
    *progress.CHECKS,
    *audit.CHECKS,
    *namespaces.CHECKS,
    *secrets.CHECKS,
    *conversations.CHECKS,
]


def known_failure(check: Check, bench: Bench) -> str | None:
    return KNOWN_FAILURES.get((check.__name__, bench.implementation, bench.dialect))


__all__ = ["CHECKS", "IMPLEMENTATIONS", "Bench", "Check", "known_failure", "open_bench"]
