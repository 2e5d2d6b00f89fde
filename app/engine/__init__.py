"""Flowcore's engine: a pure asyncio workflow engine, usable as a library.

    from app.engine import WorkflowExecutor, create_workflow

    workflow = create_workflow({"id": "example", "nodes": [...], "edges": [...]})
    result = await WorkflowExecutor().execute(workflow, {"input": "data"})

It imports only the standard library, pydantic, typing_extensions and the CEL library.
"""

from app.engine.breaker import (
    BreakerState,
    CircuitBreakerStore,
    CircuitOpenError,
    InMemoryCircuitBreakers,
)
from app.engine.budget import BudgetExceededError
from app.engine.cache import Cache, CacheHit, InMemoryCache
from app.engine.checkpoint import (
    Checkpoint,
    CheckpointInfo,
    CheckpointNotFoundError,
    CheckpointStore,
    FileCheckpointStore,
    InMemoryCheckpointStore,
)
from app.engine.config import ExecutionConfig
from app.engine.dsl import (
    CachePolicy,
    CircuitBreakerPolicy,
    EdgeSpec,
    NodeSpec,
    RetryPolicy,
    WorkflowDefinition,
)
from app.engine.errors import (
    DeliberateFailure,
    ExpressionCompileError,
    ExpressionError,
    ExpressionEvaluationError,
    FlowcoreError,
    InputValidationError,
    NodeConfigError,
    NodeError,
    NodeExecutionError,
    NodeTimeoutError,
    PluginLoadError,
    RunNotFoundError,
    UnknownNodeTypeError,
    ValidationIssue,
    WorkflowNotFoundError,
    WorkflowValidationError,
)
from app.engine.events import Event, EventSink, EventType
from app.engine.executor import (
    ConditionalExecutor,
    DebugExecutor,
    DebugState,
    ParallelExecutor,
    SequentialExecutor,
    Strategy,
    WorkflowExecutor,
)
from app.engine.memory import ConversationMemory, EntityMemory, InMemoryMemoryStore, MemoryStore
from app.engine.metrics import MetricsCollector
from app.engine.node import BaseNode, NodeContext, NodeResult, WorkflowContext
from app.engine.ports import (
    Clock,
    InMemoryWorkflowRepository,
    ListEventSink,
    SystemClock,
    WorkflowResolver,
)
from app.engine.registry import NodeRegistry
from app.engine.result import NodeRun, NodeStatus, RunError, RunResult, RunStatus
from app.engine.trace import ExecutionTrace, NodeTiming
from app.engine.validation import create_workflow, validate_workflow
from app.engine.values import UnstorableValueError, ValueProblem, inspect_value

__all__ = [
    "BaseNode",
    "BreakerState",
    "BudgetExceededError",
    "Cache",
    "CacheHit",
    "CachePolicy",
    "Checkpoint",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CheckpointStore",
    "CircuitBreakerPolicy",
    "CircuitBreakerStore",
    "CircuitOpenError",
    "Clock",
    "ConditionalExecutor",
    "ConversationMemory",
    "DebugExecutor",
    "DebugState",
    "DeliberateFailure",
    "EdgeSpec",
    "EntityMemory",
    "Event",
    "EventSink",
    "EventType",
    "ExecutionConfig",
    "ExecutionTrace",
    "ExpressionCompileError",
    "ExpressionError",
    "ExpressionEvaluationError",
    "FileCheckpointStore",
    "FlowcoreError",
    "InMemoryCache",
    "InMemoryCheckpointStore",
    "InMemoryCircuitBreakers",
    "InMemoryMemoryStore",
    "InMemoryWorkflowRepository",
    "InputValidationError",
    "ListEventSink",
    "MemoryStore",
    "MetricsCollector",
    "NodeConfigError",
    "NodeContext",
    "NodeError",
    "NodeExecutionError",
    "NodeRegistry",
    "NodeResult",
    "NodeRun",
    "NodeSpec",
    "NodeStatus",
    "NodeTimeoutError",
    "NodeTiming",
    "ParallelExecutor",
    "PluginLoadError",
    "RetryPolicy",
    "RunError",
    "RunNotFoundError",
    "RunResult",
    "RunStatus",
    "SequentialExecutor",
    "Strategy",
    "SystemClock",
    "UnknownNodeTypeError",
    "UnstorableValueError",
    "ValidationIssue",
    "ValueProblem",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowExecutor",
    "WorkflowNotFoundError",
    "WorkflowResolver",
    "WorkflowValidationError",
    "create_workflow",
    "inspect_value",
    "validate_workflow",
]
