"""``RunJournal``: where a service run's checkpoints and events go.

It is both the engine's ``CheckpointStore`` and an ``EventSink`` for one run. Events
wait in a pending list; each checkpoint record the engine hands over is committed in ONE
transaction together with the node results it carries and the pending events up to its
event sequence. Events that no checkpoint picks up (a node that started and is still
running) are flushed every ``flush_seconds``. Events reach the live bus only once they
are committed, so what a live client sees is exactly what the log will replay, even if
the replica dies a moment later. Every commit is fenced on the run's lease; once the
lease is lost the journal goes quiet and asks for the run to be stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from app.bus import EventBus
from app.engine import Event, EventType
from app.engine.checkpoint import (
    Checkpoint,
    CheckpointInfo,
    CheckpointNotFoundError,
    CheckpointRecord,
    fold,
    parse_checkpoint_id,
)
from app.engine.checkpoint import chain_to as checkpoint_chain
from app.observability import metrics
from app.store.repository import TERMINAL, Lease, LeaseLost, Store

logger = logging.getLogger("flowcore.runtime")


class RunJournal:
    """Durable checkpoints and events of one run, fenced on its lease."""

    def __init__(
        self,
        store: Store,
        lease: Lease,
        bus: EventBus,
        *,
        flush_seconds: float = 0.1,
        on_lease_lost: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.lease = lease
        self.bus = bus
        self.flush_seconds = flush_seconds
        self.on_lease_lost = on_lease_lost
        self.pending: list[Event] = []
        self.lost = False
        #: the run's outcome was committed with its final checkpoint
        self.finished = False
        self._lock = asyncio.Lock()
        self._flusher: asyncio.Task[None] | None = None

    # -- EventSink

    def publish(self, event: Event) -> None:
        if self.lost:
            return
        self.pending.append(event)

    # -- CheckpointStore

    async def append(self, records: list[CheckpointRecord]) -> None:
        if self.lost or not records:
            return
        async with self._lock:
            cut = records[-1].event_seq
            events = [e for e in self.pending if e.seq <= cut]
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
                    events,
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
        if records:
            metrics.CHECKPOINTS_WRITTEN.inc(records)
        committed = {id(e) for e in events}
        self.pending = [e for e in self.pending if id(e) not in committed]
        for event in events:
            self.bus.publish(self.lease.run_id, event)

    async def load(self, checkpoint_id: str) -> Checkpoint:
        run_id, sequence = parse_checkpoint_id(checkpoint_id)
        records = checkpoint_chain(await self.store.checkpoint_records(run_id), sequence)
        if not records or records[-1].sequence != sequence:
            raise CheckpointNotFoundError(f"no checkpoint {checkpoint_id!r}")
        return fold(records)

    async def latest(self, run_id: str) -> Checkpoint | None:
        records = await self.store.checkpoint_records(run_id)
        return fold(checkpoint_chain(records, records[-1].sequence)) if records else None

    async def list(self, run_id: str) -> list[CheckpointInfo]:
        return [
            CheckpointInfo(r.id, r.run_id, r.sequence, r.created_at, r.status, len(r.completed))
            for r in await self.store.checkpoint_records(run_id)
        ]

    # -- events between checkpoints

    def start(self) -> None:
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while not self.lost:
            await asyncio.sleep(self.flush_seconds)
            await self.flush()

    async def flush(self, *, final: bool = False) -> None:
        """Commit the events no checkpoint has taken yet — but only up to the first one
        that a checkpoint will carry (a top-level node's outcome, the run's end): that
        one and what follows commit with that checkpoint, in the same transaction as the
        node results they announce. The ``final`` flush commits everything left."""
        if self.lost or not self.pending:
            return
        async with self._lock:
            events = list(self.pending)
            if not final:
                cut = next((i for i, e in enumerate(events) if _checkpointed(e)), None)
                if cut is not None:
                    events = events[:cut]
            if not events:
                return
            try:
                await self.store.commit_progress(self.lease, [], events)
            except LeaseLost:
                self._lose()
                return
            self._committed(events)

    async def close(self) -> None:
        """Stop flushing and commit what is left."""
        flusher = self._flusher
        self._stop_flusher()
        if flusher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
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


#: events that announce what the next checkpoint records
_CHECKPOINTED = frozenset(
    {EventType.NODE_COMPLETED, EventType.NODE_FAILED, EventType.NODE_SKIPPED, EventType.RUN_WAITING}
)


def _checkpointed(event: Event) -> bool:
    """A terminal event, or a top-level node's outcome (body nodes' ids have a path)."""
    if event.terminal:
        return True
    return event.type in _CHECKPOINTED and "/" not in (event.node_id or "")
