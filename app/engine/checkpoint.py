"""Checkpoints: the ``CheckpointStore`` port, in-memory and file implementations.

A run's checkpoints are a chain of *incremental* records: each holds only the nodes that
finished since the previous one (plus the small things that are cheap to copy: the
variables, the frontier, the pending delays and waits, the event sequence). The first
record of a run also holds the definition and the input, so a checkpoint alone is enough
to resume. Loading checkpoint *n* folds records 1..n into a full :class:`Checkpoint`.
Writing a checkpoint therefore costs the same at node 10 and at node 10,000.
"""

from __future__ import annotations

import asyncio
import json
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from app.engine.errors import FlowcoreError

_RECORD_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


class CheckpointNotFoundError(FlowcoreError):
    kind = "checkpoint_not_found"


@dataclass(slots=True)
class NodeCheckpoint:
    """A finished node as a checkpoint keeps it."""

    status: str
    output: Any = None
    error: str | None = None
    error_kind: str | None = None
    attempts: int = 0
    # when it ran: kept for traces, not part of what the node's state *is*
    started_at: float | None = field(default=None, compare=False)
    finished_at: float | None = field(default=None, compare=False)


@dataclass(slots=True)
class CheckpointRecord:
    """One incremental checkpoint record (what a store appends)."""

    run_id: str
    sequence: int
    created_at: float
    event_seq: int
    status: str
    #: nodes that finished since the previous record
    completed: dict[str, NodeCheckpoint]
    variables: dict[str, Any]
    frontier: list[str]
    #: node id -> {"kind": "delay", "wake_at": t}
    #: | {"kind": "wait", "signal": name, "deadline": t or None}
    #: | {"kind": "break", "error": message}
    pending: dict[str, dict[str, Any]]
    workflow_id: str = ""
    #: only in the first record of a run
    definition: dict[str, Any] | None = None
    input: Any = None
    error: dict[str, Any] | None = None
    #: the sequence this record continues from (None: the one before it)
    parent: int | None = None
    #: signals delivered but not taken by a ``wait`` yet: name -> payloads, in order
    signals: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return checkpoint_id(self.run_id, self.sequence)

    def to_dict(self) -> dict[str, Any]:
        # by hand: dataclasses.asdict deep-copies every output, three times slower
        return {
            "run_id": self.run_id,
            "sequence": self.sequence,
            "created_at": self.created_at,
            "event_seq": self.event_seq,
            "status": self.status,
            "completed": {
                node_id: {
                    "status": n.status,
                    "output": n.output,
                    "error": n.error,
                    "error_kind": n.error_kind,
                    "attempts": n.attempts,
                    "started_at": n.started_at,
                    "finished_at": n.finished_at,
                }
                for node_id, n in self.completed.items()
            },
            "variables": self.variables,
            "frontier": self.frontier,
            "pending": self.pending,
            "workflow_id": self.workflow_id,
            "definition": self.definition,
            "input": self.input,
            "error": self.error,
            "parent": self.parent,
            "signals": self.signals,
        }

    def to_json(self) -> str:
        return _RECORD_ENCODER.encode(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> CheckpointRecord:
        data = json.loads(text)
        data["completed"] = {k: NodeCheckpoint(**v) for k, v in data["completed"].items()}
        return cls(**data)


@dataclass(slots=True)
class Checkpoint:
    """A run's full state at one checkpoint: enough to continue it."""

    id: str
    run_id: str
    workflow_id: str
    sequence: int
    created_at: float
    event_seq: int
    status: str
    completed: dict[str, NodeCheckpoint] = field(default_factory=dict)
    variables: dict[str, Any] = field(default_factory=dict)
    frontier: list[str] = field(default_factory=list)
    pending: dict[str, dict[str, Any]] = field(default_factory=dict)
    definition: dict[str, Any] | None = None
    input: Any = None
    error: dict[str, Any] | None = None
    signals: dict[str, list[Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True, frozen=True)
class CheckpointInfo:
    id: str
    run_id: str
    sequence: int
    created_at: float
    status: str
    completed: int


def checkpoint_id(run_id: str, sequence: int) -> str:
    return f"{run_id}:{sequence}"


def parse_checkpoint_id(value: str) -> tuple[str, int]:
    run_id, sep, sequence = value.rpartition(":")
    if not sep or not sequence.isdigit():
        raise CheckpointNotFoundError(f"malformed checkpoint id {value!r}")
    return run_id, int(sequence)


def chain_to(records: list[CheckpointRecord], sequence: int) -> list[CheckpointRecord]:
    """The records checkpoint ``sequence`` folds, oldest first (following parents)."""
    by_sequence = {r.sequence: r for r in records}
    chain: list[CheckpointRecord] = []
    current: int | None = sequence
    while current is not None and current in by_sequence:
        record = by_sequence[current]
        chain.append(record)
        current = record.parent if record.parent is not None else current - 1
        if current == 0:
            break
    chain.reverse()
    return chain


def fold(records: list[CheckpointRecord]) -> Checkpoint:
    """The full checkpoint at the last of ``records`` (records 1..n of one run)."""
    if not records:
        raise CheckpointNotFoundError("no checkpoint records")
    first, last = records[0], records[-1]
    completed: dict[str, NodeCheckpoint] = {}
    for record in records:
        completed.update(record.completed)
    return Checkpoint(
        id=last.id,
        run_id=last.run_id,
        workflow_id=first.workflow_id,
        sequence=last.sequence,
        created_at=last.created_at,
        event_seq=last.event_seq,
        status=last.status,
        completed=completed,
        variables=last.variables,
        frontier=last.frontier,
        pending=last.pending,
        definition=first.definition,
        input=first.input,
        error=last.error,
        signals=last.signals,
    )


def checkpoint_at(records: list[CheckpointRecord], sequence: int, checkpoint_id: str) -> Checkpoint:
    """Checkpoint ``sequence`` of a run whose records are ``records`` (in any order):
    the chain to it, folded. Raises CheckpointNotFoundError when there is none."""
    chain = chain_to(records, sequence)
    if not chain or chain[-1].sequence != sequence:
        raise CheckpointNotFoundError(f"no checkpoint {checkpoint_id!r}")
    return fold(chain)


def latest_of(records: list[CheckpointRecord]) -> Checkpoint | None:
    """The run's latest checkpoint (its last record, folded), or None."""
    return fold(chain_to(records, records[-1].sequence)) if records else None


class CheckpointStore(ABC):
    """Keeps checkpoint records. A store writes them (``append`` receives a run's
    records in order) and reads a run's back (``records``); loading a checkpoint,
    the latest one and the list follow from that."""

    @abstractmethod
    async def append(self, records: list[CheckpointRecord]) -> None: ...

    @abstractmethod
    async def records(self, run_id: str) -> list[CheckpointRecord]:
        """Every record of ``run_id``, in the order they were appended."""

    async def load(self, checkpoint_id: str) -> Checkpoint:
        run_id, sequence = parse_checkpoint_id(checkpoint_id)
        return checkpoint_at(await self.records(run_id), sequence, checkpoint_id)

    async def latest(self, run_id: str) -> Checkpoint | None:
        return latest_of(await self.records(run_id))

    async def list(self, run_id: str) -> list[CheckpointInfo]:
        return _infos(await self.records(run_id))


def _infos(records: list[CheckpointRecord]) -> list[CheckpointInfo]:
    return [
        CheckpointInfo(r.id, r.run_id, r.sequence, r.created_at, r.status, len(r.completed))
        for r in records
    ]


class InMemoryCheckpointStore(CheckpointStore):
    """Checkpoint records in a dict (one process; lost with it)."""

    def __init__(self) -> None:
        self._runs: dict[str, list[CheckpointRecord]] = {}

    async def append(self, records: list[CheckpointRecord]) -> None:
        for record in records:
            self._runs.setdefault(record.run_id, []).append(record)

    async def records(self, run_id: str) -> list[CheckpointRecord]:
        return list(self._runs.get(run_id, []))


class FileCheckpointStore(CheckpointStore):
    """One append-only JSON-lines file per run under ``directory``.

    Appends are plain writes (they survive the process being killed); pass
    ``fsync=True`` to survive the machine losing power too, at a cost per checkpoint.
    """

    def __init__(self, directory: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.directory = Path(directory)
        self.fsync = fsync
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, run_id: str) -> Path:
        return self.directory / f"{quote(run_id, safe='')}.jsonl"

    async def append(self, records: list[CheckpointRecord]) -> None:
        if records:
            await asyncio.to_thread(self._append, records)

    def _append(self, records: list[CheckpointRecord]) -> None:
        by_run: dict[str, list[str]] = {}
        for record in records:
            by_run.setdefault(record.run_id, []).append(record.to_json())
        for run_id, lines in by_run.items():
            with self._path(run_id).open("a+b") as handle:
                text = "\n".join(lines) + "\n"
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":  # a torn line from a crash: end it first
                        text = "\n" + text
                handle.write(text.encode("utf-8"))
                if self.fsync:
                    handle.flush()
                    os.fsync(handle.fileno())

    def _read(self, run_id: str) -> list[CheckpointRecord]:
        path = self._path(run_id)
        if not path.exists():
            return []
        records = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            try:
                records.append(CheckpointRecord.from_json(line))
            except (ValueError, TypeError):
                continue  # a torn line from a crash mid-write: skip it
        return records

    async def records(self, run_id: str) -> list[CheckpointRecord]:
        return await asyncio.to_thread(self._read, run_id)
