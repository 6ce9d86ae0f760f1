"""Every error leaves the API as `{"error": "<message>"}`; nothing leaks a traceback."""

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..jobs.store import JobConflict, StoreFull, StoreUnavailable
from .schemas import ErrorBody

logger = logging.getLogger(__name__)
# Seconds a client should wait before trying again a request the store could not serve.
RETRY_AFTER = {"Retry-After": "1"}

# Where FastAPI found the value: not part of the field's name.
SOURCES = frozenset({"body", "query", "path", "header", "cookie"})
ERROR_BODY_REF = {"$ref": "#/components/schemas/ErrorBody"}
# Said instead of the reason phrases Starlette gives these when nothing more is known.
HTTP_MESSAGES = {
    404: "Not found",
    405: "Method not allowed",
}


def error_response(status_code: int, message: str, **kwargs: Any) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, **kwargs)


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """One line naming each invalid field and what is wrong: `payload: Field required`."""
    return "; ".join(_describe(error) for error in errors)


def _describe(error: dict[str, Any]) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "json_invalid":
        # FastAPI puts the parser's position where a field would be.
        return f"body: Malformed JSON: {error.get('ctx', {}).get('error', message)}"
    loc = tuple(error["loc"])
    source, field = (loc[:1], loc[1:]) if loc and loc[0] in SOURCES else ((), loc)
    if field:
        return f"{_field_name(field)}: {message}"
    # pydantic's own errors come with a documentation URL; a model's custom error about a
    # whole body (PydanticCustomError) has none, and is a complete sentence already.
    if "url" not in error or not source:
        return message
    return f"{source[0]}: {message}"


def _field_name(path: Sequence[str | int]) -> str:
    """`jobs[3].payload` for ("jobs", 3, "payload")."""
    name = ""
    for part in path:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else part
    return name


def allowed_methods(request: Request) -> str | None:
    """Every method the OpenAPI document gives the path of the route that answered 405.

    Starlette's Allow names the methods of the first route on that path only: `GET, HEAD`
    for `POST /jobs`'s neighbour, never both.
    """
    path = getattr(request.scope.get("route"), "path_format", None)
    operations = request.app.openapi().get("paths", {}).get(path)
    if not operations:
        return None
    methods = {method.upper() for method in operations}
    if "GET" in methods:
        methods.add("HEAD")  # Starlette answers HEAD wherever it answers GET
    return ", ".join(sorted(methods))


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to a JSON error body with the right status."""

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        # A detail of its own (`Job not found`) is kept; Starlette's default is the reason phrase.
        default = exc.detail == HTTPStatus(exc.status_code).phrase
        message = HTTP_MESSAGES.get(exc.status_code, exc.detail) if default else exc.detail
        headers = exc.headers
        if exc.status_code == 405 and (allowed := allowed_methods(request)):
            headers = {**(headers or {}), "Allow": allowed}
        return error_response(exc.status_code, message, headers=headers)

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return error_response(400, describe_validation_errors(exc.errors()))

    async def conflict(_: Request, exc: Exception) -> JSONResponse:
        return error_response(409, str(exc))

    async def store_unavailable(_: Request, exc: Exception) -> JSONResponse:
        logger.error("Job store unavailable: %s", exc)
        return error_response(503, "Job store unavailable", headers=RETRY_AFTER)

    async def store_full(_: Request, exc: Exception) -> JSONResponse:
        # The store says so once per episode, not once per request.
        return error_response(507, f"Job store is full: {exc}", headers=RETRY_AFTER)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        logger.error("Unhandled error", exc_info=exc)
        return error_response(500, "Internal server error")

    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(JobConflict, conflict)
    app.add_exception_handler(StoreUnavailable, store_unavailable)
    app.add_exception_handler(StoreFull, store_full)
    app.add_exception_handler(Exception, unexpected)


def document_validation_errors_as_400(app: FastAPI) -> None:
    """Make `/openapi.json` say what `invalid_request` does: 400 with an error body.

    FastAPI documents a 422 with its own error schema for every route that takes parameters
    or a body, and offers no switch for another status: the document is edited once, the
    way FastAPI's "Extending OpenAPI" shows.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        for operations in document.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.get("responses", {})
                if responses.pop("422", None) is not None and "400" not in responses:
                    schemas.setdefault("ErrorBody", ErrorBody.model_json_schema())
                    responses["400"] = {
                        "description": "The request is invalid.",
                        "content": {"application/json": {"schema": ERROR_BODY_REF}},
                    }
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        return document

    app.openapi = openapi  # type: ignore[method-assign]
