"""A run's events: server-sent events (the durable log replayed, then the live feed:
``app.runtime.streams``), or the logged events as JSON pages.

``id:`` is the event's sequence number, so a reconnecting EventSource sends
``Last-Event-ID`` and resumes exactly after it.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import WithJsonSchema
from starlette.responses import StreamingResponse

from app.api.body import CheckedRoute
from app.api.deps import CallerDep, ServicesDep
from app.api.errors import ApiError, problems
from app.api.params import MAX_INT, SEQUENCE_PATTERN, EventCursor, RunIdPath, Sequence
from app.api.schemas import EventOut, EventPage
from app.engine import EventType

router = APIRouter(tags=["events"], route_class=CheckedRoute, responses=problems(422, 500))


class _ServerSentEvents:
    """The stream's framing on the wire: ``id:`` the sequence number, ``event:`` the
    type, ``data:`` the event as JSON; comments keep an idle connection open."""

    def event(self, seq: int, type: str, payload: str) -> bytes:
        return f"id: {seq}\nevent: {type}\ndata: {payload}\n\n".encode()

    def comment(self, text: str) -> bytes:
        return f": {text}\n\n".encode()


SSE = _ServerSentEvents()


#: one event of the stream (OpenAPI 3.1: the schema of a text/event-stream is per event)
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"type": "string", "enum": sorted(t.value for t in EventType)},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": EventOut.model_json_schema(),
        },
    },
}


def _sequence(value: str, what: str) -> int:
    """An event sequence number given as text: digits, within the column's range."""
    text = value.strip()
    if not re.fullmatch(SEQUENCE_PATTERN, text):
        raise ApiError(
            400,
            "bad-event-id",
            "Bad event id",
            f"{what} must be an event sequence number (0 to {MAX_INT}), not {value[:40]!r}",
        )
    return int(text)


@router.get(
    "/v1/runs/{run_id}/events",
    response_model=EventPage,
    responses={
        200: {
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
            "description": "Server-sent events (the default), or with "
            "`Accept: application/json` one page of the logged events.",
        },
        **problems(400, 404),
    },
)
async def events(
    run_id: RunIdPath,
    request: Request,
    services: ServicesDep,
    caller: CallerDep,
    accept: Annotated[str | None, Header()] = None,
    last_event_id: Annotated[
        str | None,
        Header(
            description="Resume after this sequence number (what EventSource sends); "
            "anything else is a 400."
        ),
        # documented, and checked below: a malformed one is a 400 (bad-event-id)
        WithJsonSchema({"type": "string", "pattern": SEQUENCE_PATTERN}),
    ] = None,
    after: Sequence = None,
    last_event_id_query: Annotated[
        int | None,
        Query(alias="lastEventId", ge=0, le=MAX_INT, description="Last-Event-ID as a query."),
    ] = None,
    cursor: EventCursor = None,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Events per JSON page.")] = 1000,
) -> Any:
    """Server-sent events (``Accept: text/event-stream``, the default) or the logged events
    as JSON pages (``Accept: application/json``: ``{items, next_cursor}``)."""
    start = after or last_event_id_query or 0
    if cursor is not None:
        start = int(cursor)
    if last_event_id is not None:
        start = _sequence(last_event_id, "Last-Event-ID")
    wants_json = (
        accept is not None and "application/json" in accept and ("text/event-stream" not in accept)
    )
    if wants_json:
        page = await services.runs.events(caller, run_id, start, limit)
        return EventPage(
            items=[
                EventOut(
                    seq=r.seq,
                    type=r.type,
                    run_id=r.run_id,
                    node_id=r.node_id,
                    data=r.data,
                    timestamp=r.created_at,
                )
                for r in page.items
            ],
            next_cursor=page.next_cursor,
        )
    frames = await services.streams.open(caller, run_id, start, SSE, request.is_disconnected)
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
