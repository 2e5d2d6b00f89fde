"""Liveness, readiness (database reachable and migrated to head) and the OpenAPI schema."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
from alembic.script import ScriptDirectory

from app.config import Settings
from app.store.migrate import alembic_config
from tests.service.support import Serve

API_DOCS = Path(__file__).resolve().parents[2] / "docs" / "api.md"

#: DESIGN.md's REST table
REST_TABLE = {
    ("post", "/v1/workflows"),
    ("post", "/v1/workflows/validate"),
    ("get", "/v1/workflows"),
    ("get", "/v1/workflows/{workflow_id}"),
    ("get", "/v1/workflows/{workflow_id}/versions/{version}"),
    ("delete", "/v1/workflows/{workflow_id}"),
    ("post", "/v1/runs"),
    ("get", "/v1/runs/{run_id}"),
    ("get", "/v1/runs"),
    ("get", "/v1/runs/{run_id}/events"),
    ("post", "/v1/runs/{run_id}/cancel"),
    ("post", "/v1/runs/{run_id}/signal"),
    ("get", "/v1/runs/{run_id}/trace"),
    ("get", "/v1/runs/{run_id}/state"),
    ("get", "/v1/runs/{run_id}/checkpoints"),
    ("get", "/v1/checkpoints/{checkpoint_id}"),
    ("post", "/v1/checkpoints/{checkpoint_id}/resume"),
    ("put", "/v1/secrets/{name}"),
    ("get", "/v1/secrets"),
    ("delete", "/v1/secrets/{name}"),
    ("post", "/v1/keys"),
    ("get", "/v1/keys"),
    ("delete", "/v1/keys/{key_id}"),
    ("get", "/v1/audit"),
    ("get", "/v1/conversations/{conversation_id}"),
    ("delete", "/v1/conversations/{conversation_id}"),
    ("get", "/healthz"),
    ("get", "/metrics"),
    ("get", "/readyz"),
}


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


async def test_readyz_reports_the_migration_head(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["migration"] == head_revision()
    assert body["checks"]["dispatcher"] == "on"
    assert body["checks"]["database_latency_ms"] >= 0


async def test_readyz_is_503_on_a_database_that_is_not_migrated(
    serve: Serve, tmp_path: Path
) -> None:
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'never-migrated.db'}",
        replica_id=f"test-{uuid.uuid4().hex[:8]}",
        dispatcher_enabled=False,
        auth="disabled",
    )
    async with serve(settings) as client:
        assert (await client.get("/healthz")).status_code == 200
        response = await client.get("/readyz")
        assert response.status_code == 503, response.text
        body = response.json()
        assert body["status"] == "not ready"
        assert body["checks"]["migration"] is None
        assert body["checks"]["migration_expected"] == head_revision()


async def test_openapi_lists_every_path_of_the_rest_table(client: httpx.AsyncClient) -> None:
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    served = {
        (method, re.sub(r"\{[^}]+\}", "{}", path))
        for path, operations in schema["paths"].items()
        for method in operations
    }
    missing = {
        (method, path)
        for method, path in REST_TABLE
        if (method, re.sub(r"\{[^}]+\}", "{}", path)) not in served
    }
    assert not missing, f"not in the OpenAPI schema: {sorted(missing)}"
    # request and response models are in the schema
    components = schema["components"]["schemas"]
    for model in ("RunCreate", "RunOut", "WorkflowOut", "SignalIn", "ResumeIn", "TraceOut"):
        assert model in components, model


def test_the_rest_table_matches_the_api_docs() -> None:
    """The table above is the one docs/api.md documents (DESIGN.md's)."""
    documented: set[tuple[str, str]] = set()
    for line in API_DOCS.read_text().splitlines():
        if not line.startswith("| `"):
            continue
        first_cell = line.split("|")[1]
        for verb, path in re.findall(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`]*)`", first_cell):
            documented.add((verb.lower(), re.sub(r"\{[^}]+\}", "{}", path.split("?")[0])))
    ours = {(m, re.sub(r"\{[^}]+\}", "{}", p)) for m, p in REST_TABLE}
    assert documented == ours
