"""Flowcore's engine: a pure asyncio workflow engine, usable as a library.

    from app.engine import WorkflowExecutor, create_workflow

    workflow = create_workflow({"id": "example", "nodes": [...], "edges": [...]})
    result = await WorkflowExecutor().execute(workflow, {"input": "data"})

It imports only the standard library, pydantic, typing_extensions and the CEL library.
"""

from app.engine.breaker import (
    BreakerState,
    BreakerStatus,
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
    CheckpointRecord,
    CheckpointStore,
    FileCheckpointStore,
    InMemoryCheckpointStore,
    NodeCheckpoint,
    checkpoint_at,
    latest_of,
    parse_checkpoint_id,
)
from app.engine.config import LIMIT_FIELDS, PROCESS_FIELDS, ExecutionConfig
from app.engine.dsl import (
    WORKFLOW_ID_PATTERN,
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
    SecretUnavailableError,
    UnknownNodeTypeError,
    ValidationIssue,
    WorkflowNotFoundError,
    WorkflowValidationError,
)
from app.engine.events import TERMINAL_EVENTS, Event, EventSink, EventType
from app.engine.executor import (
    ConditionalExecutor,
    DebugExecutor,
    DebugState,
    ParallelExecutor,
    SequentialExecutor,
    Strategy,
    WorkflowExecutor,
)
from app.engine.expressions import SECRET_NAME_PATTERN, SecretTemplate
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
from app.engine.runtime import NodeRuntime
from app.engine.schema import check_input
from app.engine.secrets import MASK, InMemorySecrets, SecretMask, SecretResolver
from app.engine.trace import ExecutionTrace, NodeTiming
from app.engine.validation import create_workflow, validate_workflow
from app.engine.values import UnstorableValueError, ValueProblem, clean_text, inspect_value

__all__ = [  # noqa: RUF022 - plainly sorted, the order tests/engine/test_public_api.py pins
    "BaseNode",
    "BreakerState",
    "BreakerStatus",
    "BudgetExceededError",
    "Cache",
    "CacheHit",
    "CachePolicy",
    "Checkpoint",
    "CheckpointInfo",
    "CheckpointNotFoundError",
    "CheckpointRecord",
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
    "InMemorySecrets",
    "InMemoryWorkflowRepository",
    "InputValidationError",
    "LIMIT_FIELDS",
    "ListEventSink",
    "MASK",
    "MemoryStore",
    "MetricsCollector",
    "NodeCheckpoint",
    "NodeConfigError",
    "NodeContext",
    "NodeError",
    "NodeExecutionError",
    "NodeRegistry",
    "NodeResult",
    "NodeRun",
    "NodeRuntime",
    "NodeSpec",
    "NodeStatus",
    "NodeTimeoutError",
    "NodeTiming",
    "PROCESS_FIELDS",
    "ParallelExecutor",
    "PluginLoadError",
    "RetryPolicy",
    "RunError",
    "RunNotFoundError",
    "RunResult",
    "RunStatus",
    "SECRET_NAME_PATTERN",
    "SecretMask",
    "SecretResolver",
    "SecretTemplate",
    "SecretUnavailableError",
    "SequentialExecutor",
    "Strategy",
    "SystemClock",
    "TERMINAL_EVENTS",
    "UnknownNodeTypeError",
    "UnstorableValueError",
    "ValidationIssue",
    "ValueProblem",
    "WORKFLOW_ID_PATTERN",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowExecutor",
    "WorkflowNotFoundError",
    "WorkflowResolver",
    "WorkflowValidationError",
    "check_input",
    "checkpoint_at",
    "clean_text",
    "create_workflow",
    "inspect_value",
    "latest_of",
    "parse_checkpoint_id",
    "validate_workflow",
]
