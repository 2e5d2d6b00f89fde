"""The store's conversation memory: conversations (settings and a running summary),
their messages by sequence, and the facts known about their entities, each namespace's
own (the namespace is a column of every table).

Every write takes the conversation's row first (``FOR UPDATE`` on Postgres; SQLite's
writes are serial), so two replicas appending to one conversation never interleave
their trims. A message's ``seq`` comes from the conversation's ``last_seq``, which only
grows: a message trimmed or folded into the summary never gives its number to another,
and a paging cursor stays valid.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.store.base import StoreBase, _rowcount
from app.store.db import insert_ignore
from app.store.models import ConversationEntityRow, ConversationMessageRow, ConversationRow
from app.store.records import (
    ConversationSettings,
    NewMessage,
    StoredConversation,
    StoredConversationState,
    StoredEntity,
    StoredMessage,
)


class ConversationRows(StoreBase):
    """Load, append (bounded), save, summarise, set entities, page and erase
    conversations."""

    async def get_conversation(
        self, namespace: str, conversation_id: str
    ) -> StoredConversation | None:
        async with self._read() as session:
            row = await session.get(ConversationRow, (namespace, conversation_id))
            return None if row is None else StoredConversation.of(row)

    async def load_conversation(
        self, namespace: str, conversation_id: str, last: int | None = None
    ) -> StoredConversationState | None:
        """The conversation, its last ``last`` messages (default: every kept one), oldest
        first, and its entities by name; None when there is no such conversation."""
        async with self._read() as session:
            row = await session.get(ConversationRow, (namespace, conversation_id))
            if row is None:
                return None
            conversation = StoredConversation.of(row)
            query = (
                select(ConversationMessageRow)
                .where(
                    ConversationMessageRow.namespace == namespace,
                    ConversationMessageRow.conversation_id == conversation_id,
                )
                .order_by(ConversationMessageRow.seq.desc())
            )
            messages = []
            if last is None or last > 0:
                if last is not None:
                    query = query.limit(last)
                messages = [StoredMessage.of(m) for m in (await session.execute(query)).scalars()]
            entities = await _entities(session, namespace, conversation_id)
        messages.reverse()
        return StoredConversationState(conversation, messages, entities)

    async def append_messages(
        self,
        namespace: str,
        conversation_id: str,
        settings: ConversationSettings,
        messages: Sequence[NewMessage],
    ) -> list[StoredMessage]:
        """Append ``messages`` (creating the conversation with ``settings`` if new), then
        trim what is beyond its ``max_messages``, in one transaction; the appended
        messages with their sequences."""
        async with self._write() as session:
            row = await self._conversation_for_update(session, namespace, conversation_id, settings)
            appended = await _append(session, row, messages)
            await _trim(session, row)
            await session.commit()
        return appended

    async def save_conversation(
        self,
        namespace: str,
        conversation_id: str,
        settings: ConversationSettings,
        summary: str | None,
        messages: Sequence[NewMessage],
    ) -> StoredConversation:
        """Make the conversation hold ``settings``, ``summary`` and exactly ``messages``
        (creating it if new), in one transaction: the stored messages that ``messages``
        begins with (the newest stored ones, unchanged) keep their sequences, every
        older stored message is deleted (trimmed, folded into the summary or cleared)
        and the rest of ``messages`` is appended. A message appended meanwhile by
        another writer that ``messages`` does not hold is replaced: the last save wins."""
        async with self._write() as session:
            row = await self._conversation_for_update(session, namespace, conversation_id, settings)
            row.max_messages = settings.max_messages
            row.summarize_after = settings.summarize_after
            row.window_size = settings.window_size
            row.summary = summary
            where = (
                ConversationMessageRow.namespace == namespace,
                ConversationMessageRow.conversation_id == conversation_id,
            )
            stored = [
                StoredMessage.of(m)
                for m in (
                    await session.execute(
                        select(ConversationMessageRow)
                        .where(*where)
                        .order_by(ConversationMessageRow.seq)
                    )
                ).scalars()
            ]
            kept = _overlap(stored, messages)
            if len(stored) > kept:
                # everything stored before the kept run of messages
                last_gone = stored[len(stored) - kept - 1].seq
                await session.execute(
                    delete(ConversationMessageRow).where(
                        *where, ConversationMessageRow.seq <= last_gone
                    )
                )
            await _append(session, row, messages[kept:])
            row.updated_at = time.time()
            saved = StoredConversation.of(row)
            await session.commit()
        return saved

    async def set_conversation_summary(
        self, namespace: str, conversation_id: str, summary: str | None
    ) -> bool:
        """Replace the running summary (False: no such conversation)."""
        async with self._write() as session:
            result = await session.execute(
                update(ConversationRow)
                .where(
                    ConversationRow.namespace == namespace, ConversationRow.id == conversation_id
                )
                .values(summary=summary, updated_at=time.time())
            )
            await session.commit()
        return bool(_rowcount(result))

    async def merge_entity(
        self,
        namespace: str,
        conversation_id: str,
        settings: ConversationSettings,
        name: str,
        facts: dict[str, Any],
    ) -> StoredEntity:
        """Merge ``facts`` into what is known of ``name`` (a fact set again is replaced,
        the others stay), creating the conversation with ``settings`` if new."""
        async with self._write() as session:
            await self._conversation_for_update(session, namespace, conversation_id, settings)
            now = time.time()
            entity = await session.get(
                ConversationEntityRow, (namespace, conversation_id, name), with_for_update=True
            )
            if entity is None:
                entity = ConversationEntityRow(
                    namespace=namespace,
                    conversation_id=conversation_id,
                    name=name,
                    facts=dict(facts),
                    updated_at=now,
                )
                session.add(entity)
            else:
                entity.facts = {**entity.facts, **facts}
                entity.updated_at = now
            await session.flush()
            merged = StoredEntity.of(entity)
            await session.commit()
        return merged

    async def forget_entity(self, namespace: str, conversation_id: str, name: str) -> bool:
        async with self._write() as session:
            result = await session.execute(
                delete(ConversationEntityRow).where(
                    ConversationEntityRow.namespace == namespace,
                    ConversationEntityRow.conversation_id == conversation_id,
                    ConversationEntityRow.name == name,
                )
            )
            await session.commit()
        return bool(_rowcount(result))

    async def conversation_messages(
        self, namespace: str, conversation_id: str, after: int, limit: int
    ) -> list[StoredMessage]:
        """The kept messages with a sequence above ``after``, oldest first, ``limit`` at
        most."""
        query = (
            select(ConversationMessageRow)
            .where(
                ConversationMessageRow.namespace == namespace,
                ConversationMessageRow.conversation_id == conversation_id,
                ConversationMessageRow.seq > after,
            )
            .order_by(ConversationMessageRow.seq)
            .limit(limit)
        )
        async with self._read() as session:
            return [StoredMessage.of(m) for m in (await session.execute(query)).scalars()]

    async def delete_conversation(self, namespace: str, conversation_id: str) -> bool:
        """Erase the conversation: its messages, summary and entities (False: there was
        none)."""
        async with self._write() as session:
            await session.execute(
                delete(ConversationMessageRow).where(
                    ConversationMessageRow.namespace == namespace,
                    ConversationMessageRow.conversation_id == conversation_id,
                )
            )
            await session.execute(
                delete(ConversationEntityRow).where(
                    ConversationEntityRow.namespace == namespace,
                    ConversationEntityRow.conversation_id == conversation_id,
                )
            )
            result = await session.execute(
                delete(ConversationRow).where(
                    ConversationRow.namespace == namespace, ConversationRow.id == conversation_id
                )
            )
            await session.commit()
        return bool(_rowcount(result))

    async def _conversation_for_update(
        self,
        session: AsyncSession,
        namespace: str,
        conversation_id: str,
        settings: ConversationSettings,
    ) -> ConversationRow:
        """The conversation's row, locked for this transaction (created if new)."""
        now = time.time()
        await session.execute(
            insert_ignore(self.engine, ConversationRow.__table__)
            .values(
                namespace=namespace,
                id=conversation_id,
                max_messages=settings.max_messages,
                summarize_after=settings.summarize_after,
                window_size=settings.window_size,
                summary=None,
                last_seq=0,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing()
        )
        row = await session.get(
            ConversationRow,
            (namespace, conversation_id),
            with_for_update=True,
            populate_existing=True,
        )
        assert row is not None  # inserted above, or there already
        return row


async def _append(
    session: AsyncSession, row: ConversationRow, messages: Sequence[NewMessage]
) -> list[StoredMessage]:
    appended = []
    for message in messages:
        row.last_seq += 1
        appended.append(
            StoredMessage(
                row.namespace,
                row.id,
                row.last_seq,
                message.role,
                message.content,
                dict(message.meta),
                message.created_at,
            )
        )
    if appended:
        await session.execute(
            insert(ConversationMessageRow),
            [
                {
                    "namespace": m.namespace,
                    "conversation_id": m.conversation_id,
                    "seq": m.seq,
                    "role": m.role,
                    "content": m.content,
                    "meta": m.meta,
                    "created_at": m.created_at,
                }
                for m in appended
            ],
        )
        row.updated_at = time.time()
    return appended


def _overlap(stored: Sequence[StoredMessage], messages: Sequence[NewMessage]) -> int:
    """The length of the longest run of the newest ``stored`` messages that ``messages``
    begins with."""
    for size in range(min(len(stored), len(messages)), 0, -1):
        tail = stored[len(stored) - size :]
        if all(_same(old, new) for old, new in zip(tail, messages, strict=False)):
            return size
    return 0


def _same(stored: StoredMessage, message: NewMessage) -> bool:
    return (stored.role, stored.content, stored.meta, stored.created_at) == (
        message.role,
        message.content,
        message.meta,
        message.created_at,
    )


async def _trim(session: AsyncSession, row: ConversationRow) -> None:
    """Delete the conversation's messages beyond its newest ``max_messages``."""
    where = (
        ConversationMessageRow.namespace == row.namespace,
        ConversationMessageRow.conversation_id == row.id,
    )
    newest_gone = (
        await session.execute(
            select(ConversationMessageRow.seq)
            .where(*where)
            .order_by(ConversationMessageRow.seq.desc())
            .offset(row.max_messages)
            .limit(1)
        )
    ).scalar_one_or_none()
    if newest_gone is not None:
        await session.execute(
            delete(ConversationMessageRow).where(*where, ConversationMessageRow.seq <= newest_gone)
        )


async def _entities(
    session: AsyncSession, namespace: str, conversation_id: str
) -> list[StoredEntity]:
    query = (
        select(ConversationEntityRow)
        .where(
            ConversationEntityRow.namespace == namespace,
            ConversationEntityRow.conversation_id == conversation_id,
        )
        .order_by(ConversationEntityRow.name)
    )
    return [StoredEntity.of(e) for e in (await session.execute(query)).scalars()]
