"""The store conformance suite (tests/store_contract) over every implementation of the
store, on SQLite and Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.store_contract import CHECKS, IMPLEMENTATIONS, Bench, Check, known_failure, open_bench


@pytest.fixture(params=list(IMPLEMENTATIONS))
async def bench(request: pytest.FixtureRequest, database_url: str) -> AsyncIterator[Bench]:
    name: str = request.param
    async with open_bench(name, IMPLEMENTATIONS[name], database_url) as bench:
        yield bench


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
async def test_the_store_conforms(
    bench: Bench, check: Check, request: pytest.FixtureRequest
) -> None:
    reason = known_failure(check, bench)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    await check(bench)
