"""Validated, compiled workflow definitions by (namespace, workflow id, version).

A stored version never changes, so it is validated and compiled once per process, not
once per run: starting a run and claiming it both reuse the same definition.
"""

from __future__ import annotations

from collections import OrderedDict

from app.engine import ExecutionConfig, WorkflowDefinition, create_workflow
from app.store.records import StoredWorkflow


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
