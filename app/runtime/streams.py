"""A run's events as one stream: the durable log replayed, then the live feed.

The stream subscribes to the live bus *before* it reads the log, then yields events
strictly in sequence order: from the log, then from the live subscription, holding back
live events that run ahead of the log until the log catches up (so there is no gap and no
duplicate, whichever replica executes the run). With the Redis bus, events of a run
executing on another replica arrive live too and are yielded as soon as they come. When
the live subscription overflows (a slow client, a Redis outage) or no live event comes
(Redis is down, or absent and the run executes elsewhere), the log carries the stream,
polled every ``POLL`` seconds. Each event carries its sequence number, so a reconnecting
client resumes exactly after the last one it got.

Tokens: live, each ``node.token`` event is one delta with its own sequence number; in
the log, the journal keeps a run of them as one chunk event that spans
``data["first_seq"]..seq`` (see ``runtime/journal.py``). A logged event continues the
stream when its span starts at or before ``last + 1``; a chunk the client has partly
seen (it resumes mid-answer) is yielded cut to the tokens after ``last``, as one
``node.token`` event whose ``token`` is their text, ``first_seq`` the first of them and
``seq`` the chunk's last. Concatenating ``data.token`` in order thus gives the same
text live and replayed, whatever the client's ``Last-Event-ID``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from app.bus import EventBus
from app.config import Settings
from app.engine import TERMINAL_EVENTS, Event
from app.observability import metrics
from app.runtime.access import Caller, Role
from app.runtime.errors import NotFound
from app.store.lifecycle import TERMINAL
from app.store.records import StoredEvent
from app.store.repository import Store


class Framing(Protocol):
    """How a stream's events and comments become bytes on the wire."""

    def event(self, seq: int, type: str, payload: str) -> bytes: ...

    def comment(self, text: str) -> bytes: ...


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


TOKEN = "node.token"


def _first_seq(row: StoredEvent) -> int:
    """The first sequence number ``row`` spans (a token chunk's first token)."""
    if row.type == TOKEN and isinstance(row.data, dict):
        first = row.data.get("first_seq")
        if isinstance(first, int):
            return first
    return row.seq


def _from_row(row: StoredEvent, framing: Framing, last: int) -> tuple[int, str, bytes]:
    """The frame of logged event ``row`` for a client that has everything up to
    ``last`` (a token chunk is cut to the tokens after it)."""
    data = row.data
    if row.type == TOKEN and isinstance(data, dict) and "sizes" in data:
        first: int = data["first_seq"]
        sizes: list[int] = data["sizes"]
        text: str = data["token"]
        skip = max(0, last + 1 - first)
        data = {k: v for k, v in data.items() if k != "sizes"}
        if skip:
            data["token"] = text[sum(sizes[:skip]) :]
            data["first_seq"] = first + skip
        if data["first_seq"] == row.seq:
            del data["first_seq"]  # one token left: an event like a live one
    payload = _event_json(row.run_id, row.seq, row.type, row.node_id, data, row.created_at)
    return row.seq, row.type, framing.event(row.seq, row.type, payload)


def _from_event(event: Event, framing: Framing) -> tuple[int, str, bytes]:
    payload = _event_json(
        event.run_id, event.seq, event.type.value, event.node_id, event.data, event.timestamp
    )
    return event.seq, event.type.value, framing.event(event.seq, event.type.value, payload)


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


class EventStreams:
    """The replay-then-live event stream of a run, in whatever framing the caller
    renders (the API: server-sent events)."""

    def __init__(self, settings: Settings, store: Store, bus: EventBus) -> None:
        self.settings = settings
        self.store = store
        self.bus = bus

    async def open(
        self,
        caller: Caller,
        run_id: str,
        after: int,
        framing: Framing,
        disconnected: Callable[[], Awaitable[bool]] | None = None,
    ) -> AsyncIterator[bytes]:
        """The frames of ``run_id``'s events after sequence ``after``, ending after the
        terminal one (or when ``disconnected()`` says the client left). NotFound, before
        anything is streamed, for a run the caller's namespace does not hold."""
        run = await self.store.get_run(run_id)
        if run is None or not caller.sees(run.namespace):
            raise NotFound(f"no run {run_id!r}")
        caller.need(Role.READER)
        return _stream(self, run_id, after, framing, disconnected)


async def _stream(
    streams: EventStreams,
    run_id: str,
    after: int,
    framing: Framing,
    disconnected: Callable[[], Awaitable[bool]] | None,
) -> AsyncIterator[bytes]:
    store = streams.store
    subscription = await streams.bus.open(run_id)
    metrics.SSE_CONNECTIONS.inc()
    heartbeat = streams.settings.sse_heartbeat_seconds
    loop = asyncio.get_running_loop()
    last = after
    ahead: dict[int, tuple[int, str, bytes]] = {}  # live events past the log's end
    idle_since = loop.time()
    try:
        yield framing.comment("stream open")
        read_log = True  # the log is read at the start, on a gap, on overflow, when idle
        while True:
            progressed = False
            if read_log:
                read_log = False
                frames: list[bytes] = []  # one write for what is ready, not one per event
                ended = False
                for row in await store.events_after(run_id, last):
                    if _first_seq(row) > last + 1:
                        break  # a hole the writer has not filled yet: wait for it
                    seq, type_, frame = _from_row(row, framing, last)
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
                    run = await store.get_run(run_id)
                    if run is None:
                        return
                    if run.status in TERMINAL and await store.last_event_seq(run_id) <= last:
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
                    ahead[event.seq] = _from_event(event, framing)
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
                yield framing.comment("keepalive")
                idle_since = loop.time()
            if disconnected is not None and await disconnected():
                return
    finally:
        subscription.close()
        metrics.SSE_CONNECTIONS.dec()
