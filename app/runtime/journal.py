"""``RunJournal``: where a service run's checkpoints and events go.

It is both the engine's ``CheckpointStore`` and an ``EventSink`` for one run. Events
wait in a pending list; checkpoint records are committed in ONE transaction together
with the node results they carry and the pending events up to their event sequence (a
node's result, its checkpoint and its events are never split). Events reach the live bus
only once they are committed, so what a live client sees is exactly what the log will
replay, even if the replica dies a moment later. Every commit is fenced on the run's
lease; once the lease is lost the journal goes quiet and asks for the run to be stopped.

Group commit: records of a *running* run wait up to ``commit_window`` seconds for the
next ones, so a run of quick nodes commits its progress and its outcome in one
transaction (the window is also how long a live client may wait for a node's
``node.completed``: throughput against latency, 20 ms by default); a
record that changes what the run is (waiting, finished) commits at once with everything
before it. A run whose every started node sleeps in a ``delay`` past the end of the
window commits at once too: nothing can join the group before the window closes, and
closing it then would put the commit where a node's sleep ends — as with 10 ms delays
and the 20 ms window, where every commit held up the nodes it ran into.
Events that no checkpoint picks up (a node that started and is still running) are
committed within ``flush_seconds`` of their emission — by the next checkpoint commit
if one comes first, else by the flusher. What was not committed when the replica dies
is done again by the replica that takes the run over: a node whose result committed
never runs again; one whose result had not may (at-least-once, as before).

Tokens: the live bus gets every ``node.token`` event as the engine made it (one per
delta, each with its own sequence number), but the log does not: at each commit, a run
of token events of one node and one attempt with consecutive sequence numbers becomes
ONE logged event (``logged_events``): type ``node.token``, the sequence number of the
run's last token, and ``data = {"token": the tokens' text joined, "attempt": n,
"first_seq": the first token's sequence number, "sizes": each token's length}``. The
log then skips the sequence numbers the chunk covers, which is how a reader tells a
chunk from a hole: a logged event's span is ``first_seq..seq`` (``seq..seq`` for every
other event), and the spans of a run's log tile 1, 2, 3... without gaps or overlaps.
The event stream (``runtime/streams.py``) replays a chunk as one ``node.token`` event
cut to what follows the client's last sequence number (``sizes`` says where each token
ends), so a replay's text is exactly the live text, a 2,000-token answer costs a few
rows (one per commit, 10 a second at the default ``flush_seconds``), and resuming
mid-answer yields the rest without a duplicate or a gap.

Secrets: ``masking`` holds the values of the secrets the run resolved so far (its
``RunSecrets``); every event is masked as it arrives and every checkpoint record before
it is committed, so neither the log, the checkpoints, the node results, the run's
outcome nor the live bus ever hold a value. A run that resolved none pays one truth test
per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from app.bus import EventBus
from app.engine import CheckpointRecord, CheckpointStore, Event, EventType, SecretMask
from app.observability import metrics
from app.store.errors import LeaseLost
from app.store.lifecycle import TERMINAL
from app.store.repository import Lease, Store

logger = logging.getLogger("flowcore.runtime")

#: events committed in one transaction at most by the flusher
FLUSH_BATCH = 1000


class RunJournal(CheckpointStore):
    """Durable checkpoints and events of one run, fenced on its lease."""

    def __init__(
        self,
        store: Store,
        lease: Lease,
        bus: EventBus,
        *,
        flush_seconds: float = 0.1,
        commit_window: float = 0.02,
        on_lease_lost: Callable[[], None] | None = None,
        masking: SecretMask | None = None,
    ) -> None:
        self.store = store
        self.lease = lease
        self.bus = bus
        self.flush_seconds = flush_seconds
        self.commit_window = commit_window
        self.on_lease_lost = on_lease_lost
        #: the run's secret values, masked in everything written or published
        self.masking = masking
        self.pending: list[Event] = []
        self.lost = False
        #: the run's outcome was committed with its final checkpoint
        self.finished = False
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None
        self._flushing = False
        self._closing = False
        #: checkpoint commits in flight or waiting for the lock, and "there are none"
        self._appending = 0
        self._appended = asyncio.Event()
        #: "running" records not committed yet (at most ``commit_window`` old); a
        #: commit of them that failed turns deferring off (the engine then learns why)
        self._deferred: list[CheckpointRecord] = []
        self._deferred_since = 0.0
        self._defer = commit_window > 0
        #: the flusher sleeps on ``_work`` while there is nothing to commit (``_idle``)
        self._idle = False
        self._work = asyncio.Event()
        #: top-level nodes started and not ended (from the events), and what the last
        #: record says they wait on (see ``_asleep_past_window``)
        self._running: set[str] = set()
        self._pending: dict[str, dict[str, Any]] = {}

    # -- EventSink

    def publish(self, event: Event) -> None:
        if self.lost:
            return
        if self.masking:
            event = self.masking.event(event)
        self.pending.append(event)
        node = event.node_id
        if node is not None and "/" not in node:
            if event.type is EventType.NODE_STARTED:
                self._running.add(node)
            elif event.type in _NODE_ENDED:
                self._running.discard(node)
        if self._idle:
            self._idle = False
            self._work.set()

    # -- CheckpointStore

    async def append(self, records: list[CheckpointRecord]) -> None:
        if self.lost or not records:
            return
        if self.masking:
            records = [self.masking.record(record) for record in records]
        if self._defer and self._flusher is not None and records[-1].status == "running":
            # group commit: a run's progress waits up to ``commit_window`` for the next
            # checkpoint (or the flusher), so a run of quick nodes commits in one go
            first = not self._deferred
            if first:
                self._deferred_since = time.time()
            self._deferred.extend(records)
            self._pending = records[-1].pending
            if first or self._idle or self._asleep_past_window():
                # the flusher may be asleep until a later deadline (an event's
                # ``flush_seconds``): the window of these records ends sooner, or now
                self._idle = False
                self._work.set()
            return
        self._appending += 1
        self._appended.clear()
        try:
            async with self._lock:
                records = self._deferred + records
                self._deferred = []
                await self._commit(records)
        finally:
            self._appending -= 1
            if not self._appending:
                self._appended.set()

    async def _commit(self, records: list[CheckpointRecord]) -> None:
        """Commit ``records`` with the events they carry (under the lock)."""
        events = _carried(self.pending, records[-1].event_seq)
        # a backlog of body-node events ahead of what the records announce goes first,
        # in bounded batches (see FLUSH_BATCH); what they announce commits with them
        head = next((i for i, e in enumerate(events) if _checkpointed(e)), len(events))
        while head > FLUSH_BATCH:
            batch = events[:FLUSH_BATCH]
            try:
                await self.store.commit_progress(self.lease, [], logged_events(batch), bulk=True)
            except LeaseLost:
                self._lose()
                return
            self._committed(batch)
            events = events[FLUSH_BATCH:]
            head -= FLUSH_BATCH
        last = records[-1].status
        status = last if last in ("running", "waiting") else None
        outcome = None
        end = next((e for e in reversed(events) if e.terminal), None)
        if last in TERMINAL and end is not None:  # the final checkpoint
            outcome = (last, end.data.get("output"), records[-1].error)
        try:
            await self.store.commit_progress(
                self.lease,
                records,
                logged_events(events),
                status=status,
                current_nodes=records[-1].frontier,
                outcome=outcome,
            )
        except LeaseLost:
            self._lose()
            return
        self.finished = outcome is not None
        self._committed(events, len(records))

    def _committed(self, events: list[Event], records: int = 0) -> None:
        metrics.EVENTS_PUBLISHED.inc(len(events))
        tokens = sum(1 for e in events if e.type is EventType.NODE_TOKEN)
        if tokens:
            metrics.TOKENS_STREAMED.inc(tokens)
        if records:
            metrics.CHECKPOINTS_WRITTEN.inc(records)
        # what commits is always the oldest pending events (under the lock)
        del self.pending[: len(events)]
        for event in events:
            self.bus.publish(self.lease.run_id, event)

    async def records(self, run_id: str) -> list[CheckpointRecord]:
        return await self.store.checkpoint_records(run_id)

    def masked(self, value: Any) -> Any:
        """``value`` (the run's output or error, as the service stores it) with the
        run's secrets masked."""
        return self.masking.apply(value) if self.masking else value

    # -- events between checkpoints

    def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        """Commit every event no checkpoint has taken within ``flush_seconds`` of its
        emission. An event a checkpoint carries a moment later (the usual case: a node
        that starts and completes quickly) costs no transaction of its own."""
        while not self.lost and not self._closing:
            if not self.pending and not self._deferred:
                # nothing to commit: sleep until something arrives (a run waiting for a
                # signal for hours costs no wake-ups)
                self._idle = True
                self._work.clear()
                await self._work.wait()
                continue
            due = self._flush_due()
            if due > 0:
                self._work.clear()
                with contextlib.suppress(TimeoutError):
                    # woken early when deferred records bring the deadline forward
                    await asyncio.wait_for(self._work.wait(), due)
                continue
            if self._appending:
                # a checkpoint commit is in flight or waiting: it takes the events that
                # are due (see ``_carried``), and the engine's next one often follows at
                # once; look again when there is none
                await self._appended.wait()
                await asyncio.sleep(0)
                continue
            self._flushing = True
            try:
                await self.flush(due=True)
            finally:
                self._flushing = False

    def _asleep_past_window(self) -> bool:
        """Every top-level node in flight sleeps (the last record has their wake times)
        until after the deferred records' window closes. Looked at again by the flusher,
        which runs after the nodes that a node's end let start have begun: one of them
        still busy, or not yet in a record, means no."""
        if not self._running:
            return False
        closes = self._deferred_since + self.commit_window
        for node in self._running:
            item = self._pending.get(node)
            if item is None or item.get("wake_at", closes) < closes:
                return False
        return True

    def _flush_due(self) -> float:
        """Seconds until the oldest deferred record, or the oldest event a flush would
        commit, is ``flush_seconds`` old (``flush_seconds`` when there is none: what
        arrives meanwhile waits at most that long, as with a fixed tick)."""
        due = self.flush_seconds
        now = time.time()
        if self._deferred:
            if self._asleep_past_window():
                return 0.0
            due = min(due, self._deferred_since + self.commit_window - now)
        pending = self.pending
        if pending and not _checkpointed(pending[0]):
            due = min(due, pending[0].timestamp + self.flush_seconds - now)
        return due

    async def flush(self, *, final: bool = False, due: bool = False) -> None:
        """Commit the events no checkpoint has taken yet — but only up to the first one
        that a checkpoint will carry (a top-level node's outcome, the run's end): that
        one and what follows commit with that checkpoint, in the same transaction as the
        node results they announce. The ``final`` flush commits everything left; with
        ``due``, nothing unless the oldest is ``flush_seconds`` old (a checkpoint commit
        that held the lock meanwhile may have taken the ones that were)."""
        if self.lost or not (self.pending or self._deferred):
            return
        async with self._lock:
            if due and self._flush_due() > 0:
                return
            if self._deferred:
                records, self._deferred = self._deferred, []
                try:
                    await self._commit(records)
                except Exception:
                    if final:
                        raise
                    # the engine's next append commits them, and fails with the error
                    self._deferred = records + self._deferred
                    self._deferred_since = time.time()
                    self._defer = False
                return
            while True:
                # a bounded batch: encoding and inserting the events of a run that makes
                # thousands a second holds the event loop, and (SQLite) the write lock
                events = self.pending[:FLUSH_BATCH]
                if not final:
                    cut = next((i for i, e in enumerate(events) if _checkpointed(e)), None)
                    if cut is not None:
                        events = events[:cut]
                if not events:
                    return
                try:
                    await self.store.commit_progress(
                        self.lease, [], logged_events(events), bulk=True
                    )
                except LeaseLost:
                    self._lose()
                    return
                self._committed(events)
                if not final:
                    return  # the flusher comes back at once for what is due

    async def close(self) -> None:
        """Stop flushing and commit what is left."""
        flusher, self._flusher = self._flusher, None
        self._closing = True
        if flusher is not None:
            # a flush in flight is let finish: cancelling a statement on the wire costs
            # a cancel request (a new connection to the server) and leaves its outcome
            # unknown; a sleeping flusher is simply cancelled
            if not self._flushing:
                flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        await self.flush(final=True)  # the deferred records first, if any
        await self.flush(final=True)

    def _stop_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            self._flusher = None

    def detach(self) -> None:
        """Write nothing more (the lease was lost, the replica is shutting down, or the
        run's state cannot be stored)."""
        self.lost = True
        self._stop_flusher()

    def _lose(self) -> None:
        if not self.lost:
            logger.warning(
                "run %s: lease lost; stopping it here",
                self.lease.run_id,
                extra={"run_id": self.lease.run_id},
            )
            self.lost = True
            if self.on_lease_lost is not None:
                self.on_lease_lost()


#: events that end a node's execution (a node that started is running until one comes)
_NODE_ENDED = frozenset({EventType.NODE_COMPLETED, EventType.NODE_FAILED, EventType.NODE_SKIPPED})

#: events that announce what the next checkpoint records
_CHECKPOINTED = frozenset(
    {EventType.NODE_COMPLETED, EventType.NODE_FAILED, EventType.NODE_SKIPPED, EventType.RUN_WAITING}
)


def _carried(pending: list[Event], cut: int) -> list[Event]:
    """The events a checkpoint commit takes: those up to its event sequence ``cut``,
    and the ones after it that the flusher would commit on its own (up to the next
    event a later checkpoint carries) — a node that started while the checkpoint before
    it was written costs no transaction of its own."""
    end = 0
    for event in pending:
        if event.seq > cut and _checkpointed(event):
            break
        end += 1
    return pending[:end]


def _checkpointed(event: Event) -> bool:
    """A terminal event, or a top-level node's outcome (body nodes' ids have a path)."""
    if event.terminal:
        return True
    return event.type in _CHECKPOINTED and "/" not in (event.node_id or "")


def logged_events(events: list[Event]) -> list[Event]:
    """``events`` as the log holds them: each run of ``node.token`` events of one node
    and one attempt, with consecutive sequence numbers, as one chunk event (see the
    module docstring); the rest as they are."""
    out: list[Event] = []
    run: list[Event] = []
    for event in events:
        if event.type is EventType.NODE_TOKEN:
            if run and not _continues(run[-1], event):
                out.append(_chunk(run))
                run = []
            run.append(event)
            continue
        if run:
            out.append(_chunk(run))
            run = []
        out.append(event)
    if run:
        out.append(_chunk(run))
    return out


def _continues(last: Event, event: Event) -> bool:
    return (
        event.seq == last.seq + 1
        and event.node_id == last.node_id
        and event.data.get("attempt") == last.data.get("attempt")
    )


def _chunk(tokens: list[Event]) -> Event:
    """One logged event for the consecutive tokens ``tokens``."""
    if len(tokens) == 1:
        return tokens[0]
    first, last = tokens[0], tokens[-1]
    texts = [str(e.data.get("token", "")) for e in tokens]
    data: dict[str, Any] = {"token": "".join(texts)}
    if "attempt" in first.data:
        data["attempt"] = first.data["attempt"]
    data["first_seq"] = first.seq
    data["sizes"] = [len(text) for text in texts]
    return Event(last.seq, EventType.NODE_TOKEN, last.run_id, last.node_id, data, first.timestamp)
