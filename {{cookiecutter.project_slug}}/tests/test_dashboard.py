"""The dashboard at /dashboard: its pages, its actions, and who may use them."""

{% if cookiecutter.use_auth == "yes" -%}
import base64
import json
{% endif -%}
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from html import unescape

import httpx
import pytest
from fastapi import FastAPI

from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.jobs.model import Job, JobStatus, NewJob
from {{ cookiecutter.package_name }}.jobs.registry import TaskRegistry
from {{ cookiecutter.package_name }}.jobs.store import JobStore
from {{ cookiecutter.package_name }}.settings import Settings

from .conftest import SettingsFactory, serve, wait_until

# Jobs in this queue stay where the tests put them: the queue is paused before any arrives.
HELD = "held"
PAGES = [
    "/dashboard/",
    "/dashboard/jobs",
    "/dashboard/jobs/1",
    "/dashboard/queues",
    "/dashboard/schedules",
]
ACTIONS = [
    "/dashboard/jobs/1/cancel",
    "/dashboard/jobs/1/retry",
    "/dashboard/jobs/cancel",
    "/dashboard/jobs/retry",
    f"/dashboard/queues/{HELD}/resume",
    "/dashboard/schedules/nightly_report/pause",
]
{%- if cookiecutter.use_auth == "yes" %}
ADMIN_SECRET = "admin-secret-0123456789abcdef"
READER_SECRET = "reader-secret-0123456789abcdef"
API_KEYS = f"ops:{ADMIN_SECRET},viewer:{READER_SECRET}:read"
{%- endif %}


@pytest.fixture
def settings(make_settings: SettingsFactory) -> Settings:
    return make_settings({% if cookiecutter.use_auth == "yes" %}api_keys=API_KEYS{% endif %})


def dashboard_registry() -> TaskRegistry:
    registry = TaskRegistry()

    @registry.task("nightly_report", cron="0 3 * * *")
    def nightly_report(_job: Job) -> None:
        pass

    @registry.task("fail")
    def fail(_job: Job) -> None:
        raise RuntimeError("task 'fail' always fails")

    return registry


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings, registry=dashboard_registry())


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(app) as client:
        await store_of(app).pause_queue(HELD)
        yield client


def store_of(app: FastAPI) -> JobStore:
    store: JobStore = app.state.store
    return store


async def held_job(app: FastAPI, **fields: object) -> Job:
    payload = fields.pop("payload", {"task": "send_email", "to": "a@example.com"})
    job, _ = await store_of(app).insert_job(NewJob(payload=payload, queue=HELD, **fields))
    return job


def csrf_token(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, "the page has no form"
    return found[1]


def message(page: httpx.Response) -> str:
    found = re.search(r'class="error-message">([^<]*)<', page.text)
    assert found, page.text
    return unescape(found[1])


async def act(client: httpx.AsyncClient, path: str, token: str) -> httpx.Response:
    return await client.post(path, data={"csrf_token": token})
{%- if cookiecutter.use_auth == "yes" %}


async def sign_in(client: httpx.AsyncClient, secret: str) -> httpx.Response:
    return await client.post("/dashboard/login", data={"secret": secret})


@pytest.fixture
async def admin(client: httpx.AsyncClient) -> httpx.AsyncClient:
    signed_in = await sign_in(client, ADMIN_SECRET)
    assert signed_in.status_code == 303
    return client
{%- else %}


@pytest.fixture
async def admin(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """Anyone who can reach an open dashboard may do everything."""
    return client
{%- endif %}


# --- Pages ---


async def test_every_page_is_html_drawn_from_the_store(
    app: FastAPI, admin: httpx.AsyncClient
) -> None:
    await held_job(app)

    for path in PAGES:
        page = await admin.get(path)
        assert page.status_code == 200, (path, page.text)
        assert page.headers["content-type"].startswith("text/html")


async def test_the_overview_counts_jobs_by_status_and_by_queue(
    app: FastAPI, admin: httpx.AsyncClient
) -> None:
    for _ in range(3):
        await held_job(app)
    cancelled = await held_job(app)
    await store_of(app).cancel_job(cancelled.id)

    page = await admin.get("/dashboard/")

    counts = dict(re.findall(r'data-status="(\w+)">(\d+)<', page.text))
    assert counts == {"queued": "3", "running": "0", "done": "0", "failed": "0", "cancelled": "1"}
    row = re.search(rf">{HELD}</a></td>(.*?)</tr>", page.text, re.S)
    assert row is not None
    assert re.findall(r"<td>(\d+)</td>", row[1]) == ["3", "0", "0", "0", "1"]


async def test_the_jobs_page_filters_by_status_queue_and_task_newest_first(
    app: FastAPI, admin: httpx.AsyncClient
) -> None:
    email = await held_job(app)
    report = await held_job(app, payload={"task": "nightly_report"})
    await store_of(app).cancel_job(report.id)

    def listed(page: httpx.Response) -> list[int]:
        return [int(job_id) for job_id in re.findall(r'/dashboard/jobs/(\d+)">', page.text)]

    assert listed(await admin.get("/dashboard/jobs")) == [report.id, email.id]
    assert listed(await admin.get("/dashboard/jobs?status=&queue=&task=")) == [report.id, email.id]
    assert listed(await admin.get("/dashboard/jobs?status=queued")) == [email.id]
    assert listed(await admin.get("/dashboard/jobs?task=nightly_report")) == [report.id]
    assert listed(await admin.get(f"/dashboard/jobs?queue={HELD}&status=cancelled")) == [report.id]
    assert listed(await admin.get("/dashboard/jobs?queue=default")) == []


async def test_the_jobs_page_goes_back_in_pages_of_50_keeping_its_filters(
    app: FastAPI, admin: httpx.AsyncClient
) -> None:
    first = await held_job(app)
    for _ in range(50):
        await held_job(app)

    newest = await admin.get(f"/dashboard/jobs?queue={HELD}")
    older = re.search(r'rel="next" href="([^"]+)"', newest.text)
    assert older is not None
    second = await admin.get(unescape(older[1]))

    assert len(re.findall(r'/dashboard/jobs/(\d+)">', newest.text)) == 50
    assert f"queue={HELD}" in unescape(older[1])
    assert re.findall(r'/dashboard/jobs/(\d+)">', second.text) == [str(first.id)]
    assert 'rel="next"' not in second.text
    assert 'rel="prev"' in second.text


@pytest.mark.parametrize(
    ("path", "status", "said"),
    [
        ("/dashboard/jobs?status=lost", 400, "status: Input should be"),
        ("/dashboard/jobs?queue=Not%20a%20queue", 400, "queue: String should match pattern"),
        ("/dashboard/jobs?page=0", 400, "page: Input should be greater than or equal to 1"),
        ("/dashboard/jobs/abc", 400, "job_id: Input should be a valid integer"),
        ("/dashboard/jobs/999", 404, "Job not found"),
        ("/dashboard/nowhere", 404, "Not Found"),
    ],
)
async def test_a_bad_request_gets_a_page_saying_what_was_wrong(
    admin: httpx.AsyncClient, path: str, status: int, said: str
) -> None:
    page = await admin.get(path)

    assert page.status_code == status
    assert page.headers["content-type"].startswith("text/html")
    assert message(page).startswith(said)


async def test_a_job_page_shows_its_payload_and_why_it_is_not_running(
    app: FastAPI, admin: httpx.AsyncClient
) -> None:
    later = app.state.clock.now() + timedelta(days=1)
    scheduled = await held_job(app, run_at=later)
    waiting = await held_job(app, payload={"task": "send_email", "to": "<b>x</b>@example.com"})

    scheduled_page = await admin.get(f"/dashboard/jobs/{scheduled.id}")
    waiting_page = await admin.get(f"/dashboard/jobs/{waiting.id}")

    assert f"Scheduled for {later:%Y-%m-%d %H:%M:%S} UTC." in scheduled_page.text
    assert f"Its queue {HELD} is paused." in waiting_page.text
    # Payloads are data, never markup.
    assert "<b>x</b>" not in waiting_page.text
    assert "\\u003cb\\u003ex\\u003c/b\\u003e@example.com" in waiting_page.text


async def test_a_due_job_s_page_says_how_many_jobs_of_its_queue_go_first(
    app: FastAPI, admin: httpx.AsyncClient
) -> None:
    await app.state.engine.stop(0)
    store = store_of(app)
    first, second, urgent = [
        (await store.insert_job(NewJob(payload={}, queue="emails", priority=priority))).job
        for priority in (1, 1, 0)
    ]

    pages = [(await admin.get(f"/dashboard/jobs/{job.id}")).text for job in (first, second, urgent)]

    assert "Due: waiting behind 1 jobs of the queue emails that go first" in pages[0]
    assert "Due: waiting behind 2 jobs of the queue emails that go first" in pages[1]
    assert "Due: next in line for a free worker of the queue emails." in pages[2]


async def test_a_failed_job_s_page_shows_each_attempt_s_error_and_offers_a_retry(
    app: FastAPI, admin: httpx.AsyncClient
) -> None:
    job, _ = await store_of(app).insert_job(NewJob(payload={"task": "fail"}, max_attempts=1))

    async def failed() -> bool:
        found = await store_of(app).get_job(job.id)
        return found is not None and found.status is JobStatus.FAILED

    await wait_until(failed, timeout=5, message="the job to fail")
    page = await admin.get(f"/dashboard/jobs/{job.id}")

    assert "task &#39;fail&#39; always fails" in page.text
    assert f"/dashboard/jobs/{job.id}/retry" in page.text
    assert f"/dashboard/jobs/{job.id}/cancel" not in page.text


async def test_the_overview_charts_the_attempts_that_ended_in_the_last_hour(
    app: FastAPI, admin: httpx.AsyncClient
) -> None:
    store = store_of(app)
    await store.insert_all_jobs(
        [NewJob(payload={}), NewJob(payload={"task": "fail"}, max_attempts=1)]
    )

    async def both_counted() -> bool:
        minutes = await store.recent_outcomes(app.state.clock.now() - timedelta(hours=1))
        return (sum(m.completed for m in minutes), sum(m.failed for m in minutes)) == (1, 1)

    await wait_until(both_counted, timeout=5, message="both attempts to be counted")
    page = await admin.get("/dashboard/")

    assert '<span class="legend completed" data-outcome="completed">1 completed</span>' in page.text
    assert '<span class="legend failed" data-outcome="failed">1 failed</span>' in page.text
    bars = re.findall(r"<title>\d\d:\d\d UTC: \d+ completed, \d+ failed</title>", page.text)
    assert len(bars) == 60


async def test_pages_load_nothing_from_elsewhere(app: FastAPI, admin: httpx.AsyncClient) -> None:
    await held_job(app)

    for path in PAGES:
        page = await admin.get(path)
        links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        assert links
        assert all(link.startswith("http://test/dashboard/") for link in links), links
    stylesheet = await admin.get("/dashboard/static/dashboard.css")
    assert stylesheet.status_code == 200
    assert stylesheet.headers["content-type"].startswith("text/css")


# --- Actions ---


async def test_cancel_and_retry_change_the_job_and_come_back_to_its_page(
    app: FastAPI, admin: httpx.AsyncClient
) -> None:
    job = await held_job(app)
    token = csrf_token(await admin.get(f"/dashboard/jobs/{job.id}"))

    cancelled = await act(admin, f"/dashboard/jobs/{job.id}/cancel", token)
    after_cancel = await store_of(app).get_job(job.id)
    retried = await act(admin, f"/dashboard/jobs/{job.id}/retry", token)
    after_retry = await store_of(app).get_job(job.id)

    assert cancelled.status_code == retried.status_code == 303
    assert cancelled.headers["location"] == f"http://test/dashboard/jobs/{job.id}"
    assert after_cancel is not None and after_cancel.status is JobStatus.CANCELLED
    assert after_retry is not None and after_retry.status is JobStatus.QUEUED


async def test_bulk_cancel_and_retry_change_every_job_the_filters_select(
    app: FastAPI, admin: httpx.AsyncClient
) -> None:
    selected = [await held_job(app) for _ in range(3)]
    other = await held_job(app, payload={"task": "render"})
    listing = await admin.get("/dashboard/jobs", params={"task": "send_email"})
    token = csrf_token(listing)
    form = {"csrf_token": token, "task": "send_email"}

    cancelled = await admin.post("/dashboard/jobs/cancel", data=form)
    after_cancel = [await store_of(app).get_job(job.id) for job in [*selected, other]]
    notice = await admin.get(cancelled.headers["location"])
    retried = await admin.post("/dashboard/jobs/retry", data={**form, "status": "cancelled"})
    after_retry = [await store_of(app).get_job(job.id) for job in selected]

    assert '<input type="hidden" name="task" value="send_email">' in listing.text
    assert cancelled.status_code == retried.status_code == 303
    assert cancelled.headers["location"] == "http://test/dashboard/jobs?task=send_email"
    assert retried.headers["location"] == (
        "http://test/dashboard/jobs?status=cancelled&task=send_email"
    )
    cancelled_ones, untouched = after_cancel[:3], after_cancel[3]
    assert [job and job.status for job in cancelled_ones] == [JobStatus.CANCELLED] * 3
    assert untouched is not None and untouched.status is JobStatus.QUEUED
    assert "Cancelled 3 queued jobs; asked 0 running jobs to stop." in notice.text
    # Said once: the next page has no notice.
    assert "Cancelled 3" not in (await admin.get("/dashboard/jobs")).text
    assert [job and job.status for job in after_retry] == [JobStatus.QUEUED] * 3


async def test_an_action_the_job_cannot_take_is_a_409_page(
    app: FastAPI, admin: httpx.AsyncClient
) -> None:
    job = await held_job(app)
    token = csrf_token(await admin.get(f"/dashboard/jobs/{job.id}"))

    refused = await act(admin, f"/dashboard/jobs/{job.id}/retry", token)

    assert refused.status_code == 409
    assert message(refused) == f"Job {job.id} is queued"


async def test_pause_and_resume_a_queue(app: FastAPI, admin: httpx.AsyncClient) -> None:
    token = csrf_token(await admin.get("/dashboard/queues"))

    resumed = await act(admin, f"/dashboard/queues/{HELD}/resume", token)
    running = {queue.name: queue.paused for queue in await store_of(app).list_queues()}
    paused = await act(admin, "/dashboard/queues/emails/pause", token)
    after = {queue.name: queue.paused for queue in await store_of(app).list_queues()}

    assert resumed.status_code == paused.status_code == 303
    assert resumed.headers["location"] == "http://test/dashboard/queues"
    assert running.get(HELD) is False
    assert after.get("emails") is True


async def test_pause_and_resume_a_schedule(app: FastAPI, admin: httpx.AsyncClient) -> None:
    page = await admin.get("/dashboard/schedules")
    token = csrf_token(page)
    assert "nightly_report" in page.text

    paused = await act(admin, "/dashboard/schedules/nightly_report/pause", token)
    states = {state.name: state.paused for state in await store_of(app).list_schedules()}
    unknown = await act(admin, "/dashboard/schedules/nothing/pause", token)

    assert paused.status_code == 303
    assert states["nightly_report"] is True
    assert unknown.status_code == 404
    assert message(unknown) == "No schedule named 'nothing'"


async def state_of(app: FastAPI, job_id: int) -> tuple[object, ...]:
    store = store_of(app)
    return await store.get_job(job_id), await store.list_queues(), await store.list_schedules()


@pytest.mark.parametrize("token", [None, "", "forged"])
@pytest.mark.parametrize("path", ACTIONS)
async def test_an_action_without_the_page_s_csrf_token_is_refused_and_changes_nothing(
    app: FastAPI, admin: httpx.AsyncClient, path: str, token: str | None
) -> None:
    job = await held_job(app)
    await store_of(app).cancel_job(job.id)
    await admin.get("/dashboard/")
    before = await state_of(app, job.id)

    refused = await admin.post(path, data={} if token is None else {"csrf_token": token})

    assert refused.status_code == 403
    assert message(refused) == "The form has expired: reload the page and try again"
    assert await state_of(app, job.id) == before


async def test_the_session_cookie_is_http_only_strict_and_scoped_to_the_dashboard(
    client: httpx.AsyncClient,
) -> None:
{%- if cookiecutter.use_auth == "yes" %}
    answer = await sign_in(client, ADMIN_SECRET)
{%- else %}
    answer = await client.get("/dashboard/")
{%- endif %}

    (cookie,) = answer.headers.get_list("set-cookie")
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert attributes[0].startswith("dashboard_session=")
    assert {"httponly", "samesite=strict", "path=/dashboard"} <= set(attributes)

{%- if cookiecutter.job_store != "memory" %}


async def test_a_process_without_the_api_serves_no_dashboard(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(start_http=False{% if cookiecutter.use_auth == "yes" %}, api_keys=API_KEYS{% endif %})
    async with serve(create_app(settings)) as client:
        assert (await client.get("/dashboard/")).status_code == 404
{%- endif %}
{%- if cookiecutter.use_auth == "yes" %}


# --- Signing in with an API key ---


@pytest.mark.parametrize("path", PAGES)
async def test_a_page_without_a_signed_in_key_sends_to_sign_in(
    client: httpx.AsyncClient, path: str
) -> None:
    page = await client.get(path)

    assert page.status_code == 303
    assert page.headers["location"] == "http://test/dashboard/login"


@pytest.mark.parametrize("path", ACTIONS)
async def test_an_action_without_a_signed_in_key_changes_nothing(
    app: FastAPI, client: httpx.AsyncClient, path: str
) -> None:
    job = await held_job(app)
    await store_of(app).cancel_job(job.id)
    before = await state_of(app, job.id)

    refused = await act(client, path, "any")

    assert refused.status_code == 303
    assert refused.headers["location"] == "http://test/dashboard/login"
    assert await state_of(app, job.id) == before


@pytest.mark.parametrize("secret", ["", "not-a-key-0123456789", ADMIN_SECRET[:-1]])
async def test_a_wrong_secret_is_refused_and_not_shown_back(
    client: httpx.AsyncClient, secret: str
) -> None:
    refused = await sign_in(client, secret)

    assert refused.status_code == 401
    assert message(refused) == "The API key is not valid"
    assert "set-cookie" not in refused.headers
    if secret:
        assert secret not in refused.text
    assert (await client.get("/dashboard/")).status_code == 303


async def test_an_admin_key_sees_every_action_and_signs_out(
    app: FastAPI, admin: httpx.AsyncClient
) -> None:
    job = await held_job(app)

    job_page = await admin.get(f"/dashboard/jobs/{job.id}")
    queues_page = await admin.get("/dashboard/queues")
    signed_out = await act(admin, "/dashboard/logout", csrf_token(job_page))

    assert "ops (admin)" in job_page.text
    assert f"/dashboard/jobs/{job.id}/cancel" in job_page.text
    assert f"/dashboard/queues/{HELD}/resume" in queues_page.text
    assert signed_out.status_code == 303
    assert signed_out.headers["location"] == "http://test/dashboard/login"
    assert (await admin.get("/dashboard/")).status_code == 303


async def test_a_read_key_sees_no_action_and_is_refused_if_it_posts(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    job = await held_job(app)
    await sign_in(client, READER_SECRET)
    page = await client.get(f"/dashboard/jobs/{job.id}")
    token = csrf_token(page)  # the sign-out form's
    before = await state_of(app, job.id)

    refused = [await act(client, path.replace("/1/", f"/{job.id}/"), token) for path in ACTIONS]

    assert "viewer (read only)" in page.text
    for shown in (page, await client.get("/dashboard/jobs")):
        assert re.findall(r'<form method="post" action="([^"]+)"', shown.text) == [
            "http://test/dashboard/logout"
        ]
    assert [answer.status_code for answer in refused] == [403] * len(ACTIONS)
    assert {message(answer) for answer in refused} == {"The API key 'viewer' may only read"}
    assert await state_of(app, job.id) == before


async def test_the_session_holds_no_secret(client: httpx.AsyncClient) -> None:
    signed_in = await sign_in(client, ADMIN_SECRET)

    value = signed_in.cookies["dashboard_session"].split(".")[0]
    session = json.loads(base64.b64decode(value + "=" * (-len(value) % 4)))

    assert session["key"] == "ops"
    assert ADMIN_SECRET not in json.dumps(session)


async def test_changing_the_keys_ends_every_session(
    app: FastAPI, admin: httpx.AsyncClient, make_settings: SettingsFactory
) -> None:
    cookie = admin.cookies["dashboard_session"]
    rotated = create_app(make_settings(api_keys=f"ops:{ADMIN_SECRET}-rotated"))

    async with serve(rotated) as other:
        other.cookies.set("dashboard_session", cookie, path="/dashboard")
        page = await other.get("/dashboard/")

    assert page.status_code == 303
    assert page.headers["location"] == "http://test/dashboard/login"


async def test_without_keys_the_dashboard_is_open(make_settings: SettingsFactory) -> None:
    async with serve(create_app(make_settings())) as client:
        overview = await client.get("/dashboard/")
        login = await client.get("/dashboard/login")

    assert overview.status_code == 200
    assert login.status_code == 303
    assert login.headers["location"] == "http://test/dashboard/"
{%- endif %}
