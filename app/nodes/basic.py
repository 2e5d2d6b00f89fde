"""Simple node types: ``noop``, ``transform``, ``delay``, ``fail``."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from app.engine import (
    BaseNode,
    DeliberateFailure,
    NodeConfigError,
    NodeContext,
    NodeRegistry,
    NodeResult,
    WorkflowContext,
)


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


@NodeRegistry.register("noop")
class NoopNode(BaseNode):
    """Passes its input (its parents' outputs, by node id) through as its output."""

    config_model = _Config
    # running it costs less than looking it up: never cached
    cacheable = False

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        return NodeResult(output=node_context.input)


class TransformConfig(_Config):
    output: dict[str, str] = Field(description="Output name -> CEL expression.")


@NodeRegistry.register("transform")
class TransformNode(BaseNode):
    """Evaluates a map of CEL expressions; the map of results is its output."""

    config_model = TransformConfig
    expression_fields = frozenset({"output"})
    config: TransformConfig

    def expressions(self) -> list[tuple[str, str]]:
        return [(f"output.{name}", src) for name, src in self.config.output.items()]

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        return NodeResult(
            output={name: node_context.evaluate(src) for name, src in self.config.output.items()}
        )


class DelayConfig(_Config):
    seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] | str = Field(
        description="Seconds to sleep: a number, a CEL expression or a {{ }} template "
        "(at most the run's max_delay_seconds)."
    )


@NodeRegistry.register("delay")
class DelayNode(BaseNode):
    """Sleeps on the engine's clock; output ``{"slept": seconds}``.

    ``seconds`` given as a CEL expression is evaluated; given as a template, what the
    template yields is the value (data is never evaluated as an expression). A long
    sleep in the service parks the run: it leaves the replica until it is due.
    """

    config_model = DelayConfig
    config: DelayConfig
    cacheable = False

    def expressions(self) -> list[tuple[str, str]]:
        seconds = self.config.seconds
        if isinstance(seconds, str) and "{{" not in seconds:
            return [("seconds", seconds)]
        return []

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        value: Any = node_context.config["seconds"]
        if self.expressions():  # raw CEL in the definition (a template was rendered)
            value = node_context.evaluate(str(self.config.seconds))
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not 0 <= value < float("inf")
        ):
            raise NodeConfigError(f"seconds must be a non-negative number, got {value!r}")
        if value > node_context.execution_config.max_delay_seconds:
            raise node_context.over_budget("max_delay_seconds", f"a delay of {value:g}s")
        await node_context.sleep(float(value))
        return NodeResult(output={"slept": value})


class FailConfig(_Config):
    message: str = "deliberate failure"
    times: int | None = Field(
        None, ge=1, description="Fail only the first `times` attempts (default: always)."
    )


@NodeRegistry.register("fail")
class FailNode(BaseNode):
    """Fails on purpose (for drills and tests); with ``times`` it succeeds afterwards."""

    config_model = FailConfig
    config: FailConfig
    cacheable = False

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        times = self.config.times
        if times is None or node_context.attempt <= times:
            raise DeliberateFailure(str(node_context.config.get("message", self.config.message)))
        return NodeResult(output={"attempts": node_context.attempt})
