"""One namespace's view of the shared cache and breakers (its conversations are
kept by namespace in the database: ``runtime/memory.py``).

Every cache entry and breaker belongs to a namespace: a run of team A
never reads what a run of team B cached or said, and a dependency failing for team B
does not open team A's breaker.
The namespace goes into the key. The namespace ``default`` keeps the bare keys (what a
deployment wrote before namespaces existed); any other namespace, and any key of
``default`` that itself begins with ``@``, is prefixed ``@<namespace>/`` (a namespace has
no ``/``), so no two namespaces' keys meet.
"""

from __future__ import annotations

from app.engine import (
    BreakerStatus,
    CircuitBreakerPolicy,
    CircuitBreakerStore,
)
from app.store.records import DEFAULT_NAMESPACE


def scoped_key(namespace: str, key: str) -> str:
    """``key`` as ``namespace`` owns it."""
    if namespace == DEFAULT_NAMESPACE and not key.startswith("@"):
        return key
    return f"@{namespace}/{key}"


def scoped_workflow(namespace: str, workflow_id: str) -> str:
    """The cache scope of a workflow of ``namespace`` (a workflow id has no ``/``)."""
    return workflow_id if namespace == DEFAULT_NAMESPACE else f"{namespace}/{workflow_id}"


class NamespaceBreakers:
    """The breakers of one namespace over a shared ``CircuitBreakerStore``."""

    __slots__ = ("_inner", "_namespace")

    def __init__(self, inner: CircuitBreakerStore, namespace: str) -> None:
        self._inner = inner
        self._namespace = namespace

    async def acquire(self, key: str, policy: CircuitBreakerPolicy) -> None:
        await self._inner.acquire(scoped_key(self._namespace, key), policy)

    async def record(self, key: str, policy: CircuitBreakerPolicy, success: bool) -> None:
        await self._inner.record(scoped_key(self._namespace, key), policy, success)

    async def status(self, key: str) -> BreakerStatus:
        return await self._inner.status(scoped_key(self._namespace, key))
