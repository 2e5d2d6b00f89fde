"""Conversation memory in the database: the engine's ``MemoryStore`` port for runs
(:class:`DurableMemoryStore`), and the conversations as the API shows and erases them
(:class:`ConversationService`).

A conversation belongs to a namespace (a column, not a key prefix): a run reads and
writes its own namespace's conversations only, and a caller sees its own namespace's.
Every replica reads the same rows, so a restarted service and its other replicas hold
the same conversations.

``DurableMemoryStore`` maps a ``ConversationMemory`` to its rows: its settings
(``max_messages``, ``summarize_after``, ``window_size``) and its running ``summary`` on
the conversation, each kept message (role, content, metadata, timestamp) as a row by
sequence. Loading gives a fresh ``ConversationMemory`` (the default, extractive
summarizer; a callable is not stored); saving makes the rows hold exactly what the memory
holds, keeping the rows of the messages it still has (``Store.save_conversation``).
Between a run's load and its save another run's append is not merged: the last save wins,
as with any load/save port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.engine import ConversationMemory
from app.runtime.access import Caller, Role
from app.runtime.errors import NotFound
from app.store.records import (
    ConversationSettings,
    NewMessage,
    StoredConversation,
    StoredEntity,
    StoredMessage,
)
from app.store.repository import Store

__all__ = [
    "MAX_CONVERSATION_ID",
    "Conversation",
    "ConversationService",
    "DurableMemoryStore",
    "MessagePage",
]


#: the longest conversation id the store keeps
MAX_CONVERSATION_ID = 200


class DurableMemoryStore:
    """One namespace's conversations in the database (the engine's ``MemoryStore``);
    a conversation not stored yet loads empty with the given defaults."""

    __slots__ = ("_defaults", "_namespace", "_store")

    def __init__(
        self,
        store: Store,
        namespace: str,
        max_messages: int = 100,
        summarize_after: int | None = 50,
        window_size: int = 10,
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._defaults = (max_messages, summarize_after, window_size)

    async def load(self, conversation_id: str) -> ConversationMemory:
        _check_id(conversation_id)
        state = await self._store.load_conversation(self._namespace, conversation_id)
        if state is None:
            return ConversationMemory(*self._defaults)
        row = state.conversation
        return ConversationMemory.from_dict(
            {
                "max_messages": row.max_messages,
                "summarize_after": row.summarize_after,
                "window_size": row.window_size,
                "summary": row.summary,
                "messages": [_message(m) for m in state.messages],
            }
        )

    async def save(self, conversation_id: str, memory: ConversationMemory) -> None:
        _check_id(conversation_id)
        await self._store.save_conversation(
            self._namespace,
            conversation_id,
            _settings(memory),
            memory.summary,
            [NewMessage(m.role, m.content, dict(m.metadata), m.timestamp) for m in memory.messages],
        )

    async def delete(self, conversation_id: str) -> None:
        await self._store.delete_conversation(self._namespace, conversation_id)

    async def entities(self, conversation_id: str) -> dict[str, dict[str, Any]]:
        """name -> facts known in the conversation (an ``EntityMemory``'s ``to_dict``)."""
        state = await self._store.load_conversation(self._namespace, conversation_id, last=0)
        return {} if state is None else {e.name: dict(e.facts) for e in state.entities}

    async def remember(self, conversation_id: str, entity: str, **facts: Any) -> dict[str, Any]:
        """Merge ``facts`` into what the conversation knows of ``entity`` (as
        ``EntityMemory.update``); what is known of it now."""
        settings = ConversationSettings(*self._defaults)
        merged = await self._store.merge_entity(
            self._namespace, conversation_id, settings, entity, facts
        )
        return dict(merged.facts)


def _check_id(conversation_id: str) -> None:
    if not 0 < len(conversation_id) <= MAX_CONVERSATION_ID or "\x00" in conversation_id:
        raise ValueError(
            f"a conversation id is 1 to {MAX_CONVERSATION_ID} characters, without NUL "
            f"(got {len(conversation_id)} characters)"
        )


def _settings(memory: ConversationMemory) -> ConversationSettings:
    return ConversationSettings(memory.max_messages, memory.summarize_after, memory.window_size)


def _message(stored: StoredMessage) -> dict[str, Any]:
    """A message as ``ConversationMemory.from_dict`` takes it."""
    return {
        "role": stored.role,
        "content": stored.content,
        "timestamp": stored.created_at,
        "metadata": dict(stored.meta),
    }


@dataclass(frozen=True, slots=True)
class MessagePage:
    """Kept messages oldest first, and the cursor of the next page (None: no more)."""

    items: list[StoredMessage]
    next_cursor: int | None


@dataclass(frozen=True, slots=True)
class Conversation:
    """A conversation as the API shows it: its settings, summary, entities and a page
    of its messages."""

    conversation: StoredConversation
    entities: list[StoredEntity]
    messages: MessagePage


class ConversationService:
    """Read (readers) and erase (writers) the conversations of the caller's namespace;
    another namespace's conversation is :class:`NotFound`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(
        self, caller: Caller, conversation_id: str, after: int = 0, limit: int = 50
    ) -> Conversation:
        """The conversation with its messages after sequence ``after``, ``limit`` at a
        time."""
        state = await self.store.load_conversation(caller.namespace, conversation_id, last=0)
        if state is None:
            raise NotFound(f"no conversation {conversation_id!r}")
        caller.need(Role.READER)
        rows = await self.store.conversation_messages(
            caller.namespace, conversation_id, after, limit + 1
        )
        more = len(rows) > limit
        rows = rows[:limit]
        page = MessagePage(rows, rows[-1].seq if more else None)
        return Conversation(state.conversation, state.entities, page)

    async def delete(self, caller: Caller, conversation_id: str) -> None:
        """Erase the conversation: its messages, summary and entities."""
        if await self.store.get_conversation(caller.namespace, conversation_id) is None:
            raise NotFound(f"no conversation {conversation_id!r}")
        caller.need(Role.WRITER)
        if not await self.store.delete_conversation(caller.namespace, conversation_id):
            raise NotFound(f"no conversation {conversation_id!r}")
