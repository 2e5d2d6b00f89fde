"""``Store``: every database operation of the service, each one named and owning its
transaction. No session leaves this module.

Run statuses change only through ``lifecycle.TRANSITIONS``, with compare-and-set
updates whose sources come from there, and every write made on behalf of a running run
is *fenced* on the run's lease (owner and epoch): a replica that lost its lease (paused
past it, or its run was taken over) writes nothing and learns so from
:class:`LeaseLost`. The errors are ``app.store.errors``.
"""

from __future__ import annotations

from app.store.audit import AuditRows
from app.store.base import NOTIFY_CHANNEL, Lease, Page, StoreBase
from app.store.keys import ApiKeys
from app.store.leases import Leases
from app.store.logs import Logs
from app.store.memory import ConversationRows
from app.store.progress import Progress
from app.store.runs import RunRows
from app.store.secrets import SecretRows
from app.store.workflows import WorkflowRows


class Store(
    WorkflowRows,
    RunRows,
    Leases,
    Progress,
    Logs,
    AuditRows,
    ApiKeys,
    SecretRows,
    ConversationRows,
    StoreBase,
):
    """The service's database operations: the portable implementation (SQLAlchemy),
    which ``PostgresStore`` and ``SqliteStore`` specialise on their hot paths."""


__all__ = ["NOTIFY_CHANNEL", "Lease", "Page", "Store"]
