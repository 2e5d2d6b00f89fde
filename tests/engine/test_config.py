"""``ExecutionConfig``: the seed's knobs, strict validation, and ``merged`` precedence
(service defaults < workflow ``config`` < run request ``config``)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.engine import ExecutionConfig

#: every knob the seed's "Native backend" document names
SEED_KNOBS = [
    "max_parallel_nodes",
    "timeout_seconds",
    "node_timeout",
    "retry_failed_nodes",
    "max_retries",
    "retry_delay",
    "enable_checkpoints",
    "checkpoint_interval",
    "trace_execution",
    "trace_level",
    "trace_output",
    "collect_metrics",
    "enable_cache",
    "cache_ttl",
    "cache_size",
    "db_pool_size",
    "http_pool_size",
    "redis_pool_size",
    "event_loop_policy",
    "max_concurrent_tasks",
    "batch_size",
    "debug_mode",
    "break_on_error",
    "verbose_logging",
    "on_error",
    "error_handler",
    "max_errors",
]

LIMIT_KNOBS = [
    "max_nodes",
    "max_edges",
    "max_expression_length",
    "max_nesting_depth",
    "max_definition_bytes",
]


@pytest.mark.parametrize("knob", SEED_KNOBS)
def test_every_seed_knob_exists(knob: str) -> None:
    assert knob in ExecutionConfig.model_fields
    assert hasattr(ExecutionConfig(), knob)


def test_the_seed_example_configuration_is_accepted() -> None:
    config = ExecutionConfig(
        max_parallel_nodes=10,
        timeout_seconds=300,
        node_timeout=30,
        retry_failed_nodes=True,
        max_retries=3,
        retry_delay=1.0,
        enable_checkpoints=True,
        checkpoint_interval=5,
        trace_execution=True,
        trace_level="DEBUG",
        trace_output="trace.json",
        collect_metrics=True,
        enable_cache=True,
        cache_ttl=3600,
        cache_size=1000,
        db_pool_size=20,
        http_pool_size=100,
        redis_pool_size=50,
        event_loop_policy="uvloop",
        max_concurrent_tasks=100,
        batch_size=50,
        debug_mode=True,
        break_on_error=True,
        verbose_logging=True,
        on_error="continue",
        max_errors=10,
    )
    assert config.trace_level == "DEBUG"
    assert config.on_error == "continue"
    assert config.timeout_seconds == 300


def test_an_async_error_handler_is_accepted() -> None:
    async def handler(error: Exception, node: Any, context: Any) -> None:
        return None

    config = ExecutionConfig(error_handler=handler)
    assert config.error_handler is handler
    assert "error_handler" not in config.model_dump()


def test_an_unknown_knob_is_an_error() -> None:
    with pytest.raises(ValidationError) as caught:
        ExecutionConfig(max_paralel_nodes=3)  # type: ignore[call-arg]
    (error,) = caught.value.errors()
    assert error["loc"] == ("max_paralel_nodes",)
    assert error["type"] == "extra_forbidden"


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("max_parallel_nodes", 0),
        ("timeout_seconds", 0),
        ("node_timeout", -1),
        ("max_retries", -1),
        ("retry_delay", -0.5),
        ("checkpoint_interval", 0),
        ("trace_level", "CHATTY"),
        ("cache_ttl", 0),
        ("db_pool_size", 0),
        ("event_loop_policy", "trio"),
        ("on_error", "explode"),
        ("max_errors", 0),
        ("max_concurrent_tasks", 0),
        ("batch_size", 0),
    ],
)
def test_out_of_range_values_are_rejected(knob: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        ExecutionConfig.model_validate({knob: value})


def test_assignment_is_validated() -> None:
    config = ExecutionConfig()
    with pytest.raises(ValidationError):
        config.max_parallel_nodes = 0
    assert config.max_parallel_nodes == 10
    with pytest.raises(ValidationError):
        config.on_error = "explode"  # type: ignore[assignment]
    config.enable_checkpoints = True
    assert config.enable_checkpoints is True


def test_assigning_an_unknown_knob_is_an_error() -> None:
    config = ExecutionConfig()
    with pytest.raises(ValidationError):
        config.turbo = True  # type: ignore[attr-defined]


def test_defaults() -> None:
    config = ExecutionConfig()
    assert config.max_parallel_nodes == 10
    assert config.timeout_seconds is None
    assert config.node_timeout is None
    assert config.retry_failed_nodes is False
    assert config.max_retries == 3
    assert config.on_error == "stop"
    assert config.enable_checkpoints is False
    assert config.checkpoint_interval == 1
    assert config.event_loop_policy == "asyncio"


# -------------------------------------------------------------------------------- merged


def test_merged_applies_precedence_service_then_workflow_then_run() -> None:
    service = ExecutionConfig(max_parallel_nodes=50, max_retries=5, node_timeout=60)
    workflow = {"max_retries": 2, "node_timeout": 10}
    run = {"node_timeout": 3}
    effective = service.merged(workflow).merged(run)
    assert effective.max_parallel_nodes == 50  # service default, untouched
    assert effective.max_retries == 2  # workflow beats service
    assert effective.node_timeout == 3  # run beats workflow


def test_merged_returns_a_copy_and_leaves_the_original_alone() -> None:
    service = ExecutionConfig(max_retries=5)
    effective = service.merged({"max_retries": 1})
    assert effective is not service
    assert service.max_retries == 5
    assert effective.max_retries == 1


@pytest.mark.parametrize("overrides", [None, {}])
def test_merged_without_overrides_is_the_same_config(overrides: dict[str, Any] | None) -> None:
    service = ExecutionConfig(max_retries=5)
    assert service.merged(overrides) is service


def test_merged_validates_overrides() -> None:
    with pytest.raises(ValidationError):
        ExecutionConfig().merged({"max_parallel_nodes": 0})
    with pytest.raises(ValidationError):
        ExecutionConfig().merged({"turbo": True})


@pytest.mark.parametrize("knob", LIMIT_KNOBS)
def test_merged_never_overrides_a_limit(knob: str) -> None:
    service = ExecutionConfig.model_validate({knob: 7})
    effective = service.merged({knob: 1_000_000, "max_retries": 1})
    assert getattr(effective, knob) == 7
    assert effective.max_retries == 1


def test_merged_keeps_the_error_handler() -> None:
    def handler(error: Exception, node: Any, context: Any) -> None:
        return None

    effective = ExecutionConfig(error_handler=handler).merged({"max_retries": 1})
    assert effective.error_handler is handler
