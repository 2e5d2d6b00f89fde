"""The audit log: entries recorded by the service (``AuditLog.record``) and read by a
namespace's admins through ``GET /v1/audit``, on SQLite and Postgres: newest first,
paged, filtered by action, a namespace at a time; what an entry keeps of its detail; and
a failed write that does not fail the operation it records."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from app.runtime.access import Caller, Forbidden, Role
from app.runtime.audit import (
    ACTION_PATTERN,
    ACTIONS,
    KEY_CREATED,
    KEY_REVOKED,
    MAX_DETAIL_BYTES,
    REDACTED,
    RUN_CANCELLED,
    RUN_SIGNALLED,
    SECRET_SET,
    WORKFLOW_ARCHIVED,
    AuditLog,
    bounded_detail,
)
from app.store import Store, open_store
from app.store.db import create_engine
from tests.service.support import MakeSettings, Serve, assert_problem

ADMIN = Caller("default", Role.ADMIN, "ab12cd34ef56", source="203.0.113.9")
WRITER = Caller("default", Role.WRITER, "0011aabbccdd", source="198.51.100.4")
OTHER_ADMIN = Caller("team-b", Role.ADMIN, "ffeeddccbbaa", source="192.0.2.1")


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """The dialect's store on the test's database (the server under test opens its own)."""
    engine = create_engine(database_url)
    opened = open_store(engine)
    try:
        yield opened
    finally:
        await opened.close()
        await engine.dispose()


def _clock(start: float = 1_700_000_000.0) -> Any:
    ticks = iter(range(10_000))
    return lambda: start + next(ticks)


async def _all_pages(client: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    """Every page of ``GET /v1/audit``, following ``next_cursor``."""
    pages: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/v1/audit", params=query)
        assert response.status_code == 200, response.text
        pages.append(response.json())
        cursor = pages[-1]["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("the cursors never end")


async def test_admins_read_what_the_service_recorded(
    make_settings: MakeSettings, serve: Serve, store: Store
) -> None:
    audit = AuditLog(store, clock=_clock())
    script = [
        (ADMIN, KEY_CREATED, "key:0011aabbccdd", {"role": "writer", "expires_at": None}),
        (WRITER, WORKFLOW_ARCHIVED, "workflow:greet", None),
        (WRITER, RUN_CANCELLED, "run:r1", None),
        (OTHER_ADMIN, KEY_CREATED, "key:elsewhere", {"role": "reader"}),  # not default's
        (WRITER, RUN_SIGNALLED, "run:r1", {"signal": "approve"}),
        (ADMIN, KEY_REVOKED, "key:0011aabbccdd", None),
    ]
    for caller, action, target, detail in script:
        await audit.record(caller, action, target, detail)
    # auth off: every request is an admin of namespace default
    async with serve(make_settings(auth="disabled")) as client:
        pages = await _all_pages(client, limit=2)
        assert [len(page["items"]) for page in pages] == [2, 2, 1]
        items = [item for page in pages for item in page["items"]]
        assert [(i["action"], i["target"]) for i in items] == [
            (KEY_REVOKED, "key:0011aabbccdd"),
            (RUN_SIGNALLED, "run:r1"),
            (RUN_CANCELLED, "run:r1"),
            (WORKFLOW_ARCHIVED, "workflow:greet"),
            (KEY_CREATED, "key:0011aabbccdd"),
        ]
        assert len({i["id"] for i in items}) == 5
        assert [i["id"] for i in items] == sorted((i["id"] for i in items), reverse=True)
        oldest = items[-1]
        assert oldest == {
            "id": oldest["id"],
            "at": 1_700_000_000.0,  # epoch seconds, as every time of the API
            "actor": "ab12cd34ef56",
            "role": "admin",
            "action": KEY_CREATED,
            "target": "key:0011aabbccdd",
            "source": "203.0.113.9",
            "detail": {"role": "writer", "expires_at": None},
        }
        signalled = items[1]
        assert (signalled["actor"], signalled["role"], signalled["source"]) == (
            "0011aabbccdd",
            "writer",
            "198.51.100.4",
        )
        assert (signalled["at"], signalled["detail"]) == (1_700_000_004.0, {"signal": "approve"})

        # the filter by action, paged
        keys = await _all_pages(client, action=KEY_CREATED, limit=1)
        assert [[i["target"] for i in page["items"]] for page in keys] == [["key:0011aabbccdd"]]
        both = await _all_pages(client, action=RUN_CANCELLED)
        assert [i["target"] for page in both for i in page["items"]] == ["run:r1"]
        none = await client.get("/v1/audit", params={"action": SECRET_SET})
        assert none.json() == {"items": [], "next_cursor": None}
        recent = await client.get("/v1/audit", params={"since": 1_700_000_004.0})
        assert [i["action"] for i in recent.json()["items"]] == [KEY_REVOKED, RUN_SIGNALLED]

        # refused parameters
        for params in ({"cursor": "abc"}, {"action": "DROP TABLE"}, {"limit": 0}, {"since": -1}):
            assert_problem(await client.get("/v1/audit", params=params), 422, "invalid-request")
        too_far = await client.get("/v1/audit", params={"cursor": "9999999999"})
        assert_problem(too_far, 400, "bad-cursor")


async def test_only_admins_read_the_audit_log_and_only_their_namespaces(store: Store) -> None:
    audit = AuditLog(store)
    await audit.record(ADMIN, KEY_CREATED, "key:a")
    await audit.record(OTHER_ADMIN, KEY_CREATED, "key:b")
    # the system caller (bootstrap key) acting on another namespace records it there
    system = Caller("default", Role.ADMIN, "bootstrap", system=True)
    await audit.record(system, KEY_CREATED, "key:c", namespace="team-b")
    for role in (Role.WRITER, Role.READER, Role.METRICS):
        with pytest.raises(Forbidden):
            await audit.listing(Caller("default", role, "k"), cursor=None, limit=10)
    mine = await audit.listing(ADMIN, cursor=None, limit=10)
    assert [(e.target, e.actor) for e in mine.items] == [("key:a", "ab12cd34ef56")]
    theirs = await audit.listing(OTHER_ADMIN, cursor=None, limit=10)
    assert [(e.target, e.actor) for e in theirs.items] == [
        ("key:c", "bootstrap"),
        ("key:b", "ffeeddccbbaa"),
    ]
    nobody = await audit.listing(Caller("team-c", Role.ADMIN, "k"), cursor=None, limit=10)
    assert (nobody.items, nobody.next_cursor) == ([], None)


async def test_an_entry_outlives_its_cancelled_request(store: Store) -> None:
    audit = AuditLog(store)
    request = asyncio.get_running_loop().create_task(audit.record(ADMIN, KEY_REVOKED, "key:x"))
    await asyncio.sleep(0)  # the request reached the write, and its client hangs up
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    await audit.settle()
    found = await audit.listing(ADMIN, cursor=None, limit=10)
    assert [(e.action, e.target) for e in found.items] == [(KEY_REVOKED, "key:x")]


async def test_a_failed_write_is_logged_and_counted_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # a database without the audit log's table: every write fails
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'unmigrated.db'}")
    store = open_store(engine)
    labels = {"action": KEY_REVOKED}
    before = REGISTRY.get_sample_value("flowcore_audit_write_failures_total", labels) or 0.0
    try:
        with caplog.at_level(logging.ERROR, logger="flowcore.audit"):
            await AuditLog(store).record(ADMIN, KEY_REVOKED, "key:x", {"reason": "left"})
    finally:
        await store.close()
        await engine.dispose()
    after = REGISTRY.get_sample_value("flowcore_audit_write_failures_total", labels)
    assert after == before + 1
    (logged,) = [r for r in caplog.records if r.name == "flowcore.audit"]
    assert logged.levelno == logging.ERROR
    assert logged.exc_info is not None
    entry = json.loads(logged.getMessage().split(": ", 1)[1])
    assert {k: entry[k] for k in ("namespace", "actor", "action", "target", "source")} == {
        "namespace": "default",
        "actor": "ab12cd34ef56",
        "action": KEY_REVOKED,
        "target": "key:x",
        "source": "203.0.113.9",
    }
    assert entry["detail"] == {"reason": "left"}


def test_a_detail_keeps_short_facts_and_never_a_credential_or_payload() -> None:
    kept = bounded_detail(
        {
            "role": "writer",
            "version": 3,
            "fork": True,
            "value": "hunter2",
            "secret_value": "s3cr3t",
            "Authorization": "Bearer fc_live_x",
            "api-token": "t0k3n",
            "input": {"card": "4111"},
            "body_changed": True,  # a flag under a payload's name says nothing of it
            "vars": None,
            "nested": {"deep": {"er": 1}},
            "fields": ["a", {"b": 1}, ["c"]],
            "ratio": float("nan"),
            "nul": "a\x00b",
        }
    )
    assert kept == {
        "role": "writer",
        "version": 3,
        "fork": True,
        "value": REDACTED,
        "secret_value": REDACTED,
        "Authorization": REDACTED,
        "api-token": REDACTED,
        "input": REDACTED,
        "body_changed": True,
        "vars": None,
        "nested": "<object>",
        "fields": ["a", "<object>", "<list>"],
        "ratio": "nan",
        "nul": "ab",
    }
    assert "hunter2" not in json.dumps(kept)
    assert bounded_detail(None) is None
    assert bounded_detail({}) is None


def test_a_detail_is_bounded_in_size() -> None:
    huge = {f"k{i:02d}": "x" * 10_000 for i in range(40)}
    kept = bounded_detail(huge)
    assert kept is not None
    assert len(json.dumps(kept, separators=(",", ":")).encode()) <= MAX_DETAIL_BYTES
    assert kept["_truncated"] is True
    names = [name for name in kept if name != "_truncated"]
    assert names == [f"k{i:02d}" for i in range(len(names))]  # the first ones stay
    assert 0 < len(names) < 16
    assert all(len(kept[name]) == 200 for name in names)
    listed = bounded_detail({"runs": [str(i) for i in range(100)]})
    assert listed == {"runs": [str(i) for i in range(16)]}


def test_the_listing_filters_by_every_action_recorded() -> None:
    assert len(ACTIONS) == 10
    assert all(re.fullmatch(ACTION_PATTERN, action) for action in ACTIONS)
