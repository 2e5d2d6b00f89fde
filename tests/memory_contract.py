"""The conformance suite of ``MemoryStore``: what every keeper of conversations must do,
run over the engine's ``InMemoryMemoryStore`` (tests/engine) and the service's
``DurableMemoryStore`` on SQLite and Postgres (tests/service).

A check gets a fresh store whose new conversations take the port's defaults
(``max_messages`` 100, ``summarize_after`` 50, ``window_size`` 10). It uses a
conversation the way a node does: load it, change it, save it, and load it again. What a
store hands out between a load and a save is not compared (the in-memory store hands out
the very object it keeps; a database store, a copy)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from app.engine import ConversationMemory, MemoryStore

Check = Callable[[MemoryStore], Awaitable[None]]
CHECKS: list[Check] = []


def check(fn: Check) -> Check:
    CHECKS.append(fn)
    return fn


async def said(store: MemoryStore, conversation_id: str, *texts: str) -> ConversationMemory:
    """Append each text (user and assistant in turn) as a node does: load, add, save."""
    for i, text in enumerate(texts):
        memory = await store.load(conversation_id)
        memory.add_message("user" if i % 2 == 0 else "assistant", text, turn=i)
        await store.save(conversation_id, memory)
    return await store.load(conversation_id)


@check
async def a_new_conversation_is_empty_with_the_defaults(store: MemoryStore) -> None:
    memory = await store.load("new")
    assert len(memory) == 0
    assert memory.summary is None
    assert (memory.max_messages, memory.summarize_after, memory.window_size) == (100, 50, 10)
    assert memory.window() == {"summary": None, "messages": []}


@check
async def what_is_saved_loads_back_the_same(store: MemoryStore) -> None:
    memory = ConversationMemory(max_messages=20, summarize_after=None, window_size=3)
    memory.add_message("system", "be brief")
    memory.add_message("user", "hello", lang="en", score=0.5)
    memory.summary = "earlier: nothing"
    await store.save("c1", memory)
    loaded = await store.load("c1")
    assert loaded.to_dict() == memory.to_dict()
    assert loaded.window(2) == memory.window(2)


@check
async def turns_appended_one_save_at_a_time_are_all_kept(store: MemoryStore) -> None:
    memory = await said(store, "c1", "one", "two", "three")
    assert [(m.role, m.content) for m in memory.messages] == [
        ("user", "one"),
        ("assistant", "two"),
        ("user", "three"),
    ]
    assert [m.metadata for m in memory.messages] == [{"turn": 0}, {"turn": 1}, {"turn": 2}]


@check
async def older_messages_fold_into_the_summary_past_summarize_after(store: MemoryStore) -> None:
    memory = ConversationMemory(max_messages=10, summarize_after=4, window_size=2)
    await store.save("c1", memory)
    folded = await said(store, "c1", *(f"m{i}" for i in range(5)))
    # the fifth message went past 4: all but the last 2 were folded
    assert [m.content for m in folded.messages] == ["m3", "m4"]
    assert folded.summary == "user: m0\nassistant: m1\nuser: m2"
    more = await said(store, "c1", "m5", "m6")
    assert [m.content for m in more.messages] == ["m3", "m4", "m5", "m6"]
    assert more.summary == folded.summary
    assert more.window(1)["messages"] == [{"role": "assistant", "content": "m6"}]


@check
async def at_most_max_messages_are_kept(store: MemoryStore) -> None:
    await store.save("c1", ConversationMemory(max_messages=3, summarize_after=None, window_size=1))
    memory = await said(store, "c1", *(f"m{i}" for i in range(6)))
    assert [m.content for m in memory.messages] == ["m3", "m4", "m5"]
    assert memory.summary is None


@check
async def a_cleared_conversation_saves_empty(store: MemoryStore) -> None:
    memory = await said(store, "c1", "one", "two")
    memory.summary = "s"
    memory.clear()
    await store.save("c1", memory)
    loaded = await store.load("c1")
    assert (len(loaded), loaded.summary) == (0, None)
    again = await said(store, "c1", "fresh")
    assert [m.content for m in again.messages] == ["fresh"]


@check
async def deleting_forgets_the_conversation(store: MemoryStore) -> None:
    await store.save("c1", ConversationMemory(max_messages=5, summarize_after=None, window_size=2))
    await said(store, "c1", "secret plan")
    await store.delete("c1")
    loaded = await store.load("c1")
    assert len(loaded) == 0
    assert loaded.summary is None
    assert (loaded.max_messages, loaded.summarize_after, loaded.window_size) == (100, 50, 10)
    await store.delete("c1")  # deleting what is not there is no error
    await store.delete("never")


@check
async def conversations_are_kept_apart(store: MemoryStore) -> None:
    await said(store, "c1", "for one")
    await said(store, "c2", "for two")
    await store.delete("c2")
    assert [m.content for m in (await store.load("c1")).messages] == ["for one"]
    assert len(await store.load("c2")) == 0
