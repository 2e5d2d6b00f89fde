"""``ConversationMemory``'s rules (the window, ``summarize_after``, ``max_messages``,
the summarizer) and ``EntityMemory``'s merge rules, on the objects themselves; what a
store keeps of them is tests/memory_contract.py."""

from __future__ import annotations

import pytest

from app.engine import ConversationMemory, EntityMemory
from app.engine.memory import Message


def _filled(memory: ConversationMemory, count: int) -> ConversationMemory:
    for i in range(count):
        memory.add_message("user" if i % 2 == 0 else "assistant", f"m{i}")
    return memory


def _contents(messages: list[Message]) -> list[str]:
    return [m.content for m in messages]


# ------------------------------------------------------------------------------ window


def test_the_window_is_the_last_window_size_messages() -> None:
    memory = _filled(ConversationMemory(max_messages=20, summarize_after=None, window_size=3), 5)
    assert _contents(memory.get_messages()) == ["m2", "m3", "m4"]
    assert memory.window() == {
        "summary": None,
        "messages": [
            {"role": "user", "content": "m2"},
            {"role": "assistant", "content": "m3"},
            {"role": "user", "content": "m4"},
        ],
    }


def test_a_window_can_be_asked_for_explicitly() -> None:
    memory = _filled(ConversationMemory(max_messages=20, summarize_after=None, window_size=3), 5)
    assert _contents(memory.get_messages(1)) == ["m4"]
    assert _contents(memory.get_messages(10)) == [f"m{i}" for i in range(5)]
    assert memory.window(2)["messages"] == [
        {"role": "assistant", "content": "m3"},
        {"role": "user", "content": "m4"},
    ]


def test_a_short_conversation_shows_all_it_has() -> None:
    memory = ConversationMemory(window_size=10)
    assert memory.get_messages() == []
    memory.add_message("user", "hi")
    assert _contents(memory.get_messages()) == ["hi"]


# --------------------------------------------------------------------- summarize_after


def test_nothing_is_summarized_up_to_summarize_after() -> None:
    memory = _filled(ConversationMemory(max_messages=20, summarize_after=6, window_size=2), 6)
    assert memory.summary is None
    assert len(memory) == 6


def test_past_summarize_after_all_but_the_window_fold_into_the_summary() -> None:
    memory = _filled(ConversationMemory(max_messages=20, summarize_after=6, window_size=2), 7)
    assert _contents(memory.messages) == ["m5", "m6"]
    assert memory.summary == "\n".join(
        f"{'user' if i % 2 == 0 else 'assistant'}: m{i}" for i in range(5)
    )
    assert memory.window()["summary"] == memory.summary


def test_each_fold_extends_the_running_summary() -> None:
    memory = _filled(ConversationMemory(max_messages=20, summarize_after=3, window_size=2), 4)
    first = memory.summary
    assert first == "user: m0\nassistant: m1"
    memory.add_message("assistant", "m4")
    memory.add_message("user", "m5")  # four kept: past 3 again
    assert _contents(memory.messages) == ["m4", "m5"]
    assert memory.summary == f"{first}\nuser: m2\nassistant: m3"


def test_a_summarizer_gets_the_previous_summary_and_the_folded_messages() -> None:
    calls: list[tuple[str | None, list[str]]] = []

    def summarizer(previous: str | None, folded: list[Message]) -> str:
        calls.append((previous, _contents(folded)))
        return f"summary {len(calls)}"

    memory = ConversationMemory(
        max_messages=20, summarize_after=3, window_size=1, summarizer=summarizer
    )
    _filled(memory, 8)
    assert calls == [(None, ["m0", "m1", "m2"]), ("summary 1", ["m3", "m4", "m5"])]
    assert memory.summary == "summary 2"
    assert _contents(memory.messages) == ["m6", "m7"]


def test_the_extractive_summary_keeps_first_words_and_is_bounded() -> None:
    memory = ConversationMemory(max_messages=20, summarize_after=1, window_size=1)
    memory.add_message("user", "x" * 200)
    memory.add_message("assistant", "short")
    assert memory.summary == "user: " + "x" * 80
    for i in range(100):
        memory.add_message("user", f"{i:03d}" + "y" * 100)
    assert memory.summary is not None
    assert len(memory.summary) == 2000
    assert memory.summary.endswith("y" * 77)


def test_summarize_after_none_never_summarizes() -> None:
    memory = _filled(ConversationMemory(max_messages=5, summarize_after=None, window_size=2), 9)
    assert memory.summary is None


# ------------------------------------------------------------------------ max_messages


def test_at_most_max_messages_are_kept_the_oldest_dropped_without_a_summary() -> None:
    memory = _filled(ConversationMemory(max_messages=4, summarize_after=None, window_size=2), 7)
    assert _contents(memory.messages) == ["m3", "m4", "m5", "m6"]
    assert memory.summary is None


def test_past_max_messages_a_summarizing_memory_folds_instead_of_dropping() -> None:
    # summarize_after above max_messages: the bound comes first, and what it pushes out
    # goes into the summary rather than being lost
    memory = _filled(ConversationMemory(max_messages=4, summarize_after=10, window_size=2), 6)
    assert _contents(memory.messages) == ["m2", "m3", "m4", "m5"]
    assert memory.summary == "user: m0\nassistant: m1"


@pytest.mark.parametrize(
    ("max_messages", "summarize_after", "window_size", "match"),
    [
        (10, 50, 0, "window_size <= max_messages"),
        (5, 50, 10, "window_size <= max_messages"),
        (100, 5, 10, "summarize_after must be at least window_size"),
    ],
)
def test_inconsistent_settings_are_refused(
    max_messages: int, summarize_after: int | None, window_size: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        ConversationMemory(max_messages, summarize_after, window_size)


def test_clear_and_round_trip() -> None:
    memory = _filled(ConversationMemory(max_messages=10, summarize_after=4, window_size=2), 6)
    copy = ConversationMemory.from_dict(memory.to_dict())
    assert copy.to_dict() == memory.to_dict()
    memory.clear()
    assert (len(memory), memory.summary) == (0, None)
    assert len(copy) == 3


# ---------------------------------------------------------------------- EntityMemory


def test_facts_about_an_entity_merge_a_fact_set_again_replaced() -> None:
    entities = EntityMemory()
    assert entities.update("ada", city="London", age=36) == {"city": "London", "age": 36}
    assert entities.update("ada", city="Paris") == {"city": "Paris", "age": 36}
    assert entities.get("ada") == {"city": "Paris", "age": 36}


def test_entities_are_kept_apart() -> None:
    entities = EntityMemory()
    entities.update("ada", city="London")
    entities.update("bob", city="Oslo")
    assert entities.to_dict() == {"ada": {"city": "London"}, "bob": {"city": "Oslo"}}


def test_merging_is_shallow_a_nested_value_is_replaced_whole() -> None:
    entities = EntityMemory()
    entities.update("order-1", address={"city": "Rome", "zip": "00100"})
    entities.update("order-1", address={"city": "Milan"})
    assert entities.get("order-1") == {"address": {"city": "Milan"}}


def test_a_none_fact_is_kept_not_deleted() -> None:
    entities = EntityMemory()
    entities.update("ada", city="London")
    entities.update("ada", city=None)
    assert entities.get("ada") == {"city": None}


def test_what_is_handed_out_is_a_copy() -> None:
    entities = EntityMemory()
    merged = entities.update("ada", city="London")
    merged["city"] = "tampered"
    entities.get("ada")["age"] = 1
    entities.to_dict()["ada"]["x"] = 2
    assert entities.get("ada") == {"city": "London"}


def test_an_unknown_entity_is_empty_and_forgetting_is_idempotent() -> None:
    entities = EntityMemory()
    assert entities.get("nobody") == {}
    entities.update("ada", city="London")
    entities.forget("ada")
    entities.forget("ada")
    assert entities.get("ada") == {}
    assert entities.to_dict() == {}
