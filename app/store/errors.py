"""The store's errors.

::

    StoreError
    ├── NotFound
    ├── IdempotencyConflict     same Idempotency-Key, different request
    ├── InvalidTransition       e.g. cancelling a finished run (see ``lifecycle``)
    ├── InvalidCursor           a paging cursor this store did not hand out
    └── LeaseLost               a fenced write found another owner or epoch
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of the store's errors."""


class NotFound(StoreError):
    pass


class IdempotencyConflict(StoreError):
    pass


class InvalidTransition(StoreError):
    pass


class LeaseLost(StoreError):
    pass


class InvalidCursor(StoreError):
    pass
