"""Conversations of the caller's namespace, as runs left them in memory: read one
(its summary, its entities and its messages, paged) and erase one."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from pydantic import BaseModel, Field

from app.api.body import CheckedRoute
from app.api.deps import CallerDep, ServicesDep
from app.api.errors import problems
from app.api.params import SEQUENCE_PATTERN, Limit

router = APIRouter(
    prefix="/v1/conversations",
    tags=["conversations"],
    route_class=CheckedRoute,
    responses=problems(401, 403, 404, 422, 500),
)

ConversationIdPath = Annotated[
    str,
    Path(
        pattern="^[^\\u0000]{1,200}$",
        description="A conversation id, as the workflow's `memory` node named it (the run "
        "id when it named none).",
    ),
]
MessageCursor = Annotated[
    str | None,
    Query(
        pattern=SEQUENCE_PATTERN,
        description="`messages.next_cursor` of the previous page (a message sequence).",
    ),
]


class MessageOut(BaseModel):
    seq: int = Field(description="The message's place in the conversation (never reused).")
    role: str
    content: Any
    metadata: dict[str, Any]
    created_at: float


class MessagePageOut(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None


class ConversationOut(BaseModel):
    """A conversation: its settings, running summary, entities and a page of the
    messages it keeps verbatim, oldest first."""

    id: str
    max_messages: int
    summarize_after: int | None
    window_size: int
    summary: str | None = Field(description="What older messages were folded into.")
    entities: dict[str, dict[str, Any]] = Field(description="Facts known per entity.")
    messages: MessagePageOut
    created_at: float
    updated_at: float


@router.get("/{conversation_id}", response_model=ConversationOut)
async def get_conversation(
    conversation_id: ConversationIdPath,
    services: ServicesDep,
    caller: CallerDep,
    cursor: MessageCursor = None,
    limit: Limit = 50,
) -> ConversationOut:
    """A conversation with a page of its messages (``messages.next_cursor`` for the next)."""
    found = await services.conversations.get(
        caller, conversation_id, int(cursor) if cursor else 0, limit
    )
    row, page = found.conversation, found.messages
    return ConversationOut(
        id=row.id,
        max_messages=row.max_messages,
        summarize_after=row.summarize_after,
        window_size=row.window_size,
        summary=row.summary,
        entities={e.name: e.facts for e in found.entities},
        messages=MessagePageOut(
            items=[
                MessageOut(
                    seq=m.seq,
                    role=m.role,
                    content=m.content,
                    metadata=m.meta,
                    created_at=m.created_at,
                )
                for m in page.items
            ],
            next_cursor=None if page.next_cursor is None else str(page.next_cursor),
        ),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


@router.delete("/{conversation_id}", status_code=204)
async def delete_conversation(
    conversation_id: ConversationIdPath, services: ServicesDep, caller: CallerDep
) -> Response:
    """Forget a conversation: its messages, summary and entities are erased."""
    await services.conversations.delete(caller, conversation_id)
    return Response(status_code=204)
