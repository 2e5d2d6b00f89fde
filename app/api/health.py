"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.responses import JSONResponse

from app.api.deps import ServicesDep
from app.api.errors import problems
from app.api.schemas import Health
from app.observability.metrics import metrics_response

router = APIRouter(tags=["health"], responses=problems(500))


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when the database answers and is migrated to head. A Redis outage is
    reported (``status: degraded``, ``checks.redis.state: down``) but stays 200: runs go
    on with in-process fallbacks."""
    checks: dict[str, object] = {}
    ready = True
    try:
        checks["database_latency_ms"] = round(await services.store.ping() * 1000, 2)
        current = await services.store.current_revision()
        head = services.migrations_head
        checks["migration"] = current
        if current != head:
            ready = False
            checks["migration_expected"] = head
    except Exception as exc:
        ready = False
        checks["database"] = f"unreachable: {type(exc).__name__}"
    checks["dispatcher"] = "on" if services.dispatcher is not None else "off"
    degraded = False
    if services.redis is None:
        checks["redis"] = {"state": "not configured"}
    else:
        # a Redis outage degrades the replica (in-process fallbacks) but keeps it ready
        latency = await services.redis.ping()
        redis = services.redis.status()
        if latency is not None:
            redis["latency_ms"] = round(latency * 1000, 2)
        checks["redis"] = redis
        degraded = redis["state"] != "up"
    status = "not ready" if not ready else "degraded" if degraded else "ready"
    body = Health(status=status, checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition"}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics (flowcore_*), for every worker of this replica."""
    return metrics_response(request)
