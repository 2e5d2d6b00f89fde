"""Errors as ``application/problem+json`` (RFC 9457), mapped in one place.

Every expected error has a stable ``type``; nothing expected is ever a 500, and no
response carries a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from app.engine import (
    FlowcoreError,
    InputValidationError,
    WorkflowValidationError,
)
from app.engine.checkpoint import CheckpointNotFoundError
from app.store.repository import (
    IdempotencyConflict,
    InvalidCursor,
    InvalidTransition,
    NotFound,
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


def problem(
    status: int, type: str, title: str, detail: str, instance: str | None = None, **extra: Any
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
    return JSONResponse(body, status_code=status, media_type=PROBLEM)


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

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return problem(404, "not-found", "Not found", str(exc), request.url.path)

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
        titles = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}
        kind = {404: "not-found", 405: "method-not-allowed", 413: "payload-too-large"}
        return problem(
            exc.status_code,
            kind.get(exc.status_code, f"http-{exc.status_code}"),
            titles.get(exc.status_code, "HTTP error"),
            str(exc.detail),
            request.url.path,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem(500, "internal", "Internal error", "an unexpected error occurred")
