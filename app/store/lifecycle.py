"""The life of a run: its statuses, the moves between them, and what it lets go of when
it ends. Every write of the store that changes a run's status takes its sources from
here (``sources_of``) and checks its move (``require``); no write spells a status out.

::

    queued ──claim──▶ running ◀──wake / resume signal──▶ waiting
      │                 │  ▲                                │
      │cancel           │  └──────── takeover (lease) ──────┤
      ▼                 ▼                                   ▼
    cancelled    succeeded | failed | cancelled      succeeded | failed | cancelled
      │                 │                                   │
      └──resume─▶ queued ◀──── resume in place, release ────┘  (failed and cancelled too)

A run that ends — or waits with no replica holding it (parked, or stopped at a
breakpoint) — lets go of its lease and requests: ``LET_GO``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from app.store.errors import InvalidTransition


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


QUEUED, RUNNING, WAITING = RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING
SUCCEEDED, FAILED, CANCELLED = RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED

#: status -> the statuses a run may move to from it. ``waiting -> waiting``: a run whose
#: last checkpoint said it waits is then let go of (parked, or at a breakpoint).
TRANSITIONS: Mapping[RunStatus, frozenset[RunStatus]] = {
    QUEUED: frozenset({RUNNING, CANCELLED}),
    RUNNING: frozenset({WAITING, SUCCEEDED, FAILED, CANCELLED, QUEUED}),
    WAITING: frozenset({RUNNING, WAITING, SUCCEEDED, FAILED, CANCELLED, QUEUED}),
    FAILED: frozenset({QUEUED}),
    CANCELLED: frozenset({QUEUED}),
    SUCCEEDED: frozenset(),
}
#: a replica executes it (or it waits: parked, or held by one)
ACTIVE: tuple[str, ...] = (RUNNING, WAITING)
#: it is over (a failed or cancelled one may still be resumed)
TERMINAL: tuple[str, ...] = (SUCCEEDED, FAILED, CANCELLED)

#: what a run that ended (or waits with no replica holding it) no longer holds
LET_GO: Mapping[str, Any] = {
    "owner": None,
    "lease_until": None,
    "cancel_requested": False,
    "resume_from": None,
    "vars_patch": None,
    "current_nodes": [],
    "parked": False,
    "wake_at": None,
}


def sources_of(target: str) -> list[str]:
    """The statuses from which a run may move to ``target``."""
    return sorted(s.value for s, targets in TRANSITIONS.items() if target in targets)


def can_move(source: str, target: str) -> bool:
    return target in TRANSITIONS[RunStatus(source)]


def require(source: str, target: str, run_id: str, why: str = "") -> None:
    """Raise InvalidTransition unless a run may move from ``source`` to ``target``."""
    if not can_move(source, target):
        raise InvalidTransition(why or f"run {run_id!r} is {source}; it cannot become {target}")


def sql_list(statuses: Iterable[str]) -> str:
    """``('a', 'b')`` for a hand-written statement (statuses are this module's own)."""
    return "(" + ", ".join(f"'{RunStatus(s).value}'" for s in statuses) + ")"


def let_go(run: Any) -> None:
    """Apply ``LET_GO`` to a run row."""
    for name, value in LET_GO.items():
        setattr(run, name, list(value) if isinstance(value, list) else value)
