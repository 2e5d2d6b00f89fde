"""Checks of the audit log: what an entry holds, newest first, paging without a gap or a
repeat, a namespace at a time, and the filters by action and time."""

from __future__ import annotations

from typing import Any

import pytest

from app.store.errors import InvalidCursor
from tests.store_contract.bench import Bench, Check, collector, pages

CHECKS: list[Check] = []
check = collector(CHECKS)


async def _append(bench: Bench, namespace: str, action: str, target: str, **more: Any) -> int:
    entry = await bench.store.append_audit(
        namespace, actor="ab12cd34", role="admin", action=action, target=target, **more
    )
    return entry.id


@check
async def an_audit_entry_reads_back_as_appended(bench: Bench) -> None:
    store = bench.store
    detail = {"role": "writer", "expires_at": 1.5e9, "fields": ["a", "b"], "ü": None}
    entry = await store.append_audit(
        "team-a",
        actor="ab12cd34",
        role="admin",
        action="key.created",
        target="key:ef56",
        source="10.0.0.7",
        detail=detail,
        at=1234.5,
    )
    bare = await store.append_audit("team-a", actor="anonymous", role="admin", action="run.x")
    assert bare.id > entry.id
    assert (bare.target, bare.source, bare.detail) == (None, None, None)
    assert bare.at >= await store.now() - 60  # now, by default
    page = await store.list_audit("team-a", cursor=None, limit=10)
    assert page.next_cursor is None
    assert [e.id for e in page.items] == [bare.id, entry.id]
    for found in (entry, page.items[1]):
        assert (found.at, found.namespace, found.actor, found.role) == (
            1234.5,
            "team-a",
            "ab12cd34",
            "admin",
        )
        assert (found.action, found.target, found.source) == ("key.created", "key:ef56", "10.0.0.7")
        assert found.detail == detail
    # a value longer than its column is cut to fit, on every database
    long = await store.append_audit(
        "team-a", actor="a" * 100, role="admin", action="run.cancelled", target="t" * 400,
        source="s" * 200,
    )  # fmt: skip
    (stored,) = (await store.list_audit("team-a", cursor=None, limit=1)).items
    for found in (long, stored):
        assert (len(found.actor), len(found.target or ""), len(found.source or "")) == (
            64,
            300,
            100,
        )


@check
async def the_audit_log_pages_newest_first_without_gaps_or_repeats(bench: Bench) -> None:
    store = bench.store
    appended = [await _append(bench, "team-a", "run.cancelled", f"run:r{i}") for i in range(7)]
    newest_first = appended[::-1]

    def listing(limit: int = 3) -> Any:
        return lambda cursor: store.list_audit("team-a", cursor=cursor, limit=limit)

    found = await pages(listing())
    assert [len(page.items) for page in found] == [3, 3, 1]
    assert [entry.id for page in found for entry in page.items] == newest_first
    assert [entry.target for entry in found[0].items] == ["run:r6", "run:r5", "run:r4"]
    # an entry appended between two pages is newer than the cursor: the rest stay as they were
    first = await listing()(None)
    newer = await _append(bench, "team-a", "run.cancelled", "run:r7")
    rest = await pages(lambda cursor: listing()(cursor or first.next_cursor))
    assert [e.id for e in first.items] + [e.id for p in rest for e in p.items] == newest_first
    whole = await listing(8)(None)  # exactly one page: no cursor to nothing
    assert ([e.id for e in whole.items], whole.next_cursor) == ([newer, *newest_first], None)
    tail = await listing()(str(appended[0]))  # from the oldest entry on: an empty last page
    assert (tail.items, tail.next_cursor) == ([], None)
    for cursor in ("nonsense", "0", "-1", "1.5", "01", "99999999999", "1:2"):
        with pytest.raises(InvalidCursor):
            await listing()(cursor)


@check
async def a_namespace_sees_only_its_own_audit_entries(bench: Bench) -> None:
    store = bench.store
    mine = [await _append(bench, "team-a", "secret.set", f"secret:s{i}") for i in range(3)]
    theirs = [await _append(bench, "team-b", "secret.set", f"secret:s{i}") for i in range(2)]
    found = await pages(lambda cursor: store.list_audit("team-a", cursor=cursor, limit=2))
    assert [e.id for p in found for e in p.items] == mine[::-1]
    assert {e.namespace for p in found for e in p.items} == {"team-a"}
    other = await store.list_audit("team-b", cursor=None, limit=10)
    assert [e.id for e in other.items] == theirs[::-1]
    nobody = await store.list_audit("team-c", cursor=None, limit=10)
    assert (nobody.items, nobody.next_cursor) == ([], None)
    # a cursor is a position only: past another namespace's entry, still only team-a's
    crossed = await store.list_audit("team-a", cursor=str(theirs[-1]), limit=10)
    assert [e.id for e in crossed.items] == mine[::-1]


@check
async def the_audit_log_filters_by_action_and_time(bench: Bench) -> None:
    store = bench.store
    script = [
        ("key.created", 100.0), ("run.cancelled", 200.0), ("key.created", 300.0),
        ("key.revoked", 400.0), ("key.created", 500.0), ("key.created", 600.0),
    ]  # fmt: skip
    ids = [
        await _append(bench, "team-a", action, f"t{i}", at=at)
        for i, (action, at) in enumerate(script)
    ]
    await _append(bench, "team-b", "key.created", "elsewhere", at=700.0)
    created = await pages(
        lambda cursor: store.list_audit("team-a", cursor=cursor, limit=2, action="key.created")
    )
    assert [len(page.items) for page in created] == [2, 2]
    assert [e.id for p in created for e in p.items] == [ids[5], ids[4], ids[2], ids[0]]
    recent = await store.list_audit("team-a", cursor=None, limit=10, since=300.0)
    assert [e.id for e in recent.items] == [ids[5], ids[4], ids[3], ids[2]]
    both = await store.list_audit("team-a", cursor=None, limit=10, action="key.created", since=301)
    assert [e.id for e in both.items] == [ids[5], ids[4]]
    none = await store.list_audit("team-a", cursor=None, limit=10, action="secret.deleted")
    assert (none.items, none.next_cursor) == ([], None)
