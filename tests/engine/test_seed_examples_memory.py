"""The seed document's "Memory Configuration" example, as close to verbatim as the
language allows: only the import lines changed (``nadoo_flow.memory`` ->
``app.engine.memory``; ``WorkflowContext``, which the seed uses without showing its
import, from ``app.engine``); then runs with that context whose ``memory`` nodes append
each turn to the attached memory and read its window, and assertions on what the memory
keeps: the window, the summary past ``summarize_after``, at most ``max_messages``."""

from __future__ import annotations

from typing import Any

from app.engine import RunStatus, WorkflowContext, WorkflowExecutor, create_workflow

#: one chat turn: the user's text and an answer appended to the attached memory (a
#: ``memory`` node without ``conversation`` uses ``WorkflowContext.memory``), then read
TURN: dict[str, Any] = {
    "id": "workflow_1",
    "nodes": [
        {
            "id": "user",
            "type": "memory",
            "config": {"op": "append", "message": {"role": "user", "content": "{{ input.text }}"}},
        },
        {
            "id": "answer",
            "type": "memory",
            "config": {
                "op": "append",
                "message": {"role": "assistant", "content": "re: {{ input.text }}"},
            },
        },
        {"id": "read", "type": "memory", "config": {"op": "read"}},
    ],
    "edges": [{"source": "user", "target": "answer"}, {"source": "answer", "target": "read"}],
}


async def test_memory_configuration() -> None:
    from app.engine.memory import ConversationMemory

    # Configure memory
    memory = ConversationMemory(
        max_messages=100,
        summarize_after=50,
        window_size=10
    )  # fmt: skip

    # Attach to workflow
    workflow_context = WorkflowContext("workflow_1")
    workflow_context.memory = memory

    assert (memory.max_messages, memory.summarize_after, memory.window_size) == (100, 50, 10)
    workflow = create_workflow(TURN)
    executor = WorkflowExecutor()
    windows = []
    for turn in range(26):  # 52 messages: past summarize_after on the 26th turn
        result = await executor.execute(workflow, {"text": f"t{turn}"}, context=workflow_context)
        assert result.status is RunStatus.SUCCEEDED
        windows.append(result.node_results["read"].output)

    assert workflow_context.memory is memory
    # the window: a node reads the last window_size messages
    assert windows[0] == {
        "summary": None,
        "messages": [
            {"role": "user", "content": "t0"},
            {"role": "assistant", "content": "re: t0"},
        ],
    }
    seventh = windows[7]["messages"]
    assert [m["content"] for m in seventh] == [
        text for i in range(3, 8) for text in (f"t{i}", f"re: t{i}")
    ]
    assert windows[24]["summary"] is None  # 50 messages: not past summarize_after yet
    # summarize_after: the 51st message folded all but the last window_size (10) into
    # the summary, one line per folded message; the 52nd was kept beside them
    assert len(memory) == 11
    assert memory.messages[0].content == "re: t20"
    assert memory.summary is not None
    lines = memory.summary.splitlines()
    assert (len(lines), lines[0], lines[-1]) == (41, "user: t0", "user: t20")
    assert windows[25]["summary"] == memory.summary
    assert [m["content"] for m in windows[25]["messages"]] == [
        text for i in range(21, 26) for text in (f"t{i}", f"re: t{i}")
    ]


def test_memory_configuration_keeps_at_most_max_messages() -> None:
    """``max_messages`` bounds what is kept verbatim: with the seed's settings summarizing
    (past 50) comes first, so however long the conversation, never more than 50 of the
    100 allowed messages are kept, and the window is always the latest 10."""
    from app.engine.memory import ConversationMemory

    memory = ConversationMemory(max_messages=100, summarize_after=50, window_size=10)
    for i in range(1_000):
        memory.add_message("user", f"m{i}")
        assert len(memory) <= 50
    assert [m.content for m in memory.get_messages()] == [f"m{i}" for i in range(990, 1_000)]
    assert memory.summary is not None
