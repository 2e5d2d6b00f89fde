"""Liveness and readiness."""

from __future__ import annotations

from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from fastapi import APIRouter
from starlette.responses import JSONResponse

from app.api.deps import ServicesDep
from app.api.schemas import Health
from app.store.db import ping

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when the database answers and is migrated to head."""
    checks: dict[str, object] = {}
    ready = True
    try:
        checks["database_latency_ms"] = round(await ping(services.store.engine) * 1000, 2)
        async with services.store.engine.connect() as conn:
            current = await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
        head = services.migrations_head
        checks["migration"] = current
        if current != head:
            ready = False
            checks["migration_expected"] = head
    except Exception as exc:
        ready = False
        checks["database"] = f"unreachable: {type(exc).__name__}"
    checks["dispatcher"] = "on" if services.dispatcher is not None else "off"
    body = Health(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def migrations_head() -> str | None:
    from app.store.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
