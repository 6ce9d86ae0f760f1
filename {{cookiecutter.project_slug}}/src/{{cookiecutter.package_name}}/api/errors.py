"""Every error leaves the API as `{"error": "<message>"}`; nothing leaks a traceback."""

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..jobs.store import StoreUnavailable

logger = logging.getLogger(__name__)


class FastJSONResponse(JSONResponse):
    """JSON rendered by orjson, the codec the stores use."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class BadRequest(Exception):
    """The client sent something the API cannot accept (400)."""

    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PayloadTooLarge(BadRequest):
    status_code = 413


def error_response(status_code: int, message: str) -> FastJSONResponse:
    return FastJSONResponse({"error": message}, status_code=status_code)


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to a JSON error body with the right status."""

    async def bad_request(_: Request, exc: Exception) -> FastJSONResponse:
        assert isinstance(exc, BadRequest)
        return error_response(exc.status_code, exc.message)

    async def http_error(_: Request, exc: Exception) -> FastJSONResponse:
        assert isinstance(exc, HTTPException)
        messages = {404: "Not found", 405: "Method not allowed"}
        message = messages.get(exc.status_code, str(exc.detail))
        return FastJSONResponse({"error": message}, exc.status_code, headers=exc.headers)

    async def invalid_request(_: Request, exc: Exception) -> FastJSONResponse:
        return error_response(400, "Invalid request")

    async def store_unavailable(_: Request, exc: Exception) -> FastJSONResponse:
        logger.error("Job store unavailable: %s", exc)
        return error_response(503, "Job store unavailable")

    async def unexpected(_: Request, exc: Exception) -> FastJSONResponse:
        logger.error("Unhandled error", exc_info=exc)
        return error_response(500, "Internal server error")

    app.add_exception_handler(BadRequest, bad_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StoreUnavailable, store_unavailable)
    app.add_exception_handler(Exception, unexpected)
