"""Shared fixtures for the engine's execution tests.

- ``FakeClock``: the engine's ``Clock`` port on virtual time; ``sleep`` records the
  requested seconds, advances ``now`` and yields once, without waiting.
- ``Probe``: what the instrumented test node types below observed (start/end order,
  concurrency high-water mark, cancellations), with per-key gates a test can hold
  closed and "started" events it can await.
- ``RecordingSink``: an ``EventSink`` that records events and lets a test await one.
- ``node`` / ``make_workflow``: terse builders for definitions.

The test node types are registered for the duration of each test and unregistered
afterwards, so they never leak into other test packages' view of the registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from app.engine import (
    BaseNode,
    Event,
    EventType,
    NodeContext,
    NodeRegistry,
    NodeResult,
    WorkflowContext,
    WorkflowDefinition,
    create_workflow,
)

#: a guard against hangs in tests that await something the engine should make happen;
#: never a timing assertion
HANG_GUARD = 10.0


class FakeClock:
    """Virtual time for the engine's ``Clock`` port."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.current = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.current

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.current += seconds
        await asyncio.sleep(0)  # a suspension point, like a real sleep, but no waiting


class Probe:
    """Observations of the test node types, for one test."""

    def __init__(self) -> None:
        #: ("start" | "end", key) in the order they happened
        self.log: list[tuple[str, str]] = []
        self.running = 0
        self.max_running = 0
        #: keys whose execution observed CancelledError
        self.cancelled: list[str] = []
        #: keys whose (asynchronous) cancellation clean-up finished
        self.cleaned_up: list[str] = []
        self._gates: dict[str, asyncio.Event] = {}
        self._started: dict[str, asyncio.Event] = {}
        #: set whenever ``running`` changes
        self._tick = asyncio.Event()

    def gate(self, key: str) -> asyncio.Event:
        return self._gates.setdefault(key, asyncio.Event())

    def release(self, key: str) -> None:
        self.gate(key).set()

    def started_event(self, key: str) -> asyncio.Event:
        return self._started.setdefault(key, asyncio.Event())

    async def wait_started(self, key: str) -> None:
        await asyncio.wait_for(self.started_event(key).wait(), HANG_GUARD)

    async def wait_running(self, count: int) -> None:
        """Until exactly ``count`` probe nodes are running at once."""

        async with asyncio.timeout(HANG_GUARD):
            while self.running != count:
                self._tick.clear()
                await self._tick.wait()

    def starts(self) -> list[str]:
        return [key for what, key in self.log if what == "start"]

    def ends(self) -> list[str]:
        return [key for what, key in self.log if what == "end"]

    def position(self, what: str, key: str) -> int:
        return self.log.index((what, key))

    # -- called by the nodes

    def enter(self, key: str) -> None:
        self.log.append(("start", key))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        self.started_event(key).set()
        self._tick.set()

    def leave(self, key: str) -> None:
        self.running -= 1
        self.log.append(("end", key))
        self._tick.set()

    def abandon(self, key: str) -> None:
        """The node was cancelled (after its clean-up)."""
        self.cleaned_up.append(key)
        self.running -= 1
        self._tick.set()


_probe = Probe()


def current_probe() -> Probe:
    return _probe


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProbeConfig(_Config):
    #: the key the probe records under (default: the node id); may be a template
    key: str | None = None
    #: hold the node until ``probe.release(key)``
    block: bool = False
    #: event-loop turns to spend inside the node (so siblings overlap)
    yields: int = 3
    #: event-loop turns spent cleaning up after a cancellation
    cleanup_yields: int = 0
    #: the output (default ``{"node": key}``)
    output: Any = None


class ProbeNode(BaseNode):
    """Records start/end in the probe, optionally blocks on its gate."""

    config_model = ProbeConfig
    config: ProbeConfig

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        probe = current_probe()
        key = str(node_context.config.get("key") or node_context.node_id)
        probe.enter(key)
        try:
            for _ in range(self.config.yields):
                await asyncio.sleep(0)
            if self.config.block:
                await probe.gate(key).wait()
        except asyncio.CancelledError:
            probe.cancelled.append(key)
            for _ in range(self.config.cleanup_yields):
                await asyncio.sleep(0)
            probe.abandon(key)
            raise
        probe.leave(key)
        output = node_context.config.get("output")
        return NodeResult(output=output if output is not None else {"node": key})


class RaiseConfig(_Config):
    message: str = "boom"
    #: raise only once the probe saw this key start
    after: str | None = None


class RaiseNode(BaseNode):
    """Raises ``RuntimeError(message)`` (an unexpected exception, not a NodeResult)."""

    config_model = RaiseConfig
    config: RaiseConfig

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        if self.config.after is not None:
            await current_probe().wait_started(self.config.after)
        raise RuntimeError(self.config.message)


class PlainConfig(_Config):
    value: Any = None


class PlainValueNode(BaseNode):
    """Returns its configured ``value`` as is, not wrapped in a NodeResult."""

    config_model = PlainConfig

    async def execute(self, node_context: NodeContext, workflow_context: WorkflowContext) -> Any:
        return node_context.config.get("value")


class VarsConfig(_Config):
    variables: dict[str, Any]


class SetVarsNode(BaseNode):
    """Succeeds with ``NodeResult.variables`` set from its config."""

    config_model = VarsConfig

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        variables = dict(node_context.config["variables"])
        return NodeResult(output={"set": sorted(variables)}, variables=variables)


class EmitConfig(_Config):
    tokens: list[str] = []
    custom: list[dict[str, Any]] = []


class EmitNode(BaseNode):
    """Emits ``node.custom`` events (``{"name", "data"}`` items) then tokens."""

    config_model = EmitConfig

    async def execute(
        self, node_context: NodeContext, workflow_context: WorkflowContext
    ) -> NodeResult:
        config = node_context.config
        for item in config.get("custom", []):
            node_context.emit(item["name"], item.get("data"))
        for token in config.get("tokens", []):
            node_context.emit_token(token)
            await asyncio.sleep(0)
        return NodeResult(output={"text": "".join(config.get("tokens", []))})


TEST_NODE_TYPES: dict[str, type[BaseNode]] = {
    "engine_probe": ProbeNode,
    "engine_raise": RaiseNode,
    "engine_plain": PlainValueNode,
    "engine_vars": SetVarsNode,
    "engine_emit": EmitNode,
}


def _register_test_types() -> None:
    for name, cls in TEST_NODE_TYPES.items():
        NodeRegistry.register(name)(cls)


def _unregister_test_types() -> None:
    for name in TEST_NODE_TYPES:
        NodeRegistry.unregister(name)


def fresh_probe() -> Probe:
    """Replace the current probe (for tests that run several executions, e.g. in
    hypothesis examples)."""
    global _probe
    _probe = Probe()
    return _probe


@pytest.fixture(autouse=True)
def _test_node_types() -> Iterator[None]:
    _register_test_types()
    fresh_probe()
    try:
        yield
    finally:
        _unregister_test_types()


@pytest.fixture
def probe() -> Probe:
    return current_probe()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


class RecordingSink:
    """An EventSink that keeps every event and lets a test await a matching one."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []

    def publish(self, event: Event) -> None:
        self.events.append(event)
        for predicate, future in self._waiters:
            if not future.done() and predicate(event):
                future.set_result(event)

    async def wait_for(self, type: EventType, node_id: str | None = None) -> Event:
        def matches(event: Event) -> bool:
            return event.type is type and (node_id is None or event.node_id == node_id)

        for event in self.events:
            if matches(event):
                return event
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.append((matches, future))
        return await asyncio.wait_for(future, HANG_GUARD)

    def types(self) -> list[str]:
        return [event.type.value for event in self.events]

    def of(self, type: EventType) -> list[Event]:
        return [event for event in self.events if event.type is type]


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


# --------------------------------------------------------------------------- builders

Edge = tuple[str, str] | tuple[str, str, str]


def node(node_id: str, type: str = "noop", /, **fields: Any) -> dict[str, Any]:
    """A node definition; ``fields`` are the node's other keys (config, retry, ...)."""
    return {"id": node_id, "type": type, **fields}


def probe_node(node_id: str, /, **config: Any) -> dict[str, Any]:
    return node(node_id, "engine_probe", config=config)


def make_workflow(
    nodes: Sequence[dict[str, Any]],
    edges: Sequence[Edge] = (),
    /,
    **top: Any,
) -> WorkflowDefinition:
    """A validated workflow; an edge is ``(source, target)`` or with a condition."""
    edge_dicts: list[dict[str, Any]] = []
    for edge in edges:
        item: dict[str, Any] = {"source": edge[0], "target": edge[1]}
        if len(edge) == 3:
            item["condition"] = edge[2]
        edge_dicts.append(item)
    raw: dict[str, Any] = {"id": "test", **top, "nodes": list(nodes), "edges": edge_dicts}
    return create_workflow(raw)
