"""The MemoryStore conformance suite (tests/memory_contract.py) over the engine's
in-memory twin."""

from __future__ import annotations

import pytest

from app.engine import InMemoryMemoryStore
from tests.memory_contract import CHECKS, Check


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_the_in_memory_store_conforms(check: Check) -> None:
    await check(InMemoryMemoryStore())
