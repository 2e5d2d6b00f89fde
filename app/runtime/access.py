"""Who is calling, and what they may do: the caller of every service operation.

A request is made by a :class:`Caller`: the namespace it acts in, its role, and the
public id of its key (what logs and the audit log name). Every service operation takes
the caller and checks it first, so no route can forget to (``docs/security.md``):

- an operation on a resource of *another* namespace is :class:`NotFound`, exactly as if
  it did not exist (existence does not leak);
- an operation the caller's role does not allow, in its own namespace, is
  :class:`Forbidden`.

=========  ================================================================
role       may
=========  ================================================================
admin      everything in its namespace: keys, secrets, the audit log
writer     workflows, runs, signals, cancel, resume and fork; and read
reader     read and stream
metrics    scrape ``/metrics`` only
=========  ================================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from app.store.records import DEFAULT_NAMESPACE

__all__ = [
    "ANONYMOUS",
    "DEFAULT_NAMESPACE",
    "NAMESPACE_PATTERN",
    "AuditTrail",
    "Caller",
    "Forbidden",
    "Role",
    "Unauthenticated",
]

#: what a namespace is made of
NAMESPACE_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
_NAMESPACE = re.compile(NAMESPACE_PATTERN)


class Role(StrEnum):
    ADMIN = "admin"
    WRITER = "writer"
    READER = "reader"
    METRICS = "metrics"


#: what each role may do beside its own name
_GRANTS: dict[Role, frozenset[Role]] = {
    Role.ADMIN: frozenset({Role.ADMIN, Role.WRITER, Role.READER, Role.METRICS}),
    Role.WRITER: frozenset({Role.WRITER, Role.READER}),
    Role.READER: frozenset({Role.READER}),
    Role.METRICS: frozenset({Role.METRICS}),
}


class Unauthenticated(Exception):
    """No key, a malformed, unknown, expired or revoked key: a 401 (which says no more
    than that, whatever the reason)."""


class Forbidden(Exception):
    """The caller's role does not allow this in its own namespace: a 403."""


def valid_namespace(name: str) -> bool:
    return bool(_NAMESPACE.match(name))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who makes a request: ``namespace`` (where it acts), ``role``, ``key_id`` (the
    key's public id; ``anonymous`` without auth), ``system`` (the bootstrap key: it may
    manage the keys of every namespace), ``source`` (the client's address)."""

    namespace: str
    role: Role
    key_id: str
    system: bool = False
    source: str | None = None

    def can(self, role: Role) -> bool:
        return role in _GRANTS[self.role]

    def need(self, role: Role) -> None:
        """Raise :class:`Forbidden` unless the caller's role includes ``role``."""
        if role not in _GRANTS[self.role]:
            raise Forbidden(f"a {self.role} key may not do this (it needs {role})")

    def sees(self, namespace: str) -> bool:
        """Whether a resource of ``namespace`` exists for this caller."""
        return namespace == self.namespace


#: the caller of every request when auth is disabled
ANONYMOUS = Caller(DEFAULT_NAMESPACE, Role.ADMIN, "anonymous")
#: the operator at the command line (``flowcore keys``): every namespace's keys
CLI = Caller(DEFAULT_NAMESPACE, Role.ADMIN, "cli", system=True)


class AuditTrail(Protocol):
    """Where the services write who did what (``app.runtime.audit.AuditLog``)."""

    async def record(
        self,
        caller: Caller,
        action: str,
        target: str | None = None,
        detail: dict[str, Any] | None = None,
        *,
        namespace: str | None = None,
    ) -> None: ...
