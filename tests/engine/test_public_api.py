"""The engine's public API is ``app.engine.__all__``, pinned here: changing it is a
deliberate act that shows up in review."""

from __future__ import annotations

import importlib

import app.engine

EXPECTED_ALL = [
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

#: the names the seed's "Native backend" document imports; its examples must keep working
SEED_NAMES = [
    "WorkflowExecutor",
    "ExecutionConfig",
    "create_workflow",
    "WorkflowContext",
    "NodeContext",
    "BaseNode",
    "NodeResult",
    "NodeRegistry",
    "SequentialExecutor",
    "ParallelExecutor",
    "ConditionalExecutor",
]


def test_all_is_pinned() -> None:
    assert app.engine.__all__ == EXPECTED_ALL


def test_the_pinned_list_is_sorted_and_unique() -> None:
    assert sorted(set(EXPECTED_ALL)) == EXPECTED_ALL


def test_every_exported_name_is_importable() -> None:
    module = importlib.import_module("app.engine")
    for name in module.__all__:
        assert getattr(module, name, None) is not None, name


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from app.engine import *", namespace)  # the one way to test `import *`
    assert sorted(k for k in namespace if k != "__builtins__") == EXPECTED_ALL


def test_the_seed_names_are_public() -> None:
    missing = [name for name in SEED_NAMES if name not in app.engine.__all__]
    assert missing == []


def test_exported_exceptions_share_one_base() -> None:
    exceptions = [
        obj
        for obj in (getattr(app.engine, name) for name in EXPECTED_ALL)
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]
    assert len(exceptions) >= 10
    for exc in exceptions:
        assert issubclass(exc, app.engine.FlowcoreError), exc
