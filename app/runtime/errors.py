"""The errors of the service layer, which the API maps to statuses in one place
(``api/errors.py``). The store's own errors are part of it: a caller of the service
layer never imports the store.

::

    StoreError (the store's)
    ├── NotFound               no such workflow, version, run or checkpoint
    ├── IdempotencyConflict    an Idempotency-Key reused with another request
    ├── InvalidTransition      e.g. cancelling a finished run
    ├── InvalidCursor          a paging cursor the service did not hand out
    └── LeaseLost              (never reaches a caller of the service layer)
    InvalidRunConfig           a run's config names a knob it may not set, or a bad value
    TooManyRuns                the namespace has its limit of runs queued or running
    InvalidValue               a value the service refuses (naming its field)
    SecretsUnavailable         FLOWCORE_SECRET_KEY is not set: no secret can be kept
    Unauthenticated, Forbidden (``app.runtime.access``)
"""

from __future__ import annotations

from app.engine import ValidationIssue
from app.store.errors import (
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    NotFound,
    StoreError,
)

__all__ = [
    "IdempotencyConflict",
    "InvalidCursor",
    "InvalidRunConfig",
    "InvalidTransition",
    "InvalidValue",
    "NotFound",
    "SecretsUnavailable",
    "StoreError",
    "TooManyRuns",
]


class InvalidRunConfig(Exception):
    """A run's ``config`` was refused: every issue, each naming its knob."""

    def __init__(self, issues: list[ValidationIssue]) -> None:
        super().__init__("; ".join(str(issue) for issue in issues))
        self.issues = issues


class TooManyRuns(Exception):
    """The caller's namespace has ``namespace_max_active_runs`` runs queued or running."""


class InvalidValue(Exception):
    """A value the service refuses, with the field it came in."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class SecretsUnavailable(Exception):
    """``FLOWCORE_SECRET_KEY`` is not set: no secret can be stored or read (a 503)."""
