"""The CheckpointStore conformance suite (tests/checkpoint_contract.py) over the
engine's own stores."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine import CheckpointStore, FileCheckpointStore, InMemoryCheckpointStore
from tests.checkpoint_contract import CHECKS, Check


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> CheckpointStore:
    if request.param == "memory":
        return InMemoryCheckpointStore()
    return FileCheckpointStore(tmp_path)


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_the_store_conforms(store: CheckpointStore, check: Check) -> None:
    await check(store, "run-1")
