"""Checks of conversation memory: appends take the next sequences and keep at most
``max_messages`` (trimming the oldest, in the same transaction), racing appends lose
nothing, a save keeps the rows of the messages it still holds, summaries and entities
(merged), paging by sequence, erasure, and namespaces."""

from __future__ import annotations

import asyncio

from app.store.records import ConversationSettings, NewMessage
from tests.store_contract.bench import Bench, Check, collector

CHECKS: list[Check] = []
check = collector(CHECKS)

SETTINGS = ConversationSettings(max_messages=5, summarize_after=None, window_size=2)


def said(*texts: str, role: str = "user") -> list[NewMessage]:
    return [NewMessage(role, text, {"n": i}, 1000.0 + i) for i, text in enumerate(texts)]


@check
async def a_conversation_does_not_exist_until_written(bench: Bench) -> None:
    store = bench.store
    assert await store.load_conversation("a", "c1") is None
    assert await store.get_conversation("a", "c1") is None
    assert await store.conversation_messages("a", "c1", 0, 10) == []
    assert await store.delete_conversation("a", "c1") is False
    assert await store.set_conversation_summary("a", "c1", "s") is False


@check
async def appends_take_the_next_sequences_and_keep_at_most_max_messages(bench: Bench) -> None:
    store = bench.store
    first = await store.append_messages("a", "c1", SETTINGS, said("one", "two"))
    assert [(m.seq, m.content, m.meta) for m in first] == [
        (1, "one", {"n": 0}),
        (2, "two", {"n": 1}),
    ]
    await store.append_messages("a", "c1", SETTINGS, said("3", "4", "5", "6"))
    state = await store.load_conversation("a", "c1")
    assert state is not None
    assert [m.seq for m in state.messages] == [2, 3, 4, 5, 6]  # the oldest trimmed
    assert [m.content for m in state.messages] == ["two", "3", "4", "5", "6"]
    conversation = state.conversation
    assert (conversation.max_messages, conversation.summarize_after) == (5, None)
    assert (conversation.window_size, conversation.last_seq) == (2, 6)
    assert conversation.updated_at >= conversation.created_at
    last = await store.load_conversation("a", "c1", last=2)
    assert last is not None
    assert [m.seq for m in last.messages] == [5, 6]


@check
async def racing_appends_lose_nothing_and_share_no_sequence(bench: Bench) -> None:
    store = bench.store
    roomy = ConversationSettings(max_messages=100, summarize_after=None, window_size=2)
    await asyncio.gather(
        *(store.append_messages("a", "race", roomy, said(f"m{i}")) for i in range(8))
    )
    messages = await store.conversation_messages("a", "race", 0, 100)
    assert [m.seq for m in messages] == list(range(1, 9))
    assert sorted(m.content for m in messages) == sorted(f"m{i}" for i in range(8))


@check
async def a_save_keeps_the_messages_it_still_holds_and_replaces_the_rest(bench: Bench) -> None:
    store = bench.store
    await store.append_messages("a", "c1", SETTINGS, said("one", "two", "three"))
    # "one" folded into the summary, "four" appended
    kept = said("one", "two", "three")[1:]
    saved = await store.save_conversation(
        "a", "c1", SETTINGS, "user: one", [*kept, NewMessage("ai", "four", {}, 2000.0)]
    )
    assert (saved.summary, saved.last_seq) == ("user: one", 4)
    state = await store.load_conversation("a", "c1")
    assert state is not None
    assert [(m.seq, m.content) for m in state.messages] == [(2, "two"), (3, "three"), (4, "four")]
    # cleared, then one new message: every stored one goes, the new one takes seq 5
    await store.save_conversation("a", "c1", SETTINGS, None, said("fresh"))
    state = await store.load_conversation("a", "c1")
    assert state is not None
    assert state.conversation.summary is None
    assert [(m.seq, m.content) for m in state.messages] == [(5, "fresh")]
    # new settings are kept
    wider = ConversationSettings(max_messages=9, summarize_after=4, window_size=3)
    await store.save_conversation("a", "c1", wider, None, said("fresh"))
    again = await store.get_conversation("a", "c1")
    assert again is not None
    assert (again.max_messages, again.summarize_after, again.window_size) == (9, 4, 3)
    assert again.last_seq == 5


@check
async def summaries_and_entities_are_kept_and_entities_merged(bench: Bench) -> None:
    store = bench.store
    one = await store.merge_entity("a", "c1", SETTINGS, "ada", {"city": "London", "age": 36})
    assert one.facts == {"city": "London", "age": 36}
    two = await store.merge_entity("a", "c1", SETTINGS, "ada", {"city": "Paris"})
    assert two.facts == {"city": "Paris", "age": 36}
    await store.merge_entity("a", "c1", SETTINGS, "bob", {"likes": ["tea"]})
    assert await store.set_conversation_summary("a", "c1", "they met") is True
    state = await store.load_conversation("a", "c1")
    assert state is not None
    assert state.conversation.summary == "they met"
    assert [(e.name, e.facts) for e in state.entities] == [
        ("ada", {"city": "Paris", "age": 36}),
        ("bob", {"likes": ["tea"]}),
    ]
    assert await store.forget_entity("a", "c1", "bob") is True
    assert await store.forget_entity("a", "c1", "bob") is False


@check
async def messages_are_paged_by_sequence(bench: Bench) -> None:
    store = bench.store
    roomy = ConversationSettings(max_messages=50, summarize_after=None, window_size=2)
    await store.append_messages("a", "c1", roomy, said(*(f"m{i}" for i in range(7))))
    seen, after = [], 0
    while page := await store.conversation_messages("a", "c1", after, 3):
        assert len(page) <= 3
        seen += [m.content for m in page]
        after = page[-1].seq
    assert seen == [f"m{i}" for i in range(7)]


@check
async def deleting_erases_messages_summary_and_entities(bench: Bench) -> None:
    store = bench.store
    await store.append_messages("a", "c1", SETTINGS, said("one"))
    await store.set_conversation_summary("a", "c1", "s")
    await store.merge_entity("a", "c1", SETTINGS, "ada", {"x": 1})
    assert await store.delete_conversation("a", "c1") is True
    assert await store.load_conversation("a", "c1") is None
    assert await store.conversation_messages("a", "c1", 0, 10) == []
    # written again: a new conversation, from sequence 1, knowing nothing
    (message,) = await store.append_messages("a", "c1", SETTINGS, said("again"))
    assert message.seq == 1
    state = await store.load_conversation("a", "c1")
    assert state is not None
    assert (state.conversation.summary, state.entities) == (None, [])


@check
async def each_namespace_has_its_own_conversations(bench: Bench) -> None:
    store = bench.store
    await store.append_messages("a", "same", SETTINGS, said("for a"))
    await store.append_messages("b", "same", SETTINGS, said("for b"))
    await store.merge_entity("b", "same", SETTINGS, "x", {"ns": "b"})
    a = await store.load_conversation("a", "same")
    b = await store.load_conversation("b", "same")
    assert a is not None
    assert b is not None
    assert [m.content for m in a.messages] == ["for a"]
    assert [m.content for m in b.messages] == ["for b"]
    assert a.entities == []
    assert await store.delete_conversation("a", "same") is True
    assert await store.load_conversation("b", "same") is not None
