"""The audit log: who (the key's public id), did what (an action of :data:`ACTIONS` on a
target), when, from where (the client's address), kept in the database and read by the
admins of each namespace (``GET /v1/audit``).

A service records an action *after* the operation committed, with the caller of the
request::

    record = await self.store.revoke_key(key_id)          # the operation commits
    await self.audit.record(caller, KEY_REVOKED, f"key:{key_id}")

``record`` never fails the operation it records: the entry is written in a short
transaction of its own, shielded from the request's cancellation (a client that hung up
after its revocation committed still leaves the entry), and a write that fails is logged
at ERROR with the whole entry (so a log pipeline still holds it) and counted in
``flowcore_audit_write_failures_total``. The alternative, one transaction for the
operation and its entry, would put the audit log inside every store operation it
records; failing the request after its operation committed would invite a retry of
something already done.

``detail`` is for a few short facts (a key's role, a run's checkpoint), never a secret's
value, a request body or a definition: it is cut down to :data:`MAX_DETAIL_KEYS` flat
entries of short text, numbers, booleans or short lists of them, at most
:data:`MAX_DETAIL_BYTES` as JSON, and the values of names that sound like credentials or
payloads (``value``, ``token``, ``body``, ``input``...) are replaced by ``<redacted>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from app.observability import metrics
from app.runtime.access import Caller, Role
from app.runtime.records import Page
from app.store.records import StoredAudit
from app.store.repository import Store

__all__ = [
    "ACTIONS",
    "ACTION_PATTERN",
    "KEY_CREATED",
    "KEY_REVOKED",
    "MAX_DETAIL_BYTES",
    "MAX_DETAIL_KEYS",
    "REDACTED",
    "RUN_CANCELLED",
    "RUN_FORKED",
    "RUN_RESUMED",
    "RUN_SIGNALLED",
    "SECRET_DELETED",
    "SECRET_SET",
    "WORKFLOW_ARCHIVED",
    "WORKFLOW_CREATED",
    "AuditEntry",
    "AuditLog",
    "bounded_detail",
]

logger = logging.getLogger("flowcore.audit")

# the actions: ``<resource>.<past participle>``; targets name the resource as
# ``<kind>:<id>`` (``key:ab12cd34``, ``secret:SLACK_TOKEN``, ``workflow:greet``,
# ``workflow:greet@3``, ``run:5f0c...``)
KEY_CREATED = "key.created"
KEY_REVOKED = "key.revoked"
SECRET_SET = "secret.set"
SECRET_DELETED = "secret.deleted"
WORKFLOW_CREATED = "workflow.created"
WORKFLOW_ARCHIVED = "workflow.archived"
RUN_CANCELLED = "run.cancelled"
RUN_RESUMED = "run.resumed"
RUN_FORKED = "run.forked"
RUN_SIGNALLED = "run.signalled"

#: every action the service records
ACTIONS = frozenset(
    {
        KEY_CREATED,
        KEY_REVOKED,
        SECRET_SET,
        SECRET_DELETED,
        WORKFLOW_CREATED,
        WORKFLOW_ARCHIVED,
        RUN_CANCELLED,
        RUN_RESUMED,
        RUN_FORKED,
        RUN_SIGNALLED,
    }
)
#: what an action's name is made of (the listing's filter takes any such name)
ACTION_PATTERN = r"^[a-z][a-z_]{0,30}(\.[a-z][a-z_]{0,30}){1,2}$"

#: the most entries a detail keeps
MAX_DETAIL_KEYS = 16
#: the most characters of a detail's text value (or of a name)
MAX_DETAIL_TEXT = 200
#: the most characters of a target
MAX_TARGET_TEXT = 300
#: the most items of a list in a detail
MAX_DETAIL_ITEMS = 16
#: the most a detail may weigh as JSON: entries past it are dropped, and ``_truncated`` set
MAX_DETAIL_BYTES = 2048
REDACTED = "<redacted>"
#: parts of a name (split at ``_``, ``-``, ``.``) whose text values are never recorded
_SENSITIVE = frozenset(
    {
        "authorization", "body", "ciphertext", "cookie", "credential", "credentials",
        "definition", "input", "output", "passphrase", "passwd", "password", "payload",
        "plaintext", "private", "secret", "token", "value", "vars",
    }
)  # fmt: skip
_NAME_PARTS = re.compile(r"[_.\-\s]+")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the audit log, as its readers see it."""

    id: int
    at: float
    actor: str
    role: str
    action: str
    target: str | None
    source: str | None
    detail: dict[str, Any] | None

    @classmethod
    def of(cls, row: StoredAudit) -> AuditEntry:
        return cls(
            row.id, row.at, row.actor, row.role, row.action, row.target, row.source, row.detail
        )


class AuditLog:
    """Records who did what (``record``) and lists it to a namespace's admins
    (``listing``)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        #: writes in flight that their request no longer awaits (it was cancelled)
        self._writing: set[asyncio.Task[None]] = set()

    async def record(
        self,
        caller: Caller,
        action: str,
        target: str | None = None,
        detail: Mapping[str, Any] | None = None,
        *,
        namespace: str | None = None,
    ) -> None:
        """Record that ``caller`` did ``action`` (one of :data:`ACTIONS`) to ``target``
        (``<kind>:<id>``), with a few facts in ``detail`` (bounded, credentials
        redacted). The entry belongs to ``namespace``, the caller's own by default (a
        system caller acting on another namespace names it). Never raises for a failed
        write: see the module's docstring."""
        entry = {
            "at": self.clock(),
            "namespace": namespace or caller.namespace,
            "actor": caller.key_id,
            "role": str(caller.role),
            "action": action,
            "target": None if target is None else _text(target, MAX_TARGET_TEXT),
            "source": caller.source,
            "detail": bounded_detail(detail),
        }
        task = asyncio.get_running_loop().create_task(self._append(entry), name="flowcore-audit")
        self._writing.add(task)
        task.add_done_callback(self._writing.discard)
        await asyncio.shield(task)

    async def _append(self, entry: dict[str, Any]) -> None:
        try:
            await self.store.append_audit(**entry)
        except Exception:
            action = entry["action"]
            metrics.AUDIT_WRITE_FAILURES.labels(action if action in ACTIONS else "other").inc()
            logger.error(
                "audit log entry not written: %s",
                json.dumps(entry, default=str, sort_keys=True),
                exc_info=True,
            )

    async def listing(
        self,
        caller: Caller,
        *,
        cursor: str | None,
        limit: int,
        action: str | None = None,
        since: float | None = None,
    ) -> Page[AuditEntry]:
        """The caller's namespace's entries, newest first, only ``action``'s and those
        at or after ``since`` when given. Admins only (Forbidden otherwise)."""
        caller.need(Role.ADMIN)
        page = await self.store.list_audit(
            caller.namespace, cursor=cursor, limit=limit, action=action, since=since
        )
        return Page([AuditEntry.of(row) for row in page.items], page.next_cursor)

    async def settle(self) -> None:
        """Wait for the writes whose requests were cancelled (at shutdown)."""
        if self._writing:
            await asyncio.wait(set(self._writing))


def bounded_detail(detail: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``detail`` as the audit log keeps it: flat, short, without credentials or payloads
    (see the module's docstring). None or empty: None."""
    if not detail:
        return None
    kept: dict[str, Any] = {}
    for raw_name, raw in list(detail.items())[:MAX_DETAIL_KEYS]:
        name = _text(raw_name)
        sensitive = any(part in _SENSITIVE for part in _NAME_PARTS.split(name.lower()))
        if sensitive and not (raw is None or isinstance(raw, bool)):
            kept[name] = REDACTED
        elif isinstance(raw, list | tuple | set | frozenset):
            items = list(raw)[:MAX_DETAIL_ITEMS]
            kept[name] = [_scalar(item) for item in items]
        else:
            kept[name] = _scalar(raw)
    truncated = False
    while kept and len(_json({**kept, "_truncated": True} if truncated else kept)) > (
        MAX_DETAIL_BYTES
    ):
        kept.popitem()  # the last entry first: the caller names the important ones first
        truncated = True
    if truncated:
        kept["_truncated"] = True
    return kept


def _scalar(value: Any) -> str | int | float | bool | None:
    """A value of a detail: a short text, a finite number, a boolean or None; a mapping
    or a list is not described further."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return "<object>"
    if isinstance(value, list | tuple | set | frozenset):
        return "<list>"
    return _text(value)


def _text(value: Any, limit: int = MAX_DETAIL_TEXT) -> str:
    """Short text every database stores (no NUL, no lone surrogate)."""
    text = str(value)[:limit].replace("\x00", "")
    return text.encode("utf-8", "replace").decode("utf-8")


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
