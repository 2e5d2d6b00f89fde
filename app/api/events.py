"""A run's events: server-sent events that replay the durable log and then tail live,
or the list as JSON.

The stream subscribes to the live bus *before* it reads the log, then yields events
strictly in sequence order: from the log, then from the live subscription, holding back
live events that run ahead of the log until the log catches up (so there is no gap and no
duplicate, whichever replica executes the run). With the Redis bus, events of a run
executing on another replica arrive live too and are yielded as soon as they come. When
the live subscription overflows (a slow client, a Redis outage) or no live event comes
(Redis is down, or absent and the run executes elsewhere), the log carries the stream,
polled every ``POLL`` seconds. ``id:`` is the event's sequence number, so a
reconnecting EventSource sends ``Last-Event-ID`` and resumes exactly after it.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from pydantic import WithJsonSchema
from starlette.responses import StreamingResponse

from app.api.body import CheckedRoute
from app.api.deps import Services, ServicesDep
from app.api.errors import ApiError, not_found, problems
from app.api.params import MAX_INT, SEQUENCE_PATTERN, EventCursor, RunIdPath, Sequence
from app.api.schemas import EventOut, EventPage
from app.engine import Event, EventType
from app.engine.events import TERMINAL_EVENTS
from app.observability import metrics
from app.store.models import EventRow
from app.store.repository import TERMINAL

router = APIRouter(tags=["events"], route_class=CheckedRoute, responses=problems(422, 500))

POLL = 0.25
TERMINAL_TYPES = frozenset(t.value for t in TERMINAL_EVENTS)


def _event_json(run_id: str, seq: int, type: str, node_id: str | None, data: Any, ts: float) -> str:
    return json.dumps(
        {
            "seq": seq,
            "type": type,
            "run_id": run_id,
            "node_id": node_id,
            "data": data,
            "timestamp": ts,
        },
        separators=(",", ":"),
        default=str,
    )


def _frame(seq: int, type: str, payload: str) -> bytes:
    return f"id: {seq}\nevent: {type}\ndata: {payload}\n\n".encode()


def _from_row(row: EventRow) -> tuple[int, str, bytes]:
    payload = _event_json(row.run_id, row.seq, row.type, row.node_id, row.data, row.created_at)
    return row.seq, row.type, _frame(row.seq, row.type, payload)


def _from_event(event: Event) -> tuple[int, str, bytes]:
    payload = _event_json(
        event.run_id, event.seq, event.type.value, event.node_id, event.data, event.timestamp
    )
    return event.seq, event.type.value, _frame(event.seq, event.type.value, payload)


def _in_order(ahead: dict[int, tuple[int, str, bytes]], last: int) -> tuple[bytes, int, bool]:
    """Take the live events that follow ``last`` without a hole out of ``ahead``: their
    frames joined (one write), the new last sequence, and whether the terminal one was
    among them."""
    frames: list[bytes] = []
    while last + 1 in ahead:
        seq, type_, frame = ahead.pop(last + 1)
        frames.append(frame)
        last = seq
        if type_ in TERMINAL_TYPES:
            return b"".join(frames), last, True
    return b"".join(frames), last, False


async def stream_events(
    services: Services, run_id: str, after: int, request: Request | None = None
) -> AsyncIterator[bytes]:
    """SSE frames of ``run_id`` after sequence ``after``, ending after the terminal one."""
    subscription = await services.bus.open(run_id)
    metrics.SSE_CONNECTIONS.inc()
    heartbeat = services.settings.sse_heartbeat_seconds
    loop = asyncio.get_running_loop()
    last = after
    ahead: dict[int, tuple[int, str, bytes]] = {}  # live events past the log's end
    idle_since = loop.time()
    try:
        yield b": stream open\n\n"
        read_log = True  # the log is read at the start, on a gap, on overflow, when idle
        while True:
            progressed = False
            if read_log:
                read_log = False
                frames: list[bytes] = []  # one write for what is ready, not one per event
                ended = False
                for row in await services.store.events_after(run_id, last):
                    seq, type_, frame = _from_row(row)
                    if seq != last + 1:
                        break  # a hole the writer has not filled yet: wait for it
                    frames.append(frame)
                    last = seq
                    if type_ in TERMINAL_TYPES:
                        ended = True
                        break
                if frames:
                    progressed = True
                    yield b"".join(frames)
                if ended:
                    return
                if not progressed and last == after:
                    run = await services.store.get_run(run_id)
                    if run is None:
                        return
                    if (
                        run.status in TERMINAL
                        and await services.store.last_event_seq(run_id) <= last
                    ):
                        return  # nothing more will come (a run cancelled while queued)
            ready, last, ended = _in_order(ahead, last)
            if ready:
                progressed = True
                yield ready
            if ended:
                return
            # wait for live events; without any for a while, poll the log
            event = await subscription.get(POLL)
            if event is None:
                read_log = True
            while event is not None:
                if event.seq > last:
                    ahead[event.seq] = _from_event(event)
                event = subscription.get_nowait()
            ready, last, ended = _in_order(ahead, last)
            if ready:
                progressed = True
                yield ready
            if ended:
                return
            if ahead or subscription.overflowed:
                read_log = True  # live events ran ahead of what we have: fill from the log
                subscription.overflowed = False
            if progressed:
                idle_since = loop.time()
            elif loop.time() - idle_since >= heartbeat:
                yield b": keepalive\n\n"
                idle_since = loop.time()
            if request is not None and await request.is_disconnected():
                return
    finally:
        subscription.close()
        metrics.SSE_CONNECTIONS.dec()


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
    run = await services.store.get_run(run_id)
    if run is None:
        raise not_found(f"no run {run_id!r}")
    wants_json = (
        accept is not None and "application/json" in accept and ("text/event-stream" not in accept)
    )
    if wants_json:
        rows = await services.store.events_after(run_id, start, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
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
                for r in rows
            ],
            next_cursor=str(rows[-1].seq) if more else None,
        )
    return StreamingResponse(
        stream_events(services, run_id, start, request),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
