"""``flowcore serve --workers 2`` in Prometheus multiprocess mode: whichever worker answers
a scrape, ``/metrics`` counts every worker's runs, each exactly once."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.service_crash.conftest import Database, Servers, poll_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

RUNS = 24


def counter(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        key, _, number = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', key))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(number)
    return total


async def test_metrics_add_up_across_uvicorn_workers(
    servers: Servers, database: Database, tmp_path: Path
) -> None:
    prometheus_dir = tmp_path / "prometheus"
    prometheus_dir.mkdir()
    server = await servers.start(
        "mp", "--workers", "2", PROMETHEUS_MULTIPROC_DIR=str(prometheus_dir)
    )
    workflow = {
        "id": "mp-chain",
        "nodes": [{"id": f"n{i}", "type": "noop"} for i in range(3)],
        "edges": [{"source": f"n{i}", "target": f"n{i + 1}"} for i in range(2)],
    }
    assert (await server.client.post("/v1/workflows", json=workflow)).status_code == 201
    run_ids = []
    for _ in range(RUNS):
        response = await server.client.post("/v1/runs", json={"workflow_id": "mp-chain"})
        assert response.status_code == 202, response.text
        run_ids.append(response.json()["run_id"])

    async def all_succeeded() -> bool:
        rows = await database.fetch(
            "SELECT count(*) AS n FROM runs WHERE status = 'succeeded' AND id = ANY($1)",
            run_ids,
        )
        return int(rows[0]["n"]) == RUNS

    await poll_until(all_succeeded, 60, "every run to succeed")

    async def scrape() -> str:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as fresh:
            return (await fresh.get("/metrics", headers={"Connection": "close"})).text

    # a run's outcome commits a moment before its worker counts it
    counted: list[float] = []
    deadline = time.monotonic() + 30
    while not counted or counted[-1] != RUNS:
        assert time.monotonic() < deadline, f"never counted {RUNS} runs: {counted[-5:]}"
        if counted:
            await asyncio.sleep(0.1)
        counted.append(
            counter(await scrape(), "flowcore_runs_finished_total", workflow_id="mp-chain")
        )

    # every scrape — on a new connection, so either worker may answer — sees every run
    seen_pids = set()
    for _ in range(8):
        text = await scrape()
        assert counter(text, "flowcore_runs_finished_total", workflow_id="mp-chain") == RUNS
        assert counter(text, "flowcore_runs_started_total", workflow_id="mp-chain") == RUNS
        assert (
            counter(text, "flowcore_http_requests_total", route="/v1/runs", method="POST") >= RUNS
        )
    for path in prometheus_dir.iterdir():
        match = re.search(r"_(\d+)\.db$", path.name)
        if match:
            seen_pids.add(match.group(1))
    assert len(seen_pids) >= 2, sorted(p.name for p in prometheus_dir.iterdir())
