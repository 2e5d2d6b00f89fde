"""Errors as ``application/problem+json`` (RFC 9457), mapped in one place.

Every expected error has a stable ``type``; nothing expected is ever a 500, and no
response carries a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse
from starlette.routing import Match

from app.api.body import BodyProblem
from app.api.ratelimit import RateLimitExceeded
from app.engine import (
    CheckpointNotFoundError,
    FlowcoreError,
    InputValidationError,
    WorkflowValidationError,
)
from app.runtime.access import Forbidden, Unauthenticated
from app.runtime.errors import (
    IdempotencyConflict,
    InvalidCursor,
    InvalidRunConfig,
    InvalidTransition,
    InvalidValue,
    NotFound,
    SecretsUnavailable,
    TooManyRuns,
)

logger = logging.getLogger("flowcore.api")

PROBLEM = "application/problem+json"
TYPE_BASE = "https://flowcore.dev/problems/"


class ApiError(Exception):
    """An expected error with its status, stable type and detail."""

    def __init__(self, status: int, type: str, title: str, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.status = status
        self.type = type
        self.title = title
        self.detail = detail
        self.extra = extra


def not_found(what: str) -> ApiError:
    return ApiError(404, "not-found", "Not found", what)


class ProblemItem(BaseModel):
    """One of several problems: where (field, node, edge) and why."""

    field: str | None = None
    message: str
    code: str | None = None
    node: str | None = None
    edge: str | None = None


class Problem(BaseModel):
    """An error, as ``application/problem+json`` (RFC 9457)."""

    type: str = Field(description="A stable URI naming the kind of problem.")
    title: str
    status: int
    detail: str = Field(description="What was wrong, naming the field or the resource.")
    instance: str | None = Field(None, description="The request path.")
    errors: list[ProblemItem] | None = Field(None, description="Every problem found.")


_DESCRIPTIONS = {
    400: "Bad request: a malformed cursor, Last-Event-ID or body",
    401: "No API key, or one that is malformed, unknown, expired or revoked",
    403: "The key's role does not allow this",
    404: "Not found",
    405: "Method not allowed (the `Allow` header lists the methods)",
    409: "Conflict: an idempotency key reused, or the run is in another state",
    413: "The body exceeds FLOWCORE_MAX_BODY_BYTES",
    422: "A field, parameter or value was refused (each named in `errors`)",
    429: "Too many requests: a rate limit of the key or its namespace, or the namespace's "
    "limit of active runs (`Retry-After` says when to try again)",
    500: "A bug (logged); never for bad input",
    503: "Secrets are not configured on this service (FLOWCORE_SECRET_KEY)",
}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (rendered as problem+json)."""
    return {status: {"model": Problem, "description": _DESCRIPTIONS[status]} for status in statuses}


def problem(
    status: int,
    type: str,
    title: str,
    detail: str,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": TYPE_BASE + type,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    body.update(extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def unauthenticated(instance: str | None) -> JSONResponse:
    """A 401: the same for every reason, so a caller learns nothing of other keys."""
    return problem(
        401,
        "unauthenticated",
        "Unauthenticated",
        "this needs a valid API key: Authorization: Bearer fc_live_...",
        instance,
        headers={"WWW-Authenticate": 'Bearer realm="flowcore"'},
    )


def rate_limited(exc: RateLimitExceeded, instance: str | None) -> JSONResponse:
    """A 429 over a rate limit (``api/ratelimit.py``), with ``Retry-After`` and the
    ``RateLimit`` headers; also for a middleware, which runs outside the handlers."""
    return problem(
        429,
        "rate-limited",
        "Too many requests",
        exc.detail,
        instance,
        headers=exc.headers,
        **{"violated-policies": [exc.policy]},
    )


def install(app: FastAPI) -> None:
    """Register the exception handlers."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem(exc.status, exc.type, exc.title, exc.detail, request.url.path, **exc.extra)

    @app.exception_handler(WorkflowValidationError)
    async def _invalid_workflow(request: Request, exc: WorkflowValidationError) -> JSONResponse:
        return problem(
            422,
            "invalid-workflow",
            "Invalid workflow definition",
            f"the definition has {len(exc.issues)} problem(s)",
            request.url.path,
            errors=[issue.to_dict() for issue in exc.issues],
        )

    @app.exception_handler(InputValidationError)
    async def _invalid_input(request: Request, exc: InputValidationError) -> JSONResponse:
        return problem(
            422,
            "invalid-input",
            "Invalid run input",
            "; ".join(exc.problems),
            request.url.path,
            errors=[{"message": p} for p in exc.problems],
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": ".".join(str(part) for part in err.get("loc", ())),
                "message": err.get("msg", ""),
            }
            for err in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "invalid request"
        return problem(
            422, "invalid-request", "Invalid request", detail, request.url.path, errors=errors
        )

    @app.exception_handler(BodyProblem)
    async def _body(request: Request, exc: BodyProblem) -> JSONResponse:
        return problem(
            422,
            "invalid-request",
            "Invalid request",
            f"{exc.field}: {exc.message}",
            request.url.path,
            errors=[{"field": exc.field, "message": exc.message}],
        )

    @app.exception_handler(InvalidRunConfig)
    async def _run_config(request: Request, exc: InvalidRunConfig) -> JSONResponse:
        return problem(
            422,
            "invalid-config",
            "Invalid run config",
            str(exc),
            request.url.path,
            errors=[issue.to_dict() for issue in exc.issues],
        )

    @app.exception_handler(Unauthenticated)
    async def _unauthenticated(request: Request, exc: Unauthenticated) -> JSONResponse:
        return unauthenticated(request.url.path)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return problem(403, "forbidden", "Forbidden", str(exc), request.url.path)

    @app.exception_handler(TooManyRuns)
    async def _too_many_runs(request: Request, exc: TooManyRuns) -> JSONResponse:
        return problem(
            429,
            "too-many-runs",
            "Too many runs",
            str(exc),
            request.url.path,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(RateLimitExceeded)
    async def _rate_limited(request: Request, exc: RateLimitExceeded) -> JSONResponse:
        return rate_limited(exc, request.url.path)

    @app.exception_handler(InvalidValue)
    async def _bad_value(request: Request, exc: InvalidValue) -> JSONResponse:
        return problem(
            422,
            "invalid-request",
            "Invalid request",
            f"{exc.field}: {exc}",
            request.url.path,
            errors=[{"field": exc.field, "message": str(exc)}],
        )

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return problem(404, "not-found", "Not found", str(exc), request.url.path)

    @app.exception_handler(SecretsUnavailable)
    async def _no_secrets(request: Request, exc: SecretsUnavailable) -> JSONResponse:
        return problem(
            503, "secrets-unavailable", "Secrets unavailable", str(exc), request.url.path
        )

    @app.exception_handler(InvalidCursor)
    async def _cursor(request: Request, exc: InvalidCursor) -> JSONResponse:
        return problem(400, "bad-cursor", "Bad cursor", str(exc), request.url.path)

    @app.exception_handler(CheckpointNotFoundError)
    async def _no_checkpoint(request: Request, exc: CheckpointNotFoundError) -> JSONResponse:
        return problem(404, "not-found", "Not found", str(exc), request.url.path)

    @app.exception_handler(IdempotencyConflict)
    async def _conflict(request: Request, exc: IdempotencyConflict) -> JSONResponse:
        return problem(
            409, "idempotency-conflict", "Idempotency conflict", str(exc), request.url.path
        )

    @app.exception_handler(InvalidTransition)
    async def _transition(request: Request, exc: InvalidTransition) -> JSONResponse:
        return problem(409, "invalid-state", "Invalid run state", str(exc), request.url.path)

    @app.exception_handler(FlowcoreError)
    async def _engine_error(request: Request, exc: FlowcoreError) -> JSONResponse:
        return problem(
            422, f"engine-{exc.kind}", "Rejected by the engine", str(exc), request.url.path
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {
            400: "Bad request",
            404: "Not found",
            405: "Method not allowed",
            413: "Payload too large",
        }
        kind = {
            400: "bad-request",
            404: "not-found",
            405: "method-not-allowed",
            413: "payload-too-large",
        }
        return problem(
            exc.status_code,
            kind.get(exc.status_code, f"http-{exc.status_code}"),
            titles.get(exc.status_code, "HTTP error"),
            str(exc.detail),
            request.url.path,
            headers=_allow(request) if exc.status_code == 405 else None,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem(500, "internal", "Internal error", "an unexpected error occurred")


def _allow(request: Request) -> dict[str, str]:
    """``Allow`` for a 405: every method some route of this path takes (Starlette names
    only those of the first route it matched)."""
    allowed = []
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return {"Allow": ", ".join(allowed)}


def components() -> dict[str, Any]:
    """Schemas the routes refer to by name without a model of their own."""
    from app.api.schemas import JSON_VALUE_SCHEMA, RunConfig

    return {
        "JsonValue": JSON_VALUE_SCHEMA,
        "RunConfig": RunConfig.model_json_schema(ref_template="#/components/schemas/{model}"),
    }


def document_problems(app: FastAPI) -> None:
    """Make ``/openapi.json`` say what the errors are: every 4xx and 5xx response of
    every operation is ``application/problem+json`` with the ``Problem`` schema (FastAPI
    would document its own 422 body, which the API never sends); add the schemas the
    routes refer to by name."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = generate()
        problem_ref = {"$ref": "#/components/schemas/Problem"}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                for status, response in operation.get("responses", {}).items():
                    if status[:1] in ("4", "5"):
                        response["content"] = {PROBLEM: {"schema": problem_ref}}
        definitions = schema.setdefault("components", {}).setdefault("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            definitions.pop(unused, None)
        for name, extra in components().items():
            definitions.setdefault(name, extra)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
