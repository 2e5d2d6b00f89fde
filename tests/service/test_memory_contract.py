"""The MemoryStore conformance suite (tests/memory_contract.py) over the service's
``DurableMemoryStore``, on every store implementation, SQLite and Postgres; and what only
a database gives: another replica (another store on the same database) reads the same
conversations, and each namespace has its own."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.engine import SecretMask
from app.runtime.memory import DurableMemoryStore
from app.runtime.secrets import MaskingMemoryStore
from app.store import Store
from app.store.db import create_engine
from tests.memory_contract import CHECKS, Check, said
from tests.store_contract import IMPLEMENTATIONS


@pytest.fixture(params=list(IMPLEMENTATIONS))
async def store(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[Store]:
    engine = create_engine(database_url)
    made = IMPLEMENTATIONS[request.param](engine)
    if made is None:
        await engine.dispose()
        pytest.skip(f"{request.param} does not serve this database")
    try:
        yield made
    finally:
        await made.close()
        await engine.dispose()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_the_durable_store_conforms(store: Store, check: Check) -> None:
    await check(DurableMemoryStore(store, "team-a"))


async def test_another_replica_reads_the_same_conversation(store: Store, database_url: str) -> None:
    await said(DurableMemoryStore(store, "team-a"), "c1", "one", "two")
    engine = create_engine(database_url)
    other = IMPLEMENTATIONS["for the dialect"](engine)
    assert other is not None
    try:
        memory = await DurableMemoryStore(other, "team-a").load("c1")
        assert [m.content for m in memory.messages] == ["one", "two"]
        await said(DurableMemoryStore(other, "team-a"), "c1", "three")
    finally:
        await other.close()
        await engine.dispose()
    memory = await DurableMemoryStore(store, "team-a").load("c1")
    assert [m.content for m in memory.messages] == ["one", "two", "three"]


async def test_each_namespace_has_its_own_conversations(store: Store) -> None:
    a, b = DurableMemoryStore(store, "team-a"), DurableMemoryStore(store, "team-b")
    await said(a, "same", "for a")
    assert len(await b.load("same")) == 0
    await said(b, "same", "for b")
    await b.delete("same")
    assert [m.content for m in (await a.load("same")).messages] == ["for a"]
    # the namespace is a column: the id is stored as given
    state = await store.load_conversation("team-a", "same")
    assert state is not None
    assert await store.load_conversation("default", "@team-a/same") is None


async def test_entities_are_merged_per_conversation(store: Store) -> None:
    memory = DurableMemoryStore(store, "team-a")
    assert await memory.entities("c1") == {}
    assert await memory.remember("c1", "ada", city="London", age=36) == {
        "city": "London",
        "age": 36,
    }
    assert await memory.remember("c1", "ada", city="Paris") == {"city": "Paris", "age": 36}
    assert await memory.entities("c1") == {"ada": {"city": "Paris", "age": 36}}
    assert await DurableMemoryStore(store, "team-b").entities("c1") == {}
    await memory.delete("c1")
    assert await memory.entities("c1") == {}


async def test_an_id_the_store_cannot_keep_is_refused(store: Store) -> None:
    memory = DurableMemoryStore(store, "team-a")
    for bad in ("", "x" * 201, "a\x00b"):
        with pytest.raises(ValueError, match="conversation id"):
            await memory.load(bad)
        with pytest.raises(ValueError, match="conversation id"):
            await memory.save(bad, await memory.load("ok"))


async def test_what_a_run_saves_is_stored_with_its_secrets_masked(store: Store) -> None:
    durable = DurableMemoryStore(store, "team-a")
    view = MaskingMemoryStore(durable, SecretMask(["s3cret"]))
    memory = await view.load("c")
    memory.add_message("tool", "got s3cret", source="s3cret")
    await view.save("c", memory)
    memory = await view.load("c")
    memory.add_message("user", "thanks")
    await view.save("c", memory)
    messages = await store.conversation_messages("team-a", "c", 0, 10)
    assert [(m.seq, m.content, m.meta) for m in messages] == [
        (1, "got ***", {"source": "***"}),
        (2, "thanks", {}),
    ]
