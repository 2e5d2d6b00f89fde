"""Control-flow node types: ``map``, ``loop``, ``subworkflow``, ``wait``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.engine import (
    BaseNode,
    NodeConfigError,
    NodeContext,
    NodeRegistry,
    NodeResult,
    WorkflowContext,
    WorkflowDefinition,
)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MapConfig(_Config):
    items: str = Field(description="CEL expression giving the list to map over.")
    node: dict[str, Any] | None = Field(None, description="A single node as the body.")
    workflow: dict[str, Any] | None = Field(None, description="An inline workflow as the body.")
    max_concurrency: int | None = Field(
        None, ge=1, description="Bodies running at once (default: max_concurrent_tasks)."
    )

    @model_validator(mode="after")
    def _one_body(self) -> MapConfig:
        if (self.node is None) == (self.workflow is None):
            raise ValueError("give exactly one of `node` or `workflow` as the body")
        return self


@NodeRegistry.register("map")
class MapNode(BaseNode):
    """Runs its body once per item (``item``/``index`` in scope and in the body's
    ``input``), at most ``max_concurrency`` at once (and within the run's
    ``max_concurrent_tasks``, which maps nested in maps share); output: the body outputs
    in item order.

    Items run in batches of the run's ``batch_size``, one batch after the other: a batch
    starts when every item of the one before it has finished, so no more than
    ``batch_size`` body runs (and their state) are alive at once, and a failing item
    stops the map before any item of a later batch starts."""

    config_model = MapConfig
    expression_fields = frozenset({"items", "node", "workflow"})
    config: MapConfig
    _body: WorkflowDefinition | None = None
    _single: str | None = None

    def expressions(self) -> list[tuple[str, str]]:
        return [("items", self.config.items)]

    def bodies(self) -> list[tuple[str, dict[str, Any]]]:
        if self.config.node is not None:
            return [("node", {"id": f"{self.id}-body", "nodes": [self.config.node]})]
        assert self.config.workflow is not None
        return [("workflow", self.config.workflow)]

    def _body_definition(self) -> WorkflowDefinition:
        if self._body is None:
            field, raw = self.bodies()[0]
            self._body = WorkflowDefinition.model_validate(raw)
            if field == "node":
                self._single = self._body.nodes[0].id
        return self._body

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        items = node_context.evaluate(self.config.items)
        if not isinstance(items, list):
            raise NodeConfigError(f"items must evaluate to a list, got {type(items).__name__}")
        if len(items) > node_context.execution_config.max_map_items:
            raise node_context.over_budget("max_map_items", f"a map over {len(items)} items")
        body = self._body_definition()
        limit = self.config.max_concurrency or node_context.max_concurrent_tasks
        batch_size = node_context.execution_config.batch_size
        results: list[Any] = [None] * len(items)

        async def worker(cursor: Iterator[int]) -> None:
            for index in cursor:
                extra = {"item": items[index], "index": index}
                output = await node_context.run_body(body, extra, extra, label=str(index))
                results[index] = output[self._single] if self._single is not None else output

        try:
            # a TaskGroup cancels the other workers when one fails, and waits for them;
            # maps nested in maps share the run's concurrency instead of multiplying it
            with node_context.workers(min(limit, batch_size, len(items))) as count:
                for start in range(0, len(items), batch_size):
                    batch = range(start, min(start + batch_size, len(items)))
                    cursor = iter(batch)
                    async with asyncio.TaskGroup() as group:
                        for _ in range(min(count, len(batch))):
                            group.create_task(worker(cursor))
        except BaseExceptionGroup as group_error:
            raise group_error.exceptions[0] from None
        return NodeResult(output=results)


class LoopConfig(_Config):
    workflow: dict[str, Any] = Field(description="The body, an inline workflow.")
    while_: str = Field(
        alias="while",
        description="CEL over `last` (the body output) and `iteration`: go on while true.",
    )
    max_iterations: int = Field(100, ge=1, le=100_000)
    input: dict[str, str] | None = Field(
        None, description="Initial state: name -> CEL expression in the loop's scope."
    )


@NodeRegistry.register("loop")
class LoopNode(BaseNode):
    """Runs its body, then again while ``while`` holds, up to ``max_iterations``.

    The body's ``input`` is ``{"iteration": k, "state": ...}`` where ``state`` is the
    previous iteration's output (the evaluated ``input`` map on the first). Output:
    ``{"output": last body output, "iterations": k}``.
    """

    config_model = LoopConfig
    expression_fields = frozenset({"workflow", "while", "input"})
    config: LoopConfig
    _body: WorkflowDefinition | None = None

    def expressions(self) -> list[tuple[str, str]]:
        found = [("while", self.config.while_)]
        found += [(f"input.{k}", v) for k, v in (self.config.input or {}).items()]
        return found

    def bodies(self) -> list[tuple[str, dict[str, Any]]]:
        return [("workflow", self.config.workflow)]

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        if self._body is None:
            self._body = WorkflowDefinition.model_validate(self.config.workflow)
        state: Any = {
            name: node_context.evaluate(src) for name, src in (self.config.input or {}).items()
        }
        iteration = 0
        last: Any = None
        while iteration < self.config.max_iterations:
            iteration += 1
            body_input = {"iteration": iteration, "state": state}
            last = await node_context.run_body(
                self._body, body_input, {"iteration": iteration}, label=str(iteration)
            )
            state = last
            if not node_context.evaluate(
                self.config.while_, {"last": last, "iteration": iteration}
            ):
                break
        return NodeResult(output={"output": last, "iterations": iteration})


class SubworkflowConfig(_Config):
    workflow_id: str
    version: int | None = Field(None, ge=1)
    input: dict[str, str] = Field(
        default_factory=dict, description="Child input: name -> CEL expression."
    )


@NodeRegistry.register("subworkflow")
class SubworkflowNode(BaseNode):
    """Runs a registered workflow (by id and optional version) as a child of this run;
    output: the child's output."""

    config_model = SubworkflowConfig
    expression_fields = frozenset({"input"})
    config: SubworkflowConfig

    def expressions(self) -> list[tuple[str, str]]:
        return [(f"input.{k}", v) for k, v in self.config.input.items()]

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        child_input = {name: node_context.evaluate(src) for name, src in self.config.input.items()}
        config = node_context.config
        output = await node_context.run_workflow(
            str(config["workflow_id"]), config.get("version"), child_input
        )
        return NodeResult(output=output)


class WaitConfig(_Config):
    signal: str = Field(min_length=1, description="The signal name to wait for.")
    timeout: float | None = Field(None, gt=0, description="Fail after this many seconds.")


@NodeRegistry.register("wait")
class WaitNode(BaseNode):
    """Leaves the run ``waiting`` until ``signal`` is delivered; output: its payload."""

    config_model = WaitConfig
    config: WaitConfig
    cacheable = False

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        payload = await node_context.wait_for_signal(
            str(node_context.config["signal"]), self.config.timeout
        )
        return NodeResult(output=payload)
