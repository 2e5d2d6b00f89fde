"""Conversation and entity memory, and the ``MemoryStore`` port that keeps them.

``ConversationMemory`` keeps a conversation's messages: the last ``window_size`` are
what a node sees, older ones are folded into a running ``summary`` once there are more
than ``summarize_after``, and at most ``max_messages`` are kept verbatim. The summary is
made by a ``summarizer`` callable (an LLM call, typically); the default is an extractive
one (each folded message's role and first words), so memory works with no model at all.

What falls past ``max_messages`` is folded into the summary too when summarizing is on
(``summarize_after`` set, and larger than ``max_messages``): a conversation never loses
a message silently unless it asked for no summary (``summarize_after=None``), in which
case the oldest messages are dropped.

``EntityMemory`` merges facts per entity: a fact set again replaces the old value, the
others stay (as the service's entity rows merge them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

Summarizer = Callable[[str | None, list["Message"]], str]


@dataclass(slots=True)
class Message:
    role: str
    content: str
    timestamp: float = field(default_factory=time.time)
    metadata: dict[str, Any] = field(default_factory=dict)


def extractive_summary(previous: str | None, folded: list[Message], limit: int = 2000) -> str:
    """The default summarizer: the previous summary plus one short line per message."""
    lines = [previous] if previous else []
    lines += [f"{m.role}: {m.content[:80]}" for m in folded]
    text = "\n".join(lines)
    return text[-limit:]


class ConversationMemory:
    """A conversation's messages, its window and its summary."""

    def __init__(
        self,
        max_messages: int = 100,
        summarize_after: int | None = 50,
        window_size: int = 10,
        summarizer: Summarizer | None = None,
    ) -> None:
        if window_size < 1 or max_messages < window_size:
            raise ValueError("need 1 <= window_size <= max_messages")
        if summarize_after is not None and summarize_after < window_size:
            raise ValueError("summarize_after must be at least window_size")
        self.max_messages = max_messages
        self.summarize_after = summarize_after
        self.window_size = window_size
        self.summarizer = summarizer or extractive_summary
        self.messages: list[Message] = []
        self.summary: str | None = None

    def add_message(self, role: str, content: str, **metadata: Any) -> Message:
        message = Message(role, content, metadata=metadata)
        self.messages.append(message)
        self._compact()
        return message

    def _compact(self) -> None:
        if self.summarize_after is not None and len(self.messages) > self.summarize_after:
            keep = self.window_size
            folded, self.messages = self.messages[:-keep], self.messages[-keep:]
            self.summary = self.summarizer(self.summary, folded)
        if len(self.messages) > self.max_messages:
            dropped = self.messages[: -self.max_messages]
            self.messages = self.messages[-self.max_messages :]
            if self.summarize_after is not None:
                self.summary = self.summarizer(self.summary, dropped)

    def get_messages(self, window: int | None = None) -> list[Message]:
        """The last ``window`` (default ``window_size``) messages."""
        return self.messages[-(window or self.window_size) :]

    def window(self, window: int | None = None) -> dict[str, Any]:
        """What a node sees: the summary and the windowed messages, as plain data."""
        return {
            "summary": self.summary,
            "messages": [{"role": m.role, "content": m.content} for m in self.get_messages(window)],
        }

    def clear(self) -> None:
        self.messages.clear()
        self.summary = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_messages": self.max_messages,
            "summarize_after": self.summarize_after,
            "window_size": self.window_size,
            "summary": self.summary,
            "messages": [asdict(m) for m in self.messages],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConversationMemory:
        memory = cls(data["max_messages"], data["summarize_after"], data["window_size"])
        memory.summary = data.get("summary")
        memory.messages = [Message(**m) for m in data.get("messages", [])]
        return memory

    def __len__(self) -> int:
        return len(self.messages)


class EntityMemory:
    """Facts about named entities (a customer, an order), merged as they arrive."""

    def __init__(self) -> None:
        self.entities: dict[str, dict[str, Any]] = {}

    def update(self, entity: str, **facts: Any) -> dict[str, Any]:
        """Merge ``facts`` into what is known of ``entity``; a copy of what is known now."""
        known = self.entities.setdefault(entity, {})
        known.update(facts)
        return dict(known)

    def get(self, entity: str) -> dict[str, Any]:
        return dict(self.entities.get(entity, {}))

    def forget(self, entity: str) -> None:
        self.entities.pop(entity, None)

    def to_dict(self) -> dict[str, Any]:
        return {k: dict(v) for k, v in self.entities.items()}


class MemoryStore(Protocol):
    """Keeps conversations by id, shared by runs (a database or Redis in the service)."""

    async def load(self, conversation_id: str) -> ConversationMemory: ...

    async def save(self, conversation_id: str, memory: ConversationMemory) -> None: ...

    async def delete(self, conversation_id: str) -> None: ...


class InMemoryMemoryStore:
    """Conversations in a dict; new conversations use the given defaults."""

    def __init__(
        self, max_messages: int = 100, summarize_after: int | None = 50, window_size: int = 10
    ) -> None:
        self._defaults = (max_messages, summarize_after, window_size)
        self._conversations: dict[str, ConversationMemory] = {}

    async def load(self, conversation_id: str) -> ConversationMemory:
        memory = self._conversations.get(conversation_id)
        if memory is None:
            memory = self._conversations[conversation_id] = ConversationMemory(*self._defaults)
        return memory

    async def save(self, conversation_id: str, memory: ConversationMemory) -> None:
        self._conversations[conversation_id] = memory

    async def delete(self, conversation_id: str) -> None:
        self._conversations.pop(conversation_id, None)
