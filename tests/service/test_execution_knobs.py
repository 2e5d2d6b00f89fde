"""The seed's process knobs in the service: FLOWCORE_EXECUTION refuses the ones the
service takes from settings of their own (``db_pool_size``, ``redis_pool_size``) or
cannot honour (``event_loop_policy``: `flowcore serve` runs on uvloop), naming what to
use instead; ``http_pool_size`` there sizes the shared HTTP client; a run request may
set none of them. No database needed: these are checks made before any."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.runtime.errors import InvalidRunConfig
from app.runtime.runs import check_config


@pytest.mark.parametrize(
    ("knob", "value", "instead"),
    [
        ("db_pool_size", 20, "FLOWCORE_DB_POOL_SIZE"),
        ("redis_pool_size", 50, "FLOWCORE_REDIS_POOL_SIZE"),
        ("event_loop_policy", "uvloop", "`flowcore serve` always runs on uvloop"),
    ],
)
def test_flowcore_execution_refuses_a_knob_the_service_sets_elsewhere(
    monkeypatch: pytest.MonkeyPatch, knob: str, value: object, instead: str
) -> None:
    monkeypatch.setenv("FLOWCORE_EXECUTION", json.dumps({"max_parallel_nodes": 20, knob: value}))
    with pytest.raises(ValidationError) as caught:
        Settings()
    message = str(caught.value)
    assert f"FLOWCORE_EXECUTION cannot set {knob}" in message
    assert instead in message


def test_every_refused_knob_is_named_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "FLOWCORE_EXECUTION", json.dumps({"db_pool_size": 20, "redis_pool_size": 50})
    )
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "FLOWCORE_DB_POOL_SIZE" in str(caught.value)
    assert "FLOWCORE_REDIS_POOL_SIZE" in str(caught.value)


def test_the_pools_come_from_their_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWCORE_DB_POOL_SIZE", "7")
    monkeypatch.setenv("FLOWCORE_REDIS_POOL_SIZE", "9")
    settings = Settings()
    assert (settings.db_pool_size, settings.redis_pool_size) == (7, 9)


def test_flowcore_execution_sets_the_http_pool_and_the_map_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLOWCORE_EXECUTION", json.dumps({"http_pool_size": 7, "batch_size": 3}))
    config = Settings().execution_config()
    assert (config.http_pool_size, config.batch_size) == (7, 3)


@pytest.mark.parametrize(
    ("knob", "value"),
    [
        ("db_pool_size", 20),
        ("redis_pool_size", 50),
        ("http_pool_size", 100),
        ("event_loop_policy", "uvloop"),
    ],
)
def test_a_run_request_cannot_set_a_process_knob(knob: str, value: object) -> None:
    with pytest.raises(InvalidRunConfig) as caught:
        check_config({knob: value})
    assert f"{knob} cannot be set per run" in str(caught.value)


def test_a_run_request_may_set_the_batch_size() -> None:
    check_config({"batch_size": 5, "max_concurrent_tasks": 2})
