"""JSON request bodies, read strictly: whatever a body holds, it is stored exactly as
sent or refused with a 422 that names the field.

``json.loads`` alone accepts ``NaN`` and ``Infinity`` (and turns ``1e999`` into an
infinity), keeps ``\\u0000`` and lone surrogates in strings, and gives up on deep nesting
with an error FastAPI reports as an anonymous 400. :class:`CheckedRoute` (the route class
of every router) parses bodies with those constants refused and then inspects the value
(:func:`app.engine.inspect_value`): no NUL, no lone surrogate, no non-finite number, and at
most ``max_value_depth`` levels inside the body object.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from app.engine import ValueProblem, inspect_value


class BodyProblem(HTTPException):
    """A body no store could hold: ``field`` (``body.input.a[2]``) and why. (An
    HTTPException only so that FastAPI lets it through its body reading unchanged;
    ``api.errors`` renders it as a 422 ``invalid-request``.)"""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(422, f"{field}: {message}")
        self.field = field
        self.message = message


def parse_body(raw: bytes, max_depth: int) -> Any:
    """The body's JSON value, or BodyProblem (json.JSONDecodeError for malformed JSON,
    which FastAPI reports with its position)."""
    try:
        # NaN and Infinity parse (as 1e999 does) and are refused below, by their path
        value = json.loads(raw)
    except RecursionError:
        raise BodyProblem("body", f"nests deeper than {max_depth} levels") from None
    except UnicodeDecodeError:
        raise BodyProblem("body", "is not UTF-8") from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise BodyProblem("body", f"holds a number that cannot be read: {exc}") from None
    try:
        # the body object itself is one level: its fields may nest max_depth more
        inspect_value(value, max_depth=max_depth + 1)
    except ValueProblem as problem:
        reason = problem.reason
        if "nests deeper" in reason:
            reason = f"nests deeper than {max_depth} levels (max_value_depth)"
        raise BodyProblem("body" + problem.path, reason) from None
    return value


class _CheckedRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            services = self.app.state.services
            self._json = parse_body(await self.body(), services.limits.max_value_depth)
        return self._json


class CheckedRoute(APIRoute):
    """An APIRoute whose JSON bodies are parsed by :func:`parse_body`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            return await handler(_CheckedRequest(request.scope, request.receive))

        return checked
