"""Checks of namespaces: the same workflow id and idempotency key in two namespaces are
two things; reads, lists and archives of one namespace never see another's; a run is in
its workflow's namespace. And API keys: stored by hash, listed by namespace, revoked
once, with every replica told (``KeyRevoked``)."""

from __future__ import annotations

import asyncio

from app.store.notifications import KeyRevoked, Notification
from app.store.records import DEFAULT_NAMESPACE
from tests.store_contract.bench import Bench, Check, collector, next_heard

CHECKS: list[Check] = []
check = collector(CHECKS)


@check
async def a_workflow_id_is_unique_within_its_namespace_only(bench: Bench) -> None:
    store = bench.store
    a1 = await store.create_workflow_version("flow", "a", {"n": 1}, namespace="team-a")
    b1 = await store.create_workflow_version("flow", "b", {"n": 2}, namespace="team-b")
    a2 = await store.create_workflow_version("flow", "a2", {"n": 3}, namespace="team-a")
    assert (a1.version, b1.version, a2.version) == (1, 1, 2)
    assert (a1.namespace, b1.namespace) == ("team-a", "team-b")
    latest_b = await store.get_workflow("flow", namespace="team-b")
    assert latest_b is not None
    assert (latest_b.name, latest_b.version) == ("b", 1)
    assert await store.get_workflow("flow") is None  # nothing in "default"
    assert await store.get_workflow("flow", 2, namespace="team-b") is None
    assert [w.name for w in await store.list_versions("flow", namespace="team-a")] == ["a", "a2"]
    listed = await store.list_workflows(None, 10, namespace="team-b")
    assert [(w.workflow_id, w.name) for w in listed.items] == [("flow", "b")]
    assert (await store.list_workflows(None, 10)).items == []
    # archiving in one namespace leaves the other's
    assert await store.archive_workflow("flow", namespace="team-a") is True
    assert await store.get_workflow("flow", namespace="team-a") is None
    assert await store.get_workflow("flow", namespace="team-b") is not None
    assert await store.archive_workflow("flow", namespace="team-c") is False


@check
async def a_run_is_in_its_workflows_namespace_and_listed_only_there(bench: Bench) -> None:
    store = bench.store
    ours = await store.create_workflow_version("flow", None, {}, namespace="team-a")
    theirs = await store.create_workflow_version("flow", None, {}, namespace="team-b")
    run_a, _ = await store.create_run("run-a", ours, None, None, None, None)
    run_b, _ = await store.create_run("run-b", theirs, None, None, None, None)
    assert (run_a.namespace, run_b.namespace) == ("team-a", "team-b")
    stored = await store.get_run("run-b")
    assert stored is not None
    assert stored.namespace == "team-b"
    for namespace, expected in (("team-a", ["run-a"]), ("team-b", ["run-b"]), ("x", [])):
        page = await store.list_runs(
            namespace=namespace, workflow_id=None, status=None, cursor=None, limit=10
        )
        assert [r.id for r in page.items] == expected
        page = await store.list_runs(
            namespace=namespace, workflow_id="flow", status="queued", cursor=None, limit=10
        )
        assert [r.id for r in page.items] == expected
    assert await store.count_active("team-a") == 1
    assert await store.count_active(DEFAULT_NAMESPACE) == 0


@check
async def an_idempotency_key_is_unique_within_its_namespace_only(bench: Bench) -> None:
    store = bench.store
    ours = await store.create_workflow_version("flow", None, {}, namespace="team-a")
    theirs = await store.create_workflow_version("flow", None, {}, namespace="team-b")
    first, created_a = await store.create_run("r1", ours, 1, None, "key", "h1")
    second, created_b = await store.create_run("r2", theirs, 2, None, "key", "h2")
    assert (created_a, created_b) == (True, True)
    assert (first.id, second.id) == ("r1", "r2")
    again, created = await store.create_run("r3", ours, 1, None, "key", "h1")
    assert (again.id, created) == ("r1", False)
    found = await store.run_by_idempotency_key("key", namespace="team-b")
    assert found is not None
    assert found.id == "r2"
    assert await store.run_by_idempotency_key("key") is None


@check
async def api_keys_are_kept_by_hash_listed_by_namespace_and_revoked_once(
    bench: Bench,
) -> None:
    store = bench.store
    inbox: asyncio.Queue[Notification] = asyncio.Queue()
    store.notifier.subscribe(inbox.put_nowait)
    a = await store.create_key("aaaaaaaaaaaa", "h" * 64, "team-a", "writer", name="ci")
    await store.create_key("bbbbbbbbbbbb", "g" * 64, "team-b", "reader", expires_at=2e9)
    assert (a.namespace, a.role, a.name, a.revoked_at, a.expires_at) == (
        "team-a",
        "writer",
        "ci",
        None,
        None,
    )
    stored = await store.key("aaaaaaaaaaaa")
    assert stored == a
    assert await store.key("cccccccccccc") is None
    assert [k.id for k in await store.list_keys("team-a")] == ["aaaaaaaaaaaa"]
    assert [k.id for k in await store.list_keys(None)] == ["aaaaaaaaaaaa", "bbbbbbbbbbbb"]
    assert await store.revoke_key("aaaaaaaaaaaa") is True
    await next_heard(inbox, KeyRevoked("aaaaaaaaaaaa"))
    assert await store.revoke_key("aaaaaaaaaaaa") is False  # once
    assert await store.revoke_key("cccccccccccc") is False
    revoked = await store.key("aaaaaaaaaaaa")
    assert revoked is not None
    assert revoked.revoked_at is not None
