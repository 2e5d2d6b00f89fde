"""Validated, compiled workflow definitions by (namespace, workflow id, version).

A stored version never changes, so it is validated and compiled once per process, not
once per run: starting a run and claiming it both reuse the same definition.
"""

from __future__ import annotations

from collections import OrderedDict

from app.engine import ExecutionConfig, WorkflowDefinition, WorkflowNotFoundError, create_workflow
from app.store.records import StoredWorkflow
from app.store.repository import Store


class DefinitionCache:
    """An LRU of compiled definitions, keyed by workflow id and version."""

    def __init__(self, limits: ExecutionConfig, size: int = 512) -> None:
        self.limits = limits
        self.size = size
        self._entries: OrderedDict[tuple[str, str, int], WorkflowDefinition] = OrderedDict()

    def get(self, workflow: StoredWorkflow) -> WorkflowDefinition:
        key = (workflow.namespace, workflow.workflow_id, workflow.version)
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            return cached
        compiled = create_workflow(workflow.definition, limits=self.limits)
        self._entries[key] = compiled
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return compiled


class StoreWorkflowResolver:
    """``subworkflow`` nodes of a run of ``namespace`` find their workflows in the store,
    compiled once per process like every stored version (``DefinitionCache``)."""

    def __init__(self, store: Store, definitions: DefinitionCache, namespace: str) -> None:
        self.store = store
        self.definitions = definitions
        self.namespace = namespace

    async def get_workflow(
        self, workflow_id: str, version: int | None = None
    ) -> WorkflowDefinition:
        row = await self.store.get_workflow(workflow_id, version, namespace=self.namespace)
        if row is None:
            where = f" version {version}" if version is not None else ""
            raise WorkflowNotFoundError(f"no workflow {workflow_id!r}{where}")
        return self.definitions.get(row)
