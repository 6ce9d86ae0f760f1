"""The dashboard at /dashboard: pages rendered on the server for the people who run the
service{% if cookiecutter.use_auth == "yes" %}, signed in with an API key{% endif %}. It is an app of its own, mounted on the service's, so
that its session cookie and HTML errors stay under /dashboard and out of the API."""

import logging
from http import HTTPStatus
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.middleware.sessions import SessionMiddleware

from ..api.errors import describe_validation_errors
from ..jobs.store import JobConflict, StoreUnavailable
from ..settings import Settings
from . import pages
from .access import Access, SignInRequired

logger = logging.getLogger(__name__)

PATH = "/dashboard"
NAME = pages.NAME
STATIC_DIR = Path(__file__).parent / "static"
# A session unused this long ends (each answer renews it).
SESSION_SECONDS = 8 * 60 * 60


def create_dashboard(state: State, settings: Settings) -> FastAPI:
    """The dashboard app; `state` is the service app's, for its store, settings and clock."""
    access = Access({% if cookiecutter.use_auth == "yes" %}settings.api_keys{% endif %})
    dashboard = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    dashboard.state = state
    state.dashboard_access = access
    dashboard.add_middleware(
        SessionMiddleware,
        secret_key=access.session_secret,
        session_cookie="dashboard_session",
        max_age=SESSION_SECONDS,
        path=PATH,
        same_site="strict",
    )
    dashboard.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    dashboard.include_router(pages.router)
    install_page_error_handlers(dashboard)
    return dashboard


def install_page_error_handlers(dashboard: FastAPI) -> None:
    """Errors as pages, with the status and message the JSON API would give."""

    def error_page(request: Request, status_code: int, message: str) -> Response:
        access: Access = request.app.state.dashboard_access
        return pages.render(
            request,
            "error.html",
            access.visitor(request),
            status_code=status_code,
            message=message,
        )

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = exc.detail or HTTPStatus(exc.status_code).phrase
        return error_page(request, exc.status_code, message)

    async def invalid_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_page(request, 400, describe_validation_errors(exc.errors()))

    async def conflict(request: Request, exc: Exception) -> Response:
        return error_page(request, 409, str(exc))

    async def store_unavailable(request: Request, exc: Exception) -> Response:
        logger.error("Job store unavailable: %s", exc)
        return error_page(request, 503, "Job store unavailable")

    async def sign_in_required(request: Request, _: Exception) -> Response:
        return pages.see_other(request, "login_page")

    dashboard.add_exception_handler(HTTPException, http_error)
    dashboard.add_exception_handler(RequestValidationError, invalid_request)
    dashboard.add_exception_handler(JobConflict, conflict)
    dashboard.add_exception_handler(StoreUnavailable, store_unavailable)
    dashboard.add_exception_handler(SignInRequired, sign_in_required)
