"""The dashboard's pages, and the actions their buttons post.

Pages read through the same functions as the JSON API, and actions call them, so a cancel
from here is the cancel of `POST /jobs/{id}/cancel`: the same checks, events and errors.
"""

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse{% if cookiecutter.use_auth == "yes" %}, Response{% endif %}
from fastapi.templating import Jinja2Templates
from pydantic import ConfigDict, Field, field_validator

from ..about import TITLE
from ..api import jobs as jobs_api
from ..api import queues as queues_api
from ..api import schedules as schedules_api
from ..api import system as system_api
from ..api.deps import StoreDep
from ..api.schemas import JobSelection
from ..jobs.model import Job, JobStatus
from ..jobs.store import JobFilter
from .access import ActingVisitorDep, Visitor, VisitorDep{% if cookiecutter.use_auth == "yes" %}, check_csrf_token, get_access{% endif %}
from .chart import chart_of

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
TEMPLATES.env.globals["service_name"] = TITLE
# The dashboard's mount in the service app: route names are looked up as `dashboard:<name>`,
# apart from the API's (`retry_job` is both).
NAME = "dashboard"
PER_PAGE = 50
NEWEST_FAILED = 10
# A queued job's page counts the jobs ahead of it up to here: past it, the number says little.
AHEAD_COUNTED = 10_000

router = APIRouter()


def render(
    request: Request,
    template: str,
    visitor: Visitor | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    # What the last action did, shown once, on the page it led to.
    notice = request.session.pop("notice", None)
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {"visitor": visitor, "notice": notice, **context},
        status_code=status_code,
    )


def see_other(request: Request, route: str, **path_params: Any) -> RedirectResponse:
    # 303: the browser follows a form's POST with a GET, so reloading does not post again.
    return RedirectResponse(request.url_for(f"{NAME}:{route}", **path_params), status_code=303)


@router.get("/")
async def overview(request: Request, visitor: VisitorDep, store: StoreDep) -> HTMLResponse:
    failures = await store.list_jobs(JobFilter(status=JobStatus.FAILED), NEWEST_FAILED, 0)
    return render(
        request,
        "overview.html",
        visitor,
        stats=await system_api.stats(store),
        queues=await queues_api.list_queues(store, request),
        failures=failures,
        chart=chart_of((await system_api.throughput(store, request)).minutes),
    )


class JobFilterForm(JobSelection):
    """The jobs page's filters, as its forms send them: an empty field means any."""

    # The forms carry their CSRF token too.
    model_config = ConfigDict(extra="ignore")

    @field_validator("status", "queue", "task", mode="before")
    @classmethod
    def _blank_means_any(cls, value: object) -> object:
        return None if value == "" else value

    def filters(self) -> dict[str, str]:
        """The filters set, as the jobs page's query parameters."""
        fields = self.model_dump(include={"status", "queue", "task"})
        return {key: str(value) for key, value in fields.items() if value}


class JobListQuery(JobFilterForm):
    page: int = Field(1, ge=1, le=jobs_api.MAX_OFFSET // PER_PAGE)


@router.get("/jobs")
async def job_list(
    request: Request,
    visitor: VisitorDep,
    store: StoreDep,
    query: Annotated[JobListQuery, Query()],
) -> HTMLResponse:
    # One more than a page, to know whether there is a next one.
    found = await store.list_jobs(query.where(), PER_PAGE + 1, (query.page - 1) * PER_PAGE)
    filters = query.filters()
    return render(
        request,
        "jobs.html",
        visitor,
        jobs=found[:PER_PAGE],
        query=query,
        filters=filters,
        has_next=len(found) > PER_PAGE,
        statuses=list(JobStatus),
    )


@router.post("/jobs/cancel")
async def cancel_selected(
    request: Request,
    _: ActingVisitorDep,
    store: StoreDep,
    selection: Annotated[JobFilterForm, Form()],
) -> RedirectResponse:
    outcome = await jobs_api.cancel_selected(selection.where(), store, request)
    cancelled, stopping = outcome.cancelled, outcome.stopping
    request.session["notice"] = (
        f"Cancelled {cancelled} queued jobs; asked {stopping} running jobs to stop."
    )
    return see_job_list(request, selection)


@router.post("/jobs/retry")
async def retry_selected(
    request: Request,
    _: ActingVisitorDep,
    store: StoreDep,
    selection: Annotated[JobFilterForm, Form()],
) -> RedirectResponse:
    outcome = await jobs_api.retry_selected(selection.where(), store, request)
    request.session["notice"] = f"Queued {outcome.retried} failed or cancelled jobs again."
    return see_job_list(request, selection)


def see_job_list(request: Request, selection: JobFilterForm) -> RedirectResponse:
    url = request.url_for(f"{NAME}:job_list").include_query_params(**selection.filters())
    return RedirectResponse(url, status_code=303)


@router.get("/jobs/{job_id}")
async def job_page(
    request: Request, job_id: int, visitor: VisitorDep, store: StoreDep
) -> HTMLResponse:
    job = await jobs_api.get_job(job_id, store)
    why = None
    if job.status is JobStatus.QUEUED:
        # Only a queued job needs its queue's state, which costs a count of every queue.
        queues = {queue.name: queue for queue in await queues_api.list_queues(store, request)}
        why = why_not_running(job, queues, request.app.state.clock.now())
        if why is None:
            why = waiting_behind(job, await store.count_jobs_ahead(job, AHEAD_COUNTED))
    return render(request, "job.html", visitor, job=job, why=why)


def why_not_running(job: Job, queues: dict[str, Any], now: datetime) -> str | None:
    """What keeps a queued job from starting, if not the jobs ahead of it."""
    if job.run_at > now:
        return f"Scheduled for {job.run_at:%Y-%m-%d %H:%M:%S} UTC."
    queue = queues.get(job.queue)
    if queue is not None and queue.paused:
        return f"Its queue {job.queue} is paused."
    if queue is not None and queue.concurrency is None:
        return f"No worker process serves the queue {job.queue}."
    return None


def waiting_behind(job: Job, ahead: int) -> str:
    if ahead == 0:
        return f"Due: next in line for a free worker of the queue {job.queue}."
    count = f"{AHEAD_COUNTED:,} or more" if ahead >= AHEAD_COUNTED else f"{ahead:,}"
    return (
        f"Due: waiting behind {count} jobs of the queue {job.queue} that go first"
        " (a higher priority, or due earlier)."
    )


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(
    request: Request, job_id: int, _: ActingVisitorDep, store: StoreDep
) -> RedirectResponse:
    await jobs_api.cancel_job(job_id, store, request)
    return see_other(request, "job_page", job_id=job_id)


@router.post("/jobs/{job_id}/retry")
async def retry_job(
    request: Request, job_id: int, _: ActingVisitorDep, store: StoreDep
) -> RedirectResponse:
    await jobs_api.retry_job(job_id, store)
    return see_other(request, "job_page", job_id=job_id)


@router.get("/queues")
async def queue_list(request: Request, visitor: VisitorDep, store: StoreDep) -> HTMLResponse:
    queues = await queues_api.list_queues(store, request)
    return render(request, "queues.html", visitor, queues=queues)


@router.post("/queues/{name}/pause")
async def pause_queue(
    request: Request, name: queues_api.QueueName, _: ActingVisitorDep, store: StoreDep
) -> RedirectResponse:
    await queues_api.pause_queue(name, store, request)
    return see_other(request, "queue_list")


@router.post("/queues/{name}/resume")
async def resume_queue(
    request: Request, name: queues_api.QueueName, _: ActingVisitorDep, store: StoreDep
) -> RedirectResponse:
    await queues_api.resume_queue(name, store, request)
    return see_other(request, "queue_list")


@router.get("/schedules")
async def schedule_list(request: Request, visitor: VisitorDep, store: StoreDep) -> HTMLResponse:
    schedules = await schedules_api.list_schedules(store, request)
    return render(request, "schedules.html", visitor, schedules=schedules)


@router.post("/schedules/{name}/pause")
async def pause_schedule(
    request: Request, name: str, _: ActingVisitorDep, store: StoreDep
) -> RedirectResponse:
    await schedules_api.pause_schedule(name, store, request)
    return see_other(request, "schedule_list")


@router.post("/schedules/{name}/resume")
async def resume_schedule(
    request: Request, name: str, _: ActingVisitorDep, store: StoreDep
) -> RedirectResponse:
    await schedules_api.resume_schedule(name, store, request)
    return see_other(request, "schedule_list")
{%- if cookiecutter.use_auth == "yes" %}


@router.get("/login")
async def login_page(request: Request) -> Response:
    if get_access(request).open:
        return see_other(request, "overview")
    return render(request, "login.html", None)


@router.post("/login")
async def sign_in(request: Request, secret: Annotated[str, Form(max_length=1000)] = "") -> Response:
    access = get_access(request)
    key = access.identify(secret.strip())
    if key is None:
        return render(
            request, "login.html", None, status_code=401, error="The API key is not valid"
        )
    access.sign_in(request, key)
    return see_other(request, "overview")


@router.post("/logout")
async def sign_out(
    request: Request, visitor: VisitorDep, csrf_token: Annotated[str, Form()] = ""
) -> RedirectResponse:
    check_csrf_token(visitor, csrf_token)
    request.session.clear()
    return see_other(request, "login_page")
{%- endif %}
