"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from starlette.responses import JSONResponse

from app.api.deps import CallerDep, ServicesDep
from app.api.errors import problems
from app.api.schemas import Health
from app.observability.metrics import metrics_response
from app.runtime.access import Role

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
    found = await services.health.readiness()
    body = Health(status=found.status, checks=found.checks)
    return JSONResponse(body.model_dump(), status_code=200 if found.ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus exposition"}},
)
async def metrics(request: Request, caller: CallerDep) -> Response:
    """Prometheus metrics (flowcore_*), for every worker of this replica: for a
    ``metrics`` or ``admin`` key (or without one on FLOWCORE_METRICS_PORT)."""
    caller.need(Role.METRICS)
    return metrics_response(request)
