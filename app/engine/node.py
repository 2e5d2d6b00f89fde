"""Nodes: ``BaseNode``, what a node returns (``NodeResult``) and what it sees
(``NodeContext`` for itself, ``WorkflowContext`` for the run)."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from app.engine.budget import BudgetExceededError
from app.engine.dsl import CircuitBreakerPolicy
from app.engine.errors import SecretUnavailableError
from app.engine.events import EventType
from app.engine.expressions import Scope, ValueTemplate, compile_expression
from app.engine.values import UnstorableValueError, ValueProblem, inspect_value

if TYPE_CHECKING:
    from app.engine.config import ExecutionConfig
    from app.engine.dsl import NodeSpec, WorkflowDefinition
    from app.engine.memory import MemoryStore
    from app.engine.runtime import NodeRuntime


class NodeResult(BaseModel):
    """What a node returns. ``variables`` are merged into the run's ``vars`` on success."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    success: bool = True
    output: Any = None
    error: str | None = None
    error_kind: str | None = None
    variables: dict[str, Any] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict)
    #: the exception behind a failure, when there was one (not serialised)
    exception: BaseException | None = Field(None, exclude=True, repr=False)


class WorkflowContext:
    """The run as a node sees it: ids, input, variables, completed outputs, memory."""

    def __init__(
        self,
        workflow_id: str,
        run_id: str | None = None,
        input: Any = None,
        variables: dict[str, Any] | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.run_id = run_id or ""
        self.input = input
        self.variables: dict[str, Any] = variables if variables is not None else {}
        #: node id -> output, for nodes that completed
        self.node_outputs: dict[str, Any] = {}
        self.memory: Any = None
        self.metadata: dict[str, Any] = {}
        self.status = "pending"

    def get_node_output(self, node_id: str, default: Any = None) -> Any:
        return self.node_outputs.get(node_id, default)

    def set_variable(self, name: str, value: Any) -> None:
        self.variables[name] = value

    def get_variable(self, name: str, default: Any = None) -> Any:
        return self.variables.get(name, default)

    def __repr__(self) -> str:
        return f"WorkflowContext(workflow_id={self.workflow_id!r}, run_id={self.run_id!r})"


class NodeContext:
    """One execution of one node: its resolved config, its input, and the ways it can
    talk to the run (events, tokens, signals, body runs, expressions), all through the
    run's ``NodeRuntime``."""

    __slots__ = (
        "_runtime",
        "attempt",
        "config",
        "input",
        "iteration",
        "node_id",
        "node_type",
        "scope",
        "spec",
    )

    def __init__(
        self,
        spec: NodeSpec,
        config: Any,
        input: Mapping[str, Any],
        scope: Scope,
        runtime: NodeRuntime,
        attempt: int = 1,
        iteration: int = 0,
    ) -> None:
        self.spec = spec
        self.node_id = spec.id
        self.node_type = spec.type
        #: the node's config with every ``{{ expr }}`` template resolved
        self.config = config
        #: outputs of the parents that completed, by node id
        self.input = input
        self.scope = scope
        self._runtime = runtime
        self.attempt = attempt
        self.iteration = iteration

    @property
    def run_id(self) -> str:
        return self._runtime.run_id

    @property
    def idempotency_key(self) -> str:
        """Stable across retries and resumes: pass it to side-effecting calls."""
        runtime = self._runtime
        return f"{runtime.run_id}:{runtime.path}{self.node_id}:{self.iteration}"

    def emit(self, name: str, data: Mapping[str, Any] | None = None) -> None:
        """Emit a ``node.custom`` event named ``name``. Raises UnstorableValueError
        (failing the node, kind ``output``) for what no event log can hold."""
        payload: dict[str, Any] = {"name": name}
        if data:
            payload["data"] = dict(data)
        self._storable(payload, "event")
        self._runtime.emit(EventType.NODE_CUSTOM, self.node_id, payload)

    def emit_token(self, token: str) -> None:
        """Emit one streamed token (``node.token``), with the node's ``attempt``: a
        retry's tokens carry the next number, so a client that saw part of an answer
        knows the text starts again."""
        if "\x00" in token or not token.isascii():
            self._storable(token, "token")
        self._runtime.emit(
            EventType.NODE_TOKEN, self.node_id, {"token": token, "attempt": self.attempt}
        )

    def _storable(self, value: Any, what: str) -> None:
        try:
            inspect_value(value, max_depth=self._runtime.config.max_value_depth)
        except ValueProblem as problem:
            raise UnstorableValueError(f"the {what} cannot be stored: {problem}") from None

    def over_budget(self, budget: str, what: str) -> BudgetExceededError:
        """Fail the whole run for crossing ``budget`` (a knob of ExecutionConfig, e.g.
        ``max_map_items``) and return the error for the node to raise."""
        limit = getattr(self.execution_config, budget)
        error = BudgetExceededError(budget, limit, what)
        self._runtime.over_budget(error, self.node_id)
        return error

    def evaluate(self, expression: str, extra: Mapping[str, Any] | None = None) -> Any:
        """Evaluate a CEL expression in this node's scope (plus ``extra`` names)."""
        scope = self.scope
        if extra:
            scope = Scope(
                scope.input, scope.vars, scope.nodes, scope.run, {**(scope.extra or {}), **extra}
            )
        return compile_expression(expression).evaluate(scope)

    def render(self, value: Any) -> Any:
        """Resolve ``{{ expr }}`` templates inside any JSON-like value."""
        return ValueTemplate(value).render(self.scope)

    async def resolve_secrets(self, names: Collection[str]) -> Mapping[str, str]:
        """The values of the secrets ``names``, which this node's ``secret_fields``
        reference as ``{{ secrets.NAME }}`` (``app.nodes.secrets`` fills them in), from
        the run's ``SecretResolver``; :class:`SecretUnavailableError` naming a secret
        that is not set. Put a value where it is needed and nowhere else: whatever the
        run writes out is masked, but a value kept on ``self`` outlives the run."""
        resolver = self._runtime.secrets
        if resolver is None:
            first = sorted(names)[0] if names else "?"
            raise SecretUnavailableError(
                f"secret {first!r} is not set: this executor has no secrets "
                "(WorkflowExecutor(secrets=...))"
            )
        return await resolver.resolve(names)

    @property
    def execution_config(self) -> ExecutionConfig:
        """The run's effective ExecutionConfig (read it; do not change it)."""
        return self._runtime.config

    @property
    def memory_store(self) -> MemoryStore:
        """The executor's conversation store (for the ``memory`` node and LLM nodes)."""
        store = self._runtime.memory_store
        if store is None:
            raise RuntimeError("this run has no memory store")
        return store

    @property
    def max_concurrent_tasks(self) -> int:
        """The run's ``max_concurrent_tasks`` (the default concurrency of a map)."""
        return self._runtime.config.max_concurrent_tasks

    @contextmanager
    def workers(self, wanted: int) -> Iterator[int]:
        """Reserve up to ``wanted`` concurrent body runs (at least one) from the run's
        ``max_concurrent_tasks``, which maps at every depth share; yields how many."""
        runtime = self._runtime
        granted = runtime.take_workers(wanted)
        try:
            yield granted
        finally:
            runtime.give_workers(granted)

    async def sleep(self, seconds: float) -> None:
        """Sleep on the engine's clock (a fake clock in tests). With checkpoints on, the
        wake time is checkpointed first, so a resumed run sleeps only what is left."""
        await self._runtime.sleep(self.node_id, seconds)

    async def wait_for_signal(self, name: str, timeout: float | None = None) -> Any:
        """Park the run in ``waiting`` until ``executor.signal(run_id, name, payload)``."""
        return await self._runtime.wait_for_signal(self.node_id, name, timeout)

    async def run_body(
        self,
        body: WorkflowDefinition,
        input: Any,
        extra: Mapping[str, Any] | None = None,
        label: str = "",
    ) -> Any:
        """Run ``body`` (a nested workflow) to completion and return its output."""
        return await self._runtime.run_body(self.node_id, self.scope, body, input, extra, label)

    async def run_workflow(self, workflow_id: str, version: int | None, input: Any) -> Any:
        """Run a registered workflow as a child of this run and return its output."""
        return await self._runtime.run_workflow(self.node_id, workflow_id, version, input)


class BaseNode:
    """Base class of node types.

    A subclass implements ``execute`` and may declare ``config_model`` (a pydantic
    model its ``config`` must satisfy when a definition is validated) and
    ``expression_fields`` (config keys holding raw CEL rather than templates) and
    ``secret_fields`` (config keys that may reference secrets).
    One instance serves every run of a compiled workflow: keep per-run state in the
    contexts, not on ``self``.
    """

    type_name: ClassVar[str] = ""
    config_model: ClassVar[type[BaseModel] | None] = None
    expression_fields: ClassVar[frozenset[str]] = frozenset()
    #: config keys whose strings may reference ``{{ secrets.NAME }}`` (anywhere else a
    #: reference is refused); the engine leaves those references to the node, which
    #: resolves them itself (``NodeContext.resolve_secrets``)
    secret_fields: ClassVar[frozenset[str]] = frozenset()
    #: whether results may be served from the cache (False for time or signal nodes)
    cacheable: ClassVar[bool] = True
    #: a breaker every node of this type gets unless its spec sets ``circuit_breaker``
    default_circuit_breaker: ClassVar[CircuitBreakerPolicy | None] = None

    id: str = ""
    spec: NodeSpec
    #: the validated config model (unresolved templates stay as strings), if any
    config: Any = None

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        raise NotImplementedError(f"{type(self).__name__}.execute")

    def cacheable_call(self, config: Any) -> bool:
        """Whether this call (with its resolved config) may be served from the cache when
        caching is on for the whole run. An explicit ``cache`` policy on the node
        overrides this (but never ``cacheable = False``)."""
        return self.cacheable

    def breaker_key(self, config: Any) -> str:
        """The circuit-breaker key for a call with this resolved config (default: the
        node type; the ``http`` node uses the target host)."""
        return self.type_name or type(self).__name__

    def expressions(self) -> list[tuple[str, str]]:
        """``(field, source)`` for every raw CEL expression in this node's config,
        so validation can compile them and report positions. Default: none."""
        return []

    def bodies(self) -> list[tuple[str, dict[str, Any]]]:
        """``(field, raw definition)`` for every nested body workflow in the config,
        so validation checks them like any workflow."""
        return []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} id={self.id!r}>"
